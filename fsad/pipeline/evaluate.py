"""Stage ``evaluate@<category>-<seed>``: every support set of every K scored with one seed's model.

The metrics come from :func:`fsad.study.evaluation.evaluate_detector`, the loop every study
uses. For the figures, the same loop keeps the anomaly maps of the first support set of every
K: per-image scores (ROC curves) and the best and worst test images. The untrained network
does not depend on the training seed: only the first seed's stage scores it (``untrained``).

Example:
    >>> out = evaluate_target("mono", 0, EvalSettings(metrics=("image_auroc",)))  # doctest: +SKIP
    >>> out.rows.groupby("shots")["image_auroc"].mean()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from fsad.config import EvalSettings, RegADConfig
from fsad.data.mvtec import Category
from fsad.io import write_csv_atomic, write_json_atomic
from fsad.methods.regad.checkpoint import load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.network import RegAD
from fsad.pipeline import layout
from fsad.pipeline.manifest import prepared_category, prepared_support_sets
from fsad.study.evaluation import TestSet, evaluate_detector, per_image_scores

FIGURE_SET = 0  # the support set whose maps the figures show (the same one for every K)


@dataclass
class Evaluation:
    """What one category's evaluation produced.

    Attributes:
        category: The evaluated category.
        seed: The training seed of the model.
        config: The settings the maps were made with.
        rows: One row per (method, K, support set) with the metrics, and ``seed``
            (empty for the untrained network).
        scores: One row per (method, K, test image) of the figure support set: label, score.
        maps: ``(method, K) -> N x S x S`` anomaly maps of the figure support set.
        test: The test images, labels and masks.
        models: ``method -> network``.
    """

    category: Category
    seed: int
    config: RegADConfig
    rows: pd.DataFrame
    scores: pd.DataFrame
    maps: dict[tuple[str, int], torch.Tensor] = field(repr=False)
    test: TestSet = field(repr=False)
    models: dict[str, RegAD] = field(repr=False)


def variants(target: str, seed: int, settings: EvalSettings, untrained: bool) -> tuple[RegADConfig, dict[str, RegAD]]:
    """The model of ``target`` trained with ``seed`` and, when ``untrained`` and asked
    (``settings.untrained_baseline``), the untrained reference network."""
    model, config = load_model(layout.model_path(target, seed))
    config = settings.apply(config)
    models = {"regad": model}
    if untrained and settings.untrained_baseline:
        models["untrained"] = untrained_regad(config.replace(pretrained=True))
    return config, models


def evaluate_target(target: str, seed: int, settings: EvalSettings, untrained: bool = True, progress: bool = True) -> Evaluation:
    """Score ``target``'s test set with every support set, for the model of ``seed`` (and the untrained one).

    The maps of support set ``FIGURE_SET`` of every K are kept from the same loop, for the figures.

    Args:
        untrained: Also score the untrained network (when ``settings.untrained_baseline``):
            the first seed's stage does, the others would only repeat it.
    """
    category = prepared_category(target)
    support_sets = prepared_support_sets(category)
    config, models = variants(target, seed, settings, untrained)
    test = TestSet.load(category, config.image_size)
    rows, scores, maps = [], [], {}
    for name, model in models.items():
        run = evaluate_detector(RegADMethod(model, config, name=name), category, support_sets, test, settings.metrics,
                                keep=[(k, FIGURE_SET) for k in support_sets], progress=progress)
        rows += [{**row, "seed": seed if name == "regad" else None} for row in run.rows]
        for (k, _), kept in sorted(run.kept.items()):
            maps[(name, k)] = kept.maps
            scores.append(pd.DataFrame({"method": name, "shots": k, "support_set": FIGURE_SET, **per_image_scores(kept, test)}))
    return Evaluation(category, seed, config, pd.DataFrame(rows), pd.concat(scores, ignore_index=True), maps, test, models)


def model_record(target: str, seed: int) -> dict[str, Any]:
    """What trained the model of ``(target, seed)``, from its file: seed, epochs, the pool's
    categories with their image counts and fingerprints (``fsad.methods.regad.training``)."""
    state = torch.load(layout.model_path(target, seed), map_location="cpu", weights_only=True)
    return {"target": target, "seed": seed, "epochs": state["config"]["epochs"], "train_categories": state["train_categories"],
            "train_images": state.get("train_images", {}), "train_fingerprints": state.get("train_fingerprints", {})}


def metrics_summary(rows: pd.DataFrame, metrics: Sequence[str], method: str = "regad") -> dict[str, Any]:
    """``{"K2": {metric: mean over support sets}}`` of one method, for ``dvc metrics show``.

    Standard deviations and the untrained reference are in ``results.csv`` and Table 1;
    keeping them out leaves ``dvc metrics show`` one readable row per category.
    """
    part = rows[rows["method"] == method]
    return {f"K{k}": {m: float(group[m].mean()) for m in metrics} for k, group in part.groupby("shots")}


def write_evaluation(evaluation: Evaluation, metrics: Sequence[str]) -> dict[str, Any]:
    """Write ``results/<category>/seed<seed>/``: results.csv, scores.csv, metrics.json and
    model.json (``model_record``: what the report says RegAD was trained on), each atomically."""
    target, seed = evaluation.category.name, evaluation.seed
    folder = layout.seed_results_dir(target, seed)
    write_csv_atomic(folder / "results.csv", evaluation.rows)
    write_csv_atomic(folder / "scores.csv", evaluation.scores)
    write_json_atomic(folder / "model.json", model_record(target, seed))
    summary = metrics_summary(evaluation.rows, metrics)
    write_json_atomic(folder / "metrics.json", summary)
    return summary


__all__ = ["Evaluation", "evaluate_target", "metrics_summary", "model_record", "write_evaluation"]
