"""``fsad export``: a detector folder whose test-time features run in ONNX Runtime or OpenVINO.

``fsad fit`` saves every weight; ``fsad export`` adds the backbone's graph for the
detector's image size (the same network and weights, ``fsad.components.runtime``): ``--format
onnx`` writes ``features.onnx`` (ONNX Runtime), ``--format openvino`` writes OpenVINO's IR
``features.xml`` (the graph) and ``features.bin`` (its fp32 weights); ``detector.json`` names it
under ``export``. ``fsad predict`` on such a folder then runs the features from that file in
that runtime, at the detector's ``precision`` (bf16 only with openvino): no export step, no
``onnx`` package and no network on the machine that scores (the runtime's package and ``torch``
are still needed for the rest of the method). Exporting in another format replaces the
previous format's files.

The exported folder holds ``detector.pt`` (settings, state, threshold), ``detector.json``
(what made it, now with ``export: {format, file, size, key}``) and the graph file(s).

Example:
    >>> export_detector(Path("detectors/my_product"), "openvino")  # then: fsad predict detectors/my_product images/
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fsad.components import runtime as feature_runtime
from fsad.components.backbones import EagerStages, FeatureExtractor
from fsad.components.runtime import cached_graph, check_precision, graph_key, resolve_runtime
from fsad.io import atomic_path, write_json_atomic
from fsad.methods.registry import RECORD_FILE, load_detector

FORMATS = ("onnx", "openvino")
# Per format: the runtime that runs it, and the files fsad export writes (the first is the record's "file").
RUNTIME_OF = {"onnx": "onnxruntime", "openvino": "openvino"}
GRAPH_FILES = {"onnx": ("features.onnx",), "openvino": ("features.xml", "features.bin")}
GRAPH_FILE = GRAPH_FILES["onnx"][0]


def _write_graph(graph: Path, format: str, folder: Path) -> None:
    """Copy the cached ONNX ``graph`` into ``folder`` as ``format``'s files (OpenVINO IR keeps fp32 weights)."""
    if format == "onnx":
        with atomic_path(folder / GRAPH_FILE) as tmp:
            shutil.copyfile(graph, tmp)
        return
    import openvino

    xml, weights = (folder / name for name in GRAPH_FILES["openvino"])
    with atomic_path(weights) as tmp_weights, atomic_path(xml) as tmp_xml:
        # save_model writes the weights beside the graph file, named after it; read_model finds them so.
        openvino.save_model(openvino.Core().read_model(str(graph)), str(tmp_xml), compress_to_fp16=False)
        tmp_xml.with_suffix(".bin").replace(tmp_weights)


def export_detector(folder: Path, format: str = "onnx") -> dict[str, Any]:
    """Write the graph files of ``format`` for the detector in ``folder`` and record them; returns the record's ``export``.

    Raises:
        ValueError: an unknown format, a format whose runtime is not installed or cannot run
            the detector's precision (bf16 in onnx), or a method whose features are not a plain
            backbone (RegAD's registered features, DINOv2), which stays in PyTorch.
    """
    if format not in FORMATS:
        raise ValueError(f"fsad export: unknown --format {format!r}; choose from {', '.join(FORMATS)}")
    if format == "openvino" and not feature_runtime.openvino_available():
        raise ValueError("fsad export: --format openvino needs the openvino package (pip install openvino); "
                         "or export --format onnx")
    folder = Path(folder)
    detector, record = load_detector(folder, device="cpu")
    backbone = getattr(detector, "backbone", None)
    if not isinstance(backbone, FeatureExtractor):
        # The user's choice of method, not a type error: a ValueError is the CLI's one-line error.
        raise ValueError(  # noqa: TRY004
            f"fsad export: {record['method']} computes its features with more than a backbone "
            "(RegAD's STNs, DINOv2); they run in PyTorch and there is nothing to export")
    try:
        check_precision(RUNTIME_OF[format], backbone.precision)
    except ValueError as error:
        raise ValueError(f"fsad export: {folder} runs its features in bf16, which --format {format} cannot "
                         "(no bf16 CPU kernels in ONNX Runtime); export --format openvino") from error
    import torch

    size = (detector.image_size, detector.image_size)
    network = EagerStages(backbone.eval())
    _write_graph(cached_graph(network, torch.zeros(1, 3, *size, device="cpu")), format, folder)
    export = {"format": format, "file": GRAPH_FILES[format][0], "size": list(size), "key": graph_key(network, size)}
    saved = json.loads((folder / RECORD_FILE).read_text())
    write_json_atomic(folder / RECORD_FILE, {**saved, "export": export})
    for other in FORMATS:  # the previous format's files would only mislead
        if other != format:
            for name in GRAPH_FILES[other]:
                (folder / name).unlink(missing_ok=True)
    return export


def _export_record(folder: Path) -> dict[str, Any] | None:
    """``detector.json``'s ``export`` where its graph file is there, else None."""
    try:
        export = json.loads((Path(folder) / RECORD_FILE).read_text()).get("export")
    except (OSError, ValueError):
        return None
    if not export or export.get("format") not in FORMATS or not (Path(folder) / export["file"]).is_file():
        return None
    return export


def exported_graphs(folder: Path, backbone: FeatureExtractor) -> dict[tuple[int, int], Path]:
    """The graph files ``fsad export`` left in ``folder`` for ``backbone``, by H x W; none when there are none or
    they were made from other weights (then the features are exported anew, as for any detector)."""
    export = _export_record(folder)
    if export is None:
        return {}
    size = tuple(export["size"])
    if graph_key(EagerStages(backbone), size) != export["key"]:
        return {}
    return {size: Path(folder) / export["file"]}


def use_exported_features(detector: Any, folder: Path) -> bool:
    """Let ``detector`` (loaded from ``folder``) run its features from the folder's exported graph in the
    export's runtime, where it has one for these weights and the detector's runtime is not ``torch``; True
    when it does. Where that runtime is not installed (or the device is a GPU) the features run in PyTorch,
    with a warning that says so."""
    backbone = getattr(detector, "backbone", None)
    export = _export_record(folder)
    if not isinstance(backbone, FeatureExtractor) or backbone.runtime == "torch" or export is None:
        return False
    runtime = RUNTIME_OF[export["format"]]
    if resolve_runtime(runtime, detector.device, backbone.precision) != runtime:
        backbone.runtime = "torch"
        return False
    graphs = exported_graphs(folder, backbone)
    if graphs:
        backbone.use_graphs(graphs, runtime)
    return bool(graphs)


def export_command(detector: str, format: str) -> None:
    """``fsad export``: print what was written."""
    export = export_detector(Path(detector), format)
    print(f"{Path(detector) / export['file']}: the detector's features for {export['size'][0]} x {export['size'][1]} "
          f"images in {export['format']}; fsad predict {detector} ... now runs them from this file")


__all__ = ["FORMATS", "GRAPH_FILE", "GRAPH_FILES", "export_command", "export_detector", "exported_graphs", "use_exported_features"]
