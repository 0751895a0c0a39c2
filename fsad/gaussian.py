"""Per-position multivariate Gaussian of feature maps and its Mahalanobis distance.

RegAD (https://arxiv.org/abs/2207.07361) scores a test image the PaDiM way
(https://arxiv.org/abs/2011.08785): at every feature-map position it fits a
Gaussian to the support features and measures the test feature's Mahalanobis
distance to it. The official code loops over positions in Python with NumPy;
here every position of a chunk is handled by one batched linear-algebra call.

Example:
    >>> support = torch.randn(44, 8, 4, 4)  # N x C x H x W
    >>> gaussian = fit_gaussian(support)
    >>> mahalanobis(torch.randn(3, 8, 4, 4), gaussian).shape
    torch.Size([3, 4, 4])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Working-memory budgets that pick the default chunk sizes; small enough for a
# laptop, large enough that per-chunk overhead is negligible.
_FIT_BUDGET_BYTES = 256 * 2**20
_SCORE_BUDGET_BYTES = 128 * 2**20


@dataclass
class Gaussian:
    """A Gaussian per feature-map position.

    Attributes:
        mean: P x C means, P = H * W positions in row-major order.
        precision: P x C x C inverses of (unbiased covariance + eps * I).
        size: (H, W) of the feature map the Gaussian was fitted on.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    size: tuple[int, int]


def _check_chunk(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def fit_gaussian(
    features: torch.Tensor, eps: float = 0.01, chunk_positions: int | None = None
) -> Gaussian:
    """Fits one Gaussian per position of support feature maps.

    The covariance is unbiased (divides by N - 1, as ``np.cov`` in the official
    RegAD code) plus ``eps * I`` so it is invertible with few samples. It is
    computed and inverted (Cholesky) in float64 one chunk of positions at a
    time, so float64 temporaries stay small even for C = 448 at 56 x 56, where
    the float32 precision alone takes 2.5 GB.

    Args:
        features: N x C x H x W support features, N >= 2.
        eps: ridge added to the covariance diagonal, >= 0.
        chunk_positions: positions per chunk; None picks one from a ~256 MiB
            budget of float64 temporaries.

    Returns:
        The Gaussian on ``features.device``, stored in float32 (float64 if the
        features are float64).

    Raises:
        ValueError: on a wrong shape, N < 2, eps < 0, a bad chunk size, or a
            covariance that is not positive definite (raise ``eps``).

    Example:
        >>> g = fit_gaussian(torch.randn(10, 4, 2, 3))
        >>> g.mean.shape, g.precision.shape, g.size
        (torch.Size([6, 4]), torch.Size([6, 4, 4]), (2, 3))
    """
    if features.dim() != 4:
        raise ValueError(f"features must be N x C x H x W, got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    if n < 2:
        raise ValueError(f"need N >= 2 support samples for an unbiased covariance, got N={n}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _check_chunk("chunk_positions", chunk_positions)
    p = h * w
    if chunk_positions is None:
        per_position = 8 * (3 * c * c + 2 * n * c)  # cov, factor, inverse, samples, centred
        chunk_positions = max(1, _FIT_BUDGET_BYTES // per_position)

    store = torch.promote_types(features.dtype, torch.float32)
    flat = features.reshape(n, c, p)  # N x C x P
    mean = torch.empty(p, c, dtype=store, device=features.device)
    precision = torch.empty(p, c, c, dtype=store, device=features.device)
    eye = eps * torch.eye(c, dtype=torch.float64, device=features.device)
    for start in range(0, p, chunk_positions):
        stop = min(start + chunk_positions, p)
        x = flat[:, :, start:stop].to(torch.float64).permute(2, 0, 1)  # p x N x C
        mu = x.mean(dim=1, keepdim=True)  # p x 1 x C
        centred = x - mu  # p x N x C
        cov = centred.transpose(1, 2) @ centred / (n - 1) + eye  # p x C x C
        factor, info = torch.linalg.cholesky_ex(cov)  # p x C x C lower-triangular
        if bool((info != 0).any()):
            bad = start + int(torch.nonzero(info)[0])
            raise ValueError(
                f"covariance at position {bad} is not positive definite (eps={eps}); "
                "raise eps or use more support samples"
            )
        mean[start:stop] = mu.squeeze(1).to(store)
        precision[start:stop] = torch.cholesky_inverse(factor).to(store)
    return Gaussian(mean=mean, precision=precision, size=(h, w))


def mahalanobis(
    features: torch.Tensor, gaussian: Gaussian, chunk_size: int | None = None
) -> torch.Tensor:
    """Mahalanobis distance of every feature vector to its position's Gaussian.

    Computes ``sqrt((x - m)^T S^-1 (x - m))`` for all positions of a chunk with
    one batched matmul. The Gaussian may live on another device (e.g. CPU RAM
    while features are on a GPU): each chunk is moved to the features' device.

    Args:
        features: B x C x H x W test features matching the Gaussian's C, H, W.
        gaussian: the fitted per-position Gaussian.
        chunk_size: positions per chunk; None picks one from a ~128 MiB budget.

    Returns:
        B x H x W distances on ``features.device``, in the promoted dtype of the
        features and the Gaussian (float32 at least).

    Raises:
        ValueError: if the shape does not match the Gaussian or the chunk size is bad.

    Example:
        >>> g = fit_gaussian(torch.randn(10, 4, 2, 3))
        >>> mahalanobis(torch.randn(5, 4, 2, 3), g).shape
        torch.Size([5, 2, 3])
    """
    p, c = gaussian.mean.shape
    expected = (c, *gaussian.size)
    if features.dim() != 4 or tuple(features.shape[1:]) != expected:
        raise ValueError(
            f"features must be B x {expected[0]} x {expected[1]} x {expected[2]} to match "
            f"the Gaussian, got shape {tuple(features.shape)}"
        )
    _check_chunk("chunk_size", chunk_size)
    b = features.shape[0]
    dtype = torch.promote_types(
        torch.promote_types(features.dtype, gaussian.precision.dtype), torch.float32
    )
    if chunk_size is None:
        per_position = dtype.itemsize * (2 * b * c + c * c)  # delta, product, precision
        chunk_size = max(1, _SCORE_BUDGET_BYTES // per_position)

    device = features.device
    flat = features.reshape(b, c, p)  # B x C x P
    out = torch.empty(b, p, dtype=dtype, device=device)
    for start in range(0, p, chunk_size):
        stop = min(start + chunk_size, p)
        x = flat[:, :, start:stop].permute(2, 0, 1).to(dtype)  # p x B x C
        mu = gaussian.mean[start:stop].to(device=device, dtype=dtype)  # p x C
        prec = gaussian.precision[start:stop].to(device=device, dtype=dtype)  # p x C x C
        delta = x - mu.unsqueeze(1)  # p x B x C
        squared = ((delta @ prec) * delta).sum(dim=-1)  # p x B
        # Rounding can push a ~0 quadratic form slightly negative; sqrt would give NaN.
        out[:, start:stop] = squared.clamp_min(0).sqrt().T  # B x p
    return out.reshape(b, *gaussian.size)  # B x H x W
