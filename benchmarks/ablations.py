"""The RegAD ablations on one data set: the table, the figure and the wall time.

Runs ``fsad.study.ablations.run_ablations`` (each STN mode, no STN, frozen backbone batch norm,
registration training off, no support augmentation, the K sweep; all on the same support
sets and test images) and prints the table (variants x K, category mean and per category,
image AUROC / pixel AUROC / AUPRO in %, mean +- std over support sets) and the wall time.
The default STN mode's models of ``fsad run`` are reused through ``--regad-models``.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ablations.py --dataset fsad-mini \\
        --categories magnetic_tile metal_plate --n-sets 3 --regad-config configs/fsad_mini.yaml \\
        --regad-models runs/fsad_mini/models --support-dir runs/fsad_mini/support_sets --out runs/ablations-fsad-mini
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from fsad.methods.regad.stn import STN_MODES
from fsad.study.ablations import (
    AblationConfig,
    ablation_table,
    plot_ablations,
    run_ablations,
)
from fsad.study.comparison import table_markdown


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="toy", help="toy, elpv, fsad-mini or an MVTec-layout folder")
    parser.add_argument("--categories", nargs="*", default=None, help="target categories (default: all)")
    parser.add_argument("--shots", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--k-sweep", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--n-sets", type=int, default=10)
    parser.add_argument("--stn-modes", nargs="+", default=list(STN_MODES))
    parser.add_argument("--metrics", nargs="+", default=["image_auroc", "pixel_auroc", "aupro"])
    parser.add_argument("--regad-config", type=Path, default=None, help="YAML whose `regad` section (an fsad run config) sets the default RegAD")
    parser.add_argument("--regad-models", default=None, help="folder with <category>/regad.pt of the default STN mode, reused")
    parser.add_argument("--support-dir", default=None, help="folder with the support-set JSON files to reuse (only read)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--tables-only", action="store_true", help="do not run: print the tables of --out")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = AblationConfig.from_dict({
        "dataset": args.dataset, "categories": args.categories, "shots": args.shots, "k_sweep": args.k_sweep,
        "n_sets": args.n_sets, "stn_modes": args.stn_modes, "metrics": args.metrics,
        "regad": yaml.safe_load(args.regad_config.read_text()).get("regad", {}) if args.regad_config else {},
        "regad_models": args.regad_models, "support_dir": args.support_dir,
    })
    if not args.tables_only:
        tic = time.perf_counter()
        run_ablations(config, args.out, progress=False)
        wall = time.perf_counter() - tic
        (args.out / "wall_time.txt").write_text(f"{wall:.0f} s ({wall / 60:.1f} min)\n")
    results = pd.read_csv(args.out / "results.csv")
    plot_ablations(results, "image_auroc", args.out / "ablations.png")
    text = "\n\n".join([
        f"settings: {config}",
        f"metrics per cell: {' / '.join(config.metrics)} (%), mean ± std over support sets",
        "## category mean\n" + table_markdown(ablation_table(results, config.metrics)),
        "## per category\n" + table_markdown(ablation_table(results, config.metrics, categories=True)),
        "## wall time\n" + (args.out / "wall_time.txt").read_text().strip(),
    ])
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
