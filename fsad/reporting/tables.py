"""Paper-style tables from per-support-set results: category x K, mean +- std over support sets.

Results of several training seeds (a ``seed`` column: the pipeline trains RegAD once per
seed) give two spreads: over the support sets (of the seeds' mean per set) and over the
seeds (of each seed's mean over the sets), side by side in Table 1.

Example:
    >>> summary = summarize(results, ["image_auroc", "pixel_auroc"])  # doctest: +SKIP
    >>> long = table1_long(summary, "regad", paper=paper_numbers("mvtec_ad"))  # doctest: +SKIP
    >>> print(to_markdown(flatten_columns(table1_wide(long))))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MEAN_ROW = "mean"
SEED = "seed"  # the training seed of a row's model; empty for a method without training (the untrained network)


def category_mean_per_set(results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The category mean of each metric per (method, shots, support_set): one support set's benchmark mean."""
    return results.groupby(["method", "shots", "support_set"])[list(metrics)].mean()


def row_order(categories: Sequence[str]) -> list[str]:
    """The rows of a category table: each category, then ``mean``; a single category is its own mean, shown once."""
    names = [c for c in dict.fromkeys(categories) if c != MEAN_ROW]
    return names + [MEAN_ROW] if len(names) > 1 else names


def summarize(results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and std over support sets per (method, category, shots), plus a ``mean`` category.

    The ``mean`` row averages the categories within each support set first, then takes
    mean and std over the support sets (so its std is that of the benchmark mean).
    Missing metrics (NaN, e.g. pixel metrics of a category without masks) are skipped.
    With a ``seed`` column, each support set's score is first averaged over the seeds (the
    support-set spread is not inflated by the training noise), and the seeds' spread is
    added (:func:`seed_spread`).

    Returns:
        Columns method, category, shots, ``<metric>_mean``, ``<metric>_std`` per metric, and
        with seeds ``seeds`` and ``<metric>_seed_std`` (NaN for a method of one seed or none).
    """
    keys = ["method", "category", "shots"]
    per_set = results.groupby([*keys, "support_set"], sort=False)[list(metrics)].mean().reset_index()  # the seeds' mean
    overall = category_mean_per_set(per_set, metrics).reset_index()
    overall["category"] = MEAN_ROW
    both = pd.concat([per_set, overall], ignore_index=True)
    grouped = both.groupby(keys, sort=False)[list(metrics)]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).fillna(0.0).add_suffix("_std")).reset_index()
    if SEED in results:
        table = table.merge(seed_spread(results, metrics), on=keys, how="left")
    return table


def seed_spread(results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The training noise: std over seeds of each seed's mean over the support sets, per (method, category, shots).

    The ``mean`` category averages the categories within each (seed, support set) first.
    Rows without a seed (the untrained network) are left out; one seed gives NaN, not 0:
    its spread is unknown.

    Args:
        results: One row per (method, category, shots, seed, support_set) with the metrics.

    Returns:
        Columns method, category, shots, ``seeds`` (how many) and ``<metric>_seed_std``.
    """
    seeded = results.dropna(subset=[SEED])
    overall = seeded.groupby(["method", "shots", SEED, "support_set"])[list(metrics)].mean().reset_index().assign(category=MEAN_ROW)
    both = pd.concat([seeded, overall], ignore_index=True)
    per_seed = both.groupby(["method", "category", "shots", SEED], sort=False)[list(metrics)].mean()
    grouped = per_seed.groupby(level=["method", "category", "shots"], sort=False)
    spread = grouped.std(ddof=1).add_suffix("_seed_std")
    return spread.assign(seeds=grouped.size()).reset_index()


def pivot_text(summary: pd.DataFrame, metrics: Sequence[str], method: str, scale: float = 100.0) -> pd.DataFrame:
    """Category rows x K columns of ``"m1 +- s1 / m2 +- s2"`` strings (in %) for one method, ``mean`` last
    (:func:`row_order`: no ``mean`` row for a single category)."""
    part = summary[summary["method"] == method]

    def cell(row) -> str:
        out = []
        for m in metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            out.append("-" if np.isnan(mean) else f"{scale * mean:.1f}±{scale * std:.1f}")
        return " / ".join(out)

    text = part.assign(cell=part.apply(cell, axis=1))
    table = text.pivot(index="category", columns="shots", values="cell")
    table = table.loc[row_order(part["category"])]
    table.columns = [f"K={k}" for k in table.columns]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); missing values are written ``-``."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = ["-" if pd.isna(v) else str(v) for v in row.values]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)



def side_by_side(summary: pd.DataFrame, metrics: Sequence[str], methods: Sequence[str]) -> pd.DataFrame:
    """Category rows x (K, method) columns: each method's ``pivot_text`` cells next to the others'."""
    tables = {v: pivot_text(summary, metrics, v) for v in methods}
    columns = {f"{k} {v}": tables[v][k] for k in tables[methods[0]].columns for v in methods}
    return pd.DataFrame(columns)


def paired_difference(results: pd.DataFrame, metric: str, method: str, reference: str) -> pd.DataFrame:
    """``method`` minus ``reference`` on the category mean of ``metric``, paired by support set.

    Both methods see the same support sets, so the difference is taken within each set, on
    :func:`category_mean_per_set` (:func:`summarize`'s ``mean`` row): its std across the sets
    says whether a gain is larger than what the choice of support images does.

    Args:
        results: One row per (method, category, shots, support_set) with ``metric``.

    Returns:
        Index shots; columns ``mean``, ``std`` (over the support sets, in the metric's units),
        ``above`` (sets where ``method`` scores higher) and ``sets`` (sets that both have).
    """
    means = category_mean_per_set(results, [metric])[metric]
    diff = (means[method] - means[reference]).dropna()  # (shots, support_set)
    grouped = diff.groupby(level="shots")
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1).fillna(0.0),
                         "above": grouped.apply(lambda d: int((d > 0).sum())), "sets": grouped.size()})


def difference_text(diff: pd.DataFrame, scale: float = 100.0) -> str:
    """``K=2: +2.5±1.8 (10/10 sets), ...`` of a :func:`paired_difference` (in %)."""
    return ", ".join(f"K={k}: {scale * r['mean']:+.1f}±{scale * r['std']:.1f} ({int(r['above'])}/{int(r['sets'])} sets)"
                     for k, r in diff.iterrows())


# ---- Table 1 of the paper: category x K, image / pixel AUROC, optionally beside the paper's numbers.

TABLE1_METRICS = ("image_auroc", "pixel_auroc")
METRIC_LABELS = {"image_auroc": "image", "pixel_auroc": "pixel", "aupro": "AUPRO", "f1_max": "F1-max"}


def table1_long(summary: pd.DataFrame, method: str, metrics: Sequence[str] = TABLE1_METRICS,
                paper: pd.DataFrame | None = None, scale: float = 100.0) -> pd.DataFrame:
    """One row per (category, K, metric): our mean and std in %, and the paper's value and our difference.

    Args:
        summary: As returned by :func:`summarize`.
        method: The method to report (``regad``).
        metrics: Metrics to keep; one that is NaN for every row (no masks) is dropped.
        paper: The paper's numbers in % (``fsad.reporting.paper.paper_numbers``), columns category,
            shots and one per metric; ``None`` for a data set the paper did not use.

    Returns:
        Columns category, shots, metric, mean, std, for a method of training seeds also
        seed_std (:func:`seed_spread`; NaN for one seed), and with ``paper`` also paper and diff (ours minus the
        paper's; NaN where the paper has no number).
    """
    part = summary[summary["method"] == method]
    if part.empty:
        raise ValueError(f"fsad/reporting/tables.py: no rows of method {method!r}; methods: {sorted(summary['method'].unique())}")
    seeded = "seeds" in part and part["seeds"].notna().any()  # a trained method: its seed spread, "-" for one seed
    rows = []
    for metric in metrics:
        if f"{metric}_mean" not in part or part[f"{metric}_mean"].isna().all():
            continue
        for _, row in part.iterrows():
            rows.append({"category": row["category"], "shots": int(row["shots"]), "metric": metric,
                         "mean": scale * row[f"{metric}_mean"], "std": scale * row[f"{metric}_std"],
                         **({"seed_std": scale * row[f"{metric}_seed_std"]} if seeded else {})})
    long = pd.DataFrame(rows, columns=["category", "shots", "metric", "mean", "std", *(["seed_std"] if seeded else [])])
    if paper is not None:
        reference = paper.melt(id_vars=["category", "shots"], var_name="metric", value_name="paper")
        long = long.merge(reference, on=["category", "shots", "metric"], how="left")
        long["diff"] = long["mean"] - long["paper"]
    return long


def _number(value: float, signed: bool = False) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def table1_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Category rows x (``K=k``, field) columns of text cells, the paper's layout.

    Fields per K and metric: ``image`` (``mean±std`` over the support sets), with training
    seeds ``image seeds`` (``±std`` over the seeds), and when ``long`` has paper numbers also
    ``image paper`` and ``image Δ``. The ``mean`` row comes last (none for a single category).
    """
    with_paper = "paper" in long
    with_seeds = "seed_std" in long
    order = row_order(long["category"])
    columns: dict[tuple[str, str], dict[str, str]] = {}
    for shots in sorted(long["shots"].unique()):
        for metric in dict.fromkeys(long["metric"]):
            part = long[(long["shots"] == shots) & (long["metric"] == metric)].set_index("category")
            label = METRIC_LABELS.get(metric, metric)
            columns[(f"K={shots}", label)] = {c: f"{_number(r['mean'])}±{_number(r['std'])}" for c, r in part.iterrows()}
            if with_seeds:
                columns[(f"K={shots}", f"{label} seeds")] = {c: "-" if pd.isna(r["seed_std"]) else f"±{_number(r['seed_std'])}"
                                                            for c, r in part.iterrows()}
            if with_paper:
                columns[(f"K={shots}", f"{label} paper")] = {c: _number(r["paper"]) for c, r in part.iterrows()}
                columns[(f"K={shots}", f"{label} Δ")] = {c: _number(r["diff"], signed=True) for c, r in part.iterrows()}
    table = pd.DataFrame(columns).reindex(order).fillna("-")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "category"
    return table


def flatten_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``(K=2, image)`` column pairs -> ``"K=2 image"``, for Markdown and CSV readers."""
    flat = table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" ".join(map(str, c)) for c in flat.columns]
    return flat


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    escaped = "".join(replacements.get(ch, ch) for ch in str(text))
    return escaped.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(table: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` environment; two-level columns become a ``\\multicolumn`` header.

    Needs ``\\usepackage{booktabs}`` in the document. Text is escaped (``metal_nut`` ->
    ``metal\\_nut``, ``±`` -> ``$\\pm$``); the ``mean`` row is set off by a rule.

    Example:
        >>> print(to_latex(pd.DataFrame({"K=2": ["85.7±1.0"]}, index=["mean"])))  # doctest: +SKIP
    """
    two_level = isinstance(table.columns, pd.MultiIndex)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{l{'c' * len(table.columns)}}}", r"\toprule"]
    if two_level:
        groups = list(dict.fromkeys(c[0] for c in table.columns))
        spans = [sum(1 for c in table.columns if c[0] == g) for g in groups]
        header = [""] + [rf"\multicolumn{{{n}}}{{c}}{{{_latex_escape(g)}}}" for g, n in zip(groups, spans)]
        lines.append(" & ".join(header) + r" \\")
        start, rules = 2, []
        for n in spans:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        lines.append(" ".join(rules))
        fields = [c[1] for c in table.columns]
    else:
        fields = list(table.columns)
    lines.append(" & ".join([_latex_escape(table.index.name or "")] + [_latex_escape(f) for f in fields]) + r" \\")
    lines.append(r"\midrule")
    for index, row in table.iterrows():
        if index == MEAN_ROW and len(table) > 1:
            lines.append(r"\midrule")
        lines.append(" & ".join([_latex_escape(index)] + [_latex_escape(v) for v in row.values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
