"""Does registration need many training categories? The breadth curve of issue 20 (docs/breadth.md).

Each run is ``fsad run --config configs/breadth/pool<N>.yaml --out runs/breadth/pool<N>`` (training
seed 1: ``configs/breadth/pool15_seed1.yaml``). This script reads every finished target of the
given runs and prints the tables and draws the figure: per pool size, the category means of the last epoch
(``regad``), the honest epoch choice (``regad_pool_selected``: chosen on the training pool's spare
images and synthetic anomalies, never the target) and the best test epoch
(``regad_test_selected``, labelled: chosen on the target's test set), each minus the untrained
network, paired by support set. A target's pool size is read from its model (``train_categories``).

    OMP_NUM_THREADS=1 .venv/bin/python -m fsad.cli run --config configs/breadth/pool15.yaml --out runs/breadth/pool15
    .venv/bin/python benchmarks/breadth.py runs/breadth/pool* --figure docs/figures/breadth.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

METHODS = {"regad": "last epoch", "regad_pool_selected": "honest epoch choice (pool)",
           "regad_test_selected": "best test epoch (labelled: test-set selection)"}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def read(runs: list[Path]) -> pd.DataFrame:
    """Result rows of every run with the target's pool size and training seed (from its model file)."""
    frames = []
    for root in runs:
        if not (root / "results.csv").is_file():
            continue
        results = pd.read_csv(root / "results.csv")
        for category, part in results.groupby("category"):
            model = root / "models" / category / "regad.pt"
            if not model.is_file():  # only the untrained network was scored here
                frames.append(part.assign(pool=np.nan, seed=np.nan, run=root.name))
                continue
            state = torch.load(model, map_location="cpu", weights_only=True)
            frames.append(part.assign(pool=len(state["train_categories"]), seed=state["config"]["seed"], run=root.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def epochs(runs: list[Path]) -> pd.DataFrame:
    """The per-epoch history of every finished model: pool validation and target diagnostics."""
    rows = []
    for root in runs:
        for path in sorted(root.glob("models/*/regad.pt")):
            state = torch.load(path, map_location="cpu", weights_only=True)
            history = pd.DataFrame(state["history"]).assign(category=path.parent.name, pool=len(state["train_categories"]),
                                                             seed=state["config"]["seed"])
            rows.append(history)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def gains(results: pd.DataFrame) -> pd.DataFrame:
    """Per (pool, seed, method, K, metric): trained minus untrained on the category mean, paired by support set.

    The untrained network does not depend on the pool or the seed (it is the same ImageNet
    network), so its rows come from whichever run scored it; only the targets both have count.
    """
    untrained = results[results["method"] == "untrained"].drop(columns=["pool", "seed", "run"]).drop_duplicates(
        ["category", "shots", "support_set"])
    rows = []
    for (pool, seed), part in results[results["method"] != "untrained"].groupby(["pool", "seed"]):
        for method, trained in part.groupby("method"):
            merged = trained.merge(untrained, on=["category", "shots", "support_set"], suffixes=("", "_u"))
            if merged.empty:
                continue
            for metric in METRICS:
                if metric not in merged or merged[metric].isna().all():
                    continue
                ok = merged.dropna(subset=[metric, f"{metric}_u"])
                per_set = ok.groupby(["shots", "support_set"]).agg(t=(metric, "mean"), u=(f"{metric}_u", "mean"),
                                                                  n=("category", "nunique"))
                diff = (per_set["t"] - per_set["u"]).groupby(level="shots")
                for k, d in diff:
                    rows.append({"pool": int(pool), "seed": seed, "method": method, "metric": metric, "shots": k,
                                 "categories": int(per_set.loc[k, "n"].min()), "targets": ", ".join(sorted(ok["category"].unique())),
                                 "trained": 100 * per_set.loc[k, "t"].mean(), "untrained": 100 * per_set.loc[k, "u"].mean(),
                                 "gain": 100 * d.mean(), "std": 100 * d.std(ddof=1), "above": int((d > 0).sum()), "sets": len(d)})
    return pd.DataFrame(rows)


def gain_table(table: pd.DataFrame) -> str:
    """Markdown: pool x method x metric rows, K columns: trained (untrained) and gain ± std (sets higher)."""
    lines = ["| pool | seed | method | metric | targets | " + " | ".join(f"K={k}" for k in sorted(table["shots"].unique())) + " |",
             "|---|---|---|---|---|" + "---|" * table["shots"].nunique()]
    order = {m: i for i, m in enumerate(METHODS)}
    for (pool, seed, method, metric), part in sorted(table.groupby(["pool", "seed", "method", "metric"]),
                                                   key=lambda x: (x[0][0], x[0][1], order.get(x[0][2], 9), METRICS.index(x[0][3]))):
        cells = [f"{r.trained:.1f} ({r.untrained:.1f}) {r.gain:+.1f}±{r.std:.1f} ({r.above}/{r.sets})" for r in part.sort_values("shots").itertuples()]
        lines.append(f"| {pool} | {seed} | {method} | {metric} | {part['targets'].iloc[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_category(results: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """Per (category, pool, seed, method, K): trained minus untrained ``metric`` (mean and std over the sets)."""
    untrained = results[results["method"] == "untrained"][["category", "shots", "support_set", metric]].drop_duplicates(
        ["category", "shots", "support_set"])
    merged = results[results["method"] != "untrained"].merge(untrained, on=["category", "shots", "support_set"], suffixes=("", "_u"))
    merged["gain"] = 100 * (merged[metric] - merged[f"{metric}_u"])
    return merged.groupby(["category", "pool", "seed", "method", "shots"])["gain"].agg(["mean", "std"]).reset_index()


def epoch_choice(history: pd.DataFrame) -> pd.DataFrame:
    """Per model: the epoch the pool validation chose, the best test epoch (diagnostic subset), the last; and the
    target's diagnostic image / pixel AUROC at each (labelled: the diagnostic subset of the target's test set)."""
    rows = []
    for (category, pool, seed), h in history.groupby(["category", "pool", "seed"]):
        h = h.sort_values("epoch").reset_index(drop=True)
        pool_score = h["pool_image_auroc"] + h["pool_pixel_auroc"].fillna(0)
        test_score = h["image_auroc"] + h["pixel_auroc"].fillna(0)
        chosen, best, last = int(pool_score.idxmax()), int(test_score.idxmax()), len(h) - 1
        rows.append({"category": category, "pool": pool, "seed": seed, "pool_epoch": int(h.loc[chosen, "epoch"]),
                     "best_test_epoch": int(h.loc[best, "epoch"]), "last_epoch": int(h.loc[last, "epoch"]),
                     **{f"image_{name}": 100 * h.loc[i, "image_auroc"] for name, i in (("untrained", 0), ("pool", chosen), ("best", best), ("last", last))},
                     "pool_val_untrained": 100 * h.loc[0, "pool_image_auroc"], "pool_val_chosen": 100 * h.loc[chosen, "pool_image_auroc"]})
    return pd.DataFrame(rows)


def figure(table: pd.DataFrame, by_category: pd.DataFrame, path: Path) -> None:
    """Image AUROC gain over the untrained network against pool size: the category mean (± std over the support
    sets) per method, and the last epoch per category, of the first training seed; one panel per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = table[(table["metric"] == "image_auroc") & (table["seed"] == table["seed"].min())]  # one seed: the same targets everywhere
    shots = sorted(image["shots"].unique())
    fig, axes = plt.subplots(1, len(shots), figsize=(4.2 * len(shots), 3.6), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], shots):
        for method, label in METHODS.items():
            part = image[(image["method"] == method) & (image["shots"] == k)].groupby("pool")[["gain", "std"]].mean()
            if not part.empty:
                ax.errorbar(part.index, part["gain"], yerr=part["std"], marker="o", capsize=3, label=f"mean, {label}, seed {int(image['seed'].min())}")
        first = by_category[(by_category["method"] == "regad") & (by_category["shots"] == k) & (by_category["seed"] == by_category["seed"].min())]
        for category, part in first.groupby("category"):
            part = part.groupby("pool")["mean"].mean()
            ax.plot(part.index, part.values, ls=":", marker=".", alpha=0.7, label=f"{category}, last epoch")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([1, 3, 5, 15], ["1", "3", "5", "15"])
        ax.set_title(f"K = {k}")
        ax.set_xlabel("training categories in the pool")
    axes[0][0].set_ylabel("image AUROC: trained - untrained (points)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def summary(runs: list[Path], figure_path: Path | None, targets: list[str] | None = None) -> None:
    results = read(runs)
    if targets:  # the same targets behind every pool's mean
        results = results[results["category"].isin(targets)]
    if results.empty:
        print("no finished run")
        return
    table = gains(results)
    print("Category means, trained (untrained) and trained - untrained in points, mean ± std over the support sets "
          "(sets where trained is higher), the targets both have:\n")
    print(gain_table(table))
    by_category = per_category(results)
    for method, label in (("regad", "last epoch"), ("regad_pool_selected", "honest epoch choice")):
        print(f"\nImage AUROC gain per category ({label}, points, mean ± std over the support sets):\n")
        wide = by_category[by_category["method"] == method].assign(
            cell=lambda d: d["mean"].map("{:+.1f}".format) + "±" + d["std"].map("{:.1f}".format))
        print(wide.pivot_table(index=["category", "pool", "seed"], columns="shots", values="cell", aggfunc="first").to_markdown())
    history = epochs(runs)
    if not history.empty and "pool_image_auroc" in history:
        print("\nThe epoch choice per model (target image AUROC on the diagnostic subset: 1 set at K = 2):\n")
        print(epoch_choice(history).round(1).to_markdown(index=False))
    if figure_path:
        figure(table, by_category, figure_path)
        print(f"\nfigure: {figure_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of fsad run (finished targets are read)")
    parser.add_argument("--figure", type=Path, help="the PNG of the gain against pool size")
    parser.add_argument("--targets", nargs="+", help="only these target categories (the same ones behind every pool's mean)")
    args = parser.parse_args()
    summary(args.runs, args.figure, args.targets)


if __name__ == "__main__":
    main()
