import pytest
import torch
import torch.nn.functional as F

from fsad.methods.regad.stn import STN_MODES, SpatialTransformer, compose_theta, invert_theta, params_to_theta, warp

# A clearly non-identity transform of each mode: identity parameters plus these offsets.
OFFSETS = {
    "affine": (0.08, -0.1, 0.05, 0.12, -0.06, -0.07),
    "translation": (0.1, -0.08),
    "rotation": (0.3,),
    "scale": (0.1, -0.1),
    "shear": (0.15, -0.1),
    "rotation_scale": (0.3, 0.1, -0.1),
    "translation_scale": (0.1, -0.08, 0.1, -0.1),
    "rotation_translation": (0.3, 0.1, -0.08),
    "rotation_translation_scale": (0.3, 0.1, -0.08, 0.1, -0.1),
}
IDENTITY = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])


def smooth_images(b=2, c=3, size=64):
    # low-frequency content keeps interpolation error small, so a round trip can be compared
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(b, c, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)


def theta_of(mode):
    params = torch.tensor(STN_MODES[mode]) + torch.tensor(OFFSETS[mode])
    return params_to_theta(params[None], mode)


def test_every_mode_has_offsets():
    assert set(OFFSETS) == set(STN_MODES)


@pytest.mark.parametrize("mode", sorted(STN_MODES))
def test_identity_at_init(mode):
    torch.manual_seed(0)
    stn = SpatialTransformer(channels=8, size=(20, 20), mode=mode).eval()
    x = torch.randn(3, 8, 20, 20)
    out, theta = stn(x)
    assert torch.allclose(theta, IDENTITY.expand(3, 2, 3), atol=1e-7)
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("mode", sorted(STN_MODES))
def test_identity_parameters_give_identity_matrix(mode):
    theta = params_to_theta(torch.tensor(STN_MODES[mode])[None], mode)
    assert torch.allclose(theta, IDENTITY, atol=1e-7)


@pytest.mark.parametrize("mode", sorted(STN_MODES))
def test_transform_is_not_identity(mode):
    assert (theta_of(mode) - IDENTITY).abs().max() > 0.05


@pytest.mark.parametrize("mode", sorted(STN_MODES))
def test_inverse_undoes_forward_away_from_borders(mode):
    x = smooth_images()
    theta = theta_of(mode).expand(2, 2, 3)
    back = warp(warp(x, theta), invert_theta(theta))
    inner = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert (back[inner] - x[inner]).abs().max() < 0.02
    # the transform itself moves content, so the check above is not trivially true
    assert (warp(x, theta)[inner] - x[inner]).abs().max() > 0.05


def test_inverse_matrix_is_exact():
    theta = theta_of("affine")
    assert torch.allclose(compose_theta(theta, invert_theta(theta)), IDENTITY, atol=1e-6)


def test_compose_equals_two_warps():
    x = smooth_images()
    a, b = theta_of("rotation_scale"), theta_of("translation")
    two = warp(warp(x, a.expand(2, 2, 3)), b.expand(2, 2, 3))
    one = warp(x, compose_theta(a, b).expand(2, 2, 3))
    inner = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert (two[inner] - one[inner]).abs().max() < 0.02


def test_rotation_scale_matches_official_formula():
    a, sx, sy = 0.4, 1.2, 0.8
    theta = params_to_theta(torch.tensor([[a, sx, sy]]), "rotation_scale")[0]
    cos, sin = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
    expected = torch.tensor([[sx * cos, -sin, 0.0], [sin, sy * cos, 0.0]])
    assert torch.allclose(theta, expected)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown STN mode 'spin'"):
        SpatialTransformer(4, (8, 8), mode="spin")


def test_gradients_reach_the_localisation_net():
    torch.manual_seed(0)
    stn = SpatialTransformer(channels=4, size=(16, 16))
    out, _ = stn(smooth_images(b=2, c=4, size=16))
    out.square().mean().backward()
    assert stn.regressor[-1].bias.grad.abs().sum() > 0
