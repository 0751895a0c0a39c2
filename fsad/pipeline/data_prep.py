"""Stage ``data_prep``: the data set, a checksum manifest per category and split, the support sets.

The manifests make DVC's per-category reruns exact: the ``train`` and ``evaluate`` stages
of a category depend on its manifest files, not on the data set folder, so changing one
category's images (or its support sets) reruns only the stages that read them. A target's
training-set manifest lists its whole training pool (``fsad.study.pools``: the data set's
other categories, ``train.train_own`` of them, and ``train.train_extra``'s categories of
other data sets) with the checksum of every image, so changing an image of an extra
category retrains the models it trained. Support sets are made here, once, and every
method reads the same files.

Example:
    >>> summary = prepare_data("toy", targets=["disc"], shots=[2], n_sets=2, seed=0)  # doctest: +SKIP
    >>> summary["categories"]  # doctest: +SKIP
    ['disc', 'ring', 'stripes']
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fsad.data.mvtec import Category, list_categories, load_category
from fsad.data.support_sets import support_sets_for
from fsad.io import atomic_dir, write_json_atomic
from fsad.paths import ROOT
from fsad.pipeline import layout
from fsad.pipeline.manifest import dataset_root
from fsad.reporting.paper import benchmark_of
from fsad.study.pools import load_extra, training_pool
from fsad.study.preflight import preflight

SUPPORT_SOURCES = ("draw", "official")


def file_md5(path: Path, chunk: int = 2**20) -> str:
    """MD5 of a file's bytes (what DVC uses too), read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _display_root(root: Path) -> str:
    """The data set root relative to the project root when possible: manifests must not
    hold machine-specific absolute paths, or a team's run-cache would never match."""
    return Path(os.path.relpath(root, ROOT)).as_posix()


def category_manifests(category: Category, dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``train`` and ``test`` manifests of a category: relative path -> MD5 of every file."""
    def checksums(paths: Sequence[Path]) -> dict[str, str]:
        return {p.relative_to(category.path).as_posix(): file_md5(p) for p in paths}

    train = {"dataset": dataset, "category": category.name, "split": "train",
             "files": checksums([s.path for s in category.train])}
    test_files = [s.path for s in category.test] + [s.mask_path for s in category.test if s.mask_path is not None]
    test = {"dataset": dataset, "category": category.name, "split": "test", "has_masks": category.has_masks,
            "n_normal": sum(s.label == 0 for s in category.test), "n_anomalous": sum(s.label == 1 for s in category.test),
            "files": checksums(sorted(test_files))}
    return train, test


def training_set_record(dataset: str, target: str, pool: Sequence[Category], files: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``training_sets/<target>.json``: the pool's category names, image counts and train files' MD5."""
    return {"dataset": dataset, "target": target, "train_categories": [c.name for c in pool],
            "images": {c.name: len(c.train) for c in pool}, "files": {c.name: files[c.name] for c in pool}}


def prepare_data(dataset: str, targets: Sequence[str], shots: Sequence[int], n_sets: int, seed: int,
                 source: str = "draw", progress: bool = True, train_extra: Sequence[str] = (),
                 train_own: int | None = None) -> dict[str, Any]:
    """Resolve (or build) the data set, write its manifests and the targets' support sets.

    Writes ``data/prepared/``: ``dataset.json``, ``train/<c>.json`` and ``test/<c>.json`` for
    every category, and ``training_sets/<t>.json`` for every target ``t``: its training pool
    (never ``t``), each category's train files with their MD5 and its image count; and
    ``data/support_sets/<t>.json``. Each folder is replaced as a whole, atomically.

    Args:
        dataset: ``elpv``, ``toy``, ``fsad-mini`` or a folder (relative to the project root).
        targets: Categories to evaluate (``data.categories``).
        shots: K values of the support sets.
        n_sets: Support sets per K.
        seed: Seed of the draw.
        source: ``draw`` or ``official``.
        train_extra: ``train.train_extra``: other data sets' categories in every pool
            (relative folders are the project root's).
        train_own: ``train.train_own``: how many of the data set's other categories (``None``: all).

    Returns:
        The content of ``dataset.json``.
    """
    if source not in SUPPORT_SOURCES:
        raise ValueError(f"fsad/pipeline/data_prep.py: support.source is {source!r}; choose one of {SUPPORT_SOURCES}")
    root = dataset_root(dataset)
    preflight(root, targets, shots)  # every file the later stages read, before any of them runs
    extra = load_extra(train_extra, base=ROOT)  # a missing source stops here, before any checksum
    names = list_categories(root)
    categories = {name: load_category(root, name) for name in names}
    summary = {
        "dataset": dataset, "root": _display_root(root), "categories": names,
        "benchmark": benchmark_of(names),
        "has_masks": {n: c.has_masks for n, c in categories.items()},
        "counts": {n: {"train": len(c.train), "test_normal": sum(s.label == 0 for s in c.test),
                       "test_anomalous": sum(s.label == 1 for s in c.test)} for n, c in categories.items()},
    }
    with atomic_dir(layout.PREPARED_DIR) as prepared:
        train_files = {}
        for name in tqdm(names, desc="checksums", disable=not progress):
            train, test = category_manifests(categories[name], dataset)
            train_files[name] = train["files"]
            write_json_atomic(prepared / "train" / f"{name}.json", train)
            write_json_atomic(prepared / "test" / f"{name}.json", test)
        for category in extra:  # SOURCE/CATEGORY names: never a category of the data set
            train_files[category.name] = category_manifests(category, dataset)[0]["files"]
        for target in targets:  # train@<target>-<seed> reads exactly its pool's files
            pool = training_pool(categories[target], [c for n, c in categories.items() if n != target], extra, train_own)
            write_json_atomic(prepared / "training_sets" / f"{target}.json", training_set_record(dataset, target, pool, train_files))
        write_json_atomic(prepared / layout.DATASET_MANIFEST.name, summary)
    with atomic_dir(layout.SUPPORT_DIR) as support:
        official_dir = layout.OFFICIAL_SUPPORT_DIR if source == "official" else None
        for name in targets:  # a fresh folder: every file is made (official ones recorded with seed -1)
            support_sets_for(categories[name], shots, n_sets, seed, support, official_dir=official_dir)
    return summary


__all__ = ["category_manifests", "file_md5", "prepare_data", "training_set_record"]
