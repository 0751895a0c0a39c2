"""RegAD's support augmentation: 22 views of every support image.

Views, in order: original; rotations by +-11.25, +-22.5, +-33.75, +-45 degrees;
translations by (+-0.1, +-0.1) and (+-0.2, +-0.2) of the half-size (normalised
coordinates); horizontal flip; grayscale; rotations by 90, 180, 270 degrees. Geometric
views reflect at the borders, as in the official code.

Example:
    >>> views = support_views(torch.rand(2, 3, 64, 64))  # 2 x 22 x 3 x 64 x 64
"""

from __future__ import annotations

import itertools

import kornia
import torch

ROTATIONS = (-45.0, -33.75, -22.5, -11.25, 11.25, 22.5, 33.75, 45.0)
TRANSLATIONS = tuple((sx * d, sy * d) for d in (0.1, 0.2) for sx, sy in itertools.product((-1, 1), repeat=2))
NUM_VIEWS = 1 + len(ROTATIONS) + len(TRANSLATIONS) + 1 + 1 + 3


def support_views(images: torch.Tensor) -> torch.Tensor:
    """All 22 views of each image.

    Args:
        images: B x 3 x H x W in [0, 1].

    Returns:
        B x 22 x 3 x H x W.
    """
    b, _, h, w = images.shape
    if h != w:
        raise ValueError(f"support views need square images (rotations by 90 degrees), got {h}x{w}; resize to a square image_size")
    angles = images.new_tensor(ROTATIONS).repeat_interleave(b)  # 8B
    rotated = kornia.geometry.transform.rotate(images.repeat(len(ROTATIONS), 1, 1, 1), angles, padding_mode="reflection")
    # normalised offsets of the half-size -> pixels: 0.1 * (W / 2)
    shifts = images.new_tensor([(tx * w / 2, ty * h / 2) for tx, ty in TRANSLATIONS]).repeat_interleave(b, dim=0)
    translated = kornia.geometry.transform.translate(
        images.repeat(len(TRANSLATIONS), 1, 1, 1), shifts, padding_mode="reflection"
    )
    views = [
        images,
        *rotated.split(b),
        *translated.split(b),
        kornia.geometry.transform.hflip(images),
        kornia.color.rgb_to_grayscale(images).expand(-1, 3, -1, -1),
        *(torch.rot90(images, k, dims=(2, 3)) for k in (1, 2, 3)),
    ]
    return torch.stack(views, dim=1)  # B x 22 x 3 x H x W
