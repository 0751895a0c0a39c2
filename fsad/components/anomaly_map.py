"""Turn feature-resolution distances into image-resolution anomaly maps and scores.

Follows the official RegAD evaluation (https://arxiv.org/abs/2207.07361):
bilinear upsampling of the Mahalanobis distances to the image size, a Gaussian
blur with sigma = 4 (``scipy.ndimage.gaussian_filter`` there), and the image
score is the map's maximum. The blur here runs in torch (kornia) on any device
and reproduces scipy's output, borders included.

Example:
    >>> distances = torch.rand(2, 56, 56)  # B x h x w
    >>> maps = anomaly_map(distances, (224, 224))
    >>> maps.shape, image_scores(maps).shape
    (torch.Size([2, 224, 224]), torch.Size([2]))
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


def _scipy_reflect_index(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices that pad a length-``size`` axis by ``radius`` like scipy's mode='reflect'.

    scipy's 'reflect' repeats the edge sample (d c b a | a b c d); torch's
    'reflect' does not, so the padding is built by hand. The extension is
    periodic with period 2 * size, which also covers radius > size.
    """
    index = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def anomaly_map(
    distances: torch.Tensor, image_size: tuple[int, int], sigma: float = 4.0
) -> torch.Tensor:
    """Upsamples distances to the image size and smooths them.

    Args:
        distances: B x h x w per-position anomaly distances.
        image_size: (H, W) of the output maps.
        sigma: standard deviation in output pixels of the Gaussian blur; 0
            disables it. The kernel is truncated at radius int(4 * sigma + 0.5),
            scipy's default (truncate=4), so kernel size = 2 * radius + 1.

    Returns:
        B x H x W anomaly maps on the input's device (float32 at least).

    Raises:
        ValueError: on a wrong shape, image size, or negative sigma.

    Example:
        >>> anomaly_map(torch.rand(1, 7, 7), (28, 28), sigma=0).shape
        torch.Size([1, 28, 28])
    """
    if distances.dim() != 3:
        raise ValueError(f"distances must be B x h x w, got shape {tuple(distances.shape)}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size!r}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 (0 disables the blur), got {sigma}")
    height, width = int(image_size[0]), int(image_size[1])
    dtype = torch.promote_types(distances.dtype, torch.float32)
    maps = F.interpolate(
        distances.unsqueeze(1).to(dtype), size=(height, width), mode="bilinear", align_corners=False
    )  # B x 1 x H x W
    if sigma > 0:
        radius = int(4 * sigma + 0.5)
        rows = _scipy_reflect_index(height, radius, maps.device)
        cols = _scipy_reflect_index(width, radius, maps.device)
        padded = maps[:, :, rows][:, :, :, cols]  # B x 1 x (H + 2r) x (W + 2r)
        blurred = kornia.filters.gaussian_blur2d(
            padded, (2 * radius + 1, 2 * radius + 1), (sigma, sigma)
        )  # B x 1 x (H + 2r) x (W + 2r)
        # The crop keeps only pixels whose kernel lies inside our own padding, so
        # kornia's border mode never matters.
        maps = blurred[:, :, radius : radius + height, radius : radius + width]  # B x 1 x H x W
    return maps.squeeze(1)  # B x H x W


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image-level anomaly score: the maximum of each map.

    Args:
        maps: B x H x W anomaly maps.

    Returns:
        B scores.

    Example:
        >>> image_scores(torch.tensor([[[0.0, 2.0], [1.0, 0.5]]]))
        tensor([2.])
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be B x H x W, got shape {tuple(maps.shape)}")
    return maps.flatten(1).amax(dim=1)  # B
