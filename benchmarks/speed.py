"""Speed and memory of RegAD's test-time scoring, training and inference, in one run.

1. Scoring: the official RegAD code (inherited from PaDiM) fits and scores the
   per-position Gaussians in a Python loop: for each feature-map position, ``np.cov`` +
   eps * I, ``np.linalg.inv``, then ``scipy.spatial.distance.mahalanobis`` per test
   image. This script times that loop and ``fsad.components.gaussian.fit_gaussian`` +
   ``mahalanobis`` on the same features, checks they agree, and prints the ratio.
2. Training and inference images per second of the default backbone's RegAD, and the
   process's peak memory (peak RSS on a CPU, peak allocated memory on a GPU).

Example:
    .venv/bin/python benchmarks/speed.py                  # C = 152 (MobileNetV2) and 448 (ResNet-18) at 56 x 56
    .venv/bin/python benchmarks/speed.py --channels 152 --shots 2 --image-size 128   # a quick look
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from threadpoolctl import threadpool_limits

from fsad.components.gaussian import fit_gaussian, mahalanobis
from fsad.config import RegADConfig, resolve_device
from fsad.methods.regad.checkpoint import build_model

EPS = 0.01  # the official code's ridge


def official_loop(support: np.ndarray, test: np.ndarray, positions: int) -> np.ndarray:
    """The official per-position fit and scoring on the first ``positions``.

    Args:
        support: N x C x P support features.
        test: B x C x P test features.
        positions: how many positions (from the first) to score.

    Returns:
        B x positions distances.
    """
    identity = np.identity(support.shape[1])
    distances = []
    for i in range(positions):
        mean = np.mean(support[:, :, i], axis=0)
        cov = np.cov(support[:, :, i], rowvar=False) + EPS * identity
        cov_inv = np.linalg.inv(cov)
        distances.append([scipy_mahalanobis(sample[:, i], mean, cov_inv) for sample in test])
    return np.array(distances).T  # B x positions


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_scoring(args, shots: int) -> None:
    side, total = args.positions, args.positions**2
    n = 22 * shots  # support views
    looped = min(args.loop_positions, total)
    support = torch.randn(n, args.channels, side, side)  # N x C x H x W
    test = torch.randn(args.test, args.channels, side, side)  # B x C x H x W
    support_np = support.numpy().reshape(n, args.channels, total)
    test_np = test.numpy().reshape(args.test, args.channels, total)

    start = time.perf_counter()
    reference = official_loop(support_np, test_np, looped)  # B x looped
    loop_seconds = (time.perf_counter() - start) * total / looped

    start = time.perf_counter()
    gaussian = fit_gaussian(support, eps=EPS)
    fit_seconds = time.perf_counter() - start
    distances = mahalanobis(test, gaussian)  # B x H x W
    fsad_seconds = time.perf_counter() - start

    got = distances.reshape(args.test, total)[:, :looped].double().numpy()
    rel = (np.abs(got - reference) / reference).max()
    form = "low-rank (Woodbury)" if gaussian.low_rank else "full-rank"
    print(f"K={shots:<2} N={n:<3} C={args.channels} {side}x{side} B={args.test}: official loop {loop_seconds:7.2f} s"
          f"{' (timed on ' + str(looped) + ' positions, scaled)' if looped < total else ''}, "
          f"fsad {fsad_seconds:5.2f} s (fit {fit_seconds:.2f}, {form}), speed-up {loop_seconds / fsad_seconds:5.1f}x, "
          f"max rel diff {rel:.1e}")


def time_network(args, device: str) -> None:
    config = RegADConfig(image_size=args.image_size, device=device)
    model = build_model(config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    query = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    support = torch.rand(args.batch, 2, 3, args.image_size, args.image_size, generator=generator).to(device)
    model.train()
    for step in range(args.steps + 1):  # the first step warms up
        if step == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model.registration_loss(query, support)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    train_rate = args.steps * args.batch * 3 / (time.perf_counter() - start)  # query + 2 supports

    model.eval()
    images = torch.rand(32, 3, args.image_size, args.image_size, generator=generator).to(device)
    with torch.no_grad():
        model.registered_features(images)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            model.registered_features(images)
        if device == "cuda":
            torch.cuda.synchronize()
    infer_rate = args.steps * len(images) / (time.perf_counter() - start)
    print(f"{config.backbone} RegAD at {args.image_size} px on {device}: training {train_rate:.1f} images/s "
          f"(batch {args.batch} queries + 2 supports each), inference {infer_rate:.1f} images/s "
          f"(registered features, batch 32); peak memory {peak_memory_mib(device):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=56, help="feature map side (H = W)")
    parser.add_argument("--channels", type=int, nargs="+", default=[152, 448], help="152: MobileNetV2; 448: ResNet-18")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 8], help="K; 22 views each")
    parser.add_argument("--test", type=int, default=100, help="test images B (MVTec categories: 42-167)")
    parser.add_argument("--loop-positions", type=int, default=392,
                        help="time the official loop on this many positions and scale linearly")
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    parser.add_argument("--image-size", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}")
    with threadpool_limits(limits=args.threads):
        for channels in args.channels:
            for shots in args.shots:
                time_scoring(argparse.Namespace(**{**vars(args), "channels": channels}), shots)
    for size in args.image_size:
        time_network(argparse.Namespace(**{**vars(args), "image_size": size}), device)


if __name__ == "__main__":
    main()
