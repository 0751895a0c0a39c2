"""RegAD under a training recipe, several training seeds, with per-epoch diagnostics (issue 10).

Runs ``fsad.study.experiment.run_experiment`` once per training seed (``regad.seed``), each
into ``<out>/seed<s>/``, with the config's ``epoch_diagnostics`` (epoch 0 = untrained, then
every epoch; never selecting) and, where the config asks, the labelled test-set-selected
weights. Seeds in ``--full-seeds`` get the config's whole evaluation (every K, every set,
every metric, the untrained baseline); the others only the diagnostic subset
(``diagnostic_sets`` sets at K = ``diagnostic_shots``, image and pixel AUROC), which is
what the seed spread is measured on. ``--summary`` then writes the tables
(``summary.md``) and the per-epoch figures from whatever has finished; ``--honest`` puts an
honest variant's runs (another config, e.g. ``configs/regad_official_stn_fsad_mini.yaml``)
beside the official recipe's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regad_recipe.py --config configs/regad_official_fsad_mini.yaml \\
        --out runs/issue10/official --seeds 0 1 2 --full-seeds 0
    .venv/bin/python benchmarks/regad_recipe.py --out runs/issue10/official --summary \\
        --honest runs/issue10/honest --figure docs/figures/regad_recipe_epochs.png

The same study on a GPU (224 px, longer): ``--config configs/regad_official_gpu.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from fsad.config import ExperimentConfig

SUBSET_NOTE = "diagnostic subset"


def seed_config(config: ExperimentConfig, seed: int, full: bool, categories: list[str] | None,
                n_sets: int | None = None) -> ExperimentConfig:
    """``config`` at training seed ``seed``; without ``full`` evaluated on the diagnostic subset only;
    ``n_sets`` evaluates fewer support sets (the first ones; training is unchanged)."""
    changes = {"regad": config.regad.replace(seed=seed)}
    if categories:
        changes["categories"] = tuple(categories)
    if n_sets is not None:
        changes["n_sets"] = n_sets
    if not full:
        changes.update(shots=(config.diagnostic_shots,), n_sets=config.diagnostic_sets, metrics=("image_auroc", "pixel_auroc"),
                       untrained_baseline=False)
    return ExperimentConfig.from_dict({**dict(config), **changes}, source="seed_config")


def read_runs(roots: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All ``seed<s>/results.csv`` rows and all ``epochs.csv`` rows under ``roots``, with their seed
    (and, for the epochs, category and the K folder of ``model_per_shot`` runs)."""
    results, epochs = [], []
    for root in roots:
        for seed_dir in sorted(root.glob("seed*")):
            seed = int(seed_dir.name[4:])
            if (seed_dir / "results.csv").is_file():
                results.append(pd.read_csv(seed_dir / "results.csv").assign(seed=seed))
            for path in sorted((seed_dir / "models").glob("**/epochs.csv")):
                parts = path.relative_to(seed_dir / "models").parts
                epochs.append(pd.read_csv(path).assign(seed=seed, category=parts[0], model=parts[1] if len(parts) > 2 else ""))
    return (pd.concat(results, ignore_index=True) if results else pd.DataFrame(),
            pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame())


# The methods of the full table, in order; an honest variant's runs are renamed into the last two.
FULL_METHODS = ("untrained", "regad", "regad_test_selected", "honest", "honest_test_selected")
HONEST_NAMES = {"regad": "honest", "regad_test_selected": "honest_test_selected"}
DIFFERENCES = [("regad", "untrained", "{recipe}, trained (last epoch) - untrained"),
               ("regad_test_selected", "regad", "{recipe}, selection inflation: best test epoch - last epoch"),
               ("regad_test_selected", "untrained", "{recipe}, best test epoch - untrained"),
               ("honest", "untrained", "honest variant (last epoch) - untrained"),
               ("honest", "regad", "honest variant - {recipe}, both last epoch"),
               ("honest_test_selected", "honest", "honest variant, selection inflation")]


def full_table(results: pd.DataFrame, recipe: str) -> str:
    """Per fully evaluated seed: (method, category) x K tables with the category mean, and the
    differences of the category means in points, paired by support set; with an honest variant, a table
    beside it on what both have (the only table where the honest variant has everything)."""
    full = results[results.groupby("seed")["method"].transform(lambda m: (m == "untrained").any())]  # the fully evaluated seeds
    if full.empty:
        return "(no fully evaluated seed finished)\n"
    lines = []
    for seed, part in full.groupby("seed"):
        part = part[part["method"].isin(FULL_METHODS)]
        is_honest = part["method"].isin(HONEST_NAMES.values())
        official, honest = part[~is_honest], part[is_honest]
        # one table where the honest variant has every category and support set of the official runs
        if honest.empty or honest[["category", "shots", "support_set"]].drop_duplicates().shape[0] < \
                official[["category", "shots", "support_set"]].drop_duplicates().shape[0]:
            lines += method_table(official, f"Seed {seed}, {recipe}", recipe)
        if not honest.empty:
            lines += method_table(part, f"Seed {seed}, {recipe} beside the honest variant", recipe)
    return "\n".join(lines)


def method_table(part: pd.DataFrame, title: str, recipe: str) -> list[str]:
    """Lines of one (method, category) x K table and the differences of its category means, paired by support set.

    The category mean averages within each support set, so the table keeps the support sets
    and the categories that every method has."""
    from fsad.reporting.tables import difference_text, paired_difference
    from fsad.study.comparison import comparison_table, table_markdown

    metrics = [m for m in ("image_auroc", "pixel_auroc", "aupro") if m in part.columns]
    n_sets = int(part.groupby(["method", "category"])["support_set"].nunique().min())
    common = set.intersection(*(set(p["category"]) for _, p in part.groupby("method")))
    part = part[(part["support_set"] < n_sets) & part["category"].isin(common)]
    part = part.assign(order=part["method"].map(FULL_METHODS.index)).sort_values(["order", "category"], kind="stable").drop(columns="order")
    lines = [(f"{title}: {' / '.join(metrics)} in %, mean ± std over the first {n_sets} support sets; "
              f"categories {', '.join(sorted(common))}:"), "", table_markdown(comparison_table(part, metrics, categories=True)), ""]
    for metric in metrics:
        for method, reference, label in DIFFERENCES:
            if {method, reference} <= set(part["method"]):
                diff = paired_difference(part, metric, method, reference)
                if not diff.empty:
                    lines.append(f"- {metric}, {label.format(recipe=recipe)}: {difference_text(diff)}")
    return [*lines, ""]


def epoch_table(epochs: pd.DataFrame) -> str:
    """Per category: untrained (epoch 0), last epoch, best test epoch on the diagnostic subset,
    mean ± std across seeds, beside the mean spread across the support sets."""
    from fsad.reporting.tables import to_markdown

    rows = []
    for (category, model, seed), run in epochs.groupby(["category", "model", "seed"]):
        run = run.sort_values("epoch")
        score = run["image_auroc"] + run["pixel_auroc"].fillna(0)  # the official criterion (image only without masks)
        best = run.loc[score.idxmax()]
        last, first = run.iloc[-1], run.iloc[0]
        row = {"category": category + (f" {model}" if model else ""), "seed": seed, "epochs": int(last["epoch"]),
               "queries": int(run["queries"].sum()), "best_epoch": int(best["epoch"])}
        for metric in ("image_auroc", "pixel_auroc"):
            row.update({f"{metric} untrained": first[metric], f"{metric} last": last[metric], f"{metric} best": best[metric],
                        f"{metric} set_std": last[f"{metric}_std"]})
        rows.append(row)
    per_run = pd.DataFrame(rows)
    table = {}
    for category, part in per_run.groupby("category", sort=False):
        cells = {"seeds": len(part), "queries/model": int(part["queries"].mean()), "best epoch": "/".join(map(str, part["best_epoch"]))}
        for metric, short in (("image_auroc", "image"), ("pixel_auroc", "pixel")):
            for which in ("untrained", "last", "best"):
                values = 100 * part[f"{metric} {which}"]
                spread = f"±{values.std(ddof=1):.1f}" if len(values) > 1 else ""  # one seed: no spread to show
                cells[f"{short} {which}"] = "-" if values.isna().all() else f"{values.mean():.1f}{spread}"
            inflation = 100 * (part[f"{metric} best"] - part[f"{metric} last"])
            cells[f"{short} inflation"] = "-" if inflation.isna().all() else f"{inflation.mean():+.1f}"
            cells[f"{short} set std"] = "-" if part[f"{metric} set_std"].isna().all() else f"{100 * part[f'{metric} set_std'].mean():.1f}"
        table[category] = cells
    frame = pd.DataFrame(table).T
    frame.index.name = "category"
    means = per_run[[c for c in per_run.columns if " " in c]].groupby(per_run["seed"]).mean()  # category mean per seed
    note = ("Mean over categories per seed, image AUROC untrained / last / best: "
            + "; ".join(f"seed {seed}: {100 * r['image_auroc untrained']:.1f} / {100 * r['image_auroc last']:.1f} / "
                        f"{100 * r['image_auroc best']:.1f}" for seed, r in means.iterrows())
            + " (a seed missing a category averages fewer categories).")
    return to_markdown(frame) + "\n\n" + note + "\n"


def summarise(roots: list[Path], honest: list[Path], figure: Path | None, recipe: str = "official recipe") -> None:
    """``roots[0]/summary.md``: the full tables of the runs of ``roots`` (called ``recipe``), with the
    honest variant's runs of ``honest`` beside them, and the per-epoch tables; the per-epoch figures (``<figure>_honest.png``
    for the honest variant)."""
    from fsad.io import save_figure_atomic
    from fsad.reporting.figures import epoch_curves_figure

    results, epochs = read_runs(roots)
    honest_results, honest_epochs = read_runs(honest) if honest else (pd.DataFrame(), pd.DataFrame())
    if not honest_results.empty:
        # the same untrained network (raw inputs, no training): scored once, from the official runs
        results = pd.concat([results, honest_results[honest_results["method"] != "untrained"].replace({"method": HONEST_NAMES})],
                            ignore_index=True)
    text = ["## Full evaluation (last epoch = the model; test-selected = the official protocol's choice, labelled)", "",
            full_table(results, recipe) if not results.empty else "(none yet)", "",
            f"## Per epoch, {SUBSET_NOTE} (the first 2 support sets at K = 2), mean ± std across training seeds", "",
            "'set std': std across the support sets at the last epoch, averaged over seeds; 'inflation': best test epoch - last.", "",
            epoch_table(epochs) if not epochs.empty else "(none yet)"]
    if not honest_epochs.empty:
        text += ["", f"### The honest variant, {SUBSET_NOTE}", "", epoch_table(honest_epochs)]
    out = roots[0] / "summary.md"
    out.write_text("\n".join(text))
    print("\n".join(text))
    if figure is not None:
        for runs, path in ((epochs, figure), (honest_epochs, figure.with_stem(figure.stem + "_honest"))):
            if not runs.empty:
                save_figure_atomic(epoch_curves_figure(runs), path)
                print(f"figure -> {path}")


def run(args: argparse.Namespace) -> None:
    from fsad.study.experiment import run_experiment

    config = ExperimentConfig.from_yaml(args.config)
    for seed in args.seeds:
        tic = time.perf_counter()
        out = Path(args.out[0]) / f"seed{seed}"
        run_experiment(seed_config(config, seed, seed in args.full_seeds, args.categories, args.n_sets), out, progress=False)
        print(f"seed {seed}: {time.perf_counter() - tic:.0f} s -> {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="an ExperimentConfig YAML with epoch_diagnostics: true")
    parser.add_argument("--out", required=True, nargs="+", help="the run's folder (with --summary: one or more)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--full-seeds", type=int, nargs="*", default=[0], help="seeds given the config's whole evaluation")
    parser.add_argument("--categories", nargs="+", help="only these targets (default: the config's)")
    parser.add_argument("--n-sets", type=int, help="support sets of the full evaluation (default: the config's n_sets)")
    parser.add_argument("--summary", action="store_true", help="write the tables and figure of what has finished")
    parser.add_argument("--honest", nargs="*", default=[], help="with --summary: runs of an honest variant, tabled beside the official recipe")
    parser.add_argument("--recipe", default="official recipe", help="with --summary: what the --out runs are called in the tables")
    parser.add_argument("--figure", help="PNG of AUROC and STN statistics against epoch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.summary:
        summarise([Path(p) for p in args.out], [Path(p) for p in args.honest], Path(args.figure) if args.figure else None, args.recipe)
    else:
        run(args)


if __name__ == "__main__":
    main()
