"""``fsad fit``: a detector folder from K good images, with a threshold from normal images only.

The threshold comes from normal images only, by a named rule of ``fsad.product.threshold``
(``--threshold``) on reference scores of ``fsad.product.calibration`` (leave-one-out scores of
the support images, their views and synthetic anomalies, plus the optional ``--good`` images).
``--method auto`` first ranks the training-free methods on the support images
(``fsad.product.selection``) and fits the best.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fsad.config import RegADConfig, read_yaml
from fsad.data.fingerprint import fingerprint
from fsad.data.mvtec import read_image
from fsad.methods.base import Detector
from fsad.methods.registry import DETECTORS, RECORD_FILE, build_detector, is_detector_folder, save_detector
from fsad.product.calibration import reference_scores
from fsad.product.images import find_images
from fsad.product.selection import AUTO, check_auto, choose_method, ranking_lines
from fsad.product.threshold import DEFAULT_TARGET_FPR, MIN_LOG_SPREADS, Threshold, check_rule, default_rule, describe
from fsad.product.tiling import ASPECT_SPREAD_NOTE, DEFAULT_ASPECT, TiledDetector, product_sizes

DEFAULT_METHOD = "padim_views"


def read_settings(path: str | Path | None) -> tuple[RegADConfig, dict[str, Any]]:
    """RegAD settings and method options from a YAML file.

    The file is either a ``regad:`` section (plus an optional ``options:`` section of
    method options) or a mapping of RegAD settings alone; ``None`` gives the defaults.
    """
    if path is None:
        return RegADConfig(), {}
    path = Path(path)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        # ValueError, not TypeError: the CLI reports ValueErrors as one-line user errors.
        raise ValueError(f"fsad fit: {path} must hold a mapping (a regad: section or RegAD settings)")  # noqa: TRY004
    if "regad" not in data and "options" not in data:
        return RegADConfig.from_dict(data, source=str(path)), {}
    unknown = sorted(set(data) - {"regad", "options"})
    if unknown:
        raise ValueError(f"fsad fit: {path} has unknown section(s) {unknown}; known: regad, options")
    return RegADConfig.from_dict(data.get("regad") or {}, source=str(path), at="regad"), dict(data.get("options") or {})


def _read(paths: Sequence[Path], size: int | tuple[int, int]) -> torch.Tensor:
    """N x 3 x H x W float images; an unreadable file is an error naming it."""
    return torch.stack([read_image(p, size) for p in paths])


def _fingerprint(paths: Sequence[Path]) -> str:
    return fingerprint([Path(os.path.abspath(p)) for p in paths])


def _recipe(record: dict[str, Any]) -> dict[str, Any]:
    """What makes a detector folder what it is: method, settings (but the device), and the files it was fitted from."""
    settings = dict(record.get("settings") or {})
    settings["regad"] = {k: v for k, v in (settings.get("regad") or {}).items() if k != "device"}  # where it ran, not what it is
    method = AUTO if record.get("selection") else record.get("method")  # an auto folder is refitted by auto alike
    return {"method": method, "settings": settings, "tiling": record.get("tiling"),
            **{k: (record.get(k) or {}).get("fingerprint") for k in ("support", "good", "model")}}


def _check_out(out: Path, recipe: dict[str, Any], force: bool) -> None:
    """Refuse an --out that holds something else than this detector (another one only without --force)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"fsad fit: --out {out} is a file; choose a folder")
    if not any(out.iterdir()):
        return
    if not is_detector_folder(out):
        raise ValueError(f"fsad fit: --out {out} holds files that are not a detector (no detector.pt); "
                         "choose an empty or new folder (fit replaces the whole folder)")
    try:
        saved = _recipe(json.loads((out / RECORD_FILE).read_text()))
    except (OSError, ValueError):
        saved = {}
    changed = [k for k in recipe if saved.get(k) != recipe[k]]
    if changed and not force:
        raise ValueError(f"fsad fit: --out {out} holds a detector made from other {', '.join(changed)}; "
                         "pass --force to replace it, or choose another --out")


def _check_method(method: str, regad: RegADConfig, options: dict[str, Any], model_path: Path | None, k: int,
                  extra: bool, needs: Sequence[str], threshold: str) -> tuple[Detector, bool]:
    """Refuse what ``method`` cannot fit with K images and the rule; return it built, and whether it is fitted leave one out."""
    if method not in DETECTORS:
        raise ValueError(f"fsad fit: unknown --method {method!r}; choose {AUTO} or one of {', '.join(DETECTORS)}")
    if model_path is not None and method in DETECTORS and DETECTORS[method].model_file is None:
        raise ValueError(f"fsad fit: {method} uses no trained model file; drop --model {model_path}")
    detector = build_detector(method, regad, options, model_path)
    if k < detector.min_support:
        raise ValueError(f"fsad fit: {method} needs K >= {detector.min_support} support images, got {k}"
                         + ("; use padim_views (22 views per image) for K = 1" if method == "padim" else ""))
    leave_one_out = k - 1 >= detector.min_support
    if not leave_one_out and not extra:
        raise ValueError(f"fsad fit: with K = {k} {method} has no leave-one-out score to set the threshold "
                         f"(it needs K >= {detector.min_support + 1}); add good images with --good DIR")
    if not leave_one_out and "synthetic" in needs:
        raise ValueError(f"fsad fit: --threshold {threshold} scores synthetic anomalies leave one out, which {method} "
                         f"cannot do with K = {k} (it needs K >= {detector.min_support + 1}); choose another --threshold")
    return detector, leave_one_out


def fit_product(images: Sequence[str | Path], method: str, regad: RegADConfig, options: dict[str, Any] | None = None,
                model_path: Path | None = None, good: Sequence[str | Path] = (), out: Path = Path("detector"),
                force: bool = False, progress: bool = True, threshold: str | None = None,
                target_fpr: float = DEFAULT_TARGET_FPR, aspect: str = DEFAULT_ASPECT, tile: int | None = None) -> dict[str, Any]:
    """Fit ``method`` on the K images of ``images``, set the threshold, save the detector folder ``out``.

    Args:
        images: Support image files or folders (K = the number of images found).
        method, regad, options, model_path: As ``fsad.methods.registry.build_detector``; method ``auto``
            fits the candidate of ``fsad.product.selection`` that best separates held-out good
            images from synthetic anomalies, and records the ranking (``selection``).
        good: Extra good images (files or folders) for the threshold only.
        out: The detector folder to write (replaced as a whole).
        force: Replace a detector of other images or settings in ``out``.
        threshold, target_fpr: The rule of ``fsad.product.threshold.RULES`` (``None``: ``default_rule`` of the
            number of ``good`` images) and its false-positive rate.
        aspect, tile: How images meet the detector (``fsad.product.tiling.product_sizes``): ``keep``
            their aspect ratio or squash them ``square``; ``tile``: tiles across the short side.

    Returns:
        The record written to ``out/detector.json``.

    Raises:
        FileNotFoundError, ValueError: every check below runs before any fitting.
    """
    out, options = Path(out), dict(options or {})
    support = find_images(images)
    extra = find_images(good) if good else []
    threshold = threshold or default_rule(len(extra))
    rule = check_rule(threshold, target_fpr)
    k = len(support)
    auto = method == AUTO
    if auto:
        check_auto(k, options, model_path)
        if tile is not None:
            raise ValueError("fsad fit: --method auto ranks the methods on whole images and cannot rank tiled ones; "
                             "give --method (e.g. padim_views) with --tile, or drop --tile")
    else:
        detector, leave_one_out = _check_method(method, regad, options, model_path, k, bool(extra), rule.needs, threshold)
    sized, sizes = product_sizes(regad, [p for p, _ in support], aspect, tile)  # from the files' headers
    if sized != regad:
        regad = sized
        if not auto:
            detector = build_detector(method, regad, options, model_path)
    if tile is not None:
        detector = TiledDetector(detector, tuple(sizes["size"]))
    record: dict[str, Any] = {
        "support": {"count": k, "images": [str(p) for p, _ in support], "fingerprint": _fingerprint([p for p, _ in support])},
        "good": {"count": len(extra), "images": [str(p) for p, _ in extra],
                 "fingerprint": _fingerprint([p for p, _ in extra]) if extra else None},
        "model": {"path": str(model_path), "fingerprint": _fingerprint([Path(model_path)])} if model_path else None,
        "image": sizes, "tiling": detector.record() if tile is not None else None,
    }
    _check_out(out, _recipe({"method": method, "settings": {"regad": regad.to_dict(), "options": options}, **record}), force)

    size = tuple(sizes["size"])  # (H, W) the detector (tiled: the whole image) takes
    support_images = _read([p for p, _ in support], size)  # K x 3 x H x W
    if auto:  # the ranking's fits are its own; the chosen method is then fitted as --method would fit it
        record["selection"] = choose_method(support_images, regad, progress=progress)
        method = record["selection"]["chosen"]
        detector, leave_one_out = _check_method(method, regad, options, model_path, k, bool(extra), rule.needs, threshold)
    extra_images = _read([p for p, _ in extra], size) if extra else None  # G x 3 x H x W
    image_refs, map_refs = reference_scores(detector, support_images, extra_images, leave_one_out, rule.needs, progress)
    levels = Threshold.from_rule(threshold, image_refs, map_refs, target_fpr)
    record["threshold"] = {"rule": threshold, "description": describe(threshold, target_fpr),
                           "target_fpr": target_fpr if rule.uses_target_fpr else None, **asdict(levels),
                           **{f"{kind}_scores": getattr(image_refs, kind).tolist()
                              for kind in ("leave_one_out", "good", "views", "synthetic")}}
    save_detector(out, getattr(detector, "inner", detector), regad, options, record)
    return record


def fit_command(images: Sequence[str], method: str | None, model: str | None, config: str | None, good: Sequence[str],
                out: str, force: bool, threshold: str | None = None, target_fpr: float = DEFAULT_TARGET_FPR,
                device: str | None = None, image_size: Sequence[int] | None = None, aspect: str | None = None,
                tile: int | None = None) -> None:
    """``fsad fit``: fit (on ``device`` when given, else the config's; at ``image_size`` when given, one side or
    H W), then print where the detector went and its threshold."""
    regad, options = read_settings(config)
    regad = regad if device is None else regad.replace(device=device)
    if image_size is not None:
        regad = RegADConfig.from_dict({**regad.to_dict(), "image_size": list(image_size)}, source="fsad fit --image-size")
    method = method or DEFAULT_METHOD
    tic = time.perf_counter()
    record = fit_product(images, method, regad, options, Path(model) if model else None, good or (), Path(out), force,
                         threshold=threshold, target_fpr=target_fpr, aspect=aspect or DEFAULT_ASPECT, tile=tile)
    threshold, sizes = record["threshold"], record["image"]
    if "selection" in record:
        print("\n".join(ranking_lines(record["selection"])))
        method = record["selection"]["chosen"]
    tiles = f" in {record['tiling']['tiles']} tiles of {' x '.join(map(str, record['tiling']['tile']))}" if record["tiling"] else ""
    print(f"{method} fitted on K = {record['support']['count']} images ({' x '.join(map(str, sizes['size']))} px{tiles}, "
          f"{len(threshold['leave_one_out_scores'])} leave-one-out, {len(threshold['views_scores'])} view, "
          f"{len(threshold['synthetic_scores'])} synthetic + {len(threshold['good_scores'])} good reference scores): "
          f"image threshold {threshold['image']:.4g}, pixel threshold {threshold['pixel']:.4g}")
    low, _, high = sizes["aspects"]
    if sizes["aspect"] == "keep" and high / low > ASPECT_SPREAD_NOTE:
        print(f"note: the support images' aspect ratios (width / height) range {low:.2f} - {high:.2f}; every image is "
              f"scored at {' x '.join(map(str, sizes['size']))} px (their median's), so images of other shapes are stretched")
    print(f"threshold rule {threshold['description']}")
    if not record["good"]["count"]:
        print("note: no --good images: the threshold assumes the K support images vary as good parts do; K consecutive "
              "parts often vary less (ELPV mono, the first 4 sorted cells: 28 of 30 good test cells flagged; with 30 --good "
              "cells: 1 of 30; docs/calibration.md); pass --good DIR with good images from other batches")
    if method not in MIN_LOG_SPREADS:
        print(f"note: the threshold rules were measured on {', '.join(MIN_LOG_SPREADS)} only (benchmarks/calibration.py); "
              f"{method}'s false-positive rate on new good parts is not known: check it on good images you hold back")
    print(f"detector: {Path(out)} ({RECORD_FILE} says what made it); {time.perf_counter() - tic:.1f} s")
