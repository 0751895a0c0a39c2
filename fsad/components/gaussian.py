"""Per-position multivariate Gaussian of feature maps and its Mahalanobis distance.

RegAD (https://arxiv.org/abs/2207.07361) scores a test image the PaDiM way
(https://arxiv.org/abs/2011.08785): at every feature-map position it fits a
Gaussian to the support features and measures the test feature's Mahalanobis
distance to it. The official code loops over positions in Python with NumPy;
here every position of a chunk is handled by one batched linear-algebra call.

With N support samples in C channels and N < C (K = 2 gives N = 44 views against
C = 152 for MobileNetV2 or 448 for ResNet-18), the covariance is eps * I plus a
rank < N matrix, so the Woodbury identity gives the exact distance from an N x N
Cholesky instead of a C x C one. With X the N x C centred samples, d = x - m and the ridge
lambda = eps (N - 1):

    S = X^T X / (N - 1) + eps * I,   G = X X^T + lambda I = L L^T
    eps d^T S^-1 d = |d|^2 - (X d)^T G^-1 (X d) = |d - X^T a|^2 + lambda |a|^2,   a = G^-1 X d

The last form is what ``mahalanobis`` computes: it is the ridge-regression objective of d on
the samples at its minimiser a, so an error in a changes it only to second order, where the
middle form subtracts two nearly equal numbers. On MobileNetV2 features of fsad-mini's pcb
(K = 2, 4), float32 scoring of the middle form was 5e-4 - 2.2e-3 relative off a float64
reference, the last form 7e-7 - 2.3e-6. The fit stays in float64: in float32 (2.3x faster
Gram) it matched on those features but was off by a factor 2.7 on features confined to 8 of
152 dimensions (condition number ~1e7), where the float64 fit is off by 6 %.
The fit stores X and the N x N L^-1 apart: forming L^-1 X there would be a triangular solve
with C right-hand sides, which LAPACK runs batched at ~4 GFLOP/s on one core (1.35 s of a
2.3 s fit at N = 176, C = 448 per 392 positions).

Example:
    >>> support = torch.randn(44, 8, 4, 4)  # N x C x H x W
    >>> gaussian = fit_gaussian(support)
    >>> mahalanobis(torch.randn(3, 8, 4, 4), gaussian).shape
    torch.Size([3, 4, 4])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Working-memory budgets that pick the default chunk sizes. Measured on CPU
# (C=152, 56 x 56): chunks of tens of MiB run ~2x faster than hundreds of MiB,
# as the temporaries stay closer to cache, while per-chunk overhead stays small.
_FIT_BUDGET_BYTES = 32 * 2**20
_SCORE_BUDGET_BYTES = 32 * 2**20


@dataclass
class Gaussian:
    """A Gaussian per feature-map position, stored as factors of its inverse covariance.

    Full rank: squared Mahalanobis distances are ``|F d|^2`` with ``F = L^-1``, L L^T the
    covariance. Low rank: the Woodbury form of the module docstring, from the centred
    samples X (``factor``) and the N x N ``mixing = L^-1`` of ``G = X X^T + lambda I``.

    Attributes:
        mean: P x C means, P = H * W positions in row-major order.
        factor: P x C x C L^-1 of the covariance (full rank), or P x N x C centred samples X
            (low rank).
        eps: The ridge added to the covariance diagonal.
        low_rank: Which of the two forms is stored.
        size: (H, W) of the feature map the Gaussian was fitted on.
        mixing: P x N x N L^-1 of G (low rank only, else ``None``).
    """

    mean: torch.Tensor
    factor: torch.Tensor
    eps: float
    low_rank: bool
    size: tuple[int, int]
    mixing: torch.Tensor | None = None

    @property
    def ridge(self) -> float:
        """lambda = eps (N - 1), the ridge of the low-rank form's Gram matrix G."""
        return self.eps * (self.factor.shape[1] - 1)

    @property
    def precision(self) -> torch.Tensor:
        """P x C x C inverse covariances (built on demand; scoring never needs them)."""
        if not self.low_rank:
            return self.factor.transpose(1, 2) @ self.factor  # P x C x C
        whitening = self.mixing @ self.factor  # P x N x C: L^-1 X
        eye = torch.eye(self.mean.shape[1], dtype=whitening.dtype, device=whitening.device)
        return (eye - whitening.transpose(1, 2) @ whitening) / self.eps  # P x C x C

    def squared_distance(self, delta: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Squared distances of p x B x C deviations at positions [start, stop) -> p x B."""
        factor = self.factor[start:stop].to(device=delta.device, dtype=delta.dtype)  # p x R x C
        if not self.low_rank:
            return (delta @ factor.transpose(1, 2)).square().sum(-1)  # p x B
        mixing = self.mixing[start:stop].to(device=delta.device, dtype=delta.dtype)  # p x N x N
        coefficients = delta @ factor.transpose(1, 2) @ mixing.transpose(1, 2) @ mixing  # p x B x N: a = G^-1 X d
        residual = delta - coefficients @ factor  # p x B x C: d - X^T a
        return (residual.square().sum(-1) + self.ridge * coefficients.square().sum(-1)) / self.eps  # p x B


def _check_chunk(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


@contextmanager
def _lapack_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for batched small-matrix LAPACK calls on the CPU.

    Measured on 2 busy cores: batched cholesky / solve_triangular on 44 x 44 to
    152 x 152 matrices ran 10-100x slower with 2 threads than with 1 (threads
    contending over tiny per-matrix jobs); matmuls keep every thread.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cholesky(matrices: torch.Tensor, first: int, eps: float) -> torch.Tensor:
    """Lower Cholesky factors of p x M x M SPD matrices, with an error naming the position."""
    factor, info = torch.linalg.cholesky_ex(matrices)
    if bool((info != 0).any()):
        bad = first + int(torch.nonzero(info)[0])
        raise ValueError(
            f"covariance at position {bad} is not positive definite (eps={eps}); "
            "raise eps or use more support samples"
        )
    return factor


def fit_gaussian(
    features: torch.Tensor, eps: float = 0.01, chunk_positions: int | None = None
) -> Gaussian:
    """Fits one Gaussian per position of support feature maps.

    The covariance is unbiased (divides by N - 1, as ``np.cov`` in the official
    RegAD code) plus ``eps * I`` so it is invertible with few samples. It is
    factorised (Cholesky) one chunk of positions at a time, so the temporaries stay
    small even for C = 448 at 56 x 56. With N < C and eps > 0 the exact low-rank
    (Woodbury) form is used. Both are fitted in float64.

    Args:
        features: N x C x H x W support features, N >= 2.
        eps: ridge added to the covariance diagonal, >= 0.
        chunk_positions: positions per chunk; None picks one from a ~32 MiB
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
    low_rank = n < c and eps > 0
    rank = n if low_rank else c
    p = h * w
    store = torch.promote_types(features.dtype, torch.float32)
    if chunk_positions is None:
        per_position = 8 * (3 * rank * rank + 3 * n * c)  # gram/cov, factor, inverse, samples, centred
        chunk_positions = max(1, _FIT_BUDGET_BYTES // per_position)

    flat = features.reshape(n, c, p)  # N x C x P
    mean = torch.empty(p, c, dtype=store, device=features.device)
    factor = torch.empty(p, rank, c, dtype=store, device=features.device)
    mixing = torch.empty(p, rank, rank, dtype=store, device=features.device) if low_rank else None
    eye = torch.eye(rank, dtype=torch.float64, device=features.device)
    for start in range(0, p, chunk_positions):
        stop = min(start + chunk_positions, p)
        # Contiguous: a batched matmul on the permuted view is ~3x slower on CPU.
        x = flat[:, :, start:stop].to(torch.float64).permute(2, 0, 1).contiguous()  # p x N x C
        mu = x.mean(dim=1, keepdim=True)  # p x 1 x C
        centred = x - mu  # p x N x C
        if low_rank:
            gram = centred @ centred.transpose(1, 2) + eps * (n - 1) * eye  # p x N x N
            with _lapack_threads(features.device):
                lower = _cholesky(gram, start, eps)
                mixing[start:stop] = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).to(store)  # p x N x N
            factor[start:stop] = centred.to(store)  # p x N x C
        else:
            cov = centred.transpose(1, 2) @ centred / (n - 1) + eps * eye  # p x C x C
            with _lapack_threads(features.device):
                lower = _cholesky(cov, start, eps)
                factor[start:stop] = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).to(store)  # p x C x C
        mean[start:stop] = mu.squeeze(1).to(store)
    return Gaussian(mean=mean, factor=factor, eps=eps, low_rank=low_rank, size=(h, w), mixing=mixing)


def mahalanobis(
    features: torch.Tensor, gaussian: Gaussian, chunk_size: int | None = None
) -> torch.Tensor:
    """Mahalanobis distance of every feature vector to its position's Gaussian.

    Handles all positions of a chunk with batched matmuls. The Gaussian may live
    on another device (e.g. CPU RAM while features are on a GPU): each chunk is
    moved to the features' device.

    Args:
        features: B x C x H x W test features matching the Gaussian's C, H, W.
        gaussian: the fitted per-position Gaussian.
        chunk_size: positions per chunk; None picks one from a ~32 MiB budget.

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
    rank = gaussian.factor.shape[1]
    expected = (c, *gaussian.size)
    if features.dim() != 4 or tuple(features.shape[1:]) != expected:
        raise ValueError(
            f"features must be B x {expected[0]} x {expected[1]} x {expected[2]} to match "
            f"the Gaussian, got shape {tuple(features.shape)}"
        )
    _check_chunk("chunk_size", chunk_size)
    b = features.shape[0]
    dtype = torch.promote_types(
        torch.promote_types(features.dtype, gaussian.factor.dtype), torch.float32
    )
    if chunk_size is None:
        per_position = dtype.itemsize * (3 * b * c + rank * c + rank * rank + 3 * b * rank)  # delta, residual, square, factor, mixing, products
        chunk_size = max(1, _SCORE_BUDGET_BYTES // per_position)

    device = features.device
    flat = features.reshape(b, c, p)  # B x C x P
    out = torch.empty(b, p, dtype=dtype, device=device)
    for start in range(0, p, chunk_size):
        stop = min(start + chunk_size, p)
        x = flat[:, :, start:stop].permute(2, 0, 1).to(dtype).contiguous()  # p x B x C
        mu = gaussian.mean[start:stop].to(device=device, dtype=dtype)  # p x C
        squared = gaussian.squared_distance(x - mu.unsqueeze(1), start, stop)  # p x B
        # Rounding can push a ~0 quadratic form slightly negative; sqrt would give NaN.
        out[:, start:stop] = squared.clamp_min(0).sqrt().T  # B x p
    return out.reshape(b, *gaussian.size)  # B x H x W
