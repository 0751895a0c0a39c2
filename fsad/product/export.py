"""``fsad export``: a detector folder whose test-time features run in ONNX Runtime.

``fsad fit`` saves every weight; ``fsad export`` adds the backbone's graph for the
detector's image size (``features.onnx``, the same network and weights, ``fsad.components.runtime``)
and names it in ``detector.json`` under ``export``. ``fsad predict`` on such a folder then runs
the features from that file: no export step, no ``onnx`` package and no network on the machine
that scores (``onnxruntime`` and ``torch`` are still needed for the rest of the method).

The exported folder holds ``detector.pt`` (settings, state, threshold), ``detector.json``
(what made it, now with ``export: {format, file, size, key}``) and ``features.onnx``.

Example:
    >>> export_detector(Path("detectors/my_product"))  # then: fsad predict detectors/my_product images/
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fsad.components.backbones import EagerStages, FeatureExtractor
from fsad.components.runtime import cached_graph, graph_key, resolve_runtime
from fsad.data.mvtec import as_hw
from fsad.io import atomic_path, write_json_atomic
from fsad.methods.registry import RECORD_FILE, load_detector

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

    size = as_hw(detector.image_size)  # (H, W): the graph is exported for this input size
    network = EagerStages(backbone.eval())
    graph = cached_graph(network, torch.zeros(1, 3, *size, device="cpu"))
    with atomic_path(folder / GRAPH_FILE) as tmp:
        shutil.copyfile(graph, tmp)
    export = {"format": format, "file": GRAPH_FILE, "size": list(size), "key": graph_key(network, size)}
    saved = json.loads((folder / RECORD_FILE).read_text())
    write_json_atomic(folder / RECORD_FILE, {**saved, "export": export})
    return export


def exported_graphs(folder: Path, backbone: FeatureExtractor) -> dict[tuple[int, int], Path]:
    """The graph files ``fsad export`` left in ``folder`` for ``backbone``, by H x W; none when there are none or
    they were made from other weights (then the features are exported anew, as for any detector)."""
    try:
        export = json.loads((Path(folder) / RECORD_FILE).read_text()).get("export")
    except (OSError, ValueError):
        return {}
    if not export or not (Path(folder) / export["file"]).is_file():
        return {}
    size = tuple(export["size"])
    if graph_key(EagerStages(backbone), size) != export["key"]:
        return {}
    return {size: Path(folder) / export["file"]}


def use_exported_features(detector: Any, folder: Path) -> bool:
    """Let ``detector`` (loaded from ``folder``) run its features from the folder's exported graph, where
    it has one for these weights and its runtime is ONNX Runtime; True when it does."""
    backbone = getattr(detector, "backbone", None)
    if not isinstance(backbone, FeatureExtractor) or resolve_runtime(backbone.runtime, detector.device) != "onnxruntime":
        return False
    graphs = exported_graphs(folder, backbone)
    if graphs:
        backbone.use_graphs(graphs)
    return bool(graphs)


def export_command(detector: str, format: str) -> None:
    """``fsad export``: print what was written."""
    export = export_detector(Path(detector), format)
    print(f"{Path(detector) / export['file']}: the detector's features for {export['size'][0]} x {export['size'][1]} "
          f"images in {export['format']}; fsad predict {detector} ... now runs them from this file")


__all__ = ["FORMATS", "GRAPH_FILE", "export_command", "export_detector", "exported_graphs", "use_exported_features"]
