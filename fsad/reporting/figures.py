"""The report's figures as matplotlib ``Figure`` objects: no pyplot state, no display, no network.

Figures are built on ``matplotlib.figure.Figure`` directly, so they render the same in a
headless DVC stage and in JupyterLab (a figure as a cell's last value is shown inline as
a PNG), and are saved as PNG with :func:`fsad.io.save_figure_atomic`.

Example:
    >>> figure = roc_figure(scores, "mono")  # doctest: +SKIP
    >>> save_figure_atomic(figure, FIGURES_DIR / "mono" / "roc.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from fsad.data.loading import to_float

sns.set_theme(style="whitegrid", context="paper")

class ReportFigure(Figure):
    """A Figure that Jupyter shows as a PNG without pyplot (whose inline hook only knows its own figures)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()


MAP_CMAP = "jet"
MAP_ALPHA = 0.5


def _image(tensor: torch.Tensor) -> np.ndarray:
    """3 x H x W (uint8 or float in [0, 1]) -> H x W x 3 float for imshow."""
    x = to_float(tensor).float()
    return x.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _no_ticks(axes) -> None:
    for ax in np.atleast_1d(axes).flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)


def dataset_figure(categories: Sequence, size: int = 128, per_kind: int = 2) -> ReportFigure:
    """A few ``train/good``, ``test/good`` and anomalous test images of every category, one row each.

    Args:
        categories: ``fsad.data.mvtec.Category`` objects.
        size: Side the images are shown at.
        per_kind: Images of each kind.
    """
    from fsad.data.mvtec import read_image

    columns = 3 * per_kind
    figure = ReportFigure(figsize=(1.5 * columns, 1.6 * len(categories)), layout="constrained")
    axes = figure.subplots(len(categories), columns, squeeze=False)
    for row, category in enumerate(categories):
        kinds = (("train", list(category.train)), ("test good", [s for s in category.test if s.label == 0]),
                 ("anomalous", [s for s in category.test if s.label == 1]))
        for k, (kind, samples) in enumerate(kinds):
            for j, sample in enumerate(samples[:per_kind]):
                ax = axes[row, k * per_kind + j]
                ax.imshow(_image(read_image(sample.path, size)))
                ax.set_title(kind if kind != "anomalous" else sample.defect, fontsize=7)
        axes[row, 0].set_ylabel(category.name)
    _no_ticks(axes)
    return figure


def support_set_figure(images: torch.Tensor, names: Sequence[str], title: str) -> ReportFigure:
    """The K images of one support set side by side.

    Args:
        images: K x 3 x S x S images.
        names: One caption per image (its file name).
        title: Figure title.
    """
    figure = ReportFigure(figsize=(1.8 * len(images), 2.1), layout="constrained")
    axes = figure.subplots(1, len(images), squeeze=False)[0]
    for ax, image, name in zip(axes, images, names):
        ax.imshow(_image(image))
        ax.set_title(name, fontsize=6)
    _no_ticks(axes)
    figure.suptitle(title, fontsize=9)
    return figure


def best_and_worst(labels: np.ndarray, scores: np.ndarray, n: int = 2) -> tuple[list[int], list[int]]:
    """The ``n`` anomalous test images scored highest (best found) and lowest (worst missed).

    Example:
        >>> best_and_worst(np.array([0, 1, 1, 1]), np.array([5.0, 1.0, 9.0, 3.0]), n=1)
        ([2], [1])
    """
    anomalous = np.flatnonzero(labels == 1)
    order = anomalous[np.argsort(-scores[anomalous], kind="stable")]
    n = min(n, len(order) // 2) or min(n, len(order))
    return order[:n].tolist(), order[::-1][:n].tolist()


def overlay_figure(images: torch.Tensor, masks: torch.Tensor | None, maps: torch.Tensor, rows: Sequence[int],
                   titles: Sequence[str]) -> ReportFigure:
    """Image, ground truth and anomaly-map overlay of the chosen test images, one row each.

    Args:
        images: N x 3 x S x S test images.
        masks: N x S x S ground truth, or ``None`` for a data set without masks.
        maps: N x S x S anomaly maps; colours share one scale (all test maps' range), so
            rows compare.
        rows: Indices of the images to show.
        titles: One label per row (e.g. ``"best 1: score 12.3"``).
    """
    low, high = float(maps.min()), float(maps.max())
    figure = ReportFigure(figsize=(7.5, 2.5 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for r, (index, title) in enumerate(zip(rows, titles)):
        image = _image(images[index])
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(title, fontsize=8)
        if masks is None:
            axes[r, 1].text(0.5, 0.5, "no ground truth\n(image labels only)", ha="center", va="center", fontsize=8)
        else:
            axes[r, 1].imshow(masks[index].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 2].imshow(image)
        shown = axes[r, 2].imshow(maps[index].numpy(), cmap=MAP_CMAP, alpha=MAP_ALPHA, vmin=low, vmax=high)
        _no_ticks(axes[r])
    for ax, name in zip(axes[0], ("image", "ground truth", "anomaly map")):
        ax.set_title(name)
    figure.colorbar(shown, ax=axes[:, 2], shrink=0.6, label="anomaly score")
    return figure


def roc_figure(scores: pd.DataFrame, category: str) -> ReportFigure:
    """Image-level ROC curves of one category: one curve per (variant, K).

    Args:
        scores: Columns variant, shots, label, score (one support set per K).
        category: For the title.
    """
    figure = ReportFigure(figsize=(4.5, 4.2), layout="constrained")
    ax = figure.subplots()
    palette = sns.color_palette("viridis", scores["shots"].nunique())
    colours = dict(zip(sorted(scores["shots"].unique()), palette))
    for (variant, k), part in scores.groupby(["method", "shots"]):
        fpr, tpr, _ = roc_curve(part["label"], part["score"])
        area = np.trapezoid(tpr, fpr)
        ax.plot(fpr, tpr, color=colours[k], linestyle="-" if variant == "regad" else ":",
                label=f"{variant} K={k} (AUROC {100 * area:.1f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{category}: image-level ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return figure


def bars_across_k(results: pd.DataFrame, metric: str, label: str) -> ReportFigure:
    """Per-category bars of ``metric`` for every K: mean over support sets, error bar one std.

    Args:
        results: One row per (variant, category, shots, support_set) with ``metric``.
        metric: Column to plot (fractions; shown in %).
        label: Axis label.
    """
    data = results.dropna(subset=[metric]).assign(value=lambda d: 100 * d[metric], K=lambda d: "K=" + d["shots"].astype(str))
    variants = list(dict.fromkeys(data["method"]))
    figure = ReportFigure(figsize=(1.2 + 1.3 * data["category"].nunique() * len(variants), 3.6), layout="constrained")
    axes = figure.subplots(1, len(variants), sharey=True, squeeze=False)[0]
    for ax, variant in zip(axes, variants):
        sns.barplot(data=data[data["method"] == variant], x="category", y="value", hue="K", errorbar="sd",
                    palette="viridis", ax=ax, capsize=0.1, err_kws={"linewidth": 1})
        ax.set(title=variant, xlabel="", ylabel=label if ax is axes[0] else "", ylim=(max(0, data["value"].min() - 10), 100))
        ax.tick_params(axis="x", rotation=30)
        if ax is not axes[0] and ax.get_legend() is not None:
            ax.get_legend().remove()  # one legend: the K colours are the same in every panel
    return figure


def registered_views_figure(views: torch.Tensor, warped: torch.Tensor, names: Sequence[str], angles: Sequence[float]) -> ReportFigure:
    """A support image's 22 views (top), the same views warped by the composed STN transform (bottom).

    The bottom row is what the last feature stage sees. When registration works, views that
    differ by a rotation or a shift look more alike there than on top; the last column of
    each row is the mean of its 22 images, sharper when the views are aligned.

    Args:
        views: V x 3 x S x S views.
        warped: V x 3 x S x S views warped by their composed STN transform.
        names: One name per view.
        angles: The STN's rotation of each view, in degrees.
    """
    n = len(views)
    figure = ReportFigure(figsize=(1.0 * (n + 1), 2.6), layout="constrained")
    axes = figure.subplots(2, n + 1)
    for row, stack, label in ((0, views, "views"), (1, warped, "registered\n(STN 1-3)")):
        for i in range(n):
            axes[row, i].imshow(_image(stack[i]))
            axes[row, i].set_title(names[i] if row == 0 else f"{angles[i]:+.0f}°", fontsize=6)
        axes[row, n].imshow(_image(stack.float().mean(0)))
        axes[row, n].set_title("mean", fontsize=6)
        axes[row, 0].set_ylabel(label, fontsize=7)
    _no_ticks(axes)
    return figure


def stn_angles_figure(table: pd.DataFrame, category: str) -> ReportFigure:
    """The STN's composed rotation of each view against the rotation the view applied.

    Args:
        table: Columns view, applied_angle, stn_angle (degrees), one row per (support image, view).
        category: For the title.
    """
    figure = ReportFigure(figsize=(4.5, 4.0), layout="constrained")
    ax = figure.subplots()
    sns.scatterplot(data=table, x="applied_angle", y="stn_angle", hue="view_kind", ax=ax, s=25)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="rotation applied by the view (°)", ylabel="rotation of the composed STN (°)",
           title=f"{category}: what the STNs do to the support views")
    ax.legend(fontsize=7)
    return figure


def variance_figure(image: torch.Tensor, variance: torch.Tensor, k: int) -> ReportFigure:
    """A support image beside the per-position variance of the registered support features.

    The Gaussian of each position is estimated from the 22 K views; where the variance is
    high, normal images differ and a deviation costs little.
    """
    figure = ReportFigure(figsize=(6.0, 2.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(_image(image))
    left.set_title("support image")
    shown = right.imshow(variance.numpy(), cmap="magma")
    right.set_title(f"feature variance per position (K={k}, 22K views)")
    _no_ticks([left, right])
    figure.colorbar(shown, ax=right, shrink=0.8)
    return figure


__all__ = [
    "ReportFigure",
    "bars_across_k",
    "best_and_worst",
    "dataset_figure",
    "overlay_figure",
    "registered_views_figure",
    "roc_figure",
    "stn_angles_figure",
    "support_set_figure",
    "variance_figure",
]


def epoch_curves_figure(epochs: pd.DataFrame) -> ReportFigure:
    """Per-epoch test AUROC and STN statistics of RegAD trainings (epoch 0 = untrained).

    One column per held-out category; rows: image AUROC, pixel AUROC (mean over the
    diagnostic support sets), median |rotation| and median determinant of each STN. One
    line per training seed (AUROC) or per (stage, seed) (STN statistics).

    Args:
        epochs: Rows of ``epochs.csv`` (``fsad.methods.regad.training``) with a ``category``
            and a ``seed`` column added.
    """
    categories = list(dict.fromkeys(epochs["category"]))
    stages = sorted(int(c[3]) for c in epochs.columns if c.startswith("stn") and c.endswith("_rotation"))
    long = epochs.melt(id_vars=["category", "seed", "epoch"],
                       value_vars=[f"stn{s}_{stat}" for s in stages for stat in ("rotation", "determinant")])
    long["stage"] = "STN " + long["variable"].str[3]
    long["statistic"] = long["variable"].str.split("_").str[1]
    rows = (("image_auroc", "image AUROC (%)"), ("pixel_auroc", "pixel AUROC (%)"), ("rotation", "median |rotation| (°)"),
            ("determinant", "median determinant"))
    figure = ReportFigure(figsize=(2.8 * len(categories), 8.4), layout="constrained")
    axes = figure.subplots(len(rows), len(categories), squeeze=False, sharex=True)
    for col, category in enumerate(categories):
        mine = epochs[epochs["category"] == category].assign(seed=lambda d: "seed " + d["seed"].astype(str))
        for row, (name, label) in enumerate(rows):
            ax = axes[row, col]
            if name.endswith("auroc") and mine[name].isna().all():
                ax.text(0.5, 0.5, "no masks", ha="center", va="center", transform=ax.transAxes)
            elif name.endswith("auroc"):
                sns.lineplot(data=mine.assign(value=100 * mine[name]), x="epoch", y="value", hue="seed", marker="o", ax=ax,
                             palette="viridis", legend=col == 0 and row == 0)
            else:
                part = long[(long["category"] == category) & (long["statistic"] == name)].assign(seed=lambda d: d["seed"].astype(str))
                sns.lineplot(data=part, x="epoch", y="value", hue="stage", units="seed", estimator=None, marker=".", ax=ax,
                             palette="rocket", legend=col == 0 and row == 2)
            ax.set(ylabel=label if col == 0 else "", title=category if row == 0 else "")
    return figure
