"""fit_gaussian / mahalanobis against plain NumPy / SciPy per-position references."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from fsad.components.gaussian import fit_gaussian, mahalanobis


# N = 9 > C = 6 takes the full-rank path, N = 4 < C the low-rank (Woodbury) one.
@pytest.fixture(params=[9, 4], ids=["full_rank", "low_rank"])
def support(request) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    # Correlated channels so the covariance is far from diagonal.
    mixing = torch.randn(6, 6, generator=generator)
    base = torch.randn(request.param, 6, 3, 4, generator=generator, dtype=torch.float64)
    return torch.einsum("dc,nchw->ndhw", mixing.double(), base) + 2.0  # N x C x H x W


def test_fit_matches_numpy_cov_per_position(support):
    eps = 0.05
    gaussian = fit_gaussian(support, eps=eps)
    n, c, h, w = support.shape
    assert gaussian.low_rank == (n < c)
    assert gaussian.size == (h, w)
    assert gaussian.mean.dtype == torch.float64
    flat = support.numpy().reshape(n, c, h * w)
    for p in range(h * w):
        cov = np.cov(flat[:, :, p], rowvar=False) + eps * np.eye(c)
        np.testing.assert_allclose(gaussian.mean[p].numpy(), flat[:, :, p].mean(0), atol=1e-12)
        precision = gaussian.precision[p].numpy()
        np.testing.assert_allclose(precision, np.linalg.inv(cov), rtol=1e-9, atol=1e-9)
        # precision @ covariance must be the identity.
        np.testing.assert_allclose(precision @ cov, np.eye(c), atol=1e-9)


def test_float32_input_stores_float32(support):
    gaussian = fit_gaussian(support.float())
    assert gaussian.mean.dtype == gaussian.precision.dtype == torch.float32
    reference = fit_gaussian(support)
    expected = reference.precision.float()
    torch.testing.assert_close(gaussian.precision, expected, rtol=1e-4, atol=1e-4)


def test_mahalanobis_matches_scipy_loop(support):
    gaussian = fit_gaussian(support)
    generator = torch.Generator().manual_seed(1)
    test = torch.randn(5, *support.shape[1:], generator=generator, dtype=torch.float64)
    got = mahalanobis(test, gaussian)
    b, c, h, w = test.shape
    assert got.shape == (b, h, w)
    flat = test.numpy().reshape(b, c, h * w)
    expected = np.empty((b, h * w))
    for p in range(h * w):
        for i in range(b):
            expected[i, p] = scipy_mahalanobis(
                flat[i, :, p], gaussian.mean[p].numpy(), gaussian.precision[p].numpy()
            )
    np.testing.assert_allclose(got.numpy(), expected.reshape(b, h, w), rtol=1e-10)


def test_chunking_gives_identical_results(support):
    whole = fit_gaussian(support, chunk_positions=1000)
    test = support[:4] * 1.5
    for chunk in (1, 5, 12):
        part = fit_gaussian(support, chunk_positions=chunk)
        torch.testing.assert_close(part.mean, whole.mean, rtol=0, atol=0)
        torch.testing.assert_close(part.precision, whole.precision, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            mahalanobis(test, whole, chunk_size=chunk),
            mahalanobis(test, whole),
            rtol=1e-12,
            atol=1e-12,
        )


def test_support_mean_has_zero_distance(support):
    gaussian = fit_gaussian(support)
    mean_map = support.mean(0, keepdim=True)  # 1 x C x H x W
    zeros = torch.zeros(1, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(mahalanobis(mean_map, gaussian), zeros)


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
    # float32 features give a float32 Gaussian and float32 scoring; the low-rank form
    # subtracts two large terms, so check it away from the support samples too.
    generator = torch.Generator().manual_seed(2)
    test = torch.cat([support[:2], support[:3] + torch.randn(3, *support.shape[1:], generator=generator, dtype=torch.float64)])
    got = mahalanobis(test.float(), fit_gaussian(support.float()))
    assert got.dtype == torch.float32 and got.device == support.device
    expected = mahalanobis(test, fit_gaussian(support)).float()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_low_rank_form_equals_full_form():
    generator = torch.Generator().manual_seed(3)
    support = torch.randn(5, 12, 2, 2, generator=generator, dtype=torch.float64)  # N < C
    test = torch.randn(4, 12, 2, 2, generator=generator, dtype=torch.float64)
    low = fit_gaussian(support, eps=0.01)
    # The same covariance in full-rank form: the samples three times over (N >= C),
    # spread about their mean by sqrt(scale) so that sum/(3N - 1) equals sum/(N - 1).
    n = support.shape[0]
    scale = (3 * n - 1) / (3 * (n - 1))
    mean = support.mean(0)
    full = fit_gaussian(torch.cat([support] * 3) * scale**0.5 + (1 - scale**0.5) * mean, eps=0.01)
    assert low.low_rank and not full.low_rank
    torch.testing.assert_close(full.precision, low.precision, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(mahalanobis(test, full), mahalanobis(test, low), rtol=1e-8, atol=1e-8)


def test_float32_low_rank_scoring_matches_float64_near_the_support_span():
    # Support in an 8-dimensional subspace of C = 152 plus small noise, test points near it:
    # |d|^2 / eps is ~1e3 x the squared distance, so computing eps d^2 as |d|^2 - |L^-1 X d|^2
    # in float32 loses ~3 digits; the ridge-regression form must keep 1e-4 relative.
    generator = torch.Generator().manual_seed(0)
    n, c = 44, 152
    basis = 3 * torch.randn(8, c, generator=generator, dtype=torch.float64)
    coefficients = torch.randn(n + 6, 8, 4, 4, generator=generator, dtype=torch.float64)
    features = torch.einsum("nkhw,kc->nchw", coefficients, basis)
    features = features + 0.1 * torch.randn(features.shape, generator=generator, dtype=torch.float64)
    support, test = features[:n], features[n:]  # N x C x 4 x 4, 6 x C x 4 x 4
    reference = mahalanobis(test, fit_gaussian(support))  # float64 throughout
    gaussian = fit_gaussian(support.float())
    assert gaussian.low_rank
    got = mahalanobis(test.float(), gaussian)
    assert got.dtype == torch.float32
    assert ((got.double() - reference).abs() / reference).max() < 1e-4
    # The subtraction form on the same float32 numbers misses: the fixture is a hard one.
    delta = test.float().flatten(2).permute(2, 0, 1) - gaussian.mean.unsqueeze(1)  # P x 6 x C
    whitened = delta @ (gaussian.mixing @ gaussian.factor).transpose(1, 2)  # P x 6 x N
    subtraction = ((delta.square().sum(-1) - whitened.square().sum(-1)) / gaussian.eps).clamp_min(0).sqrt()
    assert ((subtraction.T.reshape(6, 4, 4).double() - reference).abs() / reference).max() > 1e-3
