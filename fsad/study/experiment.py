"""The whole RegAD protocol for a dataset: support sets, leave-one-out training, evaluation.

Used by ``fsad run``, the benchmarks and the notebooks, so that all of them do the same
thing. For each target category, a model is trained on every OTHER category and then
scored with every support set of the target; the same pipeline with the registration
network left untrained (pretrained features + 22 views + Gaussian) is the reference
the paper's claim is measured against.

Example:
    >>> config = ExperimentConfig.from_yaml("configs/default.yaml")
    >>> results = run_experiment(config, Path("runs/default"))  # one row per (variant, category, K, set)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fsad.config import RegADConfig, settings_of
from fsad.data.elpv import build_elpv_dataset
from fsad.data.mvtec import Category, list_categories, load_category
from fsad.data.support_sets import (
    load_support_sets,
    make_support_sets,
    save_support_sets,
)
from fsad.data.toy import make_toy_dataset
from fsad.io import write_csv_atomic
from fsad.methods.regad.checkpoint import build_model, load_model
from fsad.methods.regad.training import MODEL_NAME, train_regad
from fsad.paths import DATA_DIR, FSAD_MINI_DIR, ROOT
from fsad.seed import seed_everything
from fsad.study.evaluation import TestSet, evaluate_category

log = logging.getLogger(__name__)

# Datasets known by name; anything else is a path to an MVTec-layout folder.
EMBEDDED = {"elpv": build_elpv_dataset, "toy": make_toy_dataset}


def resolve_dataset(name: str) -> Path:
    """Dataset name or path -> its root folder, building an embedded dataset on first use.

    ``elpv`` and ``toy`` are built under ``data/embedded/``; ``fsad-mini`` is the shared
    benchmark beside the repository; anything else is a path (relative to the project root).
    """
    if name in EMBEDDED:
        root = DATA_DIR / "embedded" / name
        if not root.is_dir():
            EMBEDDED[name](root)
        return root
    if name == "fsad-mini":
        if not FSAD_MINI_DIR.is_dir():
            raise FileNotFoundError(f"fsad-mini not found at {FSAD_MINI_DIR}; it ships in ../shared/datasets beside the repository, or use dataset: elpv")
        return FSAD_MINI_DIR
    root = Path(name)
    root = root if root.is_absolute() else ROOT / root
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist; give an MVTec-layout folder, 'elpv', 'toy' or 'fsad-mini'")
    return root


@dataclass(frozen=True)
class ExperimentConfig:
    """One benchmark: which data, which K, how many support sets, which RegAD settings.

    Attributes:
        dataset: ``elpv`` (embedded default), ``toy``, ``fsad-mini`` or a folder path.
        categories: Target categories (``None``: all); training always uses all the others.
        shots: The K values evaluated.
        n_sets: Support sets per (category, K) (the paper: 10).
        support_seed: Seed of the support-set draw.
        metrics: Metrics computed per support set.
        untrained_baseline: Also score the untrained network (registration off).
        model_per_shot: Train one model per evaluated K (supports drawn with that K only),
            as the official code does. The default ``False`` trains one model per held-out
            category that serves every K: training draws K per batch from
            ``regad.train_shots``, the test-time Gaussian is what depends on K, and it costs
            1/len(shots) of the training time.
        regad: RegAD settings.
    """

    dataset: str = "elpv"
    categories: tuple[str, ...] | None = None
    shots: tuple[int, ...] = (2, 4, 8)
    n_sets: int = 10
    support_seed: int = 0
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc")
    untrained_baseline: bool = True
    model_per_shot: bool = False
    regad: RegADConfig = field(default_factory=RegADConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> ExperimentConfig:
        values = settings_of(cls, values, source, "experiment", tuples=("categories", "shots", "metrics"))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {}, source=str(path))


def support_sets_for(category: Category, config: ExperimentConfig, folder: Path) -> dict[int, list[list[str]]]:
    """The category's support sets: loaded from ``folder`` when made before, else made and saved."""
    path = folder / f"{category.name}.json"
    if path.is_file():
        sets = load_support_sets(path, category)
        if all(k in sets and len(sets[k]) >= config.n_sets for k in config.shots):
            return {k: sets[k][: config.n_sets] for k in config.shots}
    sets = make_support_sets(category, config.shots, config.n_sets, config.support_seed)
    save_support_sets(path, category, sets, config.support_seed)
    return sets


def run_experiment(config: ExperimentConfig, out_dir: Path, progress: bool = True) -> pd.DataFrame:
    """Train (leave one out) and evaluate every target category; write ``results.csv``.

    Returns:
        One row per (variant, category, K, support set) with the metrics.
    """
    out_dir = Path(out_dir)
    root = resolve_dataset(config.dataset)
    names = list_categories(root)
    targets = list(config.categories or names)
    rows, timings = [], []
    for target in targets:
        category = load_category(root, target)
        sets = support_sets_for(category, config, out_dir / "support_sets")
        train_categories = [load_category(root, c) for c in names if c != target]
        if not train_categories:
            raise ValueError(f"{root} has only {target!r}: leave-one-out training needs at least two categories")
        test = TestSet.load(category, config.regad.image_size)
        # One model per held-out category (serving every K), or one per (category, K).
        runs = [(k, config.regad.replace(train_shots=(k,)), f"K{k}") for k in config.shots] if config.model_per_shot else [(None, config.regad, "")]
        for k, regad, folder in runs:
            model_dir = out_dir / "models" / target / folder
            its_sets = sets if k is None else {k: sets[k]}
            tic = time.perf_counter()
            train_regad(train_categories, regad, model_dir, progress=progress)
            model, _ = load_model(model_dir / MODEL_NAME, expected=regad)
            timings.append({"category": target, "variant": "regad", "shots": k, "train_seconds": time.perf_counter() - tic, "eval_seconds": 0.0})
            tic = time.perf_counter()
            for row in evaluate_category(model, config.regad, category, its_sets, config.metrics, test, progress):
                rows.append({"variant": "regad", **row})
            timings[-1]["eval_seconds"] = time.perf_counter() - tic
        if config.untrained_baseline:
            seed_everything(config.regad.seed)
            untrained = build_model(config.regad).eval()
            tic = time.perf_counter()
            for row in evaluate_category(untrained, config.regad, category, sets, config.metrics, test, progress):
                rows.append({"variant": "untrained", **row})
            timings.append({"category": target, "variant": "untrained", "shots": None, "train_seconds": 0.0, "eval_seconds": time.perf_counter() - tic})
        log.info("%s done", target)
    results = pd.DataFrame(rows)
    write_csv_atomic(out_dir / "results.csv", results)
    write_csv_atomic(out_dir / "timings.csv", pd.DataFrame(timings))
    return results


__all__ = ["ExperimentConfig", "resolve_dataset", "run_experiment", "support_sets_for"]
