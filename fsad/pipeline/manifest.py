"""What data_prep wrote, read back by the later stages: the data set, its categories, the support sets.

Example:
    >>> manifest = load_manifest()  # doctest: +SKIP
    >>> category = prepared_category("mono")  # doctest: +SKIP
    >>> sets = prepared_support_sets(category)  # {K: [[relative path, ...], ...]}  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsad.data.mvtec import Category, list_categories, load_category
from fsad.data.support_sets import load_support_sets
from fsad.paths import ROOT
from fsad.pipeline import layout


def dataset_root(dataset: str) -> Path:
    """The folder of ``dataset`` (a name or a path), building an embedded data set on first use.

    ``fsad.study.experiment`` is imported here rather than at the top: dvc.yaml declares each
    stage's module-level imports as its code dependencies, and the data's content is
    tracked by the manifests' checksums, not by the code that locates it. A relative folder
    is the project root's (params.yaml's), whatever the current directory.
    """
    from fsad.study.experiment import resolve_dataset

    return resolve_dataset(dataset, base=ROOT)


def load_manifest() -> dict[str, Any]:
    """``data/prepared/dataset.json``: data set name, root, categories, benchmark, counts.

    Raises:
        FileNotFoundError: data_prep has not run.
    """
    return _read(layout.DATASET_MANIFEST)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"fsad/pipeline/manifest.py: {path} does not exist; run the data stage first "
                                "(dvc repro data_prep), and check that the category is in data.categories")
    return json.loads(path.read_text())


def training_set(target: str) -> dict[str, Any]:
    """``data/prepared/training_sets/<target>.json``: data set, the pool's categories, their image counts and files."""
    return _read(layout.training_set_manifest(target))


def prepared_pool(target: str, train_extra: Sequence[str], train_own: int | None) -> list[Category]:
    """The training pool of ``target`` that data_prep listed, as categories to train on.

    Built again from the data set and ``train_extra`` / ``train_own`` (``fsad.study.pools``),
    and checked against the manifest, whose checksums are what DVC reran the stage for.

    Raises:
        ValueError: the pool differs from the manifest's (``train.train_extra`` or
            ``train_own`` changed since data_prep ran).
    """
    from fsad.study.pools import load_extra, training_pool  # the pool's content is tracked by the manifest

    listed = training_set(target)
    root = dataset_root(listed["dataset"])
    others = [load_category(root, name) for name in list_categories(root) if name != target]
    pool = training_pool(load_category(root, target), others, load_extra(train_extra, base=ROOT), train_own)
    if [c.name for c in pool] != listed["train_categories"]:
        raise ValueError(f"{layout.training_set_manifest(target)} lists the pool {listed['train_categories']}, train.train_extra "
                         f"and train_own give {[c.name for c in pool]}; run the data stage again (dvc repro data_prep)")
    return pool


def prepared_category(name: str) -> Category:
    """A category of the data set that data_prep prepared (located from its own manifest)."""
    return load_category(dataset_root(_read(layout.train_manifest(name))["dataset"]), name)


def prepared_support_sets(category: Category) -> dict[int, list[list[str]]]:
    """The support sets data_prep wrote for ``category`` (checked against its files)."""
    return load_support_sets(layout.support_file(category.name), category)


__all__ = ["dataset_root", "load_manifest", "prepared_category", "prepared_pool", "prepared_support_sets", "training_set"]
