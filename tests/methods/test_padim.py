import pytest
import torch

from fsad.components.gaussian import fit_gaussian, mahalanobis
from fsad.methods.base import concat_stages, to_float
from fsad.methods.padim import PaDiM, random_channels


def test_random_channels_deterministic_distinct_and_counted():
    a, b = random_channels(448, 100, seed=3), random_channels(448, 100, seed=3)
    assert torch.equal(a, b)
    assert len(a) == 100 and len(set(a.tolist())) == 100 and int(a.max()) < 448
    assert not torch.equal(a, random_channels(448, 100, seed=4))
    assert torch.equal(random_channels(10, 100, seed=0), torch.arange(10))  # capped at the total


def test_padim_is_the_gaussian_of_the_selected_channels(backbone, images):
    support, test = images
    padim = PaDiM(backbone, image_size=8, n_channels=20, sigma=0, seed=1)
    padim.fit(support)
    with torch.no_grad():
        features = lambda x: concat_stages(backbone(to_float(x)))[:, padim.channels]  # noqa: E731
        expected = mahalanobis(features(test), fit_gaussian(features(support)))
    assert padim.channels.tolist() == random_channels(sum(backbone.channels), 20, seed=1).tolist()
    assert torch.allclose(padim.predict(test).maps, expected, rtol=1e-4, atol=1e-4)


def test_padim_single_image_needs_views(backbone, images):
    support, test = images
    with pytest.raises(ValueError, match="K >= 2"):
        PaDiM(backbone, image_size=32).fit(support[:1])
    views = PaDiM(backbone, image_size=32, augment_support=True)
    views.fit(support[:1])  # 22 views: a covariance exists
    assert views.predict(test).maps.shape == (3, 32, 32)
