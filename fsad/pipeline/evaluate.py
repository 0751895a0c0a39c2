"""Stage ``evaluate@<category>``: every support set of every K scored, per-category metrics written.

The metrics come from :func:`fsad.study.evaluation.evaluate_category`, the function ``fsad run``
uses too. For the figures, the first support set of every K is scored once more and its
anomaly maps kept: per-image scores (ROC curves) and the best and worst test images.

Example:
    >>> out = evaluate_target("mono", EvalSettings(metrics=("image_auroc",)))  # doctest: +SKIP
    >>> out.rows.groupby("shots")["image_auroc"].mean()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from fsad.components.anomaly_map import image_scores
from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import load_images
from fsad.data.mvtec import Category
from fsad.data.support_sets import support_samples
from fsad.io import write_csv_atomic, write_json_atomic
from fsad.methods.regad.checkpoint import build_model, load_model
from fsad.methods.regad.network import RegAD
from fsad.pipeline import layout
from fsad.pipeline.manifest import prepared_category, prepared_support_sets
from fsad.seed import seed_everything
from fsad.study.evaluation import (
    TestSet,
    evaluate_category,
    extract_features,
    fit_support,
    score_maps,
)

FIGURE_SET = 0  # the support set whose maps the figures show (the same one for every K)


@dataclass(frozen=True)
class EvalSettings:
    """The test-time settings of the ``evaluate`` section of params.yaml.

    Attributes:
        metrics: Metrics per support set (pixel metrics are NaN without masks).
        eps: Ridge on the covariance diagonal.
        blur_sigma: Gaussian blur of the anomaly maps, in pixels.
        augment_support: Use the 22 views of each support image.
        untrained_baseline: Also score the network with untrained STNs and backbone (the
            reference that shows what registration training adds).
    """

    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro")
    eps: float = 0.01
    blur_sigma: float = 4.0
    augment_support: bool = True
    untrained_baseline: bool = True

    def apply(self, config: RegADConfig) -> RegADConfig:
        """``config`` (from the checkpoint) with these test-time settings."""
        return config.replace(eps=self.eps, blur_sigma=self.blur_sigma, augment_support=self.augment_support)


@dataclass
class Evaluation:
    """What one category's evaluation produced.

    Attributes:
        category: The evaluated category.
        config: The settings the maps were made with.
        rows: One row per (variant, K, support set) with the metrics.
        scores: One row per (variant, K, test image) of the figure support set: label, score.
        maps: ``(variant, K) -> N x S x S`` anomaly maps of the figure support set.
        test: The test images, labels and masks.
        models: ``variant -> network``.
    """

    category: Category
    config: RegADConfig
    rows: pd.DataFrame
    scores: pd.DataFrame
    maps: dict[tuple[str, int], torch.Tensor] = field(repr=False)
    test: TestSet = field(repr=False)
    models: dict[str, RegAD] = field(repr=False)


def variants(target: str, settings: EvalSettings) -> tuple[RegADConfig, dict[str, RegAD]]:
    """The trained model of ``target`` and, when asked, the untrained reference network."""
    model, config = load_model(layout.model_path(target))
    config = settings.apply(config)
    models = {"regad": model}
    if settings.untrained_baseline:
        seed_everything(config.seed)
        models["untrained"] = build_model(config.replace(pretrained=True)).eval()
    return config, models


def figure_maps(model: RegAD, config: RegADConfig, category: Category, support_sets: dict[int, list[list[str]]],
                test: TestSet) -> dict[int, torch.Tensor]:
    """K -> N x S x S anomaly maps of the test images against support set ``FIGURE_SET``."""
    device = resolve_device(config.device)
    features = extract_features(model, test.images, device)  # N x D x h x w
    maps = {}
    for k in sorted(support_sets):
        support = load_images(support_samples(category, support_sets[k][FIGURE_SET]), config.image_size)  # K x 3 x S x S
        maps[k] = score_maps(fit_support(model, support, config, device), features, config, device)  # N x S x S
    return maps


def evaluate_target(target: str, settings: EvalSettings, progress: bool = True) -> Evaluation:
    """Score ``target``'s test set with every support set, for the trained model (and the untrained one)."""
    category = prepared_category(target)
    support_sets = prepared_support_sets(category)
    config, models = variants(target, settings)
    test = TestSet.load(category, config.image_size)
    rows, scores, maps = [], [], {}
    files = [s.path.relative_to(category.path).as_posix() for s in category.test]
    for variant, model in models.items():
        for row in evaluate_category(model, config, category, support_sets, settings.metrics, test, progress):
            rows.append({"variant": variant, **row})
        for k, variant_maps in figure_maps(model, config, category, support_sets, test).items():
            maps[(variant, k)] = variant_maps
            scores.append(pd.DataFrame({"variant": variant, "shots": k, "support_set": FIGURE_SET, "file": files,
                                        "label": test.labels, "score": image_scores(variant_maps).numpy()}))
    return Evaluation(category, config, pd.DataFrame(rows), pd.concat(scores, ignore_index=True), maps, test, models)


def metrics_summary(rows: pd.DataFrame, metrics: Sequence[str], variant: str = "regad") -> dict[str, Any]:
    """``{"K2": {metric: mean over support sets}}`` of one variant, for ``dvc metrics show``.

    Standard deviations and the untrained reference are in ``results.csv`` and Table 1;
    keeping them out leaves ``dvc metrics show`` one readable row per category.
    """
    part = rows[rows["variant"] == variant]
    return {f"K{k}": {m: float(group[m].mean()) for m in metrics} for k, group in part.groupby("shots")}


def write_evaluation(evaluation: Evaluation, metrics: Sequence[str]) -> dict[str, Any]:
    """Write ``results/<category>/``: results.csv, scores.csv and metrics.json (each atomically)."""
    folder = layout.results_dir(evaluation.category.name)
    write_csv_atomic(folder / "results.csv", evaluation.rows)
    write_csv_atomic(folder / "scores.csv", evaluation.scores)
    summary = metrics_summary(evaluation.rows, metrics)
    write_json_atomic(folder / "metrics.json", summary)
    return summary


__all__ = ["EvalSettings", "Evaluation", "evaluate_target", "metrics_summary", "write_evaluation"]
