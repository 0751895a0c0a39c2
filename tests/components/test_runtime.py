"""Tests of fsad/components/runtime.py: ONNX Runtime features equal eager PyTorch's, and run only where they should."""

from __future__ import annotations

import copy

import pytest
import torch

from fsad.components import runtime
from fsad.components.backbones import FeatureExtractor, build_backbone
from fsad.config import RegADConfig
from fsad.methods.registry import DETECTORS, build_detector

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def random_backbone(name: str = "mobilenet_v2", seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(name, pretrained=False).eval()


@pytest.fixture
def exports(monkeypatch) -> list[int]:
    """Counts graph exports (each costs seconds): appends 1 per export."""
    done: list[int] = []
    export = runtime.export_graph

    def counted(*args, **kwargs):
        done.append(1)
        return export(*args, **kwargs)

    monkeypatch.setattr(runtime, "export_graph", counted)
    return done


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_lite0"])
def test_onnxruntime_features_equal_eager(name):
    net = random_backbone(name)
    images = torch.rand(3, 3, 64, 96)  # batch and a non-square size other than the export example's
    with torch.no_grad():
        eager = net.eager(images)
        net.runtime = "onnxruntime"
        fast = net(torch.rand(1, 3, 32, 32)) and net(images)
    assert net._onnx is not None  # the runtime really ran
    for e, f in zip(eager, fast, strict=True):
        assert f.shape == e.shape
        torch.testing.assert_close(f, e, atol=1e-5 * max(1.0, float(e.abs().max())), rtol=1e-5)


def test_eager_where_the_runtime_cannot_serve(monkeypatch):
    """Training, gradients and non-float inputs stay in PyTorch (autograd needs them there)."""
    net = random_backbone()
    net.runtime = "onnxruntime"

    def refuse(self, images):
        raise AssertionError("onnxruntime used where eager PyTorch must run")

    monkeypatch.setattr(runtime.OnnxFeatures, "__call__", refuse)
    images = torch.rand(2, 3, 32, 32)
    net.train()(images)  # training mode
    net.eval()
    net(images.requires_grad_())  # gradients wanted with respect to the input
    with pytest.raises(AssertionError, match="onnxruntime used"), torch.no_grad():
        net(images)


def test_changed_weights_rebuild_the_session(exports, tmp_path, monkeypatch):
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path))
    net, other = random_backbone(seed=0), random_backbone(seed=1)
    net.runtime = "onnxruntime"
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        net(images)
        net.load_state_dict(other.state_dict())
        after = net(images)
        torch.testing.assert_close(after, other.eager(images), atol=1e-5, rtol=1e-5)
    assert len(exports) == 2


def test_one_export_per_weights_across_detectors(exports, tmp_path, monkeypatch):
    """The graph is cached on disk by its weights: a second detector with the same backbone does not export."""
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for _ in range(2):
            net = random_backbone()
            net.runtime = "onnxruntime"
            net(images)
    assert len(exports) == 1
    assert len(list((tmp_path / "runtime").glob("*.onnx"))) == 1


def test_deepcopy_and_pickle_drop_the_session():
    net = random_backbone()
    net.runtime = "onnxruntime"
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 32))
    copied = copy.deepcopy(net)
    assert "_onnx" not in copied.__dict__ and copied.runtime == "onnxruntime"


def test_auto_falls_back_to_torch_without_the_package(monkeypatch):
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert runtime.resolve_runtime("auto", "cpu") == "torch"
    with pytest.warns(UserWarning, match="not installed"):
        assert runtime.resolve_runtime("onnxruntime", "cpu") == "torch"
    assert runtime.resolve_runtime("auto", "meta") == "torch"
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: True)
    assert runtime.resolve_runtime("auto", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        runtime.resolve_runtime("tensorrt", "cpu")


# The methods on the configured CNN without a trained model (DINOv2, a ViT, always runs in PyTorch).
FEATURE_METHODS = [name for name, entry in DETECTORS.items() if entry.model_file is None and name not in ("regad_l", "anomalydino_dinov2")]


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_every_method_scores_the_same_in_both_runtimes(method, tmp_path, monkeypatch):
    """fit + predict through the registry with runtime onnxruntime vs torch: the same scores and maps."""
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path))
    torch.manual_seed(0)
    support, query = torch.rand(2, 3, 3, 32, 32).unbind()  # 3 support and 3 test images
    scores = {}
    for name in ("torch", "onnxruntime"):
        settings = RegADConfig(pretrained=False, image_size=32, device="cpu", runtime=name)
        torch.manual_seed(0)
        detector = build_detector(method, settings, {})
        with torch.no_grad():
            detector.fit(support)
            scores[name] = detector.predict(query)
        if isinstance(getattr(detector, "backbone", None), FeatureExtractor):
            assert detector.backbone.runtime == name
            assert (detector.backbone.__dict__.get("_onnx") is not None) == (name == "onnxruntime")
    torch.testing.assert_close(scores["onnxruntime"].image, scores["torch"].image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores["onnxruntime"].maps, scores["torch"].maps, rtol=1e-4, atol=1e-4)
