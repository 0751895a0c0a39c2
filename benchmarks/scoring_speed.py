"""Time the official RegAD scoring loop against fsad's batched Gaussian scoring.

RegAD (https://arxiv.org/abs/2207.07361) inherits PaDiM's scoring code: for
each feature-map position, ``np.cov`` + eps * I, ``np.linalg.inv``, then
``scipy.spatial.distance.mahalanobis`` per test sample in a Python loop. This
script times that loop and ``fsad.gaussian.fit_gaussian`` + ``mahalanobis``
on the same random features, checks they agree, and prints the speed-up.

Example:
    .venv/bin/python benchmarks/scoring_speed.py --positions 28 --loop-positions 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from threadpoolctl import threadpool_limits

from fsad.gaussian import fit_gaussian, mahalanobis

EPS = 0.01  # the official code's ridge


def official_loop(support: np.ndarray, test: np.ndarray, positions: int) -> np.ndarray:
    """The official per-position scoring, verbatim in spirit, on the first ``positions``.

    Args:
        support: N x C x P support features.
        test: B x C x P test features.
        positions: how many positions (from the first) to score.

    Returns:
        B x positions distances.
    """
    channels = support.shape[1]
    identity = np.identity(channels)
    distances = []
    for i in range(positions):
        mean = np.mean(support[:, :, i], axis=0)
        cov = np.cov(support[:, :, i], rowvar=False) + EPS * identity
        cov_inv = np.linalg.inv(cov)
        distances.append([scipy_mahalanobis(sample[:, i], mean, cov_inv) for sample in test])
    return np.array(distances).T  # B x positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=56, help="feature map side (H = W)")
    parser.add_argument("--channels", type=int, default=152)
    parser.add_argument("--support", type=int, default=44, help="support views N")
    parser.add_argument("--test", type=int, default=32, help="test images B")
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    parser.add_argument(
        "--loop-positions", type=int, default=None,
        help="time the official loop on only this many positions and extrapolate linearly",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    side = args.positions
    total = side * side
    looped = total if args.loop_positions is None else min(args.loop_positions, total)
    support = torch.randn(args.support, args.channels, side, side)  # N x C x H x W
    test = torch.randn(args.test, args.channels, side, side)  # B x C x H x W
    print(
        f"features: support {tuple(support.shape)}, test {tuple(test.shape)}, "
        f"float32 in, {args.threads} threads, torch {torch.__version__}"
    )

    with threadpool_limits(limits=args.threads):
        support_np = support.numpy().reshape(args.support, args.channels, total)
        test_np = test.numpy().reshape(args.test, args.channels, total)
        start = time.perf_counter()
        reference = official_loop(support_np, test_np, looped)  # B x looped
        loop_seconds = time.perf_counter() - start

        start = time.perf_counter()
        gaussian = fit_gaussian(support, eps=EPS)
        distances = mahalanobis(test, gaussian)  # B x H x W
        fsad_seconds = time.perf_counter() - start

    loop_total = loop_seconds * total / looped
    got = distances.reshape(args.test, total)[:, :looped].double().numpy()
    diff = np.abs(got - reference)
    print(f"agreement on {looped} positions: max abs diff {diff.max():.3g}, "
          f"max rel diff {(diff / reference).max():.3g} (distances ~{reference.mean():.3g})")
    if looped < total:
        print(f"official loop: {loop_seconds:.2f} s on {looped} of {total} positions, "
              f"EXTRAPOLATED linearly to {loop_total:.2f} s for all {total}")
    else:
        print(f"official loop: {loop_total:.2f} s for all {total} positions")
    print(f"fsad fit_gaussian + mahalanobis: {fsad_seconds:.2f} s for all {total} positions")
    print(f"speed-up: {loop_total / fsad_seconds:.1f}x")


if __name__ == "__main__":
    main()
