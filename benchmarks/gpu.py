"""RegAD on one GPU: training images/s and one category's full evaluation at 224 px (under 5 minutes).

1. Training: ``RegAD.registration_loss`` + backward + SGD step on random images, batch
   ``--batch`` queries with K = 2 supports each, for each backbone:size in ``--sizes``.
2. Evaluation of one category as ``fsad run`` does it: ``fsad.study.evaluation.evaluate_detector``
   with ``RegADMethod`` (untrained network, random weights) on the generated category
   ``disc`` (``fsad.data.toy.make_toy_dataset``), 10 support sets x K = 2, 4, 8, 100 test
   images; and the official test procedure (``benchmarks/official.py``) on CUDA for one
   set per K, the fit and scoring loops timed on ``--official-positions`` positions and
   scaled to all (the fit's setup unscaled), then x10 sets.

Needs CUDA: without it the script stops with a one-line message (``--device cpu`` runs the
same code on the CPU, for a smoke test at a small ``--sizes``).

Example:
    .venv/bin/python benchmarks/gpu.py                              # resnet18:224 and mobilenet_v2:128
    .venv/bin/python benchmarks/gpu.py --device cpu --sizes mobilenet_v2:64 --sets 1 --test 10 --steps 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from official import official_features, official_fit, official_maps, official_score

from fsad.components.views import support_views
from fsad.config import RegADConfig
from fsad.data.loading import as_float, load_images
from fsad.data.mvtec import load_category
from fsad.data.support_sets import make_support_sets, support_samples
from fsad.data.toy import make_toy_dataset
from fsad.methods.regad.checkpoint import build_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.study.evaluation import TestSet, evaluate_detector


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
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
    for spec in args.sizes:
        backbone, size = spec.split(":")[0], int(spec.split(":")[1])
        time_training(backbone, size, args.device, args.batch, args.steps)
        time_evaluation(backbone, size, args.device, args)


if __name__ == "__main__":
    main()
