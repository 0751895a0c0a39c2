"""Stage ``report``: Table 1 (CSV, Markdown, LaTeX), bars across K, the benchmark's mean metrics.

Table 1 has the paper's layout: a row per category and the mean, image and pixel AUROC per
K, mean +- std over the support sets. On MVTec AD or MPDD the paper's numbers and our
difference sit beside each cell.

Example:
    >>> report = make_report(["mono", "poly"], paper="auto")  # doctest: +SKIP
    >>> print(report.markdown)  # doctest: +SKIP
"""

from __future__ import annotations

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
    TABLE1_METRICS,
    flatten_columns,
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
    files: list[Path] = field(default_factory=list)


def collect_results(targets: Sequence[str]) -> pd.DataFrame:
    """Every target's ``results/<c>/results.csv`` in one frame.

    Raises:
        FileNotFoundError: a target was not evaluated yet.
    """
    frames = []
    for target in targets:
        path = layout.results_dir(target) / "results.csv"
        if not path.is_file():
            raise FileNotFoundError(f"fsad/pipeline/report.py: {path} does not exist; run dvc repro evaluate@{target}")
        frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True)


def choose_benchmark(paper: str, detected: str | None) -> str | None:
    """The benchmark whose paper numbers to show: ``auto`` takes the one data_prep detected."""
    if paper not in PAPER_CHOICES:
        raise ValueError(f"fsad/pipeline/report.py: report.paper is {paper!r}; choose one of {PAPER_CHOICES}")
    if paper == "auto":
        return detected
    return None if paper == "none" else paper


def _markdown(long_by_method: dict[str, pd.DataFrame], summary: pd.DataFrame, metrics: Sequence[str],
              dataset: str, benchmark: str | None, n_sets: int) -> str:
    lines = [f"# Table 1: {dataset}", "",
             f"AUROC in %, mean ± std over {n_sets} support sets per K (leave-one-category-out training)."]
    if benchmark:
        lines.append(f"`paper`: RegAD's published number on {benchmark}; `Δ`: ours minus the paper's.")
    for method, long in long_by_method.items():
        if long.empty:
            continue
        lines += ["", f"## {method}", "", to_markdown(flatten_columns(table1_wide(long)))]
    lines += ["", "## All metrics", "", f"{' / '.join(METRIC_LABELS.get(m, m) for m in metrics)} in %.", ""]
    for method in dict.fromkeys(summary["method"]):
        lines += [f"### {method}", "", to_markdown(pivot_text(summary, metrics, method)), ""]
    return "\n".join(lines)


def make_report(targets: Sequence[str], paper: str = "auto") -> Report:
    """Write ``reports/table1.{csv,md,tex}``, ``reports/metrics.json`` and ``reports/figures/summary/``.

    Args:
        targets: The evaluated categories (``data.categories``).
        paper: ``auto`` (the paper's numbers when the data set is MVTec AD or MPDD),
            ``mvtec_ad``, ``mpdd`` or ``none``.
    """
    manifest = load_manifest()
    results = collect_results(targets)
    metrics = [m for m in ("image_auroc", "pixel_auroc", "aupro", "f1_max") if m in results]
    summary = summarize(results, metrics)
    benchmark = choose_benchmark(paper, manifest.get("benchmark"))
    reference = paper_numbers(benchmark) if benchmark else None
    long_by_method = {}
    for method in dict.fromkeys(summary["method"]):
        long_by_method[method] = table1_long(summary, method, TABLE1_METRICS, reference if method == "regad" else None)
    long = pd.concat([frame.assign(method=v) for v, frame in long_by_method.items()], ignore_index=True)
    n_sets = int(results["support_set"].nunique())
    markdown = _markdown(long_by_method, summary, metrics, manifest["dataset"], benchmark, n_sets)
    caption = (f"RegAD on {manifest['dataset']}: AUROC (%) per category and K, mean $\\pm$ std over {n_sets} support sets"
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
    return Report(markdown, latex, long, files)


__all__ = ["PAPER_CHOICES", "Report", "choose_benchmark", "collect_results", "make_report"]
