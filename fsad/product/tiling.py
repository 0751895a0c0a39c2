"""Images as they come: the size ``fsad fit`` gives its detector, and tiles for large images.

Three ways to bring a product's images to the detector (``fsad fit --aspect``, ``--tile``):

- ``square``: every image squashed to ``image_size`` x ``image_size`` (fsad's way before
  ``[H, W]``): a part 2.5x wider than tall is distorted, a thin defect narrowed.
- ``keep``: the short side resized to ``image_size``, the long side in proportion to the
  support images' median aspect, rounded to ``STRIDE`` (the coarsest feature stride of
  every backbone, so no feature cell is cut off). An inspection engineer fits one product
  from one camera: its images share one size, and that size is what every image is
  scored at (an image of another aspect is resized to it).
- ``--tile N``: the image read with its short side ``N`` x ``image_size`` (never beyond
  its own size), the long side in proportion, and split into overlapping
  ``image_size`` tiles (``tile_starts``); one detector is fitted on the tiles of all
  support images together, each tile is scored alone, the maps are stitched back (mean
  over overlaps) and the image score is the highest tile's. A defect of d pixels then
  spans about N x d / (short side) x image_size model pixels instead of d / (short side) x
  image_size: N times as many feature cells.

``TiledDetector`` is a ``Detector`` of the whole (H, W) image, so the threshold's
calibration and ``fsad predict`` use it as any other; ``fsad predict`` rebuilds it from the
``tiling`` entry that ``fsad fit`` writes into ``detector.json``.

Example:
    >>> tiled = TiledDetector(build_detector("padim_views", RegADConfig(image_size=128)), (256, 640))
    >>> tiled.fit(support)  # K x 3 x 256 x 640: 3 x 7 tiles of 128 x 128 each
    >>> tiled.predict(images).maps.shape  # N x 256 x 640
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsad.config import RegADConfig
from fsad.data.mvtec import as_hw, image_size
from fsad.methods.base import Detector, Embedding, Scores

ASPECTS = ("keep", "square")
DEFAULT_ASPECT = "keep"
# Every backbone's last stage has stride 32 (MobileNetV2, EfficientNet-Lite, ResNet): a side that is a
# multiple of it gives every stage whole feature cells.
STRIDE = 32
# Tiles overlap by a quarter of their side, so a defect on a tile's border is inside the next one.
TILE_OVERLAP = 0.25
# Support images whose aspect ratios spread by more than this factor are worth a note: they are all
# scored at the median one.
ASPECT_SPREAD_NOTE = 1.1


def median_aspect(sizes: Sequence[tuple[int, int]]) -> float:
    """The median width / height of images of ``(width, height)`` sizes."""
    if not sizes:
        raise ValueError("fsad/product/tiling.py: no image to take an aspect ratio from")
    return float(np.median([w / h for w, h in sizes]))


def keep_aspect_size(side: int, aspect: float, stride: int = STRIDE) -> tuple[int, int]:
    """(H, W) with the short side ``side`` and the long one ``side`` x aspect (width / height), rounded to ``stride``.

    Example:
        >>> keep_aspect_size(128, 2.5)  # a product 2.5x wider than tall
        (128, 320)
    """
    long = max(side, stride * round(side * max(aspect, 1 / aspect) / stride))
    return (side, long) if aspect >= 1 else (long, side)


def tiled_image_size(side: int, tiles: int, aspect: float, shortest: int) -> tuple[int, int]:
    """(H, W) an image is read at for ``tiles`` x ``side`` tiles across its short side.

    Args:
        side: The tile side (the detector's ``image_size``).
        tiles: How many tile sides the short side spans (>= 1).
        aspect: Width / height of the images.
        shortest: The short side of the support images themselves: the image is never
            enlarged beyond it (nothing is gained), nor made smaller than one tile.
    """
    short = max(side, min(tiles * side, shortest))
    long = round(short * max(aspect, 1 / aspect))
    return (short, long) if aspect >= 1 else (long, short)


def tile_starts(length: int, tile: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` pixels, evenly spread, overlapping by at least ``overlap``.

    The first tile starts at 0, the last ends at ``length``; one tile when ``length <= tile``.

    Example:
        >>> tile_starts(320, 128)  # strides of at most 96 px: 3 tiles
        [0, 96, 192]
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile * (1 - overlap))) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


class TiledDetector(Detector):
    """A detector of whole H x W images that scores them as overlapping tiles with ``inner``.

    Args:
        inner: Any detector; its ``image_size`` is the tile size.
        image_size: (H, W) of the whole images it takes, each side >= the tile's.
        overlap: Least overlap of neighbouring tiles, a fraction of the tile side.
    """

    def __init__(self, inner: Detector, image_size: tuple[int, int], overlap: float = TILE_OVERLAP):
        self.inner, self.overlap = inner, overlap
        self.image_size = as_hw(image_size)
        tile_h, tile_w = self.tile = as_hw(inner.image_size)
        if self.image_size[0] < tile_h or self.image_size[1] < tile_w:
            raise ValueError(f"fsad/product/tiling.py: images of {self.image_size[0]} x {self.image_size[1]} px are smaller "
                             f"than one {tile_h} x {tile_w} tile; lower image_size or drop --tile")
        self.name, self.device, self.min_support = inner.name, inner.device, inner.min_support
        # (top, left) of every tile, row-major
        self.corners = [(y, x) for y in tile_starts(self.image_size[0], tile_h, overlap)
                        for x in tile_starts(self.image_size[1], tile_w, overlap)]

    def tiles(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W images -> (N T) x 3 x h x w tiles, image-major (T = len(corners), h x w the tile)."""
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"fsad/product/tiling.py: images are {images.shape[-2]} x {images.shape[-1]} px, the tiled "
                             f"detector takes {self.image_size[0]} x {self.image_size[1]}; resize them first")
        tile_h, tile_w = self.tile
        return torch.stack([images[:, :, y : y + tile_h, x : x + tile_w] for y, x in self.corners], dim=1).flatten(0, 1)

    def stitch(self, scores: Scores, count: int) -> Scores:
        """Tile scores ((N T) maps of h x w) -> N maps of H x W (mean over overlaps) and N image scores (max over tiles)."""
        tile_h, tile_w = self.tile
        tile_maps = scores.maps.view(count, len(self.corners), tile_h, tile_w)  # N x T x h x w
        total = torch.zeros(count, *self.image_size)  # N x H x W
        covered = torch.zeros(self.image_size)  # H x W: tiles over each pixel
        for t, (y, x) in enumerate(self.corners):
            total[:, y : y + tile_h, x : x + tile_w] += tile_maps[:, t]
            covered[y : y + tile_h, x : x + tile_w] += 1
        image = scores.image.view(count, len(self.corners)).amax(dim=1)  # N
        return Scores(maps=total / covered, image=image)

    def embed(self, images: torch.Tensor) -> Embedding:
        """The inner detector's embedding of the tiles, (N T) first, plus the image count."""
        return (*self.inner.embed(self.tiles(images)), torch.zeros(len(images)))

    def fit(self, support: torch.Tensor) -> None:
        """Fit the inner detector on the tiles of all K support images together ((K T) x 3 x h x w)."""
        self.check_support(support, f"{self.name} needs that many support images")
        self.inner.fit(self.tiles(support))

    def predict_embedded(self, embedded: Embedding) -> Scores:
        *tiles, marker = embedded
        return self.stitch(self.inner.predict_embedded(tuple(tiles)), len(marker))

    def architecture(self) -> dict[str, Any]:
        return self.inner.architecture()

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.inner.load_state(state)

    def record(self) -> dict[str, Any]:
        """The ``tiling`` entry of ``detector.json`` that ``from_record`` rebuilds this from."""
        return {"image_size": list(self.image_size), "tile": list(self.tile), "overlap": self.overlap, "tiles": len(self.corners)}


def product_sizes(regad: RegADConfig, support: Sequence[Path], aspect: str = DEFAULT_ASPECT,
                  tile: int | None = None) -> tuple[RegADConfig, dict[str, Any]]:
    """The detector's settings and the sizes ``fsad fit`` reads ``support`` at, from the images' headers alone.

    Args:
        regad: Its ``image_size`` is the short side (``aspect`` ``keep``), the square's side
            (``square``), or an explicit ``[H, W]`` used as given; with ``tile`` it is the tile.
        support: The support image files.
        aspect: ``keep`` or ``square`` (``ASPECTS``).
        tile: Tiles across the short side (``--tile N``), or ``None``: no tiling.

    Returns:
        ``regad`` with the model's ``image_size`` and the ``image`` entry of ``detector.json``:
        ``aspect``, the support images' ``aspects`` (min, median, max width / height), the
        ``size`` [H, W] every image is read at (the tiled image's when tiling) and ``tiles``.

    Raises:
        ValueError: an unknown ``aspect``, or ``tile`` < 1.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"fsad fit: unknown --aspect {aspect!r}; choose from {', '.join(ASPECTS)}")
    if tile is not None and tile < 1:
        raise ValueError(f"fsad fit: --tile must be >= 1 tile across the short side, got {tile}")
    sizes = [image_size(path) for path in support]  # (width, height) as shown
    aspects = [w / h for w, h in sizes]
    median = median_aspect(sizes)
    ratio = median if aspect == "keep" else 1.0
    explicit = not isinstance(regad.image_size, int)
    if not explicit and aspect == "keep" and tile is None:
        regad = regad.replace(image_size=list(keep_aspect_size(regad.image_size, ratio)))
    read_at = as_hw(regad.image_size)
    if tile is not None:
        side = min(as_hw(regad.image_size))
        read_at = tiled_image_size(side, tile, ratio, min(min(s) for s in sizes))
        read_at = tuple(max(a, b) for a, b in zip(read_at, as_hw(regad.image_size)))  # at least one tile each way
    record = {"aspect": "given" if explicit else aspect, "aspects": [min(aspects), median, max(aspects)],
              "size": list(read_at), "tiles": tile}
    return regad, record


def from_record(detector: Detector, record: dict[str, Any]) -> Detector:
    """``detector`` wrapped as ``fsad fit`` saved it: tiled where ``record`` has a ``tiling`` entry, else itself."""
    tiling = record.get("tiling")
    if not tiling:
        return detector
    return TiledDetector(detector, tuple(tiling["image_size"]), tiling["overlap"])


__all__ = ["ASPECTS", "STRIDE", "TILE_OVERLAP", "TiledDetector", "from_record", "keep_aspect_size", "median_aspect",
           "tile_starts", "tiled_image_size"]
