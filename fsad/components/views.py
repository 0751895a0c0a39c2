"""RegAD's support augmentation: 22 views of every support image.

Views, in order: original; rotations by +-11.25, +-22.5, +-33.75, +-45 degrees;
translations by (+-0.1, +-0.1) and (+-0.2, +-0.2) of the half-size (normalised
coordinates); horizontal flip; grayscale; rotations by 90, 180, 270 degrees. Geometric
views reflect at the borders, as in the official code. A quarter turn of a non-square H x W
image is W x H: it is resized back to H x W (bilinear), so every view has the image's shape
and a square image's views are exactly the official ones.

Example:
    >>> views = support_views(torch.rand(2, 3, 64, 64))  # 2 x 22 x 3 x 64 x 64
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F
from torch import nn

from fsad.components.backbones import ModuleSnapshot
from fsad.data.loading import to_float

ROTATIONS = (-45.0, -33.75, -22.5, -11.25, 11.25, 22.5, 33.75, 45.0)
TRANSLATIONS = tuple((sx * d, sy * d) for d in (0.1, 0.2) for sx, sy in itertools.product((-1, 1), repeat=2))
NUM_VIEWS = 1 + len(ROTATIONS) + len(TRANSLATIONS) + 1 + 1 + 3


def _quarter_turn(images: torch.Tensor, k: int) -> torch.Tensor:
    """B x 3 x H x W images turned by k x 90 degrees, back at H x W (a no-op resize for a square or k = 2)."""
    turned = torch.rot90(images, k, dims=(2, 3))  # B x 3 x W x H for odd k
    if turned.shape[-2:] == images.shape[-2:]:
        return turned
    return F.interpolate(turned, size=images.shape[-2:], mode="bilinear", align_corners=False, antialias=True)


def support_views(images: torch.Tensor) -> torch.Tensor:
    """All 22 views of each image.

    Args:
        images: B x 3 x H x W in [0, 1].

    Returns:
        B x 22 x 3 x H x W.
    """
    import kornia  # here: fsad predict, which never makes views, starts 0.15 s sooner

    b, _, h, w = images.shape
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
        *(_quarter_turn(images, k) for k in (1, 2, 3)),
    ]
    return torch.stack(views, dim=1)  # B x 22 x 3 x H x W


def _view_cache_bytes() -> int:
    """Bound of the view-feature cache: a quarter of the machine's memory, at most 4 GiB.

    22 views cost 13.7 MB per image at 128 px MobileNetV2 (22 x 152 x 32 x 32 float32) and
    124 MB at 224 px ResNet-18 (22 x 448 x 56 x 56): 4 GiB holds 313 and 33 images. With
    the earlier 1 GiB (8 images at 224 px) the support-view features were 47 of 103 s of
    benchmarks/end_to_end.py at 224 px: images recurring across sets were evicted first.
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): the bound for 8 GiB of memory
        memory = 8 * 2**30
    return min(4 * 2**30, memory // 4)


VIEW_CACHE_BYTES = _view_cache_bytes()


class SupportViewFeatures:
    """Features of the 22 views of each support image, computed once per image and reused.

    The support sets of a category (10 per K) are drawn from the same ``train/good``
    images, so an image recurs across sets and K; its 22 views' features are computed
    once, one image per batch (so a feature never depends on which other images were
    cached), and kept in a least-recently-used store of at most ``max_bytes``. An image is
    known by a hash of its bytes, shape and dtype. The store empties itself when the
    network's weights (``ModuleSnapshot``: a changed or replaced tensor, another network) or
    the ``settings`` change, so it never returns stale features.

    Example:
        >>> cache = SupportViewFeatures()
        >>> features = cache(support, model, lambda views: extract(model, views), settings=("cpu",))  # 22K x D x h x w
    """

    def __init__(self, max_bytes: int = VIEW_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (dtype, shape, hash) -> 22 x D x h x w
        self._bytes = 0
        self._network: ModuleSnapshot | None = None
        self._settings: Hashable = None

    def clear(self) -> None:
        self._store.clear()
        self._bytes = 0

    def _check_network(self, network: nn.Module, settings: Hashable) -> None:
        """Empty the store unless ``network``'s tensors and ``settings`` are those it was filled with."""
        snapshot = ModuleSnapshot(network)
        if snapshot != self._network or settings != self._settings:
            self.clear()
            self._network, self._settings = snapshot, settings

    def __call__(self, support: torch.Tensor, network: nn.Module, extract: Callable[[torch.Tensor], torch.Tensor],
                 settings: Hashable = None) -> torch.Tensor:
        """Features of the 22 views of every support image, image-major.

        Args:
            support: K x 3 x H x W images (uint8 or [0, 1] floats).
            network: The module ``extract`` runs (watched for changes).
            extract: 22 x 3 x H x W views in [0, 1] -> 22 x D x h x w features.
            settings: Anything else the features depend on (device, channel choice).

        Returns:
            22K x D x h x w features, the views of image 0 first.
        """
        self._check_network(network, settings)
        features = []
        for image in support:
            key = (str(image.dtype), tuple(image.shape), hashlib.blake2b(image.contiguous().cpu().numpy().tobytes()).hexdigest())
            cached = self._store.get(key)
            if cached is None:
                cached = extract(support_views(to_float(image[None]))[0])  # 22 x D x h x w
                self._store[key] = cached
                self._bytes += cached.nbytes
                while self._bytes > self.max_bytes and len(self._store) > 1:
                    self._bytes -= self._store.popitem(last=False)[1].nbytes
            self._store.move_to_end(key)
            features.append(cached)
        return torch.cat(features)  # 22K x D x h x w
