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
- ``stn_lr_x<f>``: the default model trained with the STN parameters at ``stn_lr_factor`` x
  ``lr`` (``RegADConfig.stn_lr``; issue 10, to keep registration near the identity);
  ``stn_lr_shared`` when the default already has its own STN rate;
- ``identity_penalty_<w>``: the default model trained with a penalty of weight
  ``identity_penalty`` on each STN's deviation from the identity (``stn_identity_penalty``);
  ``no_identity_penalty`` when the default already has one;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fsad.config import AblationConfig, RegADConfig
from fsad.data.support_sets import support_sets_for
from fsad.io import save_figure_atomic, write_csv_atomic, write_text_atomic
from fsad.methods.regad.checkpoint import untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.stn import NO_STN
from fsad.methods.regad.training import MODEL_NAME
from fsad.reporting.tables import MEAN_ROW, summarize
from fsad.study.comparison import comparison_table, result_sections, settings_section
from fsad.study.evaluation import TestSet, evaluate_detector
from fsad.study.experiment import resolve_dataset
from fsad.study.models import leave_one_out_regad
from fsad.study.pools import load_extra, training_pool
from fsad.study.preflight import preflight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One ablation: the training settings it changes (none: the default model), trained or not, its test-time settings and K."""

    name: str
    trained: bool
    augment_support: bool
    shots: tuple[int, ...]
    training: tuple[tuple[str, Any], ...] = ()  # (RegADConfig key, value) this variant trains with

    def settings(self, regad: RegADConfig) -> RegADConfig:
        return regad.replace(**dict(self.training))

    def folder(self, regad: RegADConfig) -> str:
        """``<stn mode>``, or ``<stn mode>-<name>`` where the variant changes more than the STN mode."""
        mode = self.settings(regad).stn_mode
        return mode if {key for key, _ in self.training} <= {"stn_mode"} else f"{mode}-{self.name}"


def ablation_variants(config: AblationConfig) -> list[Variant]:
    """Every variant of ``config``: the default RegAD first, the other STN modes (the costly ones) last.

    The batch-norm, STN-rate and identity-penalty variants flip the default's setting, and are
    named for what they do.
    """
    regad, shots = config.regad, config.shots
    stn_lr = None if regad.stn_lr is not None else config.stn_lr_factor * regad.lr
    penalty = 0.0 if regad.stn_identity_penalty else config.identity_penalty
    return [
        Variant(f"stn_{regad.stn_mode}", True, True, shots),
        Variant("no_stn", True, True, shots, (("stn_mode", NO_STN),)),
        Variant("trained_bn" if regad.freeze_backbone_bn else "frozen_bn", True, True, shots,
                (("freeze_backbone_bn", not regad.freeze_backbone_bn),)),
        Variant("stn_lr_shared" if stn_lr is None else f"stn_lr_x{config.stn_lr_factor:g}", True, True, shots, (("stn_lr", stn_lr),)),
        Variant(f"identity_penalty_{penalty:g}" if penalty else "no_identity_penalty", True, True, shots,
                (("stn_identity_penalty", penalty),)),
        Variant("untrained", False, True, shots),
        Variant("no_augmentation", True, False, shots),
        Variant("k_sweep", True, True, config.k_sweep),
        *(Variant(f"stn_{m}", True, True, shots, (("stn_mode", m),)) for m in config.stn_modes if m != regad.stn_mode),
    ]


def _model(variant: Variant, config: AblationConfig, target: str, others, models_dir: Path, progress: bool) -> RegAD:
    """The variant's network: untrained, reused from ``regad_models``, or trained (resumable) here."""
    settings = variant.settings(config.regad)
    if not variant.trained:
        return untrained_regad(settings)
    # regad_models holds the default variant's models only: other variants would just be refused there
    reuse = Path(config.regad_models) / target / MODEL_NAME if config.regad_models and settings == config.regad else None
    return leave_one_out_regad(others, settings, models_dir / variant.folder(config.regad) / target, reuse, progress)[0]


def _support_sets(category, config: AblationConfig, shots: Sequence[int], out_dir: Path) -> dict[int, list[list[str]]]:
    """The shared sets of ``config.shots`` where ``config.support_dir`` is given (only read), the rest drawn into ``out_dir``.

    Support-set draws do not depend on which other K are drawn, so the extra K of the
    sweep are the sets data_prep would have made.
    """
    shared = [k for k in shots if k in config.shots] if config.support_dir else []
    sets = support_sets_for(category, shared, config.n_sets, config.support_seed, Path(config.support_dir),
                            read_only=True) if shared else {}
    drawn = [k for k in shots if k not in sets]
    if drawn:
        sets.update(support_sets_for(category, drawn, config.n_sets, config.support_seed, out_dir / "support_sets"))
    return {k: sets[k] for k in shots}


def run_ablations(config: AblationConfig, out_dir: Path, models_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Score every variant on every target category; write ``out_dir/results.csv`` (metrics only: identical
    runs write identical files) and ``timings.csv`` (fitting and scoring seconds per variant and category).

    Models are trained (resumably) under ``models_dir/<stn mode>/<category>/``
    (``None``: ``out_dir/models``).

    Returns:
        One row per (variant, category, K, support set) with the metrics.
    """
    out_dir = Path(out_dir)
    models_dir = Path(models_dir) if models_dir else out_dir / "models"
    # Before any training; it loads every category, which the run then uses.
    checked = preflight(resolve_dataset(config.dataset), config.categories, config.shots, config.metrics, config.regad.device)
    extra = load_extra(config.regad.train_extra)  # read and checked before any training
    size = config.regad.image_size
    variants = ablation_variants(config)
    data = {}
    for target in checked.targets:
        category = checked.categories[target]
        shots = sorted(k for k in {*config.shots, *config.k_sweep} if k <= len(category.train))
        others = [c for name, c in checked.categories.items() if name != target]
        pool = training_pool(category, others, extra, config.regad.train_own)
        data[target] = category, _support_sets(category, config, shots, out_dir), pool, TestSet.load(category, size)
    models: dict[tuple, RegAD] = {}
    rows, timings = [], []
    # Variant by variant, every category each, results.csv rewritten after each: a run cut
    # short still has whole variants, the default and the cheap ones first.
    for variant in variants:
        for target, (category, sets, others, test) in data.items():
            key = (variant.trained, variant.training, target)
            if key not in models:
                models[key] = _model(variant, config, target, others, models_dir, progress)
            method = RegADMethod(models[key], config.regad.replace(augment_support=variant.augment_support), name=variant.name)
            # K = 1 without views has no covariance; the K sweep's K shared with ``shots`` are the default variant's rows
            scored = {k: sets[k] for k in variant.shots if k in sets and (k >= 2 or variant.augment_support)
                      and not (variant.name == "k_sweep" and k in config.shots)}
            if variant.name == "k_sweep":
                default = f"stn_{config.regad.stn_mode}"
                rows += [{**row, "method": variant.name} for row in rows
                         if row["method"] == default and row["category"] == target and row["shots"] in config.shots]
            run = evaluate_detector(method, category, scored, test, config.metrics, progress=progress)
            rows += [{**row, "stn_mode": variant.settings(config.regad).stn_mode} for row in run.rows]
            timings.append({"method": variant.name, "category": target, **run.seconds})
            log.info("%s %s done", target, variant.name)
        write_csv_atomic(out_dir / "results.csv", pd.DataFrame(rows))
        write_csv_atomic(out_dir / "timings.csv", pd.DataFrame(timings))
    return pd.DataFrame(rows)


def ablation_table(results: pd.DataFrame, metrics: Sequence[str], categories: bool = False) -> pd.DataFrame:
    """Variants as row groups, K as columns (``comparison_table``)."""
    return comparison_table(results.drop(columns="stn_mode"), metrics, categories)


def plot_ablations(results: pd.DataFrame, metric: str = "image_auroc", path: Path | None = None):
    """Left: every variant but the K sweep at each K; right: the K sweep. Category mean +- std over support sets, in %.

    Returns the matplotlib figure; saves it as PNG when ``path`` is given.
    """
    import matplotlib.pyplot as plt

    summary = summarize(results.drop(columns="stn_mode"), [metric])
    mean = summary[summary["category"] == MEAN_ROW]
    order = {name: i for i, name in enumerate(results["method"].unique())}  # the run's order: the default first
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.5, 1]})
    for offset, (shots, part) in zip((-0.2, 0, 0.2, 0.4), mean[mean["method"] != "k_sweep"].groupby("shots")):
        part = part.sort_values("method", key=lambda v: v.map(order))
        x = part["method"].map(order).to_numpy() + offset  # side by side, not on top of each other
        left.errorbar(x, 100 * part[f"{metric}_mean"], yerr=100 * part[f"{metric}_std"], fmt="o", capsize=3, label=f"K={shots}")
    names = [n for n in order if n != "k_sweep"]
    left.set_xticks([order[n] for n in names], names, rotation=45, ha="right")
    left.set_ylabel(f"{metric} (%)")
    left.grid(axis="y", alpha=0.3)
    left.legend(loc="lower left", fontsize="small")
    sweep = mean[mean["method"] == "k_sweep"]
    right.errorbar(sweep["shots"], 100 * sweep[f"{metric}_mean"], yerr=100 * sweep[f"{metric}_std"], fmt="o-", capsize=3)
    right.set_xscale("log", base=2)
    right.set_xlabel("K")
    right.set_title("k_sweep")
    fig.tight_layout()
    if path is not None:
        save_figure_atomic(fig, path)
    return fig



def write_report(config: AblationConfig, out_dir: Path) -> str:
    """``out_dir/table.md`` (variants x K, category mean and per category, wall time, settings) and ``ablations.png``; returns the text."""
    out_dir = Path(out_dir)
    if not (out_dir / "results.csv").is_file():
        raise FileNotFoundError(f"{out_dir / 'results.csv'} does not exist: no results of these settings to tabulate; "
                                "run `fsad ablate` without --tables-only first")
    results = pd.read_csv(out_dir / "results.csv")
    plot_ablations(results, "image_auroc", out_dir / "ablations.png")
    parts = [f"metrics per cell: {' / '.join(config.metrics)} (%), mean ± std over support sets",
             *result_sections(lambda categories: ablation_table(results, config.metrics, categories), list(results["category"]))]
    if (out_dir / "wall_time.txt").is_file():
        parts.append("## wall time\n" + (out_dir / "wall_time.txt").read_text().strip())
    parts.append(settings_section(config))
    text = "\n\n".join(parts)
    write_text_atomic(out_dir / "table.md", text + "\n")
    return text

__all__ = ["Variant", "ablation_table", "ablation_variants", "plot_ablations", "run_ablations", "write_report"]
