"""Speed and memory of RegAD's test-time scoring, training and inference, in one run.

1. Scoring: fsad's ``fsad.components.gaussian.fit_gaussian`` + ``mahalanobis`` against two
   baselines on the same features, each timed on the first ``--loop-positions`` positions
   and scaled linearly to all of them (every position costs the same; the official fit's
   setup, a zeroed C x C x HW tensor, is paid once and not scaled):
   - "official": RegAD's own test procedure (``benchmarks/official.py``: float32 torch,
     ``torch.cov`` per position into a C x C x HW tensor, ``torch.linalg.inv`` per position
     on its strided slice, a Python loop of ``mahalanobis_torch`` over the test images),
     on the CPU and, where one is available, on CUDA;
   - "padim loop": PaDiM's loop (``np.cov`` float64 + eps * I, ``np.linalg.inv``,
     ``scipy.spatial.distance.mahalanobis`` per test image), faster than RegAD's own.
   Both are checked against fsad's distances (max relative difference printed).
2. Training images per second of the default backbone's RegAD, its test-image features
   (images/s and ms/image, the path of ``fsad run``), and the process's peak memory (peak RSS on a CPU, peak allocated memory on a GPU).

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
from official import EPS, official_fit, official_score  # benchmarks/official.py, next to this script
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from threadpoolctl import threadpool_limits

from fsad.components.gaussian import fit_gaussian, mahalanobis
from fsad.config import RegADConfig, resolve_device
from fsad.methods.regad.checkpoint import build_model
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.training import make_optimizers, training_step


def padim_loop(support: np.ndarray, test: np.ndarray, positions: int) -> np.ndarray:
    """PaDiM's per-position NumPy fit and scoring on the first ``positions``.

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


def time_scoring(args, shots: int, devices: list[str]) -> None:
    side, total = args.positions, args.positions**2
    n = 22 * shots  # support views
    looped = min(args.loop_positions, total)
    support = torch.randn(n, args.channels, side, side)  # N x C x H x W
    test = torch.randn(args.test, args.channels, side, side)  # B x C x H x W
    support_np = support.numpy().reshape(n, args.channels, total)
    test_np = test.numpy().reshape(args.test, args.channels, total)

    def seconds_and_rel(distances: np.ndarray, seconds: float, setup: float = 0.0) -> str:
        """Scales the looped seconds to all positions (``setup``: paid once, not scaled)."""
        rel = (np.abs(distances - got) / got).max()
        scaled = setup + seconds * total / looped
        return f"{scaled:7.2f} s (x{scaled / fsad_seconds:5.1f}, max rel diff {rel:.1e})"

    start = time.perf_counter()
    gaussian = fit_gaussian(support, eps=EPS)
    fit_seconds = time.perf_counter() - start
    distances = mahalanobis(test, gaussian)  # B x H x W
    fsad_seconds = time.perf_counter() - start
    got = distances.reshape(args.test, total)[:, :looped].double().numpy()  # B x looped

    start = time.perf_counter()
    padim = padim_loop(support_np, test_np, looped)  # B x looped
    padim_text = seconds_and_rel(padim, time.perf_counter() - start)

    official_text = []
    for device in devices:
        support_flat = support.reshape(n, args.channels, total).to(device)  # N x C x P
        test_flat = test.reshape(args.test, args.channels, total).to(device)  # B x C x P
        clock: dict[str, float] = {}
        mean, cov = official_fit(support_flat, looped, clock)
        start = time.perf_counter()
        official = official_score(test_flat, mean, cov, looped)  # B x looped
        synchronize(device)
        looped_seconds = clock["loop"] + time.perf_counter() - start
        official_text.append(f"official ({device}) {seconds_and_rel(official.double().numpy(), looped_seconds, clock['setup'])}")
        del mean, cov

    form = "low-rank (Woodbury)" if gaussian.low_rank else "full-rank"
    scaled = f"baselines timed on {looped} of {total} positions, scaled x{total / looped:.1f}" if looped < total else "all positions"
    print(f"K={shots:<2} N={n:<3} C={args.channels} {side}x{side} B={args.test}: fsad {fsad_seconds:5.2f} s "
          f"(fit {fit_seconds:.2f}, {form}); {'; '.join(official_text)}; padim loop {padim_text}  [{scaled}]")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_network(args, device: str) -> None:
    config = RegADConfig(image_size=args.image_size, device=device, lr=1e-4)
    # the training step of train_regad: its optimisers, channels-last network and input
    model = build_model(config).to(device, memory_format=torch.channels_last)
    optimizers, _ = make_optimizers(model, config)
    generator = torch.Generator().manual_seed(0)
    query = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    support = torch.rand(args.batch, 2, 3, args.image_size, args.image_size, generator=generator).to(device)
    model.train()
    for step in range(args.steps + 1):  # the first step warms up
        if step == 1:
            synchronize(device)
            start = time.perf_counter()
        training_step(model, optimizers, query, support)
    synchronize(device)
    train_rate = args.steps * args.batch * 3 / (time.perf_counter() - start)  # query + 2 supports

    # Test-image features as fsad run / fsad predict compute them: RegADMethod.embed (folded batch
    # norms, channels-last, inference mode, batches of 32), from uint8 images on the CPU.
    detector = RegADMethod(model.eval(), config)
    images = torch.randint(0, 256, (32, 3, args.image_size, args.image_size), generator=generator, dtype=torch.uint8)
    detector.embed(images)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        detector.embed(images)
    synchronize(device)
    infer_rate = args.steps * len(images) / (time.perf_counter() - start)
    print(f"{config.backbone} RegAD at {args.image_size} px on {device}: training {train_rate:.1f} images/s "
          f"(batch {args.batch} queries + 2 supports each), test features {infer_rate:.1f} images/s = "
          f"{1000 / infer_rate:.1f} ms/image (RegADMethod.embed, batch 32); peak memory {peak_memory_mib(device):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=56, help="feature map side (H = W)")
    parser.add_argument("--channels", type=int, nargs="+", default=[152, 448], help="152: MobileNetV2; 448: ResNet-18")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 8], help="K; 22 views each")
    parser.add_argument("--test", type=int, default=100, help="test images B (MVTec categories: 42-167)")
    parser.add_argument("--loop-positions", type=int, default=392,
                        help="time the baselines on this many positions and scale linearly")
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    parser.add_argument("--image-size", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}; official procedure on {', '.join(devices)}")
    print("Scoring: seconds for fit + score of all positions; (xN) = baseline / fsad")
    with threadpool_limits(limits=args.threads):
        for channels in args.channels:
            for shots in args.shots:
                time_scoring(argparse.Namespace(**{**vars(args), "channels": channels}), shots, devices)
    for size in args.image_size:
        time_network(argparse.Namespace(**{**vars(args), "image_size": size}), device)


if __name__ == "__main__":
    main()
