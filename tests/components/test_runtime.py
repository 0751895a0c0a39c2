"""Tests of fsad/components/runtime.py: ONNX Runtime and OpenVINO features equal eager PyTorch's, bf16 only when
asked, and each runs only where it should."""

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
needs_openvino = pytest.mark.skipif(not runtime.openvino_available(), reason="openvino is not installed "
                                    "(pip install openvino): its features cannot be compared with eager PyTorch")


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


@needs_openvino
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_lite0"])
def test_openvino_fp32_features_equal_eager(name):
    """fp32 asked for by name: OpenVINO's own CPU default is bf16 where the CPU has bf16 units (1e-2 off)."""
    net = random_backbone(name)
    images = torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        eager = net.eager(images)
        net.runtime = "openvino"
        fast = net(torch.rand(1, 3, 32, 32)) and net(images)
    assert isinstance(net._onnx, runtime.OpenVinoFeatures)  # the runtime really ran
    for e, f in zip(eager, fast, strict=True):
        assert f.shape == e.shape and f.dtype == torch.float32
        torch.testing.assert_close(f, e, atol=1e-4 * max(1.0, float(e.abs().max())), rtol=1e-4)


@pytest.mark.parametrize("name", ["torch", pytest.param("openvino", marks=needs_openvino), "auto"])
def test_bf16_only_when_asked_and_never_reused_as_fp32(name):
    """precision bf16 gives bf16-rounded features (1e-3 to 1e-2 off eager fp32); set back to fp32, the
    same extractor gives fp32 features again (no bf16 session is reused)."""
    net = random_backbone()
    net.runtime = name
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        eager = net.eager(images)
        net.precision = "bf16"
        low = net(images)
        net.precision = "fp32"
        full = net(images)

    def off(features):  # the largest difference from eager fp32 relative to the stage's scale, over the stages
        return max(float((f - e).abs().max() / e.abs().max()) for f, e in zip(features, eager, strict=True))

    assert 1e-4 < off(low) < 5e-2 and all(f.dtype == torch.float32 for f in low)
    assert off(full) < 1e-5


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
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert runtime.resolve_runtime("auto", "cpu") == "torch"
    assert runtime.resolve_runtime("auto", "cpu", "bf16") == "torch"  # torch.autocast then
    for name in ("onnxruntime", "openvino"):
        with pytest.warns(UserWarning, match=rf"runtime {name} asked for but the package is not installed "
                                             rf"\(pip install {name}\); features use PyTorch"):
            assert runtime.resolve_runtime(name, "cpu") == "torch"
    assert runtime.resolve_runtime("auto", "meta") == "torch"
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    assert runtime.resolve_runtime("auto", "cpu") == "openvino"  # fp32 to ~1e-5 as well
    assert runtime.resolve_runtime("auto", "cpu", "bf16") == "openvino"
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: True)
    assert runtime.resolve_runtime("auto", "cpu") == "onnxruntime"
    assert runtime.resolve_runtime("auto", "cpu", "bf16") == "openvino"  # ONNX Runtime has no bf16
    with pytest.warns(UserWarning, match="runtime openvino runs on the CPU only"):
        assert runtime.resolve_runtime("openvino", "meta") == "torch"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        runtime.resolve_runtime("tensorrt", "cpu")
    with pytest.raises(ValueError, match="bf16 cannot run in runtime onnxruntime"):
        runtime.resolve_runtime("onnxruntime", "cpu", "bf16")


def test_a_detector_without_openvino_runs_in_torch_and_says_so(monkeypatch):
    """runtime: openvino on a machine without the package: one warning, then eager PyTorch's numbers."""
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    torch.manual_seed(0)
    support, query = torch.rand(2, 3, 3, 32, 32).unbind()
    detector = build_detector("padim", RegADConfig(pretrained=False, image_size=32, device="cpu", runtime="openvino"))
    with pytest.warns(UserWarning, match=r"runtime openvino asked for but the package is not installed"), torch.no_grad():
        detector.fit(support)
    assert detector.backbone.runtime == "torch" and "_onnx" not in detector.backbone.__dict__
    with torch.no_grad():
        scores = detector.predict(query)
    reference = build_detector("padim", RegADConfig(pretrained=False, image_size=32, device="cpu", runtime="torch"))
    with torch.no_grad():
        reference.fit(support)
        torch.testing.assert_close(scores.image, reference.predict(query).image, rtol=1e-5, atol=1e-5)


def test_config_refuses_bf16_in_onnxruntime():
    with pytest.raises(ValueError, match="precision: bf16 cannot run in runtime onnxruntime"):
        RegADConfig(runtime="onnxruntime", precision="bf16")
    assert RegADConfig(runtime="auto", precision="bf16").precision == "bf16"


# The methods on the configured CNN without a trained model (DINOv2, a ViT, always runs in PyTorch).
FEATURE_METHODS = [name for name, entry in DETECTORS.items() if entry.model_file is None and name not in ("regad_l", "anomalydino_dinov2")]


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_every_method_scores_the_same_in_both_runtimes(method, tmp_path, monkeypatch):
    """fit + predict through the registry with runtime onnxruntime (and openvino) vs torch: the same scores and maps."""
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path))
    torch.manual_seed(0)
    support, query = torch.rand(2, 3, 3, 32, 32).unbind()  # 3 support and 3 test images
    scores = {}
    for name in ("torch", "onnxruntime", *(["openvino"] if runtime.openvino_available() else [])):
        settings = RegADConfig(pretrained=False, image_size=32, device="cpu", runtime=name)
        torch.manual_seed(0)
        detector = build_detector(method, settings, {})
        with torch.no_grad():
            detector.fit(support)
            scores[name] = detector.predict(query)
        if isinstance(getattr(detector, "backbone", None), FeatureExtractor):
            assert detector.backbone.runtime == name
            assert (detector.backbone.__dict__.get("_onnx") is not None) == (name != "torch")
    for name in scores.keys() - {"torch"}:
        torch.testing.assert_close(scores[name].image, scores["torch"].image, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scores[name].maps, scores["torch"].maps, rtol=1e-4, atol=1e-4)


def test_bf16_says_where_it_does_not_apply():
    """RegAD's registered features run in fp32 PyTorch whatever precision says: the detector says so."""
    settings = RegADConfig(pretrained=False, image_size=32, device="cpu", precision="bf16")
    with pytest.warns(UserWarning, match="regad.precision bf16 applies to backbone features; untrained's features run in fp32"):
        build_detector("untrained", settings, {})
    assert build_detector("padim", settings, {}).backbone.precision == "bf16"
