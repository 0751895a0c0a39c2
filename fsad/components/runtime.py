"""Test-time backbone features in a faster runtime than eager PyTorch (ONNX Runtime).

Every method's test-time features (the support views and the test images) go through a
frozen ``FeatureExtractor``; its three stage outputs are a pure function of the image, so
the same network can run in another engine. ONNX Runtime's CPU kernels compute MobileNetV2's
features 2.5-2.9x faster than eager PyTorch on one thread (issue 21's table) and agree with
eager fp32 to about 1e-6 (max abs, features up to 8): ``runtime: auto`` picks it where it is
installed and the features run on the CPU. Training always stays in PyTorch.

The exported graph depends on the network, its weights and the image size only (the batch
is a dynamic axis), so it is exported once and cached on disk under ``graph_key`` (a hash of
the architecture, the weights, the size and the exporter's version): a rerun, another
detector with the same backbone, or ``fsad predict`` reuse it; changed weights give another key. A detector
folder can carry its graph (``fsad export``), and then ``fsad predict`` needs neither the
exporter nor a network.

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

RUNTIMES = ("auto", "torch", "onnxruntime")
OPSET = 17
GRAPH_SUFFIX = ".onnx"


def runtime_cache_dir() -> Path:
    """Where exported graphs are kept: ``$FSAD_CACHE/runtime``, else ``~/.cache/fsad/runtime`` (XDG)."""
    base = os.environ.get("FSAD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fsad"
    return Path(base) / "runtime"


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(name: str, device: str) -> str:
    """The runtime that runs: ``auto`` -> ``onnxruntime`` where installed and on the CPU, else ``torch``.

    Asking for ``onnxruntime`` where it cannot run (not installed, or a GPU device) falls
    back to ``torch`` with a warning that says so; results then equal eager PyTorch's.
    """
    if name not in RUNTIMES:
        raise ValueError(f"fsad/components/runtime.py: unknown runtime {name!r}; choose from {list(RUNTIMES)}")
    on_cpu = torch.device(device).type == "cpu"
    if name == "torch" or (name == "auto" and not (on_cpu and onnxruntime_available())):
        return "torch"
    if not on_cpu:
        if name == "onnxruntime":
            warnings.warn(f"runtime onnxruntime runs on the CPU only; features on {device} use PyTorch", stacklevel=2)
        return "torch"
    if not onnxruntime_available():
        warnings.warn("runtime onnxruntime asked for but the package is not installed (pip install onnxruntime); "
                      "features use PyTorch", stacklevel=2)
        return "torch"
    return "onnxruntime"


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
        import onnxruntime

        from fsad.components.backbones import ModuleSnapshot  # backbones imports this module

        snapshot = ModuleSnapshot(self.network)
        if snapshot != self._snapshot:
            if self._snapshot is not None and self.graphs:  # the given graphs hold the weights of the first call
                log.warning("the backbone's weights changed after loading its exported graph: exporting anew")
                self.graphs = {}
            self._sessions, self._snapshot = {}, snapshot
        size = tuple(images.shape[-2:])
        if size not in self._sessions:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only: its graph-optimiser notes are not warnings to the user
            self._sessions[size] = onnxruntime.InferenceSession(str(self.graph(size)), options,
                                                                providers=["CPUExecutionProvider"])
        return self._sessions[size]

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x H x W float32 CPU images -> the network's outputs as float32 CPU tensors."""
        session = self._session_for(images)
        outputs = session.run(None, {"images": np.ascontiguousarray(images.detach().float().numpy())})
        return [torch.from_numpy(o) for o in outputs]


__all__ = ["OPSET", "RUNTIMES", "OnnxFeatures", "cached_graph", "export_graph", "graph_key", "resolve_runtime",
           "runtime_cache_dir"]
