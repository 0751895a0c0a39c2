"""Import the official RegAD support sets (``support_set/<category>/<K>_10.pt``) as our JSON sets.

The official repository ships, per MVTec AD category and K, a ``torch.save``'d list of 10
tensors, each K x 3 x 224 x 224 in [0, 1] (resized to 224, not normalised), but not the
file names of the images. Every support tensor is matched here to the ``train/good`` image
whose 224 px version is closest (mean absolute difference); the paper's exact support sets
then become ordinary support-set files that every method reads.

Example:
    >>> sets = import_official_support(category, Path("support_set"), shots=(2, 4, 8))  # doctest: +SKIP
    >>> save_support_sets(Path("data/support_sets/bottle.json"), category, sets, seed=-1)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fsad.data.loading import as_float, load_images
from fsad.data.mvtec import Category

OFFICIAL_SIZE = 224
# Mean absolute difference (pixel values in [0, 1]) under which two 224 px images are the
# same file: resizing filters (PIL's Lanczos in the official code vs our antialiased
# bilinear) differ by ~0.005, two different MVTec images of one category by > 0.02.
MATCH_TOLERANCE = 0.015


def official_file(folder: Path, category: str, shots: int) -> Path:
    """Where the official repository keeps the support sets of ``category`` and K = ``shots``."""
    return Path(folder) / category / f"{shots}_10.pt"


def load_official_file(path: Path) -> list[torch.Tensor]:
    """The list of K x 3 x H x W support tensors in one official file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a list of 4-d image tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fsad/data/official_support.py: official support file {path} does not exist; "
                                "copy the official repository's support_set/<category>/<K>_10.pt files there")
    sets = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sets, (list, tuple)) or not all(torch.is_tensor(s) and s.dim() == 4 and s.shape[1] == 3 for s in sets):
        raise ValueError(f"fsad/data/official_support.py: {path} is not a list of K x 3 x H x W tensors "
                         "(the official RegAD support_set format)")
    return list(sets)


def match_support_images(support: torch.Tensor, train_images: torch.Tensor, source: Path,
                         tolerance: float = MATCH_TOLERANCE) -> list[int]:
    """Index of the closest train image of every support image.

    Args:
        support: K x 3 x S x S float images in [0, 1].
        train_images: N x 3 x S x S float images in [0, 1], at the same size.
        source: The file the support images came from (for the error message).
        tolerance: Largest accepted mean absolute difference.

    Returns:
        K indices into ``train_images``.

    Raises:
        ValueError: a support image has no train image within ``tolerance``.
    """
    distances = (support[:, None] - train_images[None]).abs().mean(dim=(2, 3, 4))  # K x N
    best, index = distances.min(dim=1)  # K each
    worst = int(best.argmax())
    if float(best[worst]) > tolerance:
        raise ValueError(f"fsad/data/official_support.py: support image {worst} of {source} matches no train/good "
                         f"image (closest mean absolute difference {float(best[worst]):.4f} > {tolerance}); "
                         "is this the file of this category, and is train/good the official MVTec AD one?")
    return index.tolist()


def import_official_support(category: Category, folder: Path, shots: Sequence[int],
                            tolerance: float = MATCH_TOLERANCE) -> dict[int, list[list[str]]]:
    """Support sets of ``category`` read from the official ``<folder>/<category>/<K>_10.pt`` files.

    Args:
        category: The category (its ``train/good`` images are the candidates).
        folder: The official ``support_set`` folder.
        shots: The K values to import.
        tolerance: Largest accepted mean absolute difference of a match.

    Returns:
        ``{K: [[path relative to the category, ...] * 10]}``, as ``make_support_sets``.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is malformed, holds sets of another K, or an image matches nothing.
    """
    train = as_float(load_images(category.train, OFFICIAL_SIZE, desc=f"train {category.name}"))  # N x 3 x 224 x 224
    names = [sample.path.relative_to(category.path).as_posix() for sample in category.train]
    out: dict[int, list[list[str]]] = {}
    for k in sorted(set(shots)):
        path = official_file(folder, category.name, k)
        sets = []
        for i, support in enumerate(load_official_file(path)):
            if support.shape[0] != k or support.shape[-2:] != (OFFICIAL_SIZE, OFFICIAL_SIZE):
                raise ValueError(f"fsad/data/official_support.py: set {i} of {path} has shape {tuple(support.shape)}; "
                                 f"expected {k} x 3 x {OFFICIAL_SIZE} x {OFFICIAL_SIZE}")
            indices = match_support_images(support.float(), train, path, tolerance)
            if len(set(indices)) != k:
                raise ValueError(f"fsad/data/official_support.py: set {i} of {path} matches one train image twice "
                                 f"({[names[j] for j in indices]}); check that the file belongs to this category")
            sets.append([names[j] for j in indices])  # the official order
        out[k] = sets
    return out


__all__ = ["MATCH_TOLERANCE", "import_official_support", "load_official_file", "match_support_images", "official_file"]
