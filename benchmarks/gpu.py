"""fsad on one GPU, as one script: the CUDA checks, then paper-size timings (minutes; not yet run on a GPU).

0. Checks (``--smoke``: only these, about a minute), each PASS or FAIL in a summary; any FAIL
   exits 1: a tiny RegAD training (``train_regad``, loss finite, weights changed; two runs compared,
   which on CUDA may differ: README, Decisions), every method of ``fsad.methods.registry``
   fitted and predicting on the device (random weights, generated images; CPU scores of the right
   shape), a detector folder fitted on the CPU predicting on the device (its scores beside the
   CPU's), ``cuda:N`` beyond the machine refused, TF32 off, and the peak memory of SPADE
   scoring 64 images (in chunks) against the same images' embedding.
1. Training: ``RegAD.registration_loss`` + backward + SGD step on random images, batch
   ``--batch`` queries with K = 2 supports each, for each backbone:size in ``--sizes``.
2. Evaluation of one category as ``fsad run`` does it: ``fsad.study.evaluation.evaluate_detector``
   with ``RegADMethod`` (untrained network, random weights) on the generated category
   ``disc`` (``fsad.data.toy.make_toy_dataset``), 10 support sets x K = 2, 4, 8, 100 test
   images; and the official test procedure (``benchmarks/official.py``) on CUDA for one
   set per K, the fit and scoring loops timed on ``--official-positions`` positions and
   scaled to all (the fit's setup unscaled), then x10 sets.
3. Every method of the registry at that size (random weights): fit on K = the largest ``--shots``
   and predict the ``--test`` images from raw pixels, clocks read after synchronizing, with the
   peak device memory (``fsad.study.comparison.MemoryMonitor``).

Needs CUDA: without it the script stops with a one-line message (``--device cpu`` runs the
same code on the CPU, for a smoke test at a small ``--sizes``). ``tests/methods/test_device.py``
runs ``--smoke`` where a GPU is visible.

Example:
    .venv/bin/python benchmarks/gpu.py                              # checks, then resnet18:224 and mobilenet_v2:128
    .venv/bin/python benchmarks/gpu.py --smoke                      # the checks only
    .venv/bin/python benchmarks/gpu.py --device cpu --sizes mobilenet_v2:64 --sets 1 --test 10 --steps 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from official import official_features, official_fit, official_maps, official_score

from fsad.components.backbones import build_backbone
from fsad.components.views import support_views
from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import as_float, load_images
from fsad.data.mvtec import load_category
from fsad.data.support_sets import make_support_sets, support_samples
from fsad.data.toy import make_toy_dataset
from fsad.io import save_atomic
from fsad.methods.regad.checkpoint import build_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.training import train_regad
from fsad.methods.registry import DETECTORS, build_detector, load_detector, save_detector
from fsad.methods.resad import ResAD, ResADSettings
from fsad.study.comparison import MemoryMonitor
from fsad.study.evaluation import TestSet, clock, evaluate_detector, warm_up

SMOKE_SIZE = 64  # px of the checks' generated images
SMOKE_OPTIONS = {"regad_l": {"epochs": 2}, "anomalydino_dinov2": {"resolution": 56, "rotation": False}}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- checks
def check_training(device: str, root: Path, tmp: Path) -> str:
    """A tiny leave-one-out training on the device: finite loss, weights moved; two runs compared."""
    config = RegADConfig(pretrained=False, image_size=SMOKE_SIZE, epochs=2, batch_size=4, batches_per_epoch=3, lr=0.01,
                         device=device)
    categories = [load_category(root, name) for name in ("ring", "stripes")]
    start = build_model(config).state_dict()
    runs = [train_regad(categories, config, tmp / f"train{i}", resume=False, progress=False).state_dict() for i in range(2)]
    history = torch.load(tmp / "train0" / "regad.pt", map_location="cpu", weights_only=True)["history"]
    losses = [row["loss"] for row in history]
    if not all(loss == loss and abs(loss) < float("inf") for loss in losses):
        raise AssertionError(f"training losses {losses}")
    moved = sum(not torch.equal(start[k], runs[0][k].cpu()) for k in start if start[k].is_floating_point())
    if not moved:
        raise AssertionError("no weight changed in training")
    differ = max(float((a.float() - runs[1][k].float()).abs().max()) for k, a in runs[0].items() if a.is_floating_point())
    return f"losses {', '.join(f'{x:.4f}' for x in losses)}; {moved} weight tensors changed; two runs differ by at most {differ:.2e}"


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if torch.is_tensor(value):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [t for item in items for t in _tensors(item)]


def _model_files(tmp: Path) -> dict[str, Path]:
    config = RegADConfig(pretrained=False, image_size=SMOKE_SIZE)
    torch.manual_seed(0)
    save_atomic({"config": config.to_dict(), "model": build_model(config).state_dict()}, tmp / "regad.pt")
    ResAD(build_backbone(config.backbone, pretrained=False), SMOKE_SIZE).save(tmp / "resad.pt", ResADSettings(), {})
    return {"regad": tmp / "regad.pt", "resad": tmp / "resad.pt"}


def check_method(name: str, device: str, data: tuple[torch.Tensor, torch.Tensor], files: dict[str, Path], tmp: Path) -> str:
    """``name`` fitted and predicting on ``device``; its CPU-fitted folder predicting on ``device`` beside the CPU."""
    support, test = data
    settings = RegADConfig(pretrained=False, image_size=SMOKE_SIZE)
    on_device = build_detector(name, settings.replace(device=device), SMOKE_OPTIONS.get(name), files.get(name))
    on_device.fit(support)
    scores = on_device.predict(test)
    for what, tensor, shape in (("maps", scores.maps, (len(test), SMOKE_SIZE, SMOKE_SIZE)), ("image", scores.image, (len(test),))):
        if tensor.device.type != "cpu" or tuple(tensor.shape) != shape or not torch.isfinite(tensor).all():
            raise AssertionError(f"{what}: {tensor.device}, shape {tuple(tensor.shape)}, finite {bool(torch.isfinite(tensor).all())}")
    state = [t for t in _tensors(on_device.state()) if t.device.type != "cpu"]
    if state:
        raise AssertionError(f"its state holds {len(state)} tensor(s) on {state[0].device}: a saved folder would need that device")
    on_cpu = build_detector(name, settings.replace(device="cpu"), SMOKE_OPTIONS.get(name), files.get(name))
    on_cpu.fit(support)
    expected = on_cpu.predict(test).image
    save_detector(tmp / name, on_cpu, settings.replace(device="cpu"), SMOKE_OPTIONS.get(name))
    moved = load_detector(tmp / name, device=device)[0].predict(test).image
    relative = float(((moved - expected).abs() / expected.abs().clamp_min(1e-12)).max())
    return (f"fit + predict on {device}, CPU scores and state; CPU-fitted folder on {device}: image scores within "
            f"{relative:.1e} (relative) of the CPU's")


def check_devices(device: str) -> str:
    """``cuda:N`` beyond the machine is refused up front, and CUDA float32 is full precision."""
    if device == "cpu":
        return "skipped on the CPU"
    count = torch.cuda.device_count()
    try:
        resolve_device(f"cuda:{count}")
    except RuntimeError as error:
        refused = str(error)
    else:
        raise AssertionError(f"cuda:{count} was accepted on a machine with {count} GPU(s)")
    flags = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    if flags != ("ieee", "ieee"):
        raise AssertionError(f"TF32 flags after resolve_device: conv {flags[0]}, matmul {flags[1]}")
    return f"refused: {refused}; conv and matmul float32 precision: ieee"


def check_memory(device: str, data: tuple[torch.Tensor, torch.Tensor]) -> str:
    """SPADE scoring 64 images: its peak above the embedding, which never goes to the device whole."""
    support, test = data
    detector = build_detector("spade", RegADConfig(pretrained=False, image_size=SMOKE_SIZE, device=device))
    detector.fit(support)
    embedded = detector.embed(test.repeat(64 // len(test) + 1, 1, 1, 1)[:64])
    embedding_mib = sum(t.nbytes for t in embedded) / 2**20
    with MemoryMonitor(device) as monitor:
        detector.predict_embedded(embedded)
    return f"peak {monitor.peak_mib:.1f} MiB above the start for a {embedding_mib:.1f} MiB embedded test set (64 images)"


def checked(results: list[tuple[str, bool, str]], name: str, fn: Callable[[], str]) -> None:
    """Run one check, print PASS or FAIL with its detail and append ``(name, passed, detail)``; an error fails only it."""
    tic = time.perf_counter()
    try:
        detail, passed = fn(), True
    except Exception as error:  # a check reports, the others still run
        detail, passed = f"{type(error).__name__}: {error}".splitlines()[0][:300], False
        traceback.print_exc()
    results.append((name, passed, f"{detail} ({time.perf_counter() - tic:.1f} s)"))
    print(f"{'PASS' if passed else 'FAIL'} {name}: {results[-1][2]}", flush=True)


def run_checks(device: str) -> list[tuple[str, bool, str]]:
    """Every check: ``(name, passed, detail)``."""
    results: list[tuple[str, bool, str]] = []

    def check(name: str, fn: Callable[[], str]) -> None:
        checked(results, name, fn)

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root = make_toy_dataset(tmp / "toy", n_train=8, n_test_good=2, n_test_defect=2, size=SMOKE_SIZE)
        category = load_category(root, "disc")
        data = (load_images(category.train[:4], SMOKE_SIZE), load_images(category.test, SMOKE_SIZE))
        files = _model_files(tmp)
        check("devices", lambda: check_devices(device))
        check("training", lambda: check_training(device, root, tmp))
        for name in DETECTORS:
            check(f"method {name}", lambda name=name: check_method(name, device, data, files, tmp))
        check("memory", lambda: check_memory(device, data))
    return results


def peak_mib(device: str) -> str:
    if device != "cuda":
        return "n/a on the CPU"
    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated"


def time_training(backbone: str, size: int, device: str, batch: int, steps: int) -> None:
    model = build_model(RegADConfig(backbone=backbone, pretrained=False, image_size=size, device=device)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    query = torch.rand(batch, 3, size, size, device=device)  # B x 3 x S x S
    support = torch.rand(batch, 2, 3, size, size, device=device)  # B x K x 3 x S x S
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            synchronize(device)
            start = time.perf_counter()
        loss = model.registration_loss(query, support)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    rate = steps * batch * 3 / (time.perf_counter() - start)  # a query and 2 supports per item
    print(f"training {backbone} {size} px: {rate:.0f} images/s (batch {batch} queries + 2 supports each, {steps} steps); "
          f"peak {peak_mib(device)}")


def time_evaluation(backbone: str, size: int, device: str, args: argparse.Namespace) -> None:
    config = RegADConfig(backbone=backbone, pretrained=False, normalize=False, image_size=size, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_toy_dataset(Path(tmp) / "toy", categories=("disc",), n_train=30, n_test_good=args.test // 2,
                                n_test_defect=args.test - args.test // 2, size=size)
        category = load_category(root, "disc")
        sets = make_support_sets(category, args.shots, n_sets=args.sets)
        test = TestSet.load(category, size)
        model = untrained_regad(config).to(device)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        run = evaluate_detector(RegADMethod(model, config, name="untrained"), category, sets, test,
                                ("image_auroc", "pixel_auroc"), progress=False)
        synchronize(device)
        fsad_seconds = time.perf_counter() - start
        fsad_peak = peak_mib(device)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        official_seconds, positions, total_positions = 0.0, 0, 0
        images = as_float(test.images).to(device)  # B x 3 x S x S
        for k in args.shots:
            synchronize(device)
            start = time.perf_counter()
            support = as_float(load_images(support_samples(category, sets[k][0]), size)).to(device)  # K x 3 x S x S
            support_features = official_features(model, support_views(support).flatten(0, 1))  # 22K x D x h x w
            test_features = torch.cat([official_features(model, chunk) for chunk in images.split(32)])  # B x D x h x w
            synchronize(device)
            per_set = time.perf_counter() - start
            n, d, h, w = support_features.shape
            total_positions, positions = h * w, min(args.official_positions, h * w)
            clock: dict[str, float] = {}
            mean, cov = official_fit(support_features.view(n, d, h * w), positions, clock)
            start = time.perf_counter()
            distances = official_score(test_features.view(len(images), d, h * w), mean, cov, positions)  # B x positions
            synchronize(device)
            # the fit's setup (the zeroed C x C x HW tensor) is paid once; the loops scale with the positions
            per_set += clock["setup"] + (clock["loop"] + time.perf_counter() - start) * total_positions / positions
            del mean, cov
            full = torch.zeros(len(images), h * w)
            full[:, :positions] = distances
            start = time.perf_counter()
            official_maps(full.view(len(images), h, w), size)
            official_seconds += (per_set + time.perf_counter() - start) * args.sets
    auroc = sum(r["image_auroc"] for r in run.rows) / len(run.rows)
    print(f"evaluation {backbone} {size} px, {args.sets} sets x K = {args.shots}, {args.test} test images: "
          f"fsad {fsad_seconds:.1f} s (peak {fsad_peak}, mean image AUROC {auroc:.3f}, untrained); "
          f"official {official_seconds:.1f} s (1 set per K, fit + scoring on {positions} of {total_positions} positions, "
          f"scaled; peak {peak_mib(device)}); official / fsad = {official_seconds / fsad_seconds:.1f}x")


def time_methods(backbone: str, size: int, device: str, args: argparse.Namespace) -> None:
    """Fit seconds, ms per test image and peak memory of every method at ``size`` px."""
    config = RegADConfig(backbone=backbone, pretrained=False, image_size=size, device=device)
    k = max(args.shots)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_toy_dataset(Path(tmp) / "toy", categories=("disc",), n_train=max(k, 2), n_test_good=args.test // 2,
                                n_test_defect=args.test - args.test // 2, size=size)
        category = load_category(root, "disc")
        support, test = load_images(category.train[:k], size), load_images(category.test, size)
        torch.manual_seed(0)
        save_atomic({"config": config.to_dict(), "model": build_model(config).state_dict()}, Path(tmp) / "regad.pt")
        ResAD(build_backbone(backbone, pretrained=False), size).save(Path(tmp) / "resad.pt", ResADSettings(), {})
        files = {"regad": Path(tmp) / "regad.pt", "resad": Path(tmp) / "resad.pt"}
        warm_up(device)
        for name in DETECTORS:
            detector = build_detector(name, config, {}, files.get(name))
            with MemoryMonitor(device) as monitor:
                tic = clock(device)
                detector.fit(support)
                fitted = clock(device)
                detector.predict(test)
                done = clock(device)
            print(f"method {name} {backbone} {size} px, K = {k}: fit {fitted - tic:.2f} s, "
                  f"{1000 * (done - fitted) / len(test):.1f} ms per test image ({len(test)}), peak {monitor.peak_mib:.0f} MiB", flush=True)
            del detector


def timings(backbone: str, size: int, args: argparse.Namespace) -> str:
    time_training(backbone, size, args.device, args.batch, args.steps)
    time_evaluation(backbone, size, args.device, args)
    time_methods(backbone, size, args.device, args)
    return "printed above"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="only the checks (tiny training, every method), no timings")
    parser.add_argument("--sizes", nargs="+", default=["resnet18:224", "mobilenet_v2:128"], help="backbone:image size pairs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--official-positions", type=int, default=392)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA GPU here (torch.cuda.is_available() is False); "
                 "run it on a machine with an NVIDIA GPU, or pass --device cpu for a smoke test")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}")
    results = run_checks(args.device)
    failed = [check for check, passed, _ in results if not passed]
    if not args.smoke and not failed:
        for spec in args.sizes:
            backbone, size = spec.split(":")[0], int(spec.split(":")[1])
            checked(results, f"timings {spec}", lambda backbone=backbone, size=size: timings(backbone, size, args))
        failed = [check for check, passed, _ in results if not passed]
    print(f"\nsummary on {name}: {len(results) - len(failed)} of {len(results)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "; all checks passed"
             + ("" if args.smoke else f"; timings above for {', '.join(args.sizes)}")))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
