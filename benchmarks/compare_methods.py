"""RegAD and its peers on one data set: the comparison table, costs and wall time.

Runs ``fsad.study.comparison.run_comparison`` (same support sets, backbone, image size and
metrics for every method; leave-one-category-out training for RegAD and ResAD) and prints
the table (methods x K, category mean, image AUROC / pixel AUROC / AUPRO in %, mean +- std
over support sets), the per-category table, the costs, and the wall time. RegAD models
already trained by ``fsad run`` are reused through ``--regad-models``; runs of other
methods on the same support sets are merged into the tables with ``--include``.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_methods.py --dataset fsad-mini \\
        --shots 2 4 8 --n-sets 10 --image-size 128 --regad-models runs/fsad-mini/models \\
        --support-dir runs/fsad-mini/support_sets --out runs/compare-fsad-mini
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from fsad.reporting.tables import to_markdown
from fsad.study.comparison import (
    DEFAULT_METHODS,
    ComparisonConfig,
    comparison_table,
    cost_table,
    load_examples,
    plot_example_maps,
    run_comparison,
    run_costs,
    table_markdown,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="toy", help="toy, elpv, fsad-mini or an MVTec-layout folder")
    parser.add_argument("--categories", nargs="*", default=None, help="target categories (default: all)")
    parser.add_argument("--shots", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--n-sets", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--metrics", nargs="+", default=["image_auroc", "pixel_auroc", "aupro"])
    parser.add_argument("--regad-config", type=Path, default=None,
                        help="YAML whose `regad` section (an fsad run config) sets RegAD and the shared backbone/size")
    parser.add_argument("--image-size", type=int, default=None, help="overrides the config's image size")
    parser.add_argument("--epochs", type=int, default=None, help="RegAD epochs where a model must be trained")
    parser.add_argument("--regad-models", default=None, help="folder with <category>/regad.pt to reuse")
    parser.add_argument("--support-dir", default=None, help="folder with the support-set JSON files to reuse")
    parser.add_argument("--resad-steps", type=int, default=300)
    parser.add_argument("--regad-l-epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--include", nargs="*", type=Path, default=[],
                        help="output folders of other runs on the same support sets, merged into the tables")
    parser.add_argument("--no-costs", action="store_true", help="skip the cost measurement (e.g. runs sharing the machine)")
    parser.add_argument("--costs-only", action="store_true",
                        help="only measure every method's costs (fresh process each, first category, largest K) into --out")
    parser.add_argument("--tables-only", action="store_true", help="do not run: print the tables of --out (and --include)")
    return parser.parse_args()


def read_runs(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Results, costs, training records and example maps of several runs on the same support sets, methods in registry order."""
    order = {name: i for i, name in enumerate(DEFAULT_METHODS)}
    def every(name: str) -> pd.DataFrame:
        return pd.concat([pd.read_csv(f / name) for f in folders if (f / name).is_file()])

    results = every("results.csv").sort_values("method", key=lambda m: m.map(order), kind="stable")
    costs, training = every("costs.csv"), every("training.csv")
    with_maps = [f for f in folders if (f / "examples.pt").is_file()]
    examples = load_examples(with_maps[0])
    for folder in with_maps[1:]:
        examples["maps"].update(load_examples(folder)["maps"])
    examples["maps"] = dict(sorted(examples["maps"].items(), key=lambda item: order.get(item[0], len(order))))
    return results, costs.sort_values("method", key=lambda m: m.map(order), kind="stable"), training, examples


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    regad = yaml.safe_load(args.regad_config.read_text()).get("regad", {}) if args.regad_config else {}
    if args.image_size is not None:
        regad["image_size"] = args.image_size
    if args.epochs is not None:
        regad["epochs"] = args.epochs
    config = ComparisonConfig.from_dict({
        "dataset": args.dataset, "categories": args.categories, "shots": args.shots, "n_sets": args.n_sets,
        "methods": args.methods, "metrics": args.metrics, "regad": regad, "regad_models": args.regad_models,
        "support_dir": args.support_dir, "resad": {"steps": args.resad_steps}, "regad_l": {"epochs": args.regad_l_epochs},
        "measure_costs": not args.no_costs,
    })
    if args.costs_only:
        print(to_markdown(cost_table(run_costs(config, args.out))))
        return
    if not args.tables_only:
        tic = time.perf_counter()
        run_comparison(config, args.out, progress=False)
        wall = time.perf_counter() - tic
        (args.out / "wall_time.txt").write_text(f"{wall:.0f} s ({wall / 60:.1f} min): {' '.join(config.methods)}\n")
    folders = [args.out, *args.include]
    results, costs, training, examples = read_runs(folders)
    plot_example_maps(examples, args.out / "example_maps.png")
    text = "\n\n".join([
        f"settings: {config}",
        f"metrics per cell: {' / '.join(config.metrics)} (%), mean ± std over support sets",
        "## category mean\n" + table_markdown(comparison_table(results, config.metrics)),
        "## per category\n" + table_markdown(comparison_table(results, config.metrics, categories=True)),
        "## costs (first category, largest K)\n" + to_markdown(cost_table(costs)),
        "## training\n" + to_markdown(training.set_index("method")),
        "## wall time\n" + "\n".join(f"- {f}: {(f / 'wall_time.txt').read_text().strip()}" for f in folders if (f / "wall_time.txt").is_file()),
    ])
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
