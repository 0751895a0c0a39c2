"""fit_gaussian / mahalanobis against plain NumPy / SciPy per-position references."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from fsad.gaussian import Gaussian, fit_gaussian, mahalanobis


@pytest.fixture
def support() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    # Correlated channels so the covariance is far from diagonal.
    mixing = torch.randn(6, 6, generator=generator)
    base = torch.randn(9, 6, 3, 4, generator=generator, dtype=torch.float64)
    return torch.einsum("dc,nchw->ndhw", mixing.double(), base) + 2.0  # N x C x H x W


def test_fit_matches_numpy_cov_per_position(support):
    eps = 0.05
    gaussian = fit_gaussian(support, eps=eps)
    n, c, h, w = support.shape
    assert gaussian.size == (h, w)
    assert gaussian.mean.dtype == torch.float64
    flat = support.numpy().reshape(n, c, h * w)
    for p in range(h * w):
        cov = np.cov(flat[:, :, p], rowvar=False) + eps * np.eye(c)
        np.testing.assert_allclose(gaussian.mean[p].numpy(), flat[:, :, p].mean(0), atol=1e-12)
        np.testing.assert_allclose(gaussian.precision[p].numpy(), np.linalg.inv(cov), rtol=1e-9, atol=1e-9)
        # precision @ covariance must be the identity.
        np.testing.assert_allclose(gaussian.precision[p].numpy() @ cov, np.eye(c), atol=1e-9)


def test_float32_input_stores_float32(support):
    gaussian = fit_gaussian(support.float())
    assert gaussian.mean.dtype == gaussian.precision.dtype == torch.float32
    reference = fit_gaussian(support)
    torch.testing.assert_close(gaussian.precision, reference.precision.float(), rtol=1e-4, atol=1e-4)


def test_mahalanobis_matches_scipy_loop(support):
    gaussian = fit_gaussian(support)
    test = torch.randn(5, *support.shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = mahalanobis(test, gaussian)
    b, c, h, w = test.shape
    assert got.shape == (b, h, w)
    flat = test.numpy().reshape(b, c, h * w)
    expected = np.empty((b, h * w))
    for p in range(h * w):
        for i in range(b):
            expected[i, p] = scipy_mahalanobis(flat[i, :, p], gaussian.mean[p].numpy(), gaussian.precision[p].numpy())
    np.testing.assert_allclose(got.numpy(), expected.reshape(b, h, w), rtol=1e-10)


def test_chunking_gives_identical_results(support):
    whole = fit_gaussian(support, chunk_positions=1000)
    test = support[:4] * 1.5
    for chunk in (1, 5, 12):
        part = fit_gaussian(support, chunk_positions=chunk)
        torch.testing.assert_close(part.mean, whole.mean, rtol=0, atol=0)
        torch.testing.assert_close(part.precision, whole.precision, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            mahalanobis(test, whole, chunk_size=chunk), mahalanobis(test, whole), rtol=1e-12, atol=1e-12
        )


def test_support_mean_has_zero_distance(support):
    gaussian = fit_gaussian(support)
    mean_map = support.mean(0, keepdim=True)  # 1 x C x H x W
    torch.testing.assert_close(mahalanobis(mean_map, gaussian), torch.zeros(1, 3, 4, dtype=torch.float64))


def test_shape_errors(support):
    gaussian = fit_gaussian(support)
    with pytest.raises(ValueError, match=r"B x 6 x 3 x 4.*\(2, 6, 4, 3\)"):
        mahalanobis(torch.zeros(2, 6, 4, 3), gaussian)
    with pytest.raises(ValueError, match="B x 6 x 3 x 4"):
        mahalanobis(torch.zeros(6, 3, 4), gaussian)
    with pytest.raises(ValueError, match="N x C x H x W"):
        fit_gaussian(torch.zeros(4, 6, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        fit_gaussian(support[:1])
    with pytest.raises(ValueError, match="chunk_positions"):
        fit_gaussian(support, chunk_positions=0)


def test_singular_covariance_without_eps_is_reported():
    # 3 samples in 6 dimensions: the covariance has rank 2.
    with pytest.raises(ValueError, match="raise eps"):
        fit_gaussian(torch.randn(3, 6, 2, 2, dtype=torch.float64), eps=0.0)


def test_float32_scoring_matches_float64(support):
    gaussian = fit_gaussian(support)
    low = Gaussian(gaussian.mean.float(), gaussian.precision.float(), gaussian.size)
    got = mahalanobis(support[:2].float(), low)
    assert got.dtype == torch.float32 and got.device == support.device
    torch.testing.assert_close(got, mahalanobis(support[:2], gaussian).float(), rtol=1e-4, atol=1e-4)
