"""Command line: ``fsad run | compare | ablate | train | support-sets | data | weights | notebook`` (and ``fit`` / ``predict`` / ``export``)."""

from __future__ import annotations

import argparse
import faulthandler
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
    from fsad.methods.regad.training import MODEL_NAME, train_regad
    from fsad.study.experiment import resolve_dataset
    from fsad.study.preflight import preflight

    config = RegADConfig.from_yaml(args.config, section="regad") if args.config else RegADConfig()
    # An unknown --target (listed with the available ones), unreadable images or no GPU stop here, before training.
    checked = preflight(resolve_dataset(args.data), [args.target], device=config.device)
    train = [category for name, category in checked.categories.items() if name != checked.targets[0]]
    train_regad(train, config, Path(args.out), resume=not args.restart)
    print(f"model: {Path(args.out) / MODEL_NAME}")


def _results_folder(args) -> Path | None:
    """The output folder of a command: ``--out``, else ``runs/<config name>`` for a config-driven one.

    Relative to the current directory, like every path a user types (``--config``, ``dataset``),
    not to the checkout: an installed fsad has none.
    """
    if getattr(args, "out", None):
        return Path(args.out)
    config = getattr(args, "config", None)
    return Path("runs") / Path(config).stem if config and args.command in ("run", "compare", "ablate") else None


def _checked(args, config, training: bool = True) -> bool:
    """With ``--check``: validate the data for ``config`` (preflight), say so and return True: nothing runs."""
    if not args.check:
        return False
    from fsad.study.experiment import resolve_dataset
    from fsad.study.pools import load_extra
    from fsad.study.preflight import preflight

    checked = preflight(resolve_dataset(config.dataset), config.categories, config.required_shots, config.metrics, config.regad.device,
                        training=training)
    extra = load_extra(config.regad.train_extra) if training else []
    pool = f"; training adds {len(extra)} categories of train_extra" if extra else ""
    print(f"{args.config}: config and data OK ({checked.root}: targets {', '.join(checked.targets)}; "
          f"K = {', '.join(map(str, config.shots))}; {config.n_sets} support sets each{pool}); nothing was run")
    return True


def _claimed_out(args, settings: dict, command: str) -> Path:
    """The output folder (``--out``, else ``runs/<config name>``), claimed for this config before any work."""
    from fsad.study.run_folder import claim

    out = _results_folder(args)
    claim(out, Path(args.config), settings, command, force=args.force)
    return out


def _wall_time(out: Path, seconds: float, what: str = "") -> str:
    from fsad.io import write_text_atomic

    line = f"{seconds:.0f} s ({seconds / 60:.1f} min){': ' + what if what else ''}"
    write_text_atomic(out / "wall_time.txt", line + "\n")
    return line


def cmd_run(args) -> None:
    from fsad.config import ExperimentConfig
    from fsad.io import write_csv_atomic
    from fsad.reporting.tables import difference_text, paired_difference, side_by_side, summarize, to_markdown
    from fsad.study.experiment import run_experiment

    config = ExperimentConfig.from_yaml(args.config)
    if _checked(args, config):
        return
    out = _claimed_out(args, config.to_dict(), "run")
    tic = time.perf_counter()
    results = run_experiment(config, out)
    summary = summarize(results, config.metrics)
    write_csv_atomic(out / "summary.csv", summary)
    methods = list(summary["method"].unique())
    print(f"\n{' / '.join(config.metrics)} (%, mean±std over {config.n_sets} support sets)")
    print(to_markdown(side_by_side(summary, config.metrics, methods)))
    if "untrained" in methods:
        gain = paired_difference(results, config.metrics[0], "regad", "untrained")
        print(f"\nregad - untrained, mean {config.metrics[0]} (± std over support sets; sets where regad is higher): "
              + difference_text(gain))
    print(f"\nwall time: {_wall_time(out, time.perf_counter() - tic)}; results in {out}")


def cmd_compare(args) -> None:
    from fsad.config import ComparisonConfig, read_yaml
    from fsad.reporting.tables import to_markdown
    from fsad.study.comparison import cost_table, run_comparison, run_costs, write_report

    values = read_yaml(args.config)
    overrides = {**({"methods": args.methods} if args.methods else {}),  # one run per group of methods (docs/baselines.md)
                 **({"measure_costs": False} if args.no_costs else {})}
    if overrides and isinstance(values, dict):  # anything else is refused by from_dict, naming the file
        values = {**values, **overrides}
    config = ComparisonConfig.from_dict(values, source=args.config)
    if _checked(args, config, training=bool({"regad", "resad"} & set(config.methods))):
        return
    out = _claimed_out(args, config.to_dict(), "compare")
    if args.costs_only:
        print(to_markdown(cost_table(run_costs(config, out))))
        return
    if not args.tables_only:
        tic = time.perf_counter()
        run_comparison(config, out)
        _wall_time(out, time.perf_counter() - tic, " ".join(config.methods))
    print(write_report(config, out, args.include))


def cmd_ablate(args) -> None:
    from fsad.config import AblationConfig
    from fsad.study.ablations import run_ablations, write_report

    config = AblationConfig.from_yaml(args.config)
    if _checked(args, config):
        return
    out = _claimed_out(args, config.to_dict(), "ablate")
    if not args.tables_only:
        tic = time.perf_counter()
        run_ablations(config, out)
        _wall_time(out, time.perf_counter() - tic)
    print(write_report(config, out))


def cmd_fit(args) -> None:
    from fsad.product.fit import fit_command

    fit_command(args.images, args.method, args.model, args.config, args.good, args.out, args.force,
                threshold=args.threshold, target_fpr=args.target_fpr, device=args.device, image_size=args.image_size,
                aspect=args.aspect, tile=args.tile)


def cmd_predict(args) -> None:
    from fsad.product.predict import predict_command

    predict_command(args.detector, args.images, args.out, args.masks, args.device)


def _device(value: str) -> str:
    """A ``--device`` value of the form auto, cpu, cuda or cuda:N (whether that GPU exists is checked before any work)."""
    from fsad.config import DEVICE_FORM

    if not DEVICE_FORM.fullmatch(value):
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; choose from auto, cpu, cuda, cuda:N")
    return value


def cmd_export(args) -> None:
    from fsad.product.export import export_command

    export_command(args.detector, args.format)


def _study_arguments(p: argparse.ArgumentParser) -> None:
    """What ``run``, ``compare`` and ``ablate`` share: where results go and the dry run."""
    p.add_argument("--out", help="output folder (default: runs/<config name> in the current directory)")
    p.add_argument("--force", action="store_true", help="reuse an output folder made by another config")
    p.add_argument("--check", action="store_true", help="only validate the config and the data set (seconds), run nothing")


def _enable_faulthandler() -> None:
    """A crash in native code (a segmentation fault in a torch kernel) prints the Python stack of every thread to stderr.

    Left alone where something (pytest, ``python -X faulthandler``) enabled it already, or
    where stderr is no file (a notebook's captured stream).
    """
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable()
    except (RuntimeError, ValueError):  # no sys.stderr, or one without a file descriptor (io.UnsupportedOperation)
        pass


def main(argv: list[str] | None = None) -> None:
    _enable_faulthandler()
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

    p = sub.add_parser("run", help="RegAD: support sets + leave-one-out training + evaluation, printed as a table")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    _study_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="RegAD and its peers on the same support sets: tables, costs, example maps")
    p.add_argument("--config", required=True, help="YAML of fsad.config.ComparisonConfig fields, e.g. configs/compare_fsad_mini.yaml")
    _study_arguments(p)
    p.add_argument("--methods", nargs="+", help="only these methods (overrides the config's methods)")
    p.add_argument("--no-costs", action="store_true", help="skip the cost measurement (e.g. runs sharing the machine)")
    p.add_argument("--costs-only", action="store_true", help="only time every method (fresh process each, first category, largest K)")
    p.add_argument("--tables-only", action="store_true", help="do not run: write the tables of --out (and --include)")
    p.add_argument("--include", nargs="*", default=[], help="output folders of other runs on the same support sets, merged into the tables")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ablate", help="the RegAD ablations (STN modes, no STN, untrained, no views, K sweep)")
    p.add_argument("--config", required=True, help="YAML of fsad.config.AblationConfig fields, e.g. configs/ablations_fsad_mini.yaml")
    _study_arguments(p)
    p.add_argument("--tables-only", action="store_true", help="do not run: write the tables of --out")
    p.set_defaults(func=cmd_ablate)

    from fsad.product.candidates import AUTO_HELP
    from fsad.product.threshold import DEFAULT_RULE, DEFAULT_RULE_WITH_GOOD, DEFAULT_TARGET_FPR, GOOD_FOR_TAIL, RULE_NAMES, THRESHOLD_RULE

    p = sub.add_parser("fit", help="fit a detector on K good images of a new product, with a threshold",
                       description=f"Fit a detector on K good images (K = the images found) and save it.\n\n{THRESHOLD_RULE}"
                                   f"\n\n{AUTO_HELP}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="good images: files or folders (searched recursively)")
    p.add_argument("--method", help="auto, regad, untrained, spade, padim, padim_views (default), patchcore, resad, regad_l, "
                   "fastrecon, anomalydino, anomalydino_dinov2 (fsad.methods.registry.DETECTORS); auto: see above")
    p.add_argument("--model", help="trained model file (regad: regad.pt of fsad train; resad: its saved head)")
    p.add_argument("--config", help="YAML: a regad: section (backbone, image_size, eps, blur_sigma, device, ...) "
                   "and an options: section of method options, or RegAD settings alone")
    p.add_argument("--good", nargs="+", help="extra good images (files or folders) for the threshold only")
    p.add_argument("--threshold", metavar="RULE",
                   help=f"threshold rule: {', '.join(RULE_NAMES)} (default {DEFAULT_RULE}; {DEFAULT_RULE_WITH_GOOD} with "
                        f"{GOOD_FOR_TAIL} or more --good images)")
    p.add_argument("--target-fpr", type=float, default=DEFAULT_TARGET_FPR,
                   help=f"false-positive rate the quantile, tail, views_tail and lognormal rules aim at (default {DEFAULT_TARGET_FPR})")
    p.add_argument("--out", required=True, help="the detector folder to write")
    p.add_argument("--force", action="store_true", help="replace a detector of other images or settings in --out")
    p.add_argument("--device", type=_device, help="where to fit: auto, cpu, cuda, cuda:N (default: the config's device, auto)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="PX",
                   help="the detector's input: one side (the short side with --aspect keep) or H W (default: the config's, 224)")
    p.add_argument("--aspect", choices=["keep", "square"],
                   help="keep (default): the short side at --image-size, the long side in proportion to the good images "
                        "(rounded to 32 px); square: squash every image to a square (docs/images.md)")
    p.add_argument("--tile", type=int, metavar="N",
                   help="read images N x --image-size on their short side (at most their own size) and score them in "
                        "overlapping --image-size tiles: small defects in large images stay several feature cells wide")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="score images with a fitted detector: predictions.csv, heat-maps, report.html, masks")
    p.add_argument("detector", help="a detector folder written by fsad fit")
    p.add_argument("images", nargs="+", help="images: files or folders (searched recursively); any size")
    p.add_argument("--out", required=True, help="where predictions.csv, heatmaps/, report.html and masks/ go")
    p.add_argument("--masks", action="store_true", help="also write a binary mask per image (pixels above the threshold)")
    p.add_argument("--device", type=_device, default="auto",
                   help="where to score: auto (default: the GPU when there is one), cpu, cuda, cuda:N; any device, "
                        "whichever the detector was fitted on")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="run a fitted detector's features in ONNX Runtime or OpenVINO: writes "
                                      "DETECTOR/features.onnx or features.xml + .bin",
                       description="Add the detector's backbone graph (same weights) to its folder, so fsad predict "
                                   "runs its test-time features in that runtime without exporting anything (no onnx "
                                   "package, no network on the scoring machine). RegAD and DINOv2 stay in PyTorch.")
    p.add_argument("detector", help="a folder written by fsad fit")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"],
                   help="onnx: features.onnx for ONNX Runtime (default); openvino: OpenVINO IR features.xml + "
                        "features.bin (fp32 weights; runs a bf16 detector in bf16)")
    p.set_defaults(func=cmd_export)

    from fsad.notebook_runner import add_parser as add_notebook_parser

    add_notebook_parser(sub)

    args = parser.parse_args(argv)
    # Without -v only warnings show, as one plain line each ("fsad: warning: ..."); -v adds times and modules.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s" if args.verbose else "fsad: warning: %(message)s")
    try:
        args.func(args)
    except KeyboardInterrupt:
        # Results are written as each category finishes (atomically), so what is on disk is whole.
        out = _results_folder(args)
        print(f"fsad: interrupted; finished results are kept in {out}" if out and out.is_dir() else "fsad: interrupted",
              file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, RuntimeError) as error:
        # What a user can cause: missing or unreadable files (OSError: FileNotFoundError, PermissionError,
        # decoding), wrong settings (ValueError: ConfigError, PreflightError), no GPU (RuntimeError).
        if args.verbose:
            logging.getLogger("fsad").exception("traceback (shown with --verbose)")
        print(f"fsad: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
