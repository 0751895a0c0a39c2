"""A tiny generated data set in MVTec AD layout, for tests and pipeline smoke runs.

Every category is a procedural object or texture with mild random variation (position,
colour, noise). Its test defects are small square patches of a foreign colour (folder
``colour``) or of a fine checkerboard (folder ``texture``), with exact 0/255 masks.
The defects are large and contrasted, so even a per-pixel Gaussian model detects them.

Example:
    >>> root = make_toy_dataset(tmp_path / "toy")  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir() if p.is_dir())  # doctest: +SKIP
    ['disc', 'ring', 'stripes']
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fsad.io import atomic_dir

DEFECTS = ("colour", "texture")
BUILD_FILE = "build.json"
_MIN_SIZE = 16
_NOISE_STD = 5.0
_DEFECT_COLOUR = np.array([40.0, 210.0, 90.0])

# A renderer returns a normal image (H x W x 3, 0..255) and the centre of a defect on the object.
Renderer = Callable[[np.random.Generator, int], tuple[np.ndarray, tuple[int, int]]]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)  # H x W each
    return yy, xx


def _blend(background: np.ndarray, colour: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """``colour`` over a flat ``background`` where ``coverage`` (H x W, in [0, 1]) is 1."""
    return background + coverage[..., None] * (colour - background)  # H x W x 3


def _coverage(inside_distance: np.ndarray, size: int) -> np.ndarray:
    # Soft edges (a ramp of size/32 px) keep the edge pixels' values continuous under the
    # position jitter; hard edges make them flip, which a per-pixel model takes for defects.
    return np.clip(inside_distance / (size / 32) + 0.5, 0.0, 1.0)  # H x W


def _jittered_centre(rng: np.random.Generator, size: int) -> np.ndarray:
    return size / 2 + rng.uniform(-size / 64, size / 64, 2)  # (y, x)


def _render_disc(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    yy, xx = _grid(size)
    centre = _jittered_centre(rng, size)
    radius = size * rng.uniform(0.29, 0.31)
    distance = np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)  # H x W
    image = _blend(np.array([45.0, 45.0, 45.0]) + rng.uniform(-5, 5, 3),
                   np.array([190.0, 70.0, 50.0]) + rng.uniform(-12, 12, 3),
                   _coverage(radius - distance, size))
    # Within half the radius, so the whole patch lies on the disc.
    offset = rng.uniform(-radius / 2, radius / 2, 2) / np.sqrt(2)
    return image, (int(centre[0] + offset[0]), int(centre[1] + offset[1]))


def _render_ring(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    yy, xx = _grid(size)
    centre = _jittered_centre(rng, size)
    outer, inner = size * rng.uniform(0.37, 0.38), size * rng.uniform(0.19, 0.20)
    distance = np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)  # H x W
    image = _blend(np.array([35.0, 40.0, 70.0]) + rng.uniform(-5, 5, 3),
                   np.array([210.0, 190.0, 70.0]) + rng.uniform(-12, 12, 3),
                   _coverage(np.minimum(outer - distance, distance - inner), size))
    angle, middle = rng.uniform(0, 2 * np.pi), (inner + outer) / 2
    return image, (int(centre[0] + middle * np.sin(angle)), int(centre[1] + middle * np.cos(angle)))


def _render_stripes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    _, xx = _grid(size)
    period = size / 6 * rng.uniform(0.95, 1.05)
    weight = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period + rng.uniform(0, 2 * np.pi))  # H x W
    dark = np.array([70.0, 80.0, 170.0]) + rng.uniform(-10, 10, 3)
    light = np.array([190.0, 190.0, 215.0]) + rng.uniform(-10, 10, 3)
    image = dark + weight[..., None] * (light - dark)  # H x W x 3
    margin = size // 5
    centre_y, centre_x = rng.integers(margin, size - margin, 2)
    return image, (int(centre_y), int(centre_x))


RENDERERS: dict[str, Renderer] = {
    "disc": _render_disc,
    "ring": _render_ring,
    "stripes": _render_stripes,
}


def _add_defect(image: np.ndarray, centre: tuple[int, int], defect: str,
                rng: np.random.Generator) -> np.ndarray:
    """Paint a square defect around ``centre`` in place; returns its exact H x W bool mask."""
    size = image.shape[0]
    side = int(rng.integers(size // 8, size // 5 + 1))
    top = int(np.clip(centre[0] - side // 2, 0, size - side))
    left = int(np.clip(centre[1] - side // 2, 0, size - side))
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    if defect == "colour":
        image[mask] = _DEFECT_COLOUR + rng.uniform(-15, 15, 3)
    else:
        yy, xx = _grid(size)
        checker = ((yy // 2 + xx // 2) % 2).astype(bool)  # H x W, 2-pixel cells
        image[mask & checker] = 235.0
        image[mask & ~checker] = 20.0
    return mask


def _to_png(image: np.ndarray, rng: np.random.Generator, path: Path) -> None:
    noisy = image + rng.normal(0.0, _NOISE_STD, image.shape)  # H x W x 3
    Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB").save(path)


def _image_rng(seed: int, name: str, split: int, index: int) -> np.random.Generator:
    # One generator per image, so changing a count leaves the other images unchanged.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), split, index])


def _write_category(folder: Path, name: str, n_train: int, n_test_good: int, n_test_defect: int,
                    size: int, seed: int, with_masks: bool) -> None:
    render = RENDERERS[name]
    for split, (sub, count) in enumerate((("train/good", n_train), ("test/good", n_test_good))):
        (folder / sub).mkdir(parents=True)
        for index in range(count):
            rng = _image_rng(seed, name, split, index)
            image, _ = render(rng, size)
            _to_png(image, rng, folder / sub / f"{index:03d}.png")
    for index in range(n_test_defect):
        rng = _image_rng(seed, name, 2, index)
        defect = DEFECTS[index % len(DEFECTS)]
        file_name = f"{index // len(DEFECTS):03d}"
        image, centre = render(rng, size)
        mask = _add_defect(image, centre, defect, rng)
        (folder / "test" / defect).mkdir(parents=True, exist_ok=True)
        _to_png(image, rng, folder / "test" / defect / f"{file_name}.png")
        if with_masks:
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(
                folder / "ground_truth" / defect / f"{file_name}_mask.png")


def make_toy_dataset(root: Path, categories: Sequence[str] = ("disc", "ring", "stripes"),
                     n_train: int = 12, n_test_good: int = 4, n_test_defect: int = 4,
                     size: int = 64, seed: int = 0, with_masks: bool = True) -> Path:
    """Write a small deterministic MVTec-layout data set of generated images.

    Test defects alternate between the folders ``colour`` and ``texture`` (``colour`` first),
    numbered from ``000`` in each. The build goes to a temporary sibling folder renamed at the
    end, so an interrupted build leaves nothing. Calling again with the same arguments on a
    finished build returns at once (parameters are kept in ``build.json``).

    Args:
        root: Output folder; must not exist, be empty, or hold a build with the same arguments.
        categories: Names among ``disc``, ``ring``, ``stripes``.
        n_train: Images in each ``train/good``.
        n_test_good: Images in each ``test/good``.
        n_test_defect: Anomalous test images per category, all defect folders together.
        size: Image side in pixels (at least 16).
        seed: Seed of every random choice.
        with_masks: Write ``ground_truth``; without it the categories are image-level only.

    Returns:
        ``root``, resolved.

    Raises:
        ValueError: unknown category, or a count or size out of range.
        FileExistsError: ``root`` holds something else.

    Example:
        >>> root = make_toy_dataset(tmp_path / "toy", categories=("disc",))  # doctest: +SKIP
    """
    root = Path(root).expanduser().resolve()
    unknown = [name for name in categories if name not in RENDERERS]
    if unknown or len(set(categories)) != len(categories) or not categories:
        raise ValueError(f"fsad/data/toy.py: categories {tuple(categories)!r} must be distinct "
                         f"names among {sorted(RENDERERS)}")
    if min(n_train, n_test_good, n_test_defect) < 1 or size < _MIN_SIZE:
        raise ValueError(f"fsad/data/toy.py: counts must be >= 1 and size >= {_MIN_SIZE}; got "
                         f"n_train={n_train}, n_test_good={n_test_good}, "
                         f"n_test_defect={n_test_defect}, size={size}")
    parameters = {"generator": "fsad.data.toy", "categories": list(categories),
                  "n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect,
                  "size": size, "seed": seed, "with_masks": with_masks}
    if root.is_dir() and any(root.iterdir()):
        build_file = root / BUILD_FILE
        if build_file.is_file() and json.loads(build_file.read_text()) == parameters:
            return root
        raise FileExistsError(f"fsad/data/toy.py: {root} is not empty and holds no toy build with "
                              f"these arguments; delete it or choose an empty folder")
    with atomic_dir(root) as partial:
        for name in categories:
            _write_category(partial / name, name, n_train, n_test_good, n_test_defect, size, seed,
                            with_masks)
        (partial / BUILD_FILE).write_text(json.dumps(parameters, indent=2) + "\n")
    return root
