"""Every detector by name, from one set of shared settings; fitted detectors saved and loaded as folders.

``build_detector(name, regad, options, model_path)`` is the one place a detector is built:
the comparison, ``fsad fit`` and ``load_detector`` all go through it, so the shared settings
of ``RegADConfig`` (backbone, ``pretrained``, ``normalize``, ``image_size``, ``device`` and the
test-time ``eps`` and ``blur_sigma``) reach every method the same way:

======================  =============================================  ======================
name                    built as                                       ``options``
======================  =============================================  ======================
``regad``               ``RegADMethod`` on the trained network of      none
                        ``model_path`` (``fsad train`` / the study's
                        ``regad.pt``)
``untrained``           ``RegADMethod`` on an untrained network        none
                        (ImageNet backbone, identity STNs, seeded by
                        ``regad.seed``)
``spade``               ``SPADE``, ``sigma = blur_sigma``              top_k, kappa
``padim``               ``PaDiM``, ``eps``, ``sigma = blur_sigma``     n_channels, seed
``padim_views``         the same with RegAD's 22 support views         n_channels, seed
``patchcore``           ``PatchCore``, ``sigma = blur_sigma``          coreset_ratio,
                                                                       projection_dim,
                                                                       neighbours, seed
``resad``               ``ResAD`` with the head trained in             none
                        ``model_path`` (``ResAD.save``),
                        ``sigma = blur_sigma``
``regad_l``             ``RegADL`` (trains on the support set in fit)  epochs, pair_shots
``fastrecon``           ``FastRecon``, ``sigma = blur_sigma``          coreset_ratio,
                                                                       regularization, seed
``anomalydino``         ``AnomalyDINO`` on the CNN ``backbone``,       rotation, masking,
                        ``sigma = blur_sigma``                         mask_threshold
``anomalydino_dinov2``  ``AnomalyDINO`` on DINOv2 ViT-S/14             rotation, masking,
                        (``fsad.components.dinov2``; ``pretrained``    mask_threshold,
                        loads ``dinov2_vits14_pretrain.pth``),         resolution
                        ``resolution = 448``
======================  =============================================  ======================

A detector folder holds ``detector.pt`` (the method, its settings and ``Detector.state()``:
every weight and everything ``fit`` built, so loading needs neither a weight file nor the
support images) and ``detector.json``, a readable record of what made it (method, settings,
fsad version, and what the caller adds: support images, threshold).

Example:
    >>> detector = build_detector("patchcore", RegADConfig(image_size=128), {"coreset_ratio": 0.1})
    >>> detector.fit(support)  # K x 3 x 128 x 128
    >>> save_detector(Path("detectors/screw"), detector, RegADConfig(image_size=128), {"coreset_ratio": 0.1})
    >>> detector, record = load_detector(Path("detectors/screw"))  # predicts as before, no refit
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import fsad
from fsad.components.backbones import ExportedFeatures, FeatureExtractor, build_backbone
from fsad.components.dinov2 import DinoV2Features
from fsad.config import RegADConfig, resolve_device
from fsad.io import atomic_dir, save_atomic, write_json_atomic
from fsad.methods.anomalydino import AnomalyDINO
from fsad.methods.base import Detector
from fsad.methods.fastrecon import FastRecon
from fsad.methods.padim import PaDiM
from fsad.methods.patchcore import PatchCore
from fsad.methods.regad.checkpoint import build_model, load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad_l import RegADL
from fsad.methods.resad import ResAD
from fsad.methods.spade import SPADE

DETECTOR_FILE = "detector.pt"
RECORD_FILE = "detector.json"
FORMAT = "fsad-detector"
FORMAT_VERSION = 2  # 2: the low-rank Gaussian stores its centred samples and L^-1 apart (fsad.components.gaussian)
# What builds a CNN method's backbone from the shared settings: ``method_backbone``, or another in ``load_detector``.
BackboneBuilder = Callable[[RegADConfig], FeatureExtractor]


def method_backbone(regad: RegADConfig) -> FeatureExtractor:
    """The backbone of every CNN method, built from the shared settings (its ``runtime`` among them)."""
    # Random weights (pretrained: false) come from regad.seed, so two runs of one config score alike;
    # the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(regad.seed)
        backbone = build_backbone(regad.backbone, pretrained=regad.pretrained, normalize=regad.normalize)
    backbone.runtime = regad.runtime  # test-time features only: eager in training and with gradients
    backbone.precision = regad.precision
    return backbone


def _regad(regad: RegADConfig, options: dict[str, Any], model_path: Path | None, _: BackboneBuilder) -> Detector:
    # Without a model file (only load_detector asks so) the weights come from the saved state.
    model = build_model(regad.replace(pretrained=False)) if model_path is None else load_model(model_path, expected=regad)[0]
    return RegADMethod(model, regad, name="regad")


def _resad(regad: RegADConfig, options: dict[str, Any], model_path: Path | None, backbone: BackboneBuilder) -> Detector:
    detector = ResAD(backbone(regad), regad.image_size, sigma=regad.blur_sigma, device=resolve_device(regad.device))
    if model_path is not None:
        detector.load(model_path)
    return detector


def _padim(views: bool) -> Callable[[RegADConfig, dict[str, Any], Path | None, BackboneBuilder], Detector]:
    return lambda regad, options, _, backbone: PaDiM(backbone(regad), regad.image_size, augment_support=views,
                                                     eps=regad.eps, sigma=regad.blur_sigma,
                                                     device=resolve_device(regad.device), **options)


def _anomalydino_dinov2(regad: RegADConfig, options: dict[str, Any], _: Path | None, __: BackboneBuilder) -> Detector:
    # The paper's backbone and input size (shorter side 448); regad.backbone is not used.
    options = {"resolution": 448, **options}
    return AnomalyDINO(DinoV2Features(pretrained=regad.pretrained), regad.image_size, sigma=regad.blur_sigma,
                       device=resolve_device(regad.device), **options)


@dataclass(frozen=True)
class Entry:
    """How to build one method.

    Attributes:
        build: ``(regad, options, model_path, backbone) -> Detector``; ``model_path`` is ``None`` only
            when ``load_detector`` rebuilds a detector whose weights are in its state; the CNN methods
            take their backbone from ``backbone(regad)`` (``method_backbone``, or what ``load_detector`` is given).
        options: Keyword options the method accepts beyond the shared settings.
        model_file: What the trained model file is, for methods that need one.
    """

    build: Callable[[RegADConfig, dict[str, Any], Path | None, BackboneBuilder], Detector]
    options: tuple[str, ...] = ()
    model_file: str | None = None


DETECTORS: dict[str, Entry] = {
    "regad": Entry(_regad, model_file="a RegAD model trained on other categories (regad.pt of fsad train)"),
    "untrained": Entry(lambda regad, options, *_: RegADMethod(untrained_regad(regad), regad, name="untrained")),
    "spade": Entry(lambda regad, options, _, backbone: SPADE(backbone(regad), regad.image_size, sigma=regad.blur_sigma,
                                                             device=resolve_device(regad.device), **options),
                   ("top_k", "kappa")),
    "padim": Entry(_padim(views=False), ("n_channels", "seed")),
    "padim_views": Entry(_padim(views=True), ("n_channels", "seed")),
    "patchcore": Entry(lambda regad, options, _, backbone: PatchCore(backbone(regad), regad.image_size,
                                                                     sigma=regad.blur_sigma, device=resolve_device(regad.device), **options),
                       ("coreset_ratio", "projection_dim", "neighbours", "seed")),
    "resad": Entry(_resad, model_file="a ResAD head trained on other categories (ResAD.save)"),
    "regad_l": Entry(lambda regad, options, *_: RegADL(regad, **options), ("epochs", "pair_shots")),
    "fastrecon": Entry(lambda regad, options, _, backbone: FastRecon(backbone(regad), regad.image_size,
                                                                     sigma=regad.blur_sigma, device=resolve_device(regad.device), **options),
                       ("coreset_ratio", "regularization", "seed")),
    "anomalydino": Entry(lambda regad, options, _, backbone: AnomalyDINO(backbone(regad), regad.image_size,
                                                                         sigma=regad.blur_sigma, device=resolve_device(regad.device), **options),
                         ("rotation", "masking", "mask_threshold")),
    "anomalydino_dinov2": Entry(_anomalydino_dinov2, ("rotation", "masking", "mask_threshold", "resolution")),
}


def _entry(name: str, options: dict[str, Any]) -> Entry:
    if name not in DETECTORS:
        raise ValueError(f"fsad/methods/registry.py: unknown method {name!r}; choose from {', '.join(DETECTORS)}")
    entry = DETECTORS[name]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "none (eps, blur_sigma, image_size, device are regad settings)"
        raise ValueError(f"fsad/methods/registry.py: method {name!r} has no option(s) {', '.join(unknown)}; "
                         f"its options: {accepted}")
    return entry


def _say_fp32_only(detector: Detector, regad: RegADConfig) -> Detector:
    """Warn where ``precision: bf16`` does not apply: RegAD's registered features and DINOv2 run in fp32 PyTorch."""
    if regad.precision == "bf16" and not isinstance(getattr(detector, "backbone", None), (FeatureExtractor, ExportedFeatures)):
        warnings.warn(f"regad.precision bf16 applies to backbone features; {detector.name}'s features run in fp32",
                      stacklevel=3)
    return detector


def build_detector(name: str, regad: RegADConfig, options: dict[str, Any] | None = None,
                   model_path: Path | None = None) -> Detector:
    """The detector ``name`` with the shared settings ``regad`` and its own ``options``.

    Args:
        name: A key of ``DETECTORS``.
        regad: Shared settings: backbone, pretrained, normalize, image_size, device, eps and
            blur_sigma reach every method; the RegAD methods read the rest too.
        options: The method's own keyword options (``DETECTORS[name].options``).
        model_path: The trained model file of ``regad`` and ``resad`` (ignored by the others).

    Raises:
        ValueError: unknown method or option, or a method that needs a model file given none.
        FileNotFoundError: ``model_path`` does not exist.
    """
    options = dict(options or {})
    entry = _entry(name, options)
    if entry.model_file is None:
        model_path = None
    elif model_path is None:
        raise ValueError(f"fsad/methods/registry.py: method {name!r} needs {entry.model_file}; pass it with --model FILE")
    elif not Path(model_path).is_file():
        raise FileNotFoundError(f"fsad/methods/registry.py: model file {model_path} of method {name!r} does not exist; "
                                "fix --model")
    return _say_fp32_only(entry.build(regad, options, None if model_path is None else Path(model_path), method_backbone),
                          regad)


def save_detector(folder: Path, detector: Detector, regad: RegADConfig, options: dict[str, Any] | None = None,
                  record: dict[str, Any] | None = None) -> None:
    """Write a fitted detector to ``folder`` (replaced as a whole, atomically).

    Args:
        folder: The detector folder: ``detector.pt`` and ``detector.json``.
        detector: A fitted detector built by ``build_detector(detector.name, regad, options)``.
        regad, options: The settings it was built with (saved to rebuild it).
        record: What else made it, e.g. support images and threshold: saved in both files.
    """
    options, record = dict(options or {}), dict(record or {})
    _entry(detector.name, options)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": detector.name,
              "fsad_version": fsad.__version__, "settings": {"regad": regad.to_dict(), "options": options}}
    state = detector.state()  # refuses an unfitted detector before the folder is touched
    with atomic_dir(folder) as partial:
        save_atomic({**header, "record": record, "state": state}, partial / DETECTOR_FILE)
        write_json_atomic(partial / RECORD_FILE, {**header, **record})


def is_detector_folder(folder: Path) -> bool:
    """True when ``folder`` holds a ``detector.pt``."""
    return (Path(folder) / DETECTOR_FILE).is_file()


def read_detector_file(folder: Path) -> dict[str, Any]:
    """The checked contents of ``folder/detector.pt`` (header, record, state)."""
    folder = Path(folder)
    path = folder / DETECTOR_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"fsad/methods/registry.py: no detector folder at {folder}; make one with fsad fit")
    if not path.is_file():
        raise ValueError(f"fsad/methods/registry.py: {folder} is not a detector folder (no {DETECTOR_FILE}); "
                         "pass the --out folder of fsad fit")
    try:
        # Mapped, not read: the tensors are paged in as scoring uses them (a 224-px padim_views
        # state is 200 MB; 0.15 s of fsad predict's start-up). Private mapping: the file is never written.
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated, foreign or hand-made file: torch raises many types
        raise ValueError(f"fsad/methods/registry.py: {path} is not a readable detector file ({type(error).__name__}); "
                         "refit it with fsad fit") from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"fsad/methods/registry.py: {path} is not an fsad detector file; refit it with fsad fit")
    if saved.get("format_version") != FORMAT_VERSION or saved.get("method") not in DETECTORS:
        raise ValueError(f"fsad/methods/registry.py: {path} was written by fsad {saved.get('fsad_version')} "
                         f"(format {saved.get('format_version')}, method {saved.get('method')!r}), which this fsad "
                         f"{fsad.__version__} cannot read; refit it")
    return saved


def load_detector(folder: Path, method: str | None = None, device: str | None = None,
                  backbone: BackboneBuilder = method_backbone) -> tuple[Detector, dict[str, Any]]:
    """The fitted detector of ``folder`` and its record; nothing is refitted.

    Args:
        folder: A folder written by ``save_detector``.
        method: The method it must hold (``None``: any).
        device: Where to run it (``None``: ``auto``, the GPU when there is one). Not the device it
            was fitted on: the state is on the CPU, so a folder moves between machines.
        backbone: Builds the CNN methods' backbone from the settings, into which the state's
            weights are then loaded (``fsad.product.export.load_exported``: the folder's graph).

    Returns:
        The detector and ``{"method", "settings", "fsad_version", **record}``.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: not a detector folder, an unreadable or foreign file, another method
            than ``method``, or a state of another architecture.
    """
    saved = read_detector_file(folder)
    if method is not None and saved["method"] != method:
        raise ValueError(f"fsad/methods/registry.py: {folder} holds a {saved['method']!r} detector, not {method!r}")
    settings = saved["settings"]
    regad = RegADConfig.from_dict(settings["regad"], source=str(Path(folder) / DETECTOR_FILE))
    # Every weight is in the state: build without ImageNet weight files, then load.
    regad = regad.replace(pretrained=False, device=device or "auto")
    detector = _say_fp32_only(_entry(saved["method"], settings["options"]).build(regad, dict(settings["options"]), None, backbone),
                              regad)
    detector.load_state(saved["state"])
    header = {k: saved[k] for k in ("format", "format_version", "method", "fsad_version", "settings")}
    return detector, {**header, **saved["record"]}


__all__ = ["DETECTORS", "BackboneBuilder", "build_detector", "is_detector_folder", "load_detector", "method_backbone",
           "read_detector_file", "save_detector"]
