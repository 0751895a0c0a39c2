"""Synthesised anomalies for training on categories that have no defect masks.

Methods that learn from anomalies of the training categories (ResAD) use the real
defective test images and masks where a category has them; elsewhere they get anomalies
made from normal images here, in the spirit of DRAEM (https://arxiv.org/abs/2108.07610)
and CutPaste (https://arxiv.org/abs/2104.04015): inside a random blob (a union of
ellipses), the image is replaced by a blend of one of
- a texture crop (from ``../shared/datasets/dtd-mini`` or any folder of images),
- a patch cut from elsewhere in the same image (cut-and-paste),
- coloured noise;
and (``kinds`` asks for it) a thin scratch: a bent line 1-3 px wide, darker or brighter.
The mask is exactly the blob (or the line): the only pixels that may change.

Example:
    >>> synth = AnomalySynthesizer(textures_from_folder(DTD_MINI_DIR, 64, limit=50), seed=0)
    >>> image, mask = synth(normal)  # 3 x S x S uint8, S x S float {0, 1}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fsad.data.mvtec import IMAGE_SUFFIXES, as_hw, read_image

KINDS = ("texture", "cutpaste", "noise")
SCRATCH = "scratch"


def textures_from_folder(folder: str | Path, size: int | tuple[int, int], limit: int | None = None, seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` images found under ``folder`` (recursively), resized to ``size`` (a side or (H, W)): T x 3 x H x W uint8.

    The files are sorted and a seeded subset is taken, so the texture pool is reproducible.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"fsad/data/synthesis.py: no texture image under {folder}; "
                                "point it at ../shared/datasets/dtd-mini or another image folder")
    if limit is not None and limit < len(files):
        keep = np.random.default_rng(seed).choice(len(files), limit, replace=False)
        files = [files[i] for i in sorted(keep)]
    return torch.stack([(read_image(f, size) * 255).round().to(torch.uint8) for f in files])


def random_scratch(size: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An H x W boolean mask (``size``: a side or (H, W)): a bent line (a quadratic curve) 1-3 px wide, 20-60 % of
    the short side long."""
    height, width = as_hw(size)
    start = rng.uniform(0.15 * np.array([height, width]), 0.85 * np.array([height, width]), 2)  # (y, x)
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.6) * min(height, width)
    direction = np.array([np.sin(angle), np.cos(angle)])
    bend = rng.normal(0, 0.1 * length) * np.array([-direction[1], direction[0]])
    t = np.linspace(0, 1, max(8, int(2 * length)))[:, None]
    points = start + t * length * direction + 4 * t * (1 - t) * bend  # n x 2 (y, x)
    radius = rng.uniform(0.5, 1.5)
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for y, x in points:
        lo_y, hi_y, lo_x, hi_x = (max(0, int(y - 2)), min(height, int(y + 3)), max(0, int(x - 2)), min(width, int(x + 3)))
        near = (yy[lo_y:hi_y, lo_x:hi_x] - y) ** 2 + (xx[lo_y:hi_y, lo_x:hi_x] - x) ** 2 <= radius**2
        mask[lo_y:hi_y, lo_x:hi_x] |= near
    y, x = np.clip(points[len(points) // 2].astype(int), 0, [height - 1, width - 1])
    mask[y, x] = True  # never empty
    return mask


def random_blob(size: int | tuple[int, int], rng: np.random.Generator, max_fraction: float = 0.2) -> np.ndarray:
    """An H x W boolean mask (``size``: a side or (H, W)): the union of 1-3 random ellipses, never empty; their
    axes scale with the image's sides."""
    height, width = as_hw(size)
    sides = np.array([height, width])
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    cy, cx = rng.uniform(0.2 * sides, 0.8 * sides, 2)
    for _ in range(rng.integers(1, 4)):
        ry, rx = rng.uniform(0.04, np.sqrt(max_fraction / np.pi)) * height, rng.uniform(0.04, np.sqrt(max_fraction / np.pi)) * width
        oy, ox = rng.normal(0, 0.05 * sides, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - (cy + oy), xx - (cx + ox)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
    mask[int(cy), int(cx)] = True  # a blob is never empty, even when every ellipse is tiny
    return mask


class AnomalySynthesizer:
    """Paste textures, patches of the image itself, or noise into a random blob.

    Args:
        textures: T x 3 x S x S uint8 texture pool (at the image size); None disables
            the ``texture`` kind.
        seed: Seed of every random choice; calls draw one after another from it.
        opacity: Range of the blend factor of the pasted content (1: fully replaced).
        kinds: The kinds drawn from (default: ``KINDS``, less ``texture`` without textures);
            ``scratch`` only when named here.
        max_fraction: Largest share of the image a blob's ellipse covers.
    """

    def __init__(self, textures: torch.Tensor | None = None, seed: int = 0, opacity: tuple[float, float] = (0.6, 1.0),
                 kinds: tuple[str, ...] | None = None, max_fraction: float = 0.2):
        self.textures = textures
        self.rng = np.random.default_rng(seed)
        self.opacity = opacity
        self.max_fraction = max_fraction
        self.kinds = kinds or (KINDS if textures is not None else KINDS[1:])
        unknown = sorted(set(self.kinds) - {*KINDS, SCRATCH})
        if unknown or ("texture" in self.kinds and textures is None):
            raise ValueError(f"fsad/data/synthesis.py: kinds {list(self.kinds)}: unknown {unknown} or texture without "
                             f"textures; choose from {[*KINDS, SCRATCH]}")

    def __call__(self, image: torch.Tensor, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
        """One anomalous version of ``image`` (3 x H x W uint8), of ``kind`` (default: drawn from ``kinds``).

        Returns:
            The image (3 x H x W uint8), its mask (H x W float in {0, 1}) and the kind used.
        """
        _, height, width = image.shape
        size = min(height, width)
        if kind is not None and kind not in self.kinds:
            raise ValueError(f"fsad/data/synthesis.py: kind {kind!r} is not one of {list(self.kinds)}")
        if kind is None and SCRATCH in self.kinds:  # the kind decides the mask's shape: draw it first
            kind = str(self.rng.choice(self.kinds))
        if kind == SCRATCH:
            mask = torch.from_numpy(random_scratch((height, width), self.rng))  # H x W bool
        else:
            mask = torch.from_numpy(random_blob((height, width), self.rng, self.max_fraction))  # H x W bool
        kind = kind or str(self.rng.choice(self.kinds))
        original = image.float()  # 3 x H x W
        if kind == SCRATCH:
            # Darker or brighter than the image, in the image's own hue: a line of the same colour, shifted.
            content = (original + (1 if self.rng.random() < 0.5 else -1) * float(self.rng.uniform(60, 140))).clamp(0, 255)
        elif kind == "texture":
            content = self.textures[self.rng.integers(len(self.textures))].float()
            if tuple(self.textures.shape[-2:]) != (height, width):
                raise ValueError(f"fsad/data/synthesis.py: textures are {tuple(self.textures.shape[-2:])} px, images "
                                 f"{(height, width)} px; load them at the image size")
        elif kind == "cutpaste":
            shift = self.rng.integers(size // 4, 3 * size // 4, 2)  # by a quarter to 3 quarters of the short side
            content = torch.roll(original, shifts=(int(shift[0]), int(shift[1])), dims=(1, 2))
            content = content.flip(2) if self.rng.random() < 0.5 else content
        else:
            colour = torch.from_numpy(self.rng.uniform(0, 255, (3, 1, 1))).float()
            content = (colour + torch.from_numpy(self.rng.normal(0, 40, (3, height, width))).float()).clamp(0, 255)
        alpha = float(self.rng.uniform(*self.opacity))
        blended = (1 - alpha) * original + alpha * content  # 3 x H x W
        out = torch.where(mask, blended.round(), original).to(torch.uint8)
        return out, mask.float(), kind
