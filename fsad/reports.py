"""Paper-style tables from per-support-set results: category x K, mean +- std over support sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MEAN_ROW = "mean"


def summarize(results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and std over support sets per (variant, category, shots), plus a ``mean`` category.

    The ``mean`` row averages the categories within each support set first, then takes
    mean and std over the support sets (so its std is that of the benchmark mean).
    Missing metrics (NaN, e.g. pixel metrics of a category without masks) are skipped.

    Returns:
        Columns variant, category, shots, and ``<metric>_mean``, ``<metric>_std`` per metric.
    """
    keys = ["variant", "category", "shots"]
    per_set = results[[*keys, "support_set", *metrics]]
    overall = per_set.groupby(["variant", "shots", "support_set"], as_index=False)[list(metrics)].mean()
    overall["category"] = MEAN_ROW
    both = pd.concat([per_set, overall], ignore_index=True)
    grouped = both.groupby(keys, sort=False)[list(metrics)]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).fillna(0.0).add_suffix("_std"))
    return table.reset_index()


def pivot_text(summary: pd.DataFrame, metrics: Sequence[str], variant: str, scale: float = 100.0) -> pd.DataFrame:
    """Category rows x K columns of ``"m1 +- s1 / m2 +- s2"`` strings (in %) for one variant."""
    part = summary[summary["variant"] == variant]

    def cell(row) -> str:
        out = []
        for m in metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            out.append("-" if np.isnan(mean) else f"{scale * mean:.1f}±{scale * std:.1f}")
        return " / ".join(out)

    text = part.assign(cell=part.apply(cell, axis=1))
    table = text.pivot(index="category", columns="shots", values="cell")
    order = [c for c in dict.fromkeys(part["category"]) if c != MEAN_ROW] + [MEAN_ROW]
    table = table.loc[order]
    table.columns = [f"K={k}" for k in table.columns]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.values)]) + " |")
    return "\n".join(lines)
