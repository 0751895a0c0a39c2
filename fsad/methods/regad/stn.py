"""Spatial transformer networks (Jaderberg et al., NeurIPS 2015) as used by RegAD.

RegAD (https://arxiv.org/abs/2207.07361) places one STN after each backbone stage. The
localisation net regresses the parameters of a restricted affine transform (``mode``);
its last layer starts at zero weight and identity bias, so an untrained STN is the
identity.

Example:
    >>> stn = SpatialTransformer(channels=24, size=(56, 56), mode="rotation_scale")
    >>> warped, theta = stn(torch.rand(2, 24, 56, 56))  # theta: 2 x 2 x 3
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# mode -> the parameter vector of the identity transform (its length is the mode's size)
STN_MODES: dict[str, tuple[float, ...]] = {
    "affine": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "translation": (0.0, 0.0),
    "rotation": (0.0,),
    "scale": (1.0, 1.0),
    "shear": (0.0, 0.0),
    "rotation_scale": (0.0, 1.0, 1.0),
    "translation_scale": (0.0, 0.0, 1.0, 1.0),
    "rotation_translation": (0.0, 0.0, 0.0),
    "rotation_translation_scale": (0.0, 0.0, 0.0, 1.0, 1.0),
}
# The ablation without registration modules: RegAD keeps its backbone and Siamese head
# but builds no STN (every transform is the identity).
NO_STN = "none"


def check_mode(mode: str) -> str:
    if mode not in STN_MODES:
        raise ValueError(f"unknown STN mode {mode!r}; choose one of {sorted(STN_MODES)}")
    return mode


def params_to_theta(params: torch.Tensor, mode: str) -> torch.Tensor:
    """Build the 2 x 3 affine matrices of ``mode`` from its parameter vectors.

    Rotation modes follow the official RegAD code: scales multiply the cosine terms only,
    ``[[sx cos a, -sin a, tx], [sin a, sy cos a, ty]]``.

    Args:
        params: B x P parameters, P = ``len(STN_MODES[mode])``.
        mode: One of ``STN_MODES``.

    Returns:
        B x 2 x 3 matrices for ``F.affine_grid``.
    """
    check_mode(mode)
    b = params.shape[0]
    one = params.new_ones(b)
    zero = params.new_zeros(b)
    p = params.unbind(dim=1)
    if mode == "affine":
        return params.view(b, 2, 3)
    if mode == "translation":
        rows = (one, zero, p[0]), (zero, one, p[1])
    elif mode == "scale":
        rows = (p[0], zero, zero), (zero, p[1], zero)
    elif mode == "shear":
        rows = (one, p[0], zero), (p[1], one, zero)
    elif mode == "translation_scale":
        rows = (p[2], zero, p[0]), (zero, p[3], p[1])
    else:  # the rotation family: angle first, then translation and/or scale
        angle = p[0]
        tx, ty = (p[1], p[2]) if "translation" in mode else (zero, zero)
        sx, sy = (p[-2], p[-1]) if "scale" in mode else (one, one)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rows = (sx * cos, -sin, tx), (sin, sy * cos, ty)
    return torch.stack([torch.stack(r, dim=1) for r in rows], dim=1)  # B x 2 x 3


def invert_theta(theta: torch.Tensor) -> torch.Tensor:
    """Exact inverse of B x 2 x 3 affine matrices: ``[A | t] -> [A^-1 | -A^-1 t]``."""
    # Closed-form 2 x 2 inverse: exact, differentiable, and free of LAPACK (whose batched
    # inverse has hung in some MKL builds).
    a, b, c, d = theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1]  # B each
    det = a * d - b * c
    a_inv = torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / det[:, None, None]  # B x 2 x 2
    t_inv = -a_inv @ theta[:, :, 2:]  # B x 2 x 1
    return torch.cat([a_inv, t_inv], dim=2)


def compose_theta(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The single warp equal to warping by ``first`` and then by ``second``.

    ``warp(warp(x, a), b)(p) = x(a b p)``, so the product is ``a @ b`` in homogeneous form.
    """
    bottom = first.new_tensor([0.0, 0.0, 1.0]).expand(first.shape[0], 1, 3)
    a = torch.cat([first, bottom], dim=1)  # B x 3 x 3
    b = torch.cat([second, bottom], dim=1)
    return (a @ b)[:, :2]


def stn_identity_deviation(thetas: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i mean_b ||theta_i - I||_F^2`` over the stages' B x 2 x 3 transforms: 0 at the
    identity. An fsad option (``stn_identity_penalty``), not in the paper: the SimSiam loss
    alone does not penalise large transforms."""
    identity = torch.eye(2, 3, dtype=thetas[0].dtype, device=thetas[0].device)
    return sum(((theta - identity) ** 2).sum(dim=(1, 2)).mean() for theta in thetas)


def rotation_degrees(theta: torch.Tensor) -> torch.Tensor:
    """B angles in degrees of B x 2 x 3 transforms: the rotation of the closest similarity,
    ``atan2(c - b, a + d)`` of ``[[a, b], [c, d]]`` (exact for a rotation with one scale;
    with the ``rotation_scale`` family's cosine-only scales, the angle's sign and rough size)."""
    a, b, c, d = theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1]
    return torch.rad2deg(torch.atan2(c - b, a + d))


def determinant(theta: torch.Tensor) -> torch.Tensor:
    """B determinants of the 2 x 2 linear parts (the area ratio of the sampling grid)."""
    return theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0]


def warp(features: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample ``features`` (B x C x H x W) at ``theta``-transformed positions, reflecting at borders.

    Raises:
        ValueError: on the CPU, a sampling position that is NaN or infinite (a diverged
            training: ``theta`` grows past 1e20, then overflows). The CPU ``grid_sample``
            with reflection padding does not bound-check such positions: its backward pass
            writes out of bounds and the process dies with a segmentation fault (torch 2.15;
            seen with oneDNN's AVX2 kernels, e.g. on AMD EPYC without AVX-512, issue 19).
            Not checked on a GPU, where it would cost a device sync per warp.
    """
    grid = F.affine_grid(theta, list(features.shape), align_corners=False)  # B x H x W x 2
    if grid.device.type == "cpu" and not torch.isfinite(grid).all():
        raise ValueError("RegAD's STN produced a transform that is not finite (NaN or infinity): the training diverged; "
                         "lower regad.lr (or regad.stn_lr), or set regad.stn_identity_penalty")
    return F.grid_sample(features, grid, padding_mode="reflection", align_corners=False)


class SpatialTransformer(nn.Module):
    """Localisation net + warp for one feature stage.

    Args:
        channels: Channels of the feature map it transforms.
        size: (H, W) of that feature map; the fully connected layer's width depends on it.
        mode: Which transform family to regress (``STN_MODES``).
    """

    def __init__(self, channels: int, size: tuple[int, int], mode: str = "rotation_scale"):
        super().__init__()
        self.mode = check_mode(mode)
        self.localization = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(64, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        pooled = [math.ceil(math.ceil(s / 2) / 2) for s in size]  # two stride-2 max-pools
        identity = torch.tensor(STN_MODES[mode])
        self.regressor = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * pooled[0] * pooled[1], 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, identity.numel()),
        )
        # Start at the identity transform: training begins from the pretrained features.
        nn.init.zeros_(self.regressor[-1].weight)
        with torch.no_grad():
            self.regressor[-1].bias.copy_(identity)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the warped features (B x C x H x W) and their B x 2 x 3 transforms."""
        params = self.regressor(self.localization(features))  # B x P
        theta = params_to_theta(params, self.mode)
        return warp(features, theta), theta
