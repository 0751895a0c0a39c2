"""Test-time backbone features in a faster runtime than eager PyTorch (ONNX Runtime, OpenVINO).

Every method's test-time features (the support views and the test images) go through a
frozen ``FeatureExtractor``; its three stage outputs are a pure function of the image, so
the same network can run in another engine. ONNX Runtime's CPU kernels compute MobileNetV2's
features 2.5-2.9x faster than eager PyTorch on one thread (issue 21's table) and agree with
eager fp32 to about 1e-6 (max abs, features up to 8): ``runtime: auto`` picks it where it is
installed and the features run on the CPU. OpenVINO (``runtime: openvino``) runs the same
graph as fp32 to about 1e-5 too. Training always stays in PyTorch.

``precision: bf16`` (only when asked) runs the test-time features in bfloat16: OpenVINO's
bf16 inference hint, or ``torch.autocast`` in PyTorch; ONNX Runtime's CPU kernels have no
bf16, so ``runtime: onnxruntime`` refuses it and ``auto`` picks OpenVINO, else PyTorch. Its
speed and its effect on AUROC are in docs/speed.md.

The exported graph depends on the network, its weights and the image size only (the batch
is a dynamic axis), so it is exported once and cached on disk under ``graph_key`` (a hash of
the architecture, the weights, the size and the exporter's version): a rerun, another
detector with the same backbone, or ``fsad predict`` reuse it; changed weights give another key. A detector
folder can carry its graph (``fsad export``), and then ``fsad predict`` needs neither the
exporter nor a network. The precision is not in the file: it is a setting of the session
(OpenVINO compiles the same fp32 graph for bf16), and a session is made for one precision.

Example:
    >>> net = build_backbone("mobilenet_v2").eval()
    >>> features = OnnxFeatures(net)
    >>> f1, f2, f3 = features(torch.rand(2, 3, 224, 224))  # as net(...), within ~1e-5
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fsad.io import atomic_path

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
OPSET = 17
GRAPH_SUFFIX = ".onnx"


def runtime_cache_dir() -> Path:
    """Where exported graphs are kept: ``$FSAD_CACHE/runtime``, else ``~/.cache/fsad/runtime`` (XDG)."""
    base = os.environ.get("FSAD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fsad"
    return Path(base) / "runtime"


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def installed(runtime: str) -> bool:
    """Whether the package of graph runtime ``runtime`` (``"onnxruntime"`` or ``"openvino"``) is installed."""
    return {"onnxruntime": onnxruntime_available, "openvino": openvino_available}[runtime]()


def check_precision(runtime: str, precision: str) -> None:
    """Refuse an unknown precision, and bf16 in ONNX Runtime (its CPU kernels compute fp32 only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"fsad/components/runtime.py: unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    if runtime == "onnxruntime" and precision == "bf16":
        raise ValueError("regad.precision: bf16 cannot run in runtime onnxruntime (no bf16 CPU kernels); "
                         "set runtime: openvino, torch or auto, or precision: fp32")


def resolve_runtime(name: str, device: str, precision: str = "fp32") -> str:
    """The runtime that runs ``precision`` features on ``device``.

    ``auto``: on the CPU, ``onnxruntime`` (fp32) or ``openvino`` (fp32 where ONNX Runtime is
    missing; bf16) where installed, else ``torch``. Asking for ``onnxruntime`` or ``openvino``
    where it cannot run (not installed, or a GPU device) falls back to ``torch`` with a warning
    that says so; results then equal eager PyTorch's at that precision.
    """
    if name not in RUNTIMES:
        raise ValueError(f"fsad/components/runtime.py: unknown runtime {name!r}; choose from {list(RUNTIMES)}")
    check_precision(name, precision)
    on_cpu = torch.device(device).type == "cpu"
    if name == "torch":
        return "torch"
    if name == "auto":
        preferred = ("onnxruntime", "openvino") if precision == "fp32" else ("openvino",)
        return next((r for r in preferred if on_cpu and installed(r)), "torch")
    if not on_cpu:
        warnings.warn(f"runtime {name} runs on the CPU only; features on {device} use PyTorch", stacklevel=2)
        return "torch"
    if not installed(name):
        warnings.warn(f"runtime {name} asked for but the package is not installed (pip install {name}); "
                      "features use PyTorch", stacklevel=2)
        return "torch"
    return name


def graph_key(network: nn.Module, size: tuple[int, int]) -> str:
    """A hash of what the graph computes: the module tree, every weight and buffer, the input size, torch's version."""
    digest = hashlib.sha256()
    digest.update(f"{torch.__version__} opset {OPSET} size {tuple(size)}\n{network}".encode())
    for name, tensor in (*network.named_parameters(), *network.named_buffers()):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode() + str(tuple(data.shape)).encode() + data.numpy().tobytes())
    return digest.hexdigest()[:32]


def export_graph(network: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX graph of ``network`` (B x 3 x H x W in [0, 1] -> its outputs) for ``example``'s H x W, any batch.

    The size is fixed: networks with TensorFlow's "same" padding (EfficientNet-Lite) compute
    their padding from it, and the exporter bakes that in.

    Needs the ``onnx`` package (torch's exporter writes through it); running the graph
    needs only ``onnxruntime``.
    """
    if importlib.util.find_spec("onnx") is None:
        raise RuntimeError("fsad/components/runtime.py: exporting a graph for onnxruntime needs the onnx package "
                           "(pip install onnx), or set runtime: torch")
    n_outputs = len(network(example))
    names = [f"stage{i + 1}" for i in range(n_outputs)]
    axes = {name: {0: "batch"} for name in ["images", *names]}
    buffer = io.BytesIO()
    # The exporter makes tensors of its own: on the CPU, whatever the caller's default device.
    with warnings.catch_warnings(), torch.device("cpu"):  # its deprecation notice is not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), buffer, input_names=["images"], output_names=names, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def cached_graph(network: nn.Module, example: torch.Tensor, cache: Path | None = None) -> Path:
    """The graph file of ``network`` for ``example``'s size in the cache, exported on first use (atomically)."""
    path = (cache or runtime_cache_dir()) / f"{graph_key(network, example.shape[-2:])}{GRAPH_SUFFIX}"
    if not path.is_file():
        graph = export_graph(network, example)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(graph)
        log.info("exported %s features to %s", type(network).__name__, path)
    return path


class OnnxFeatures:
    """``network``'s forward run by ONNX Runtime on the CPU: one session per image size and weights.

    Args:
        network: A module mapping B x 3 x H x W float images to a sequence of tensors (a
            ``FeatureExtractor``'s ``EagerStages``); used in eval mode, not changed.
        graphs: Graph files by image size to run instead of exporting (a detector folder's,
            ``fsad export``), trusted to hold ``network``'s weights.

    Sessions are rebuilt when ``network``'s weights change (checked through a
    ``ModuleSnapshot`` at every call), and use torch's thread count so a run with one
    thread stays on one.
    """

    runtime = "onnxruntime"
    precision = "fp32"  # ONNX Runtime's CPU kernels: fp32 only

    def __init__(self, network: nn.Module, graphs: dict[tuple[int, int], Path] | None = None):
        self.network = network
        self.graphs = dict(graphs or {})
        self._sessions: dict[tuple[int, int], object] = {}
        self._snapshot = None

    def graph(self, size: tuple[int, int]) -> Path:
        """The graph file for H x W ``size``: the folder's, else the cache's (exported on first use)."""
        size = tuple(size)
        return self.graphs.get(size) or cached_graph(self.network, torch.zeros(1, 3, *size, device="cpu"))

    def _session_for(self, images: torch.Tensor):
        from fsad.components.backbones import ModuleSnapshot  # backbones imports this module

        snapshot = ModuleSnapshot(self.network)
        if snapshot != self._snapshot:
            if self._snapshot is not None and self.graphs:  # the given graphs hold the weights of the first call
                log.warning("the backbone's weights changed after loading its exported graph: exporting anew")
                self.graphs = {}
            self._sessions, self._snapshot = {}, snapshot
        size = tuple(images.shape[-2:])
        if size not in self._sessions:
            self._sessions[size] = self._open(self.graph(size))
        return self._sessions[size]

    def _open(self, graph: Path):
        """An ONNX Runtime session of the graph file ``graph``."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its graph-optimiser notes are not warnings to the user
        return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x H x W float32 CPU images -> the network's outputs as float32 CPU tensors."""
        session = self._session_for(images)
        outputs = session.run(None, {"images": np.ascontiguousarray(images.detach().float().numpy())})
        return [torch.from_numpy(o) for o in outputs]


class OpenVinoFeatures(OnnxFeatures):
    """``network``'s forward run by OpenVINO on the CPU at ``precision`` (``"fp32"`` or ``"bf16"``).

    The same graph files as ``OnnxFeatures`` (the cache's ONNX graph, or a detector folder's
    OpenVINO IR ``features.xml``), compiled with an explicit inference precision: OpenVINO's own
    default on a CPU with bf16 units is bf16 (about 1e-2 off eager fp32), so fp32 is asked for
    by name. Outputs are float32 either way.
    """

    runtime = "openvino"

    def __init__(self, network: nn.Module, graphs: dict[tuple[int, int], Path] | None = None, precision: str = "fp32"):
        super().__init__(network, graphs)
        check_precision("openvino", precision)
        self.precision = precision

    def _open(self, graph: Path):
        """The graph file compiled for the CPU at this precision, on torch's thread count."""
        import openvino

        core = openvino.Core()
        hint = {"fp32": "f32", "bf16": "bf16"}[self.precision]
        return core.compile_model(core.read_model(str(graph)), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x H x W float32 CPU images -> the network's outputs as float32 CPU tensors."""
        compiled = self._session_for(images)
        outputs = compiled(np.ascontiguousarray(images.detach().float().numpy()))
        return [torch.from_numpy(np.array(outputs[port], dtype=np.float32)) for port in compiled.outputs]


def graph_features(runtime: str, network: nn.Module, precision: str = "fp32",
                   graphs: dict[tuple[int, int], Path] | None = None) -> OnnxFeatures:
    """The features object of a resolved ``runtime`` (``"onnxruntime"`` or ``"openvino"``) for ``network``."""
    if runtime == "openvino":
        return OpenVinoFeatures(network, graphs, precision)
    check_precision(runtime, precision)
    return OnnxFeatures(network, graphs)


__all__ = ["OPSET", "PRECISIONS", "RUNTIMES", "OnnxFeatures", "OpenVinoFeatures", "cached_graph", "check_precision",
           "export_graph", "graph_features", "graph_key", "installed", "openvino_available", "resolve_runtime", "runtime_cache_dir"]
