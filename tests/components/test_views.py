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


def test_non_square_views_keep_the_shape_and_quarter_turns_are_resized_back():
    images = torch.zeros(1, 3, 32, 80)  # H x W = 32 x 80
    images[..., :8, :] = 1.0  # a bright top band: a quarter turn puts it on the left (k = 1) or right (k = 3)
    views = support_views(images)
    assert views.shape == (1, 22, 3, 32, 80)
    assert torch.equal(views[0, 20], images[0].flip(-1).flip(-2))  # 180 degrees needs no resize
    left, right = views[0, 19, 0, :, :20].mean(), views[0, 19, 0, :, -20:].mean()
    assert left > 0.9 and right < 0.1  # k = 1 (counter-clockwise): the top band is now the left band
    assert views[0, 21, 0, :, -20:].mean() > 0.9


def _counting_extract(calls: list[int]):
    """A fake extractor: per-view mean colour as 22 x 3 x 1 x 1 'features', counting its calls."""
    def extract(views: torch.Tensor) -> torch.Tensor:
        calls.append(len(views))
        return views.mean(dim=(2, 3), keepdim=True)
    return extract


def test_view_features_are_computed_once_per_image_and_match_a_fresh_computation():
    from fsad.components.views import SupportViewFeatures

    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    network, calls = torch.nn.Linear(2, 2), []
    cache = SupportViewFeatures()
    first = cache(images[:2], network, _counting_extract(calls))
    again = cache(images[[1, 2]], network, _counting_extract(calls))
    assert calls == [22, 22, 22]  # image 1 came from the store
    fresh = support_views(images.float() / 255).mean(dim=(3, 4), keepdim=True)  # 3 x 22 x 3 x 1 x 1
    assert torch.equal(first, fresh[:2].flatten(0, 1))
    assert torch.equal(again, fresh[1:].flatten(0, 1))


def test_view_features_are_dropped_when_the_network_or_settings_change():
    from fsad.components.views import SupportViewFeatures

    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    network, calls = torch.nn.Linear(2, 2), []
    cache = SupportViewFeatures()
    extract = _counting_extract(calls)
    cache(images, network, extract)
    with torch.no_grad():
        network.weight.add_(1)  # an in-place update (optimiser step)
    cache(images, network, extract)
    network.load_state_dict(torch.nn.Linear(2, 2).state_dict())
    cache(images, network, extract)
    network.bias.data = torch.zeros(2)  # a replaced storage
    cache(images, network, extract)
    cache(images, torch.nn.Linear(2, 2), extract)  # another network
    cache(images, network, extract, settings="other")
    cache(images, network, extract, settings="other")  # unchanged: from the store
    assert len(calls) == 6


def test_view_feature_store_is_bounded():
    from fsad.components.views import SupportViewFeatures

    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    per_image = 22 * 3 * 4  # 22 x 3 x 1 x 1 float32
    calls: list[int] = []
    cache = SupportViewFeatures(max_bytes=2 * per_image)
    cache(images, torch.nn.Linear(2, 2), _counting_extract(calls))
    assert len(cache._store) == 2 and cache._bytes == 2 * per_image
