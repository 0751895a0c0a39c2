"""``fsad export``: a detector folder whose test-time features run in ONNX Runtime or OpenVINO.

``fsad fit`` saves every weight; ``fsad export`` adds the backbone's graph for the
detector's image size (the same network and weights, ``fsad.components.runtime``): ``--format
onnx`` writes ``features.onnx`` (ONNX Runtime), ``--format openvino`` writes OpenVINO's IR
``features.xml`` (the graph) and ``features.bin`` (its fp32 weights); ``detector.json`` names it
under ``export``. ``fsad predict`` on such a folder (``load_exported``) then builds no network:
the backbone is that file alone (``ExportedFeatures``), run in the format's runtime at the
detector's ``precision`` (bf16 only with openvino), so neither torchvision nor the ``onnx``
package is loaded and nothing is exported on the machine that scores; the runtime's package and
``torch`` run the rest of the method, with the same code as any detector. Exporting in another
format replaces the previous format's files.

The exported folder holds ``detector.pt`` (settings, state, threshold), ``detector.json``
(what made it, now with ``export: {format, file, size, weights}``; ``weights`` is the
``weights_key`` of the backbone weights the graph holds) and the graph file(s).

Example:
    >>> export_detector(Path("detectors/my_product"), "openvino")  # then: fsad predict detectors/my_product images/
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

from fsad.components import runtime as feature_runtime
from fsad.components.backbones import EagerStages, ExportedFeatures, FeatureExtractor, StaleGraphError, weights_key
from fsad.components.runtime import cached_graph, check_precision, resolve_runtime
from fsad.config import RegADConfig, resolve_device
from fsad.data.mvtec import as_hw
from fsad.io import atomic_path, write_json_atomic
from fsad.methods.base import Detector
from fsad.methods.registry import RECORD_FILE, load_detector, method_backbone

log = logging.getLogger(__name__)

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
    if format == "openvino" and not feature_runtime.installed("openvino"):
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

    size = as_hw(detector.image_size)  # (H, W): the graph is exported for this input size
    network = EagerStages(backbone.eval())
    _write_graph(cached_graph(network, torch.zeros(1, 3, *size, device="cpu")), format, folder)
    export = {"format": format, "file": GRAPH_FILES[format][0], "size": list(size),
              "weights": weights_key(backbone.state_dict())}
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


def _exported_runtime(export: dict[str, Any], regad: RegADConfig) -> str | None:
    """The runtime that scores from the export's graph under ``regad``'s settings, or None where the
    settings ask for something else (another runtime, a GPU, bf16 in an ONNX export) or the runtime is missing."""
    runtime = RUNTIME_OF[export["format"]]
    if regad.runtime not in ("auto", runtime) or (runtime == "onnxruntime" and regad.precision != "fp32"):
        return None
    if not feature_runtime.installed(runtime):
        warnings.warn(f"the detector's features were exported for {runtime}, which is not installed here (pip install "
                      f"{runtime}); they run as its settings say (runtime {regad.runtime})", stacklevel=3)
        return None
    with warnings.catch_warnings():  # a GPU: said by the backbone that runs there
        warnings.simplefilter("ignore")
        resolved = resolve_runtime(runtime, resolve_device(regad.device), regad.precision)
    return runtime if resolved == runtime else None


def load_exported(folder: Path, device: str | None = None) -> tuple[Detector, dict[str, Any]]:
    """``load_detector`` for scoring: the backbone is the folder's exported graph where it can be.

    That is where ``fsad export`` left a graph whose runtime (ONNX Runtime for ``onnx``, OpenVINO
    for ``openvino``) is installed and the settings allow it (runtime not ``torch``, the CPU, fp32
    or OpenVINO's bf16): the detector then gets ``ExportedFeatures``, whose ``load_state_dict``
    checks the saved weights against the graph's. Otherwise (no export, another runtime or device,
    a graph of other weights) it is the detector ``load_detector`` builds, whose features run as
    its settings say; either way the method's code is the same.
    """
    folder = Path(folder)
    export = _export_record(folder)
    if export is None:  # none, or its file is gone: load_detector says what is wrong with the folder
        return load_detector(folder, device=device)
    if "weights" not in export:  # written before the graph was tied to the weights by weights_key
        log.warning("%s: its export predates this fsad; run fsad export %s again to score from its graph",
                    folder / RECORD_FILE, folder)
        return load_detector(folder, device=device)

    def backbone(regad: RegADConfig) -> FeatureExtractor | ExportedFeatures:
        runtime = _exported_runtime(export, regad)
        if runtime is None:
            return method_backbone(regad)
        return ExportedFeatures(regad.backbone, folder / export["file"], tuple(export["size"]), export["weights"],
                                runtime, regad.precision)

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


__all__ = ["FORMATS", "GRAPH_FILE", "GRAPH_FILES", "export_command", "export_detector", "load_exported"]
