"""Command line: ``fsad run``, ``fsad train``, ``fsad support-sets``, ``fsad data``, ``fsad weights``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fsad.paths import ROOT


def cmd_weights(args) -> None:
    from fsad.components.backbones import resolve_weights

    for name in args.names:
        print(f"{name}: {resolve_weights(name)}")


def cmd_data(args) -> None:
    from fsad.study.experiment import EMBEDDED

    out = Path(args.out)
    EMBEDDED[args.name](out)
    print(f"wrote {args.name} to {out}")


def cmd_support_sets(args) -> None:
    from fsad.data.mvtec import list_categories, load_category
    from fsad.data.support_sets import make_support_sets, save_support_sets
    from fsad.study.experiment import resolve_dataset

    root = resolve_dataset(args.data)
    for name in args.categories or list_categories(root):
        category = load_category(root, name)
        sets = make_support_sets(category, args.shots, args.sets, args.seed)
        save_support_sets(Path(args.out) / f"{name}.json", category, sets, args.seed)
        print(f"{name}: {args.sets} sets for K={args.shots} -> {Path(args.out) / (name + '.json')}")


def cmd_train(args) -> None:
    from fsad.config import RegADConfig
    from fsad.data.mvtec import list_categories, load_category
    from fsad.methods.regad.training import train_regad
    from fsad.study.experiment import resolve_dataset

    config = RegADConfig.from_yaml(args.config, section="regad") if args.config else RegADConfig()
    root = resolve_dataset(args.data)
    train = [load_category(root, c) for c in list_categories(root) if c != args.target]
    train_regad(train, config, Path(args.out), resume=not args.restart)
    print(f"model: {Path(args.out) / 'regad.pt'}")


def cmd_run(args) -> None:
    from fsad.io import write_csv_atomic
    from fsad.reporting.tables import (
        mean_difference,
        side_by_side,
        summarize,
        to_markdown,
    )
    from fsad.study.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig.from_yaml(args.config)
    out = Path(args.out) if args.out else ROOT / "runs" / Path(args.config).stem
    tic = time.perf_counter()
    results = run_experiment(config, out)
    summary = summarize(results, config.metrics)
    write_csv_atomic(out / "summary.csv", summary)
    variants = list(summary["variant"].unique())
    print(f"\n{' / '.join(config.metrics)} (%, mean±std over {config.n_sets} support sets)")
    print(to_markdown(side_by_side(summary, config.metrics, variants)))
    if "untrained" in variants:
        gain = mean_difference(summary, config.metrics[0], "regad", "untrained")
        print(f"\nregad - untrained, mean {config.metrics[0]}: " + ", ".join(f"K={k}: {100 * d:+.1f}" for k, d in gain.items()))
    print(f"\nwall time: {time.perf_counter() - tic:.0f} s; results in {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fsad", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("weights", help="find the ImageNet weights of backbones (offline first)")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("data", help="build an embedded dataset (elpv: real solar cells; toy: generated)")
    p.add_argument("name", choices=["elpv", "toy"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("support-sets", help="draw support sets for any MVTec-layout dataset")
    p.add_argument("--data", required=True, help="elpv, toy, fsad-mini or a folder")
    p.add_argument("--categories", nargs="*")
    p.add_argument("--shots", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--sets", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_support_sets)

    p = sub.add_parser("train", help="train RegAD on every category but --target")
    p.add_argument("--data", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--config", help="YAML file with a regad: section")
    p.add_argument("--out", required=True)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="support sets + leave-one-out training + evaluation, printed as a table")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--out")
    p.set_defaults(func=cmd_run)

    from fsad.notebook_runner import add_parser as add_notebook_parser

    add_notebook_parser(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"fsad: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
