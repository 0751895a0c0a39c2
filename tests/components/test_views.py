import pytest
import torch

from fsad.components.views import NUM_VIEWS, support_views


def test_22_views_of_the_right_shape():
    images = torch.rand(2, 3, 32, 32)
    views = support_views(images)
    assert NUM_VIEWS == 22
    assert views.shape == (2, 22, 3, 32, 32)


def test_exact_views():
    images = torch.rand(2, 3, 32, 32)
    views = support_views(images)
    assert torch.equal(views[:, 0], images)
    assert torch.equal(views[:, 17], images.flip(-1))
    gray = views[:, 18]
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.allclose(gray[:, 0], 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2], atol=1e-5)
    for k in (1, 2, 3):
        assert torch.equal(views[:, 18 + k], torch.rot90(images, k, dims=(2, 3)))


def test_rotations_and_translations_move_content():
    images = torch.rand(1, 3, 32, 32)
    views = support_views(images)
    for v in range(1, 17):
        assert (views[0, v] - images[0]).abs().mean() > 0.05, f"view {v} equals the original"
    # rotation by +-45 degrees are mirror images of each other for a symmetric input
    sym = torch.zeros(1, 3, 32, 32)
    sym[..., 8:24, 14:18] = 1.0
    v = support_views(sym)
    assert torch.allclose(v[0, 1], v[0, 8].flip(-1), atol=1e-4)


def test_translation_by_a_tenth_of_the_half_size():
    # a bright column moves by 0.1 * 32 / 2 = 1.6 px, so its centre of mass shifts by that much
    images = torch.zeros(1, 3, 32, 32)
    images[..., :, 15:17] = 1.0
    views = support_views(images)
    cols = torch.arange(32.0)
    centre = lambda img: (img[0].sum(0) * cols).sum() / img[0].sum()
    shifts = sorted(abs(float(centre(views[0, v]) - centre(images[0]))) for v in range(9, 17))
    assert shifts[:4] == pytest.approx([1.6] * 4, abs=0.05)
    assert shifts[4:] == pytest.approx([3.2] * 4, abs=0.05)


def test_non_square_is_refused():
    with pytest.raises(ValueError, match="square"):
        support_views(torch.rand(1, 3, 32, 48))
