"""What a user waits for: one category's RegAD evaluation, fsad against the official procedure.

One category of generated images (``fsad.data.toy.make_toy_dataset``, category ``disc``,
``--train-images`` normal training images, written to a temporary folder at the image
size), ``--sets`` support sets for each K in
``--shots``, ``--test`` test images, an untrained RegAD with random weights
(``pretrained: false``, inputs not normalised as in the official code), for each size:

- fsad: ``fsad.study.evaluation.evaluate_detector`` with
  ``fsad.methods.regad.detector.RegADMethod``, the path of ``fsad run``, on every set.
  Stages are timed by wrapping the detector's calls (``embed``, ``fit``,
  ``predict_embedded``) and the functions the detector module calls (``support_views``,
  ``fit_gaussian``, ``mahalanobis``); "other" is the rest of the wall time (reading the
  support images, the metrics).
- official: per support set, as the official ``test.py`` runs each round
  (``benchmarks/official.py``): the 22 views of the K support images and their
  features in one batch, the test images' features again (batches of ``--batch``), the
  fit and the scoring loops, the maps with scipy's blur. Timed on ``--official-sets``
  sets per K and ``--official-positions`` positions, then scaled: the fit and scoring
  loops by (all positions / timed positions) (the fit's setup, a zeroed C x C x HW tensor,
  is paid once and not scaled), every per-set stage by (sets / timed sets). The
  Siamese encoder / predictor loss the official test loop also computes is left out.

Each path runs in its own spawned process, so its peak memory (peak RSS, which includes
the interpreter, torch and the loaded images, ~0.3-0.5 GiB) is its own. Also measured: this
machine's float32 and float64 matmul peak (GFLOP/s, one n x n product), and fsad's fit +
scoring as a fraction of it, counting the FLOPs of the exact low-rank form where N < C
(per position: Gram 2 N^2 C, Cholesky N^3 / 3, triangular inverse N^3 / 3 at the fit;
B (4 N C + 4 N^2) at scoring; N = 22 K support views, B test images; see ``woodbury_gflop``).

Example:
    .venv/bin/python benchmarks/end_to_end.py              # both sizes, 3 sets x K = 2, 4, 8, 1 thread (~10 min)
    .venv/bin/python benchmarks/end_to_end.py --sets 10    # the protocol's 10 sets (~3x longer)
    .venv/bin/python benchmarks/end_to_end.py --sizes resnet18:224 --sets 10 --official-sets 10 --official-positions 3136  # nothing scaled (hours)
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import resource
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

STAGES = ("test features", "support views", "support features", "fit", "scoring", "maps", "other")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def set_threads(threads: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def matmul_peak(dtype_name: str, n: int = 1024, repeats: int = 5) -> float:
    """Best GFLOP/s of one n x n matmul on the CPU (2 n^3 FLOPs)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def config_for(backbone: str, size: int):
    from fsad.config import RegADConfig

    # runtime: RegAD's registered features (STNs) run in PyTorch whatever it says (fsad.components.runtime).
    return RegADConfig(backbone=backbone, pretrained=False, normalize=False, image_size=size, device="cpu",
                       runtime=os.environ.get("FSAD_BENCH_RUNTIME", "auto"))


def load_inputs(root: str, backbone: str, size: int, shots: list[int], sets: int):
    from fsad.data.mvtec import load_category
    from fsad.data.support_sets import make_support_sets
    from fsad.methods.regad.checkpoint import untrained_regad
    from fsad.study.evaluation import TestSet

    config = config_for(backbone, size)
    category = load_category(root, "disc")
    return config, untrained_regad(config), category, make_support_sets(category, shots, n_sets=sets), TestSet.load(category, size)


def run_fsad(root: str, backbone: str, size: int, shots: list[int], sets: int, threads: int) -> dict:
    """fsad's evaluation of every support set, with per-stage seconds (in a child process)."""
    set_threads(threads)
    import fsad.components.views as views_module
    import fsad.methods.regad.detector as detector_module
    from fsad.methods.regad.detector import RegADMethod
    from fsad.study.evaluation import evaluate_detector

    config, model, category, support_sets, test = load_inputs(root, backbone, size, shots, sets)
    loaded_mib = peak_rss_mib()
    seconds: dict[str, float] = defaultdict(float)
    missing = []

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start
        return wrapper

    # The views are made through the detector module's name or inside fsad.components.views;
    # each wrapper wraps the original function, so a call is counted once.
    views_module.support_views = timed("support_views", views_module.support_views)
    for name in ("support_views", "fit_gaussian", "mahalanobis"):
        if hasattr(detector_module, name):
            setattr(detector_module, name, timed(name, getattr(detector_module, name)))
        elif name != "support_views":
            missing.append(f"fsad.methods.regad.detector.{name}")
    for name in ("embed", "fit", "predict_embedded"):
        setattr(RegADMethod, name, timed(name, getattr(RegADMethod, name)))

    detector = RegADMethod(model, config, name="untrained")
    start = time.perf_counter()
    run = evaluate_detector(detector, category, support_sets, test, ("image_auroc", "pixel_auroc"), progress=False)
    total = time.perf_counter() - start
    stages = {
        "test features": seconds["embed"],
        "support views": seconds["support_views"],
        "support features": seconds["fit"] - seconds["support_views"] - seconds["fit_gaussian"],
        "fit": seconds["fit_gaussian"],
        "scoring": seconds["mahalanobis"],
        "maps": seconds["predict_embedded"] - seconds["mahalanobis"],
    }
    stages["other"] = total - sum(stages.values())
    auroc = {k: sum(r["image_auroc"] for r in run.rows if r["shots"] == k) / sets for k in shots}
    return {"total": total, "stages": stages, "peak_mib": peak_rss_mib(), "loaded_mib": loaded_mib, "missing": missing,
            "image_auroc": auroc,
            }


def run_official(root: str, backbone: str, size: int, shots: list[int], sets: int, threads: int,
                 official_sets: int, positions: int, batch: int) -> dict:
    """The official procedure on ``official_sets`` sets per K and ``positions`` positions, scaled (child process)."""
    set_threads(threads)
    import torch
    from official import official_features, official_fit, official_maps, official_score

    from fsad.components.gaussian import fit_gaussian, mahalanobis
    from fsad.components.views import support_views
    from fsad.data.loading import as_float, load_images
    from fsad.data.support_sets import support_samples
    from fsad.methods.regad.detector import RegADMethod

    config, model, category, support_sets, test = load_inputs(root, backbone, size, shots, sets)
    loaded_mib = peak_rss_mib()
    model.eval()
    test_images = as_float(test.images)  # B x 3 x S x S
    b = len(test_images)
    seconds: dict[str, float] = defaultdict(float)
    check = None
    timed_positions = None
    for k in shots:
        for paths in support_sets[k][:official_sets]:
            tic = time.perf_counter()
            support = as_float(load_images(support_samples(category, paths), size))  # K x 3 x S x S
            views = support_views(support).flatten(0, 1)  # 22K x 3 x S x S
            seconds["support views"] += time.perf_counter() - tic
            tic = time.perf_counter()
            support_features = official_features(model, views)  # 22K x D x h x w, one batch as the official code
            seconds["support features"] += time.perf_counter() - tic
            tic = time.perf_counter()
            test_features = torch.cat([official_features(model, chunk) for chunk in test_images.split(batch)])  # B x D x h x w
            seconds["test features"] += time.perf_counter() - tic
            _, d, h, w = test_features.shape
            timed_positions = min(positions, h * w)
            clock: dict[str, float] = {}
            mean, cov = official_fit(support_features.view(len(views), d, h * w), timed_positions, clock)
            seconds["fit"] += clock["setup"] + clock["loop"] * h * w / timed_positions  # the setup is paid once
            tic = time.perf_counter()
            distances = official_score(test_features.view(b, d, h * w), mean, cov, timed_positions)  # B x timed
            seconds["scoring"] += (time.perf_counter() - tic) * h * w / timed_positions
            del mean, cov
            full = torch.zeros(b, h * w)  # the maps cost the same whatever the values
            full[:, :timed_positions] = distances
            tic = time.perf_counter()
            official_maps(full.view(b, h, w), size)
            seconds["maps"] += time.perf_counter() - tic
            if check is None:  # fsad on the same support set and test images, at the timed positions
                fsad_method = RegADMethod(model, config)
                gaussian = fit_gaussian(fsad_method.embed(views)[0], eps=config.eps)
                expected = mahalanobis(fsad_method.embed(test.images)[0], gaussian).flatten(1)[:, :timed_positions]
                check = float(((distances - expected).abs() / expected).max())
    ran = official_sets * len(shots)
    per_set_scale = sets / min(official_sets, sets)
    stages = {name: seconds[name] * per_set_scale for name in STAGES if name != "other"}
    stages["other"] = 0.0
    return {"total": sum(stages.values()), "stages": stages, "peak_mib": peak_rss_mib(), "loaded_mib": loaded_mib, "check": check,
            "sets_timed": ran, "positions_timed": timed_positions, "positions": h * w, "set_scale": per_set_scale,
            "features": (d, h, w), "n_test": b}


def woodbury_gflop(shots: list[int], sets: int, c: int, p: int, b: int) -> float:
    """FLOPs of fit + scoring, summed over K and sets (GFLOP).

    N = 22 K < C: the exact low-rank form of ``fsad.components.gaussian`` (Gram 2 N^2 C,
    Cholesky and triangular inverse 2 N^3 / 3; scoring B (4 N C + 4 N^2): X d, two products
    with L^-1, d - X^T a); N >= C: covariance 2 N C^2, Cholesky and triangular inverse
    2 C^3 / 3, scoring 2 B C^2.
    """
    total = 0.0
    for k in shots:
        n = 22 * k
        if n < c:
            per_position = 2 * n * n * c + 2 * n**3 / 3 + b * (4 * n * c + 4 * n * n)
        else:
            per_position = 2 * n * c * c + 2 * c**3 / 3 + 2 * b * c * c
        total += sets * p * per_position
    return total / 1e9


def in_child(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["resnet18:224", "mobilenet_v2:128"],
                        help="backbone:image size pairs (resnet18:224 gives the paper's C = 448 at 56 x 56)")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--sets", type=int, default=3, help="support sets per K (the protocol has 10: the full run)")
    parser.add_argument("--test", type=int, default=100, help="test images (half normal, half defective)")
    parser.add_argument("--train-images", type=int, default=30,
                        help="train/good images the sets are drawn from; fewer means support images recur more across "
                             "sets, which fsad's view-feature cache exploits (MVTec categories have 60-391)")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS / OpenMP threads")
    parser.add_argument("--official-sets", type=int, default=1, help="sets per K the official procedure runs on (scaled to --sets)")
    parser.add_argument("--official-positions", type=int, default=98,
                        help="positions the official fit and scoring loops run on (scaled to all)")
    parser.add_argument("--batch", type=int, default=32, help="test images per forward pass")
    parser.add_argument("--runtime", default="auto", help="fsad's test-time runtime setting (auto, torch, onnxruntime)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # inherited by the children
    os.environ["FSAD_BENCH_RUNTIME"] = args.runtime  # read by config_for in the children

    import torch

    from fsad.data.toy import make_toy_dataset

    set_threads(args.threads)
    load = os.getloadavg()
    peak32, peak64 = matmul_peak("float32"), matmul_peak("float64")
    print(f"torch {torch.__version__}; {args.threads} thread(s) (torch.set_num_threads, threadpoolctl, OMP_NUM_THREADS); "
          f"{os.cpu_count()} CPUs; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"matmul peak, 1024 x 1024, best of 5: float32 {peak32:.1f} GFLOP/s, float64 {peak64:.1f} GFLOP/s")
    print(f"{args.sets} support sets x K = {args.shots} drawn from {args.train_images} train images, {args.test} test images; category 'disc' of "
          f"fsad.data.toy.make_toy_dataset; random weights, inputs not normalised; runtime {args.runtime}")
    for spec in args.sizes:
        backbone, size = spec.split(":")[0], int(spec.split(":")[1])
        with tempfile.TemporaryDirectory() as tmp:
            root = make_toy_dataset(Path(tmp) / "toy", categories=("disc",), n_train=max(args.train_images, max(args.shots)),
                                    n_test_good=args.test // 2, n_test_defect=args.test - args.test // 2, size=size)
            fsad_result = in_child(run_fsad, str(root), backbone, size, args.shots, args.sets, args.threads)
            official = in_child(run_official, str(root), backbone, size, args.shots, args.sets, args.threads,
                                args.official_sets, args.official_positions, args.batch)
        d, h, w = official["features"]
        print(f"\n== {backbone} at {size} px: features C = {d} at {h} x {w}, B = {official['n_test']} ==")
        print(f"official: timed on {official['sets_timed']} support set(s) ({args.official_sets} per K) and "
              f"{official['positions_timed']} of {official['positions']} positions; fit and scoring loops scaled "
              f"x{official['positions'] / official['positions_timed']:.1f}, every stage then x{official['set_scale']:.0f} "
              f"to {args.sets} sets per K. fsad: every set, nothing scaled.")
        if fsad_result["missing"]:
            print(f"fsad stage timers not found (their time is in other stages): {', '.join(fsad_result['missing'])}")
        print(f"{'stage':<18}{'fsad s':>10}{'official s':>12}{'ratio':>8}")
        for name in STAGES:
            ours, theirs = fsad_result["stages"][name], official["stages"][name]
            ratio = f"{theirs / ours:7.1f}x" if ours > 1e-3 and theirs > 0 else "       -"
            print(f"{name:<18}{ours:10.2f}{theirs:12.2f}{ratio}")
        print(f"{'total':<18}{fsad_result['total']:10.2f}{official['total']:12.2f}{official['total'] / fsad_result['total']:7.1f}x")
        print(f"peak memory (RSS of each process): fsad {fsad_result['peak_mib']:.0f} MiB, official {official['peak_mib']:.0f} MiB "
              f"(after loading model and images, before the run: {fsad_result['loaded_mib']:.0f} / {official['loaded_mib']:.0f} MiB)")
        print(f"max relative difference of the distances, official vs fsad (first set, timed positions): {official['check']:.1e}")
        print("fsad mean image AUROC per K (untrained random network, a timing run): "
              + ", ".join(f"K={k}: {v:.3f}" for k, v in fsad_result["image_auroc"].items()))
        gflop = woodbury_gflop(args.shots, args.sets, d, h * w, official["n_test"])
        scoring = fsad_result["stages"]["fit"] + fsad_result["stages"]["scoring"]
        rate = gflop / scoring
        print(f"fsad fit + scoring: {gflop:.1f} GFLOP (woodbury_gflop) in {scoring:.2f} s = {rate:.1f} GFLOP/s, "
              f"{100 * rate / peak32:.0f} % of the float32 peak, {100 * rate / peak64:.0f} % of the float64 peak")
    load = os.getloadavg()
    print(f"\nload average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
