"""``fsad export``: a detector folder whose test-time features run in ONNX Runtime.

``fsad fit`` saves every weight; ``fsad export`` adds the backbone's graph for the
detector's image size (``features.onnx``, the same network and weights, ``fsad.components.runtime``)
and names it in ``detector.json`` under ``export``. ``fsad predict`` on such a folder
(``load_exported``) then builds no network: the backbone is that file alone
(``ExportedFeatures``), so neither torchvision nor the ``onnx`` package is loaded and nothing
is exported on the machine that scores; ``onnxruntime`` and ``torch`` run the rest of the method,
with the same code as any detector.

The exported folder holds ``detector.pt`` (settings, state, threshold), ``detector.json``
(what made it, now with ``export: {format, file, size, weights}``; ``weights`` is the
``weights_key`` of the backbone weights the graph holds) and ``features.onnx``.

Example:
    >>> export_detector(Path("detectors/my_product"))  # then: fsad predict detectors/my_product images/
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

from fsad.components.backbones import EagerStages, ExportedFeatures, FeatureExtractor, StaleGraphError, weights_key
from fsad.components.runtime import cached_graph, resolve_runtime
from fsad.config import RegADConfig, resolve_device
from fsad.io import atomic_path, write_json_atomic
from fsad.methods.base import Detector
from fsad.methods.registry import RECORD_FILE, load_detector, method_backbone

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
GRAPH_FILE = "features.onnx"


def export_detector(folder: Path, format: str = "onnx") -> dict[str, Any]:
    """Write ``folder/features.onnx`` for the detector in ``folder`` and record it; returns the record's ``export``.

    Raises:
        ValueError: an unknown format, or a method whose features are not a plain backbone
            (RegAD's registered features, DINOv2), which stays in PyTorch.
    """
    if format not in FORMATS:
        raise ValueError(f"fsad export: unknown --format {format!r}; choose from {', '.join(FORMATS)}")
    folder = Path(folder)
    detector, record = load_detector(folder, device="cpu")
    backbone = getattr(detector, "backbone", None)
    if not isinstance(backbone, FeatureExtractor):
        # The user's choice of method, not a type error: a ValueError is the CLI's one-line error.
        raise ValueError(  # noqa: TRY004
            f"fsad export: {record['method']} computes its features with more than a backbone "
            "(RegAD's STNs, DINOv2); they run in PyTorch and there is nothing to export")
    import torch

    size = (detector.image_size, detector.image_size)
    network = EagerStages(backbone.eval())
    graph = cached_graph(network, torch.zeros(1, 3, *size, device="cpu"))
    with atomic_path(folder / GRAPH_FILE) as tmp:
        shutil.copyfile(graph, tmp)
    export = {"format": format, "file": GRAPH_FILE, "size": list(size), "weights": weights_key(backbone.state_dict())}
    saved = json.loads((folder / RECORD_FILE).read_text())
    write_json_atomic(folder / RECORD_FILE, {**saved, "export": export})
    return export


def load_exported(folder: Path, device: str | None = None) -> tuple[Detector, dict[str, Any]]:
    """``load_detector`` for scoring: the backbone is the folder's exported graph where it can be.

    That is where ``fsad export`` left a graph and the features run in ONNX Runtime (runtime
    ``auto`` or ``onnxruntime``, on the CPU): the detector then gets ``ExportedFeatures``, whose
    ``load_state_dict`` checks the saved weights against the graph's. Otherwise (no export,
    another runtime or device, a graph of other weights) it is the detector ``load_detector``
    builds, whose features run as its settings say; either way the method's code is the same.
    """
    folder = Path(folder)
    try:
        export = json.loads((folder / RECORD_FILE).read_text()).get("export")
    except (OSError, ValueError):  # load_detector says what is wrong with the folder
        export = None
    if not export or not (folder / export["file"]).is_file():
        return load_detector(folder, device=device)
    if "weights" not in export:  # written before the graph was tied to the weights by weights_key
        log.warning("%s: its export predates this fsad; run fsad export %s again to score from its graph",
                    folder / RECORD_FILE, folder)
        return load_detector(folder, device=device)

    def backbone(regad: RegADConfig) -> FeatureExtractor | ExportedFeatures:
        with warnings.catch_warnings():  # a runtime that cannot run is said once, by the backbone that falls back
            warnings.simplefilter("ignore")
            runtime = resolve_runtime(regad.runtime, resolve_device(regad.device))
        if runtime != "onnxruntime":
            return method_backbone(regad)
        return ExportedFeatures(regad.backbone, folder / export["file"], tuple(export["size"]), export["weights"])

    try:
        return load_detector(folder, device=device, backbone=backbone)
    except StaleGraphError as error:
        log.warning("%s; scoring without it", error)
        return load_detector(folder, device=device)


def export_command(detector: str, format: str) -> None:
    """``fsad export``: print what was written."""
    export = export_detector(Path(detector), format)
    print(f"{Path(detector) / export['file']}: the detector's features for {export['size'][0]} x {export['size'][1]} "
          f"images in {export['format']}; fsad predict {detector} ... now runs them from this file")


__all__ = ["FORMATS", "GRAPH_FILE", "export_command", "export_detector", "load_exported"]
