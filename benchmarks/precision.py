"""What ``precision: bf16`` costs in accuracy: every CNN method's image / pixel AUROC in bf16 against fp32.

Runs ``fsad compare``'s harness (``fsad.study.comparison.run_comparison``) twice per category
(fp32, then bf16; the table is printed after each category, over those done) on one
comparison config, changing only ``regad.precision`` (and, for bf16, ``regad.runtime`` to
``--bf16-runtime``): the same support sets (one ``support_dir``), the same test images and
metrics. fp32 runs in the config's runtime (``auto``: ONNX Runtime, eager PyTorch's numbers
to ~1e-5). Prints per method the mean over categories, K and support sets of each metric in
fp32 and bf16, the difference (bf16 - fp32, in AUROC points), the largest per-category
difference and the seconds each run took (the machine's load included: a rough ratio only).

Only the methods whose features are a plain backbone follow ``precision`` (spade, padim,
padim_views, patchcore, fastrecon, anomalydino, resad); RegAD's registered features stay fp32.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/precision.py                          # configs/compare_precision_fsad_mini.yaml
    .venv/bin/python benchmarks/precision.py --bf16-runtime torch --out runs/precision  # torch.autocast's bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from fsad.config import ComparisonConfig
from fsad.study.comparison import run_comparison
from fsad.study.experiment import resolve_dataset


def run(config: ComparisonConfig, out: Path, models: Path, precision: str, runtime: str) -> tuple[pd.DataFrame, float]:
    settings = config.regad.replace(precision=precision, runtime=runtime)
    tic = time.perf_counter()
    results = run_comparison(config.replace(regad=settings), out / f"{precision}-{runtime}", models, progress=False)
    return results, time.perf_counter() - tic


def points(results: pd.DataFrame, metrics: list[str], by: list[str]) -> pd.DataFrame:
    """Mean of each metric over support sets (and what ``by`` leaves out), in AUROC points."""
    return results.groupby(by)[metrics].mean() * 100


def table(fp32: pd.DataFrame, bf16: pd.DataFrame, methods: list[str], metrics: list[str]) -> str:
    """Per method: each metric's fp32 and bf16 means, their difference and the largest per-category |difference|."""
    overall = {p: points(r, metrics, ["method"]) for p, r in (("fp32", fp32), ("bf16", bf16))}
    per_category = {p: points(r, metrics, ["method", "category"]) for p, r in (("fp32", fp32), ("bf16", bf16))}
    worst = (per_category["bf16"] - per_category["fp32"]).abs().groupby("method").max()
    header = " | ".join(f"{m} fp32 | {m} bf16 | diff | worst category |diff|" for m in metrics)
    lines = [f"| method | {header} |", "|---|" + "---|" * (4 * len(metrics))]
    for method in methods:
        cells = []
        for m in metrics:
            a, b = overall["fp32"].loc[method, m], overall["bf16"].loc[method, m]
            cells.append(f"{a:.2f} | {b:.2f} | {b - a:+.2f} | {worst.loc[method, m]:.2f}")
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/compare_precision_fsad_mini.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/precision_fsad_mini"))
    parser.add_argument("--bf16-runtime", default="auto", choices=["auto", "openvino", "torch"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ComparisonConfig.from_yaml(args.config).replace(measure_costs=False)
    metrics = [m for m in config.metrics if m in ("image_auroc", "pixel_auroc")]
    categories = config.categories or sorted(p.name for p in resolve_dataset(config.dataset).iterdir() if p.is_dir())
    done: dict[str, list[pd.DataFrame]] = {"fp32": [], "bf16": []}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    # One category at a time, fp32 then bf16: each finished category is a paired result (and memory is freed).
    for category in categories:
        one = config.replace(categories=[category])
        out = args.out / category
        fp32, took = run(one, out, args.out / "models", "fp32", config.regad.runtime)
        done["fp32"].append(fp32)
        seconds["fp32"] += took
        # The bf16 run reads the support-set files the fp32 run used (drawn into its folder where the config names none).
        drawn = str(out / f"fp32-{config.regad.runtime}" / "support_sets")
        bf16, took = run(one.replace(support_dir=config.support_dir or drawn), out, args.out / "models", "bf16",
                         args.bf16_runtime)
        done["bf16"].append(bf16)
        seconds["bf16"] += took
        print(f"\n{args.config}: {', '.join(categories[:len(done['fp32'])])}; {len(config.shots)} K x {config.n_sets} "
              f"sets, {config.regad.image_size} px, {args.threads} thread(s); fp32 in runtime {config.regad.runtime} "
              f"{seconds['fp32']:.0f} s, bf16 in runtime {args.bf16_runtime} {seconds['bf16']:.0f} s", flush=True)
        print(table(pd.concat(done["fp32"]), pd.concat(done["bf16"]), list(config.methods), metrics), flush=True)


if __name__ == "__main__":
    main()
