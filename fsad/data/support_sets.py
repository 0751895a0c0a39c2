"""Few-shot support sets, drawn reproducibly for any MVTec-layout data set and saved as JSON.

The official RegAD code ships fixed support sets for MVTec AD but never said how it drew
them; here a set depends only on ``(seed, category name, K)``, so anyone can redraw it.

Each file records what it was made from (the seed, the K values, the number of sets and
the fingerprint of the category's ``train/good`` images), so :func:`support_sets_for`
reuses a file only when it is what would be drawn now, and says what changed otherwise.

Example:
    >>> sets = support_sets_for(category, shots=(2, 4, 8), n_sets=10, seed=0, folder=Path("supports"))  # doctest: +SKIP
    >>> first_2_shot = support_samples(category, sets[2][0])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import operator
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fsad.data.fingerprint import category_fingerprint
from fsad.data.mvtec import Category, Sample, nfc
from fsad.io import write_text_atomic

log = logging.getLogger(__name__)

OFFICIAL_SEED = -1
"""The seed recorded for sets imported from the official RegAD files (not drawn)."""

def _relative(category: Category, sample: Sample) -> str:
    # NFC: a file written on macOS names the same image as on Linux.
    return nfc(sample.path.relative_to(category.path).as_posix())


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
    """Write one category's support sets as JSON, atomically, with what they were made from.

    Args:
        path: The JSON file; its folder is created.
        category: The category the sets were drawn from.
        sets: As returned by :func:`make_support_sets`.
        seed: The seed they were drawn with (``OFFICIAL_SEED`` for imported official sets).
    """
    document = {"category": category.name, "seed": seed,
                "shots": sorted(sets), "n_sets": min((len(v) for v in sets.values()), default=0),
                "train_fingerprint": category_fingerprint(category, ("train",)),
                "sets": {str(shot): sets[shot] for shot in sorted(sets)}}
    write_text_atomic(path, json.dumps(document, indent=1) + "\n")


def _read(path: Path) -> tuple[dict[str, Any], dict[int, list[list[str]]]]:
    """The JSON document of a support-set file and its sets (int keys), structure checked."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
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
    return document, sets


def load_support_sets(path: Path, category: Category | None = None) -> dict[int, list[list[str]]]:
    """Read support sets written by :func:`save_support_sets`.

    Args:
        path: The JSON file.
        category: When given, the file must be for this category and every listed image
            must be one of its ``train/good`` images.

    Returns:
        ``{K: [[relative path, ...], ...]}`` with int keys.

    Raises:
        FileNotFoundError: the file, or one of its images, does not exist.
        ValueError: malformed file, a set whose size is not its K, or another category.
    """
    document, sets = _read(path)
    if category is not None:
        if document.get("category") != category.name:
            raise ValueError(f"fsad/data/support_sets.py: {path} holds support sets of category "
                             f"{document.get('category')!r}, not {category.name!r}")
        train = {_relative(category, sample) for sample in category.train}
        for lists in sets.values():
            for relative in (r for s in lists for r in s):
                if nfc(relative) not in train:
                    raise FileNotFoundError(f"fsad/data/support_sets.py: {path} lists image "
                                            f"{category.path / relative}, which does not exist")
    return sets


def _changes(document: dict[str, Any], category: Category, seed: int, official: bool,
             train_fingerprint: str) -> list[str]:
    """What differs between a recorded file and the sets asked for (empty: reusable)."""
    changes = []
    if document.get("category") != category.name:
        changes.append(f"it holds category {document.get('category')!r}, not {category.name!r}")
    recorded_seed = document.get("seed")
    if official and recorded_seed != OFFICIAL_SEED:
        changes.append(f"it holds sets drawn with seed {recorded_seed}, not the official ones")
    elif not official and recorded_seed != OFFICIAL_SEED and recorded_seed != seed:
        # Official sets (seed -1) stand for any seed: a user put them there to replace draws.
        changes.append(f"it was drawn with seed {recorded_seed}, not {seed}")
    recorded = document.get("train_fingerprint")
    if recorded is None:
        changes.append("it records no fingerprint of the train images (a file from an older "
                       "fsad), so whether they changed is unknown")
    elif recorded != train_fingerprint:
        changes.append(f"the train images of {category.path / 'train' / 'good'} changed since "
                       f"(fingerprint {recorded} -> {train_fingerprint})")
    return changes


def support_sets_for(category: Category, shots: Sequence[int], n_sets: int, seed: int,
                     folder: Path, read_only: bool = False,
                     official_dir: Path | None = None) -> dict[int, list[list[str]]]:
    """The category's support sets ``{K: n_sets sets}``: reused from ``folder`` when they are
    what would be made now, else made (drawn, or imported from the official files) and saved.

    ``folder/<category>.json`` is reused when it records the same category, the asked seed
    (official sets stand for any seed) and the current fingerprint of the train images, and
    holds at least ``n_sets`` sets of every asked K (the first ``n_sets`` are returned: a
    draw of fewer sets is a prefix of a draw of more). Otherwise the sets are remade, with
    a warning saying what changed; the K values recorded but not asked are kept.

    Args:
        category: The target category.
        shots: The K values.
        n_sets: Sets per K.
        seed: Seed of the draw (ignored when ``official_dir`` is given).
        folder: Where ``<category>.json`` is read and written.
        read_only: ``folder`` is shared (e.g. the pipeline's ``data/support_sets``, made by
            ``data_prep``): never written; a missing, changed or too small file is an error.
        official_dir: Import the sets from the official RegAD files in this folder instead
            of drawing them (recorded with seed ``OFFICIAL_SEED``).

    Returns:
        ``{K: [[path relative to category.path, ...] * n_sets]}`` for every K in ``shots``.

    Raises:
        FileNotFoundError: ``read_only`` and the file does not exist.
        ValueError: ``read_only`` and the file differs from what is asked (the message names
            the file and what changed), a malformed file, or K above the train images.
    """
    path = Path(folder) / f"{category.name}.json"
    shots = sorted({operator.index(k) for k in shots})
    official = official_dir is not None
    recorded: dict[int, list[list[str]]] = {}
    if path.is_file():
        document, recorded = _read(path)
        changes = _changes(document, category, seed, official, category_fingerprint(category, ("train",)))
        short = [k for k in shots if len(recorded.get(k, [])) < n_sets]
        if not changes and not short:
            return {k: recorded[k][:n_sets] for k in shots}
        if read_only:
            lacking = [f"it holds {len(recorded.get(k, []))} sets of K={k}, {n_sets} asked" for k in short]
            raise ValueError(f"fsad/data/support_sets.py: support-set file {path} does not fit this run: "
                             f"{'; '.join(changes + lacking)}. It is shared (read only): remake it with "
                             "`dvc repro data_prep` (matching support.seed/shots/n_sets in params.yaml), "
                             "or leave the support folder unset to draw the sets into the run's folder")
        if short and not official and document.get("seed") == OFFICIAL_SEED:
            # One file, one origin: official sets are not topped up with drawn ones.
            changes.append(f"it holds the official sets, without {n_sets} sets of K={short}")
        if changes:
            log.warning("%s: %s; making the support sets again", path, "; ".join(changes))
            recorded = {}
    elif read_only:
        raise FileNotFoundError(f"fsad/data/support_sets.py: support-set file {path} does not exist; "
                                "make it with `dvc repro data_prep`, or leave the support folder unset "
                                "to draw the sets into the run's folder")
    # Draws of one K do not depend on the other K: only the missing K are made.
    to_make = [k for k in shots if len(recorded.get(k, [])) < n_sets]
    if official:
        from fsad.data.official_support import import_official_support  # torch only when asked

        made = {k: s[:n_sets] for k, s in import_official_support(category, Path(official_dir), to_make).items()}
        seed = OFFICIAL_SEED
    else:
        made = make_support_sets(category, to_make, n_sets, seed)
    merged = {**recorded, **made}
    save_support_sets(path, category, merged, seed)
    return {k: merged[k][:n_sets] for k in shots}


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


__all__ = ["OFFICIAL_SEED", "load_support_sets", "make_support_sets", "save_support_sets", "support_samples",
           "support_sets_for"]
