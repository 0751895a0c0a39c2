"""Stage ``report``: Table 1 (CSV, Markdown, LaTeX), bars across K, the benchmark's mean metrics.

Table 1 has the paper's layout: a row per category and the mean, image and pixel AUROC per
K, mean +- std over the support sets, and beside it the std over RegAD's training seeds
(one model per seed, ``train.seeds``). On MVTec AD or MPDD the paper's numbers and our
difference sit beside each cell. The report also says what RegAD was trained on (each
model's record: its pool's categories and image counts) and what training adds over the
untrained network, paired by support set.

Example:
    >>> report = make_report(["mono", "poly"], seeds=[0, 1, 2], paper="auto")  # doctest: +SKIP
    >>> print(report.markdown)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fsad.io import atomic_dir, save_figure_atomic, write_csv_atomic, write_json_atomic, write_text_atomic
from fsad.paths import REPORTS_DIR
from fsad.pipeline import layout
from fsad.pipeline.manifest import load_manifest
from fsad.reporting.figures import bars_across_k
from fsad.reporting.paper import BENCHMARKS, paper_numbers
from fsad.reporting.tables import (
    MEAN_ROW,
    METRIC_LABELS,
    SEED,
    TABLE1_METRICS,
    difference_text,
    flatten_columns,
    paired_difference,
    pivot_text,
    summarize,
    table1_long,
    table1_wide,
    to_latex,
    to_markdown,
)

PAPER_CHOICES = ("auto", "none", *BENCHMARKS)
TABLE1 = REPORTS_DIR / "table1"
SUMMARY_FIGURES = layout.FIGURES_DIR / "summary"


@dataclass
class Report:
    """What the report stage wrote: the tables as text and the paths of every file."""

    markdown: str
    latex: str
    long: pd.DataFrame
    pools: pd.DataFrame
    files: list[Path] = field(default_factory=list)


def _seed_file(target: str, seed: int, name: str) -> Path:
    path = layout.seed_results_dir(target, seed) / name
    if not path.is_file():
        raise FileNotFoundError(f"fsad/pipeline/report.py: {path} does not exist; run dvc repro evaluate@{target}-{seed}")
    return path


def collect_results(targets: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Every (target, seed)'s ``results/<c>/seed<s>/results.csv`` in one frame (column ``seed``:
    the model's training seed, empty for the untrained network, scored once).

    Raises:
        FileNotFoundError: a (target, seed) was not evaluated yet.
    """
    return pd.concat([pd.read_csv(_seed_file(t, s, "results.csv")) for t in targets for s in seeds], ignore_index=True)


def training_pools(targets: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """What trained each model, from its record (``results/<c>/seed<s>/model.json``):
    one row per (target, seed, training category) with its image count."""
    rows = []
    for target in targets:
        for seed in seeds:
            record = json.loads(_seed_file(target, seed, "model.json").read_text())
            rows += [{"target": target, "seed": seed, "category": name, "images": record["train_images"].get(name)}
                     for name in record["train_categories"]]
    return pd.DataFrame(rows, columns=["target", "seed", "category", "images"])


def pool_text(pools: pd.DataFrame) -> str:
    """``mono (seeds 0, 1, 2): elpv/poly (120), toy/disc (12), ...``: one line per target, the
    pool of every seed (one line per seed where seeds differ, which only a stale model could)."""
    lines = []
    for target, part in pools.groupby("target", sort=False):
        by_seed = {seed: ", ".join(f"{r.category} ({r.images} images)" for r in rows.itertuples())
                   for seed, rows in part.groupby("seed", sort=False)}
        if len(set(by_seed.values())) == 1:
            lines.append(f"- `{target}` (seeds {', '.join(map(str, by_seed))}): {next(iter(by_seed.values()))}; "
                         f"{int(part.groupby('seed')['images'].sum().iloc[0])} images")
        else:
            lines += [f"- `{target}`, seed {seed}: {text}" for seed, text in by_seed.items()]
    return "\n".join(lines)


def training_gain(results: pd.DataFrame, metric: str = "image_auroc") -> str:
    """RegAD minus the untrained network on the category mean, paired by support set:
    on the seeds' mean, then each seed's own (``fsad.reporting.tables.paired_difference``)."""
    if not {"regad", "untrained"} <= set(results["method"]) or results[metric].isna().all():
        return ""
    untrained = results[results["method"] == "untrained"]
    lines = [f"- seeds' mean: {difference_text(paired_difference(results, metric, 'regad', 'untrained'))}"]
    for seed, part in results[results["method"] == "regad"].groupby(SEED):
        diff = paired_difference(pd.concat([part, untrained]), metric, "regad", "untrained")
        lines.append(f"- seed {int(seed)}: {difference_text(diff)}")
    return "\n".join(lines)


def choose_benchmark(paper: str, detected: str | None) -> str | None:
    """The benchmark whose paper numbers to show: ``auto`` takes the one data_prep detected."""
    if paper not in PAPER_CHOICES:
        raise ValueError(f"fsad/pipeline/report.py: report.paper is {paper!r}; choose one of {PAPER_CHOICES}")
    if paper == "auto":
        return detected
    return None if paper == "none" else paper


def _markdown(long_by_method: dict[str, pd.DataFrame], summary: pd.DataFrame, metrics: Sequence[str],
              dataset: str, benchmark: str | None, n_sets: int, seeds: Sequence[int], pools: pd.DataFrame, gain: str) -> str:
    legend = (f"AUROC in %, mean ± std over {n_sets} support sets per K; RegAD trained once per seed "
              f"({len(seeds)}: {', '.join(map(str, seeds))}), never on the target: its mean over the seeds, the support sets' std "
              "taken on the seeds' mean of each set, and `seeds`: the std over the seeds of each seed's mean.")
    lines = [f"# Table 1: {dataset}", "", legend]
    if benchmark:
        lines.append(f"`paper`: RegAD's published number on {benchmark}; `Δ`: ours minus the paper's.")
    lines += ["", "RegAD was trained on (the models' records):", "", pool_text(pools)]
    if gain:
        lines += ["", ("RegAD minus the untrained network, image AUROC of the category mean, paired by support set "
                       "(mean ± std over the sets, sets where RegAD is higher):"), "", gain]
    for method, long in long_by_method.items():
        if long.empty:
            continue
        lines += ["", f"## {method}", "", to_markdown(flatten_columns(table1_wide(long)))]
    lines += ["", "## All metrics", "", f"{' / '.join(METRIC_LABELS.get(m, m) for m in metrics)} in %.", ""]
    for method in dict.fromkeys(summary["method"]):
        lines += [f"### {method}", "", to_markdown(pivot_text(summary, metrics, method)), ""]
    return "\n".join(lines)


def make_report(targets: Sequence[str], seeds: Sequence[int], paper: str = "auto") -> Report:
    """Write ``reports/table1.{csv,md,tex}``, ``reports/metrics.json`` and ``reports/figures/summary/``.

    Args:
        targets: The evaluated categories (``data.categories``).
        seeds: RegAD's training seeds (``train.seeds``).
        paper: ``auto`` (the paper's numbers when the data set is MVTec AD or MPDD),
            ``mvtec_ad``, ``mpdd`` or ``none``.
    """
    manifest = load_manifest()
    results = collect_results(targets, seeds)
    pools = training_pools(targets, seeds)
    metrics = [m for m in ("image_auroc", "pixel_auroc", "aupro", "f1_max") if m in results]
    summary = summarize(results, metrics)
    benchmark = choose_benchmark(paper, manifest.get("benchmark"))
    reference = paper_numbers(benchmark) if benchmark else None
    long_by_method = {}
    for method in dict.fromkeys(summary["method"]):
        long_by_method[method] = table1_long(summary, method, TABLE1_METRICS, reference if method == "regad" else None)
    long = pd.concat([frame.assign(method=v) for v, frame in long_by_method.items()], ignore_index=True)
    n_sets = int(results["support_set"].nunique())
    markdown = _markdown(long_by_method, summary, metrics, manifest["dataset"], benchmark, n_sets, seeds, pools, training_gain(results))
    caption = (f"RegAD on {manifest['dataset']}: AUROC (%) per category and K, mean over {len(seeds)} training seeds, "
               f"$\\pm$ std over {n_sets} support sets; seeds: $\\pm$ std over the seeds"
               + (f"; paper: the published numbers on {benchmark}" if benchmark else ""))
    latex = to_latex(table1_wide(long_by_method["regad"]), caption=caption.replace("$\\pm$", "±"), label="tab:regad")
    files = [TABLE1.with_suffix(".csv"), TABLE1.with_suffix(".md"), TABLE1.with_suffix(".tex")]
    write_csv_atomic(files[0], long[["method", *[c for c in long.columns if c != "method"]]])
    write_text_atomic(files[1], markdown + "\n")
    write_text_atomic(files[2], latex)
    means = summary[(summary["category"] == MEAN_ROW) & (summary["method"] == "regad")]
    write_json_atomic(REPORTS_DIR / "metrics.json",
                      {f"K{int(r['shots'])}": {m: r[f"{m}_mean"] for m in metrics} for _, r in means.iterrows()})
    files.append(REPORTS_DIR / "metrics.json")
    with atomic_dir(SUMMARY_FIGURES) as folder:  # bars of pixel AUROC only exist with masks: replace the folder
        for metric in ("image_auroc", "pixel_auroc"):
            if metric in results and results[metric].notna().any():
                save_figure_atomic(bars_across_k(results, metric, f"{METRIC_LABELS[metric]} AUROC (%)"), folder / f"bars_{metric}.png")
    files += sorted(SUMMARY_FIGURES.glob("*.png"))
    return Report(markdown, latex, long, pools, files)


__all__ = ["PAPER_CHOICES", "Report", "choose_benchmark", "collect_results", "make_report", "pool_text", "training_gain",
           "training_pools"]
