"""RegAD's test-time path: view features reused across support sets give the same Gaussian."""

from __future__ import annotations

import pytest
import torch

from fsad.components.backbones import build_backbone
from fsad.components.gaussian import fit_gaussian, mahalanobis
from fsad.components.views import support_views
from fsad.config import RegADConfig
from fsad.methods.regad.detector import RegADMethod, extract_features, fit_support
from fsad.methods.regad.network import RegAD


def _model() -> RegAD:
    torch.manual_seed(0)
    model = RegAD(build_backbone("mobilenet_v2", pretrained=False), (32, 32))
    for stn in model.stns:  # STNs away from the identity, so registration matters
        torch.nn.init.normal_(stn.regressor[-1].weight, std=0.01)
    return model.eval()


def _support(k: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (k, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)


CONFIG = RegADConfig(backbone="mobilenet_v2", image_size=32, pretrained=False, device="cpu")


def test_reused_view_features_give_the_gaussian_of_a_fresh_fit():
    model, support = _model(), _support()
    detector = RegADMethod(model, CONFIG)
    detector.fit(support[:2])
    detector.fit(support[1:])  # image 1 from the store
    fresh = fit_support(detector.inference_network(), support[1:], CONFIG, "cpu")
    assert torch.equal(detector.gaussian.mean, fresh.mean) and torch.equal(detector.gaussian.factor, fresh.factor)
    # The old path (the network as it is, all 22K views in batches of 32, across images) agrees
    # within float32 rounding.
    views = support_views(support[1:].float() / 255).flatten(0, 1)  # 44 x 3 x 32 x 32
    before = fit_gaussian(extract_features(model, views, "cpu"), eps=CONFIG.eps)
    assert torch.allclose(detector.gaussian.mean, before.mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(detector.gaussian.precision, before.precision, rtol=1e-4, atol=1e-3)


def test_no_stale_view_features_after_the_network_changes():
    model, support = _model(), _support(2)
    detector = RegADMethod(model, CONFIG)
    detector.fit(support)
    stale = detector.gaussian.mean.clone()
    other = _model()
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.mul_(1.5)
    detector.model.load_state_dict(other.state_dict())  # e.g. load_state of another checkpoint
    detector.fit(support)
    fresh = fit_support(RegADMethod(other, CONFIG).inference_network(), support, CONFIG, "cpu")
    assert not torch.equal(detector.gaussian.mean, stale)
    assert torch.equal(detector.gaussian.mean, fresh.mean)


def test_channels_last_features_score_like_contiguous_ones():
    model, support = _model(), _support()
    features = extract_features(model, support, "cpu")  # 3 x D x 8 x 8
    assert features.is_contiguous(memory_format=torch.channels_last)
    gaussian = fit_support(model, support, CONFIG, "cpu")
    assert torch.equal(mahalanobis(features, gaussian), mahalanobis(features.contiguous(), gaussian))


def test_one_support_image_without_views_is_refused_naming_why():
    from fsad.methods.regad.checkpoint import build_model

    config = RegADConfig(pretrained=False, image_size=32, device="cpu", augment_support=False)
    detector = RegADMethod(build_model(config), config, name="no_views")
    with pytest.raises(ValueError, match="no_views needs K >= 2 support images, got 1: without the 22 support views"):
        detector.fit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_inference_network_is_channels_last_and_embeds_like_the_plain_network():
    model, images = _model(), _support(4)
    detector = RegADMethod(model, CONFIG)
    network = detector.inference_network()  # folded batch norms, channels-last weights
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in network.parameters() if p.dim() == 4)
    expected = model.registered_features(images.float() / 255)  # the unfolded network, contiguous input
    torch.testing.assert_close(detector.embed(images)[0], expected, rtol=1e-4, atol=1e-5)
