"""Few-shot support sets, drawn reproducibly for any MVTec-layout data set and saved as JSON.

The official RegAD code ships fixed support sets for MVTec AD but never said how it drew
them; here a set depends only on ``(seed, category name, K)``, so anyone can redraw it.

Example:
    >>> sets = make_support_sets(category, shots=(2, 4, 8), n_sets=10, seed=0)  # doctest: +SKIP
    >>> save_support_sets(Path("supports/pcb.json"), category, sets, seed=0)  # doctest: +SKIP
    >>> first_2_shot = support_samples(category, sets[2][0])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import operator
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fsad.data.mvtec import Category, Sample
from fsad.io import write_text_atomic


def _relative(category: Category, sample: Sample) -> str:
    return sample.path.relative_to(category.path).as_posix()


def make_support_sets(category: Category, shots: Sequence[int], n_sets: int = 10,
                      seed: int = 0) -> dict[int, list[list[str]]]:
    """Draw ``n_sets`` support sets of K distinct ``train/good`` images for each K in ``shots``.

    Each ``(category, K)`` has its own generator, ``numpy.random.default_rng([seed,
    crc32(category name), K])``, so adding a K, reordering ``shots`` or drawing another
    category changes none of the other sets. Sets may repeat across draws (they are
    independent); within a set the images are distinct and sorted.

    Args:
        category: The category whose ``train`` images are drawn.
        shots: The K values.
        n_sets: Sets drawn per K.
        seed: Non-negative seed.

    Returns:
        ``{K: [[path relative to category.path, posix style, ...] * n_sets]}``.

    Raises:
        ValueError: K or n_sets below 1, a negative seed, or K above the number of
            train images.
    """
    if n_sets < 1 or seed < 0:
        raise ValueError(f"fsad/data/support_sets.py: n_sets must be >= 1 and seed >= 0; got "
                         f"n_sets={n_sets}, seed={seed}")
    train = [_relative(category, sample) for sample in category.train]
    sets: dict[int, list[list[str]]] = {}
    for shot in sorted({operator.index(k) for k in shots}):
        if not 1 <= shot <= len(train):
            raise ValueError(f"fsad/data/support_sets.py: category {category.name!r} has "
                             f"{len(train)} train images, so K={shot} shots cannot be drawn; "
                             f"use 1 <= K <= {len(train)}")
        rng = np.random.default_rng([seed, zlib.crc32(category.name.encode()), shot])
        sets[shot] = [[train[i] for i in sorted(rng.choice(len(train), shot, replace=False))]
                      for _ in range(n_sets)]
    return sets


def save_support_sets(path: Path, category: Category, sets: dict[int, list[list[str]]],
                      seed: int) -> None:
    """Write one category's support sets as JSON, atomically (temp file, then ``os.replace``).

    Args:
        path: The JSON file; its folder is created.
        category: The category the sets were drawn from.
        sets: As returned by :func:`make_support_sets`.
        seed: The seed they were drawn with, kept for the record.
    """
    document = {"category": category.name, "seed": seed,
                "sets": {str(shot): sets[shot] for shot in sorted(sets)}}
    write_text_atomic(path, json.dumps(document, indent=1) + "\n")


def load_support_sets(path: Path, category: Category | None = None) -> dict[int, list[list[str]]]:
    """Read support sets written by :func:`save_support_sets`.

    Args:
        path: The JSON file.
        category: When given, the file must be for this category and every listed image
            must exist under ``category.path``.

    Returns:
        ``{K: [[relative path, ...], ...]}`` with int keys.

    Raises:
        FileNotFoundError: the file, or one of its images, does not exist.
        ValueError: malformed file, a set whose size is not its K, or another category.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        sets = {int(shot): [list(s) for s in lists] for shot, lists in document["sets"].items()}
    except FileNotFoundError as error:
        raise FileNotFoundError(f"fsad/data/support_sets.py: support-set file {path} does not "
                                "exist; write it with save_support_sets") from error
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # JSONDecodeError too
        raise ValueError(f"fsad/data/support_sets.py: {path} is not a support-set file "
                         f'({error!r}); expected {{"category", "seed", "sets": {{"K": [[...]]}}}}'
                         ) from error
    for shot, lists in sets.items():
        wrong = [s for s in lists if len(s) != shot or len(set(s)) != shot]
        if wrong:
            raise ValueError(f"fsad/data/support_sets.py: {path} lists a {shot}-shot set that does "
                             f"not hold {shot} distinct images: {wrong[0]}")
    if category is not None:
        if document.get("category") != category.name:
            raise ValueError(f"fsad/data/support_sets.py: {path} holds support sets of category "
                             f"{document.get('category')!r}, not {category.name!r}")
        for lists in sets.values():
            for relative in (r for s in lists for r in s):
                if not (category.path / relative).is_file():
                    raise FileNotFoundError(f"fsad/data/support_sets.py: {path} lists image "
                                            f"{category.path / relative}, which does not exist")
    return sets


def support_samples(category: Category, rel_paths: Sequence[str]) -> list[Sample]:
    """The ``train`` samples of ``category`` named by paths relative to ``category.path``.

    Only train images are accepted: a support image taken from the test split would leak
    test data into the model.

    Args:
        category: The category.
        rel_paths: Posix-style paths relative to ``category.path``, e.g. ``train/good/003.png``.

    Returns:
        The samples, in the order of ``rel_paths``.

    Raises:
        ValueError: a path is not one of the category's train images.
    """
    by_path = {_relative(category, sample): sample for sample in category.train}
    missing = [p for p in rel_paths if p not in by_path]
    if missing:
        raise ValueError(f"fsad/data/support_sets.py: {missing[0]!r} is not a train image of "
                         f"category {category.name!r} (under {category.path / 'train' / 'good'}); "
                         "support sets must come from train/good")
    return [by_path[p] for p in rel_paths]
