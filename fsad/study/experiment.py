"""The whole RegAD protocol for a dataset: support sets, leave-one-out training, evaluation.

Used by ``fsad run``, the benchmarks and the notebooks, so that all of them do the same
thing. For each target category, a model is trained on every OTHER category and then
scored with every support set of the target; the same pipeline with the registration
network left untrained (pretrained features + 22 views + Gaussian) is the reference
the paper's claim is measured against.

Example:
    >>> config = ExperimentConfig.from_yaml("configs/default.yaml")  # fsad.config
    >>> results = run_experiment(config, Path("runs/default"))  # one row per (variant, category, K, set)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from fsad.config import ExperimentConfig
from fsad.data.elpv import build_elpv_dataset
from fsad.data.support_sets import support_sets_for
from fsad.data.toy import make_toy_dataset
from fsad.io import write_csv_atomic
from fsad.methods.regad.checkpoint import load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.paths import DATA_DIR, FSAD_MINI_DIR
from fsad.study.evaluation import TestSet, evaluate_detector
from fsad.study.models import POOL_SELECTED_NAME, TEST_SELECTED_NAME, EpochDiagnostics, PoolValidation, combined, leave_one_out_regad
from fsad.study.pools import load_extra, training_pool
from fsad.study.preflight import preflight
from fsad.study.targets import for_each_target

log = logging.getLogger(__name__)

# Datasets known by name; anything else is a path to an MVTec-layout folder.
EMBEDDED = {"elpv": build_elpv_dataset, "toy": make_toy_dataset}


def resolve_dataset(name: str, base: Path | None = None) -> Path:
    """Dataset name or path -> its root folder, building an embedded dataset on first use.

    ``elpv`` and ``toy`` are built under ``data/embedded/``; ``fsad-mini`` is the shared
    benchmark beside the repository; anything else is a path, relative to ``base``: the
    current directory by default, as for every other path a user types (``--out``); the
    DVC pipeline passes the project root (``fsad.pipeline.manifest.dataset_root``).
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
    root = Path(name).expanduser()
    root = (root if root.is_absolute() else Path(base or Path.cwd()) / root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist (relative paths are read from "
                                f"{'the current directory' if base is None else base}); give an MVTec-layout folder, "
                                "'elpv', 'toy' or 'fsad-mini'")
    return root


def run_experiment(config: ExperimentConfig, out_dir: Path, progress: bool = True) -> pd.DataFrame:
    """Train (leave one out) and evaluate every target category; write ``results.csv`` after each.

    ``results.csv`` holds the metrics only, so two identical runs write the same bytes; the
    wall-clock times (training, evaluation, and within it fitting and scoring, per category,
    method and model) go to ``timings.csv``.

    Returns:
        One row per (method, category, K, support set) with the metrics; ``method`` is
        ``regad`` or ``untrained``.
    """
    out_dir = Path(out_dir)
    # Before any training; it loads every category, which the run then uses.
    checked = preflight(resolve_dataset(config.dataset), config.categories, config.required_shots, config.metrics,
                        config.regad.device)
    extra = load_extra(config.regad.train_extra)  # read and checked before any training, like the data set
    timings: list[dict] = []

    def score(target: str) -> list[dict]:
        category = checked.categories[target]
        sets = support_sets_for(category, config.shots, config.n_sets, config.support_seed, out_dir / "support_sets")
        # The per-epoch sets: the first of the draw of diagnostic_shots (the study's own when that K is one of shots).
        diagnostic_sets = support_sets_for(category, [config.diagnostic_shots], config.diagnostic_sets, config.support_seed,
                                           out_dir / "support_sets") if config.epoch_diagnostics else {}
        others = [c for name, c in checked.categories.items() if name != target]
        train_categories = training_pool(category, others, extra, config.regad.train_own)
        test = TestSet.load(category, config.regad.image_size)
        # One model per held-out category (serving every K), or one per (category, K).
        runs = [(k, config.regad.replace(train_shots=(k,)), f"K{k}") for k in config.shots] if config.model_per_shot else [(None, config.regad, "")]
        rows = []
        for k, regad, folder in runs:
            tic = time.perf_counter()
            model_dir = out_dir / "models" / target / folder
            monitor = combined(
                EpochDiagnostics(category, diagnostic_sets, test, regad, model_dir, config.test_selected) if config.epoch_diagnostics else None,
                PoolValidation(train_categories, regad, model_dir, config.validation_images) if config.pool_selected else None)
            model, _ = leave_one_out_regad(train_categories, regad, model_dir, progress=progress, monitor=monitor)
            trained = time.perf_counter()
            own_sets = sets if k is None else {k: sets[k]}
            run = evaluate_detector(RegADMethod(model, config.regad, name="regad"), category, own_sets, test, config.metrics, progress=progress)
            rows += run.rows
            timings.append({"category": target, "method": "regad", "shots": k, "train_seconds": trained - tic,
                            "eval_seconds": time.perf_counter() - trained, **run.seconds})
            # test_selected is labelled: its epoch was chosen on this test set; pool_selected read no target data.
            for name, wanted, file in (("regad_test_selected", config.test_selected, TEST_SELECTED_NAME),
                                       ("regad_pool_selected", config.pool_selected, POOL_SELECTED_NAME)):
                if not wanted:
                    continue
                tic = time.perf_counter()
                selected = load_model(model_dir / file, expected=regad)[0]
                run = evaluate_detector(RegADMethod(selected, config.regad, name=name), category, own_sets, test,
                                        config.metrics, progress=progress)
                rows += run.rows
                timings.append({"category": target, "method": name, "shots": k, "train_seconds": 0.0,
                                "eval_seconds": time.perf_counter() - tic, **run.seconds})
        if config.untrained_baseline:
            tic = time.perf_counter()
            run = evaluate_detector(RegADMethod(untrained_regad(config.regad), config.regad, name="untrained"), category, sets,
                                    test, config.metrics, progress=progress)
            rows += run.rows
            timings.append({"category": target, "method": "untrained", "shots": None, "train_seconds": 0.0,
                            "eval_seconds": time.perf_counter() - tic, **run.seconds})
        log.info("%s done", target)
        return rows

    def save(rows: list[dict]) -> None:
        write_csv_atomic(out_dir / "results.csv", pd.DataFrame(rows))
        write_csv_atomic(out_dir / "timings.csv", pd.DataFrame(timings))

    return pd.DataFrame(for_each_target(checked.targets, score, save))


__all__ = ["resolve_dataset", "run_experiment"]
