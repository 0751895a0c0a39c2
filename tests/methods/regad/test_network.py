import pytest
import torch
import torch.nn.functional as F

from fsad.components.backbones import build_backbone
from fsad.methods.regad.network import RegAD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RegAD(build_backbone("mobilenet_v2", pretrained=False), (64, 64)).eval()


def test_registered_feature_shape(model):
    feats = model.registered_features(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, sum(model.backbone.channels), 16, 16)  # the three stages concatenated


def test_untrained_registration_is_plain_backbone_features(model):
    # identity STNs: registered features = the backbone's maps, upsampled and concatenated
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone(x)
        expected = torch.cat([F.interpolate(m, size=maps[0].shape[-2:], mode="nearest") for m in maps], dim=1)
        got = model.registered_features(x)
    assert torch.allclose(got, expected, atol=1e-4)


def test_registered_features_undo_the_composed_transforms(pooling_backbone):
    torch.manual_seed(0)
    model = RegAD(pooling_backbone, (256, 256), stn_mode="rotation_translation").eval()
    smooth = torch.rand(1, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    x = F.interpolate(smooth, size=(256, 256), mode="bicubic", align_corners=True)
    with torch.no_grad():
        plain = model.registered_features(x)  # identity STNs
        for stn, params in zip(model.stns, ([0.4, 0.05, 0.0], [-0.3, 0.0, 0.1], [0.2, -0.1, 0.0])):
            stn.regressor[-1].bias.copy_(torch.tensor(params))
        warped, _ = model.transformed_features(x)
        registered = model.registered_features(x)
    inner = (slice(None), slice(None), slice(20, 44), slice(20, 44))  # away from reflected borders
    # interpolation error grows with depth (coarser maps, more warps); the inverse composed in
    # the wrong order leaves 0.034 at stage 2, a stage never brought back 0.08 or more
    tolerance = (0.01, 0.01, 0.025)
    for i in range(3):
        stage = (slice(None), slice(3 * i, 3 * i + 3), *inner[2:])
        moved = F.interpolate(warped[i], size=(64, 64), mode="nearest")[inner]
        assert (moved - plain[stage]).abs().max() > 0.05, f"stage {i + 1} was not transformed"
        assert (registered[stage] - plain[stage]).abs().max() < tolerance[i], f"stage {i + 1} not brought back"


def test_loss_trains_stn_backbone_and_heads():
    torch.manual_seed(0)
    model = RegAD(build_backbone("mobilenet_v2", pretrained=False), (64, 64)).train()
    loss = model.registration_loss(torch.rand(3, 3, 64, 64), torch.rand(3, 2, 3, 64, 64))
    assert -1.0 <= loss.item() <= 1.0
    loss.backward()
    for part in (model.stns[2].regressor[-1].bias, model.predictor[-1].weight, model.encoder[0].weight):
        assert part.grad is not None and part.grad.abs().sum() > 0
    assert next(model.backbone.parameters()).grad is not None


def test_folded_network_gives_the_same_registered_features():
    torch.manual_seed(0)
    model = RegAD(build_backbone("mobilenet_v2", pretrained=False), (32, 32)).train()
    for stn in model.stns:  # STNs away from the identity
        torch.nn.init.normal_(stn.regressor[-1].weight, std=0.01)
    for bn in model.modules():  # batch norms far from the identity, so folding is really tested
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_var.uniform_(0.5, 1.5)
            bn.running_mean.normal_(0, 0.1)
            torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    folded = model.folded()
    assert model.training  # the original is untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*folded.backbone.modules(), *folded.stns.modules()])
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = model.eval().registered_features(images), folded.registered_features(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
