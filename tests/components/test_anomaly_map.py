"""anomaly_map / image_scores against torch bilinear upsampling and scipy's gaussian_filter."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from fsad.components.anomaly_map import anomaly_map, image_scores


def test_output_shape():
    assert anomaly_map(torch.rand(3, 7, 5), (40, 30)).shape == (3, 40, 30)


def test_sigma_zero_is_plain_bilinear():
    distances = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(
        distances[:, None], size=(16, 12), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(anomaly_map(distances, (16, 12), sigma=0), expected, rtol=0, atol=0)


def test_bilinear_hand_case():
    # align_corners=False: output pixel centres at 1/4 and 3/4 of an input pixel.
    got = anomaly_map(torch.tensor([[[0.0, 4.0]]]), (1, 4), sigma=0)
    torch.testing.assert_close(got, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))


def test_blur_of_delta_matches_scipy():
    delta = np.zeros((64, 64))
    delta[30, 33] = 1.0
    got = anomaly_map(torch.from_numpy(delta)[None], (64, 64), sigma=4.0)[0].numpy()
    expected = gaussian_filter(delta, sigma=4.0)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert got.sum() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("sigma", [1.5, 4.0])
def test_blur_matches_scipy_including_borders(sigma):
    # Small image: the kernel (radius 16 at sigma 4) is wider than the image.
    image = np.random.default_rng(0).random((2, 12, 20))
    got = anomaly_map(torch.from_numpy(image), (12, 20), sigma=sigma).numpy()
    expected = np.stack([gaussian_filter(m, sigma=sigma) for m in image])
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_upsample_then_blur_matches_scipy_pipeline():
    distances = torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(1))
    upsampled = F.interpolate(
        distances[:, None], size=(56, 56), mode="bilinear", align_corners=False
    )[0, 0]
    expected = gaussian_filter(upsampled.numpy(), sigma=4)
    np.testing.assert_allclose(anomaly_map(distances, (56, 56))[0].numpy(), expected, atol=1e-5)


def test_image_score_is_max():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 0.5]], [[-1.0, -3.0], [-2.0, -0.5]]])
    torch.testing.assert_close(image_scores(maps), torch.tensor([2.0, -0.5]))


def test_errors():
    with pytest.raises(ValueError, match="B x h x w"):
        anomaly_map(torch.rand(4, 4), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        anomaly_map(torch.rand(1, 4, 4), (8, 8), sigma=-1.0)
    with pytest.raises(ValueError, match="B x H x W"):
        image_scores(torch.rand(4, 4))
