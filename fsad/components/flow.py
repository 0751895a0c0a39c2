"""A small normalising flow of affine coupling layers (RealNVP, Dinh et al., ICLR 2017).

Paper: https://arxiv.org/abs/1605.08803. Each coupling layer keeps the first half of a
vector and scales and shifts the second half by functions of the first; a fixed random
permutation between layers lets every dimension be transformed. Scales are soft-clamped
(``clamp * tanh(s / clamp)``) for stable training, and the last layer of every scale/shift
net starts at zero, so an untrained flow is a permutation (log-determinant 0). ResAD
estimates the density of its constrained residual features with such a flow.

Example:
    >>> flow = Flow(dim=24, blocks=4)
    >>> log_p = flow.log_prob(torch.randn(100, 24))  # 100 exact log-densities
    >>> torch.allclose(flow.inverse(flow(torch.randn(5, 24))[0]), ...)  # invertible
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AffineCoupling(nn.Module):
    """``y1 = x1; y2 = x2 * exp(s(x1)) + t(x1)``, with log|det J| = sum(s(x1)).

    Args:
        dim: Vector size (>= 2).
        hidden: Width of the scale/shift network.
        clamp: Bound of the log-scales.
    """

    def __init__(self, dim: int, hidden: int, clamp: float = 2.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"fsad/components/flow.py: a coupling layer needs dim >= 2, got {dim}")
        self.split, self.clamp = dim // 2, clamp
        self.net = nn.Sequential(nn.Linear(self.split, hidden), nn.ReLU(), nn.Linear(hidden, 2 * (dim - self.split)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(kept).chunk(2, dim=-1)  # B x (dim - split) each
        return self.clamp * torch.tanh(log_scale / self.clamp), shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x dim -> (B x dim outputs, B log-determinants)."""
        kept, moved = x[:, : self.split], x[:, self.split :]
        log_scale, shift = self._scale_shift(kept)
        return torch.cat([kept, moved * log_scale.exp() + shift], dim=1), log_scale.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        kept, moved = y[:, : self.split], y[:, self.split :]
        log_scale, shift = self._scale_shift(kept)
        return torch.cat([kept, (moved - shift) * (-log_scale).exp()], dim=1)


class Flow(nn.Module):
    """Coupling layers with fixed seeded permutations in between; base density N(0, I).

    Args:
        dim: Vector size.
        blocks: Coupling layers.
        hidden: Width of their networks (default: 2 * dim).
        seed: Seed of the permutations.
    """

    def __init__(self, dim: int, blocks: int = 4, hidden: int | None = None, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.couplings = nn.ModuleList(AffineCoupling(dim, hidden or 2 * dim) for _ in range(blocks))
        self.register_buffer("permutations", torch.stack([torch.randperm(dim, generator=generator) for _ in range(blocks)]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x dim -> (B x dim latent vectors, B log|det d latent / d x|)."""
        log_det = x.new_zeros(x.shape[0])
        for permutation, coupling in zip(self.permutations, self.couplings):
            x, step = coupling(x[:, permutation])
            log_det = log_det + step
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for permutation, coupling in zip(reversed(self.permutations), reversed(self.couplings)):
            z = coupling.inverse(z)[:, torch.argsort(permutation)]
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of each row of x (B x dim) by the change of variables."""
        z, log_det = self(x)
        return -0.5 * (z**2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + log_det
