"""The RegAD paper's ablations under the project's harness.

Variants of one RegAD run (the ablations of https://arxiv.org/abs/2207.07361), all scored on
the same support sets and test images:
- ``stn_<mode>``: the model trained with each STN transform family;
  ``stn_rotation_scale`` is the default RegAD;
- ``no_stn``: the backbone + Siamese head trained without any STN (``stn_mode="none"``);
- ``frozen_bn``: the default model trained with the backbone's ImageNet batch-norm
  statistics kept (``freeze_backbone_bn``; not in the paper: our diagnosis of RegAD on
  fsad-mini, ``benchmarks/registration_diagnosis.py``; ``trained_bn`` when the default
  already freezes them);
- ``untrained``: registration training off: ImageNet features + 22 support views + Gaussian;
- ``no_augmentation``: the default model without the 22 support views;
- ``k_sweep``: the default model at K in ``k_sweep`` (16 only where a category has >= 16
  train images; K = 1 works thanks to the views). Its K values shared with ``shots`` are
  the default variant's rows, not scored twice.
Models train leave-one-category-out under ``models_dir/<stn mode>[-frozen_bn]/<category>/``
(the default mode's models of ``fsad.study.experiment`` are reused through ``regad_models``).

Example:
    >>> config = AblationConfig(dataset="toy", stn_modes=("rotation_scale", "affine"), n_sets=2)
    >>> results = run_ablations(config, Path("runs/ablations-toy"))
    >>> print(ablation_table(results, ("image_auroc", "pixel_auroc")))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fsad.config import RegADConfig, settings_of
from fsad.data.loading import load_images
from fsad.data.mvtec import list_categories, load_category
from fsad.data.support_sets import load_support_sets, support_samples
from fsad.io import save_figure_atomic, write_csv_atomic
from fsad.methods.regad.checkpoint import build_model, load_model
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.stn import NO_STN, STN_MODES
from fsad.methods.regad.training import MODEL_NAME, train_regad
from fsad.reporting.tables import MEAN_ROW, summarize
from fsad.seed import seed_everything
from fsad.study.comparison import comparison_table, method_metrics
from fsad.study.evaluation import TestSet
from fsad.study.experiment import ExperimentConfig, resolve_dataset, support_sets_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AblationConfig:
    """Which data and which ablations.

    Attributes:
        dataset, categories, shots, n_sets, support_seed, metrics: As in ``ComparisonConfig``.
        k_sweep: K values of the ``k_sweep`` variant.
        stn_modes: STN modes trained for the ``stn_<mode>`` variants (default: all nine).
        regad: The default RegAD settings; every variant changes one thing.
        regad_models: Folder holding ``<category>/regad.pt`` of the default STN mode, reused.
        support_dir: Folder of shared support-set JSON files, only read (the pipeline's
            data_prep output); K values it lacks (the K sweep's) are drawn the same way into
            ``out_dir/support_sets``. ``None``: everything goes to ``out_dir/support_sets``.
    """

    dataset: str = "toy"
    categories: tuple[str, ...] | None = None
    shots: tuple[int, ...] = (2, 4, 8)
    k_sweep: tuple[int, ...] = (1, 2, 4, 8, 16)
    n_sets: int = 10
    support_seed: int = 0
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro")
    stn_modes: tuple[str, ...] = tuple(STN_MODES)
    regad: RegADConfig = field(default_factory=RegADConfig)
    regad_models: str | None = None
    support_dir: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> AblationConfig:
        """Build from a mapping (e.g. the ``ablations`` section of params.yaml); unknown keys are errors."""
        values = settings_of(cls, values, source, "ablation", tuples=("categories", "shots", "k_sweep", "metrics", "stn_modes"))
        bad = sorted(set(values.get("stn_modes", ())) - set(STN_MODES))
        if bad:
            raise ValueError(f"{source}: unknown STN mode(s) {bad}; choose from {sorted(STN_MODES)}")
        return cls(**values)


@dataclass(frozen=True)
class Variant:
    """One ablation: the model it scores (``stn_mode``, trained or not, batch norm frozen or not), its test-time settings and K."""

    name: str
    stn_mode: str
    trained: bool
    augment_support: bool
    shots: tuple[int, ...]
    freeze_backbone_bn: bool = False

    @property
    def model_key(self) -> tuple[str, bool, bool]:
        return self.stn_mode, self.trained, self.freeze_backbone_bn


def ablation_variants(config: AblationConfig) -> list[Variant]:
    """Every variant of ``config``: the default RegAD first, the other STN modes (the costly ones) last."""
    default, frozen = config.regad.stn_mode, config.regad.freeze_backbone_bn
    return [
        Variant(f"stn_{default}", default, True, True, config.shots),
        Variant("no_stn", NO_STN, True, True, config.shots),
        # the batch-norm switch flipped: named for what the variant does
        Variant("trained_bn" if frozen else "frozen_bn", default, True, True, config.shots, freeze_backbone_bn=not frozen),
        Variant("untrained", default, False, True, config.shots),
        Variant("no_augmentation", default, True, False, config.shots),
        Variant("k_sweep", default, True, True, config.k_sweep),
        *(Variant(f"stn_{m}", m, True, True, config.shots) for m in config.stn_modes if m != default),
    ]


def _model(variant: Variant, config: AblationConfig, target: str, others, models_dir: Path, progress: bool) -> RegAD:
    """The variant's network: untrained, reused from ``regad_models``, or trained (resumable) here."""
    settings = config.regad.replace(stn_mode=variant.stn_mode, freeze_backbone_bn=variant.freeze_backbone_bn)
    if not variant.trained:
        seed_everything(settings.seed)
        return build_model(settings).eval()
    reused = Path(config.regad_models or "") / target / MODEL_NAME
    if config.regad_models and settings == config.regad and reused.is_file():
        return load_model(reused, expected=settings)[0]
    folder = models_dir / (variant.stn_mode + ("-frozen_bn" if variant.freeze_backbone_bn else "")) / target
    if not (folder / MODEL_NAME).is_file():
        train_regad(others, settings, folder, progress=progress)
    return load_model(folder / MODEL_NAME, expected=settings)[0]


def _support_sets(category, config: AblationConfig, shots: Sequence[int], out_dir: Path) -> dict[int, list[list[str]]]:
    """The shared sets where ``config.support_dir`` has them (never written to), the rest drawn into ``out_dir``.

    Support-set draws do not depend on which other K are drawn, so the extra K of the
    sweep are the sets data_prep would have made.
    """
    shared = Path(config.support_dir) / f"{category.name}.json" if config.support_dir else None
    sets = load_support_sets(shared, category) if shared is not None and shared.is_file() else {}
    missing = tuple(k for k in shots if len(sets.get(k, [])) < config.n_sets)
    if missing:
        drawn = ExperimentConfig(shots=missing, n_sets=config.n_sets, support_seed=config.support_seed)
        sets.update(support_sets_for(category, drawn, out_dir / "support_sets"))
    return {k: sets[k][: config.n_sets] for k in shots}


def run_ablations(config: AblationConfig, out_dir: Path, models_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Score every variant on every target category; write ``out_dir/results.csv``.

    Models are trained (resumably) under ``models_dir/<stn mode>/<category>/``
    (``None``: ``out_dir/models``).

    Returns:
        One row per (variant, category, K, support set) with the metrics.
    """
    out_dir = Path(out_dir)
    models_dir = Path(models_dir) if models_dir else out_dir / "models"
    root = resolve_dataset(config.dataset)
    names = list_categories(root)
    size = config.regad.image_size
    variants = ablation_variants(config)
    data = {}
    for target in config.categories or names:
        category = load_category(root, target)
        shots = sorted(k for k in {*config.shots, *config.k_sweep} if k <= len(category.train))
        others = [load_category(root, c) for c in names if c != target]
        data[target] = category, _support_sets(category, config, shots, out_dir), others, TestSet.load(category, size)
    models: dict[tuple, RegAD] = {}
    rows = []
    # Variant by variant, every category each, results.csv rewritten after each: a run cut
    # short still has whole variants, the default and the cheap ones first.
    for variant in variants:
        for target, (category, sets, others, test) in data.items():
            key = (*variant.model_key, target)
            if key not in models:
                models[key] = _model(variant, config, target, others, models_dir, progress)
            method = RegADMethod(models[key], config.regad.replace(augment_support=variant.augment_support), name=variant.name)
            embedded = method.embed(test.images)
            for k in (k for k in variant.shots if k in sets):
                if k < 2 and not variant.augment_support:
                    continue  # one image without views has no covariance
                if variant.name == "k_sweep" and k in config.shots:  # the default variant scored this K on the same sets
                    default = f"stn_{config.regad.stn_mode}"
                    rows += [{**row, "variant": variant.name} for row in rows
                             if row["variant"] == default and row["category"] == target and row["shots"] == k]
                    continue
                for i, paths in enumerate(sets[k]):
                    method.fit(load_images(support_samples(category, paths), size))
                    scores = method.predict_embedded(embedded)
                    rows.append({"variant": variant.name, "stn_mode": variant.stn_mode, "category": target, "shots": k,
                                 "support_set": i, **method_metrics(scores, test, config.metrics)})
            log.info("%s %s done", target, variant.name)
        write_csv_atomic(out_dir / "results.csv", pd.DataFrame(rows))
    return pd.DataFrame(rows)


def ablation_table(results: pd.DataFrame, metrics: Sequence[str], categories: bool = False) -> pd.DataFrame:
    """Variants as row groups, K as columns (``comparison_table`` on the ``variant`` column)."""
    return comparison_table(results.drop(columns="stn_mode").rename(columns={"variant": "method"}), metrics, categories)


def plot_ablations(results: pd.DataFrame, metric: str = "image_auroc", path: Path | None = None):
    """Left: every variant but the K sweep at each K; right: the K sweep. Category mean +- std over support sets, in %.

    Returns the matplotlib figure; saves it as PNG when ``path`` is given.
    """
    import matplotlib.pyplot as plt

    summary = summarize(results.drop(columns="stn_mode"), [metric])
    mean = summary[summary["category"] == MEAN_ROW]
    order = {name: i for i, name in enumerate(results["variant"].unique())}  # the run's order: the default first
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.5, 1]})
    for offset, (shots, part) in zip((-0.2, 0, 0.2, 0.4), mean[mean["variant"] != "k_sweep"].groupby("shots")):
        part = part.sort_values("variant", key=lambda v: v.map(order))
        x = part["variant"].map(order).to_numpy() + offset  # side by side, not on top of each other
        left.errorbar(x, 100 * part[f"{metric}_mean"], yerr=100 * part[f"{metric}_std"], fmt="o", capsize=3, label=f"K={shots}")
    names = [n for n in order if n != "k_sweep"]
    left.set_xticks([order[n] for n in names], names, rotation=45, ha="right")
    left.set_ylabel(f"{metric} (%)")
    left.grid(axis="y", alpha=0.3)
    left.legend(loc="lower left", fontsize="small")
    sweep = mean[mean["variant"] == "k_sweep"]
    right.errorbar(sweep["shots"], 100 * sweep[f"{metric}_mean"], yerr=100 * sweep[f"{metric}_std"], fmt="o-", capsize=3)
    right.set_xscale("log", base=2)
    right.set_xlabel("K")
    right.set_title("k_sweep")
    fig.tight_layout()
    if path is not None:
        save_figure_atomic(fig, path)
    return fig


__all__ = ["AblationConfig", "Variant", "ablation_table", "ablation_variants", "plot_ablations", "run_ablations"]
