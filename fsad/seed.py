"""One seed fixes every random number generator the project uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels.

    The official RegAD code seeds only the CUDA generator, so its trainings differ run to
    run; with this call two CPU runs give bit-identical weights.

    Args:
        seed: Any non-negative integer.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # CUBLAS_WORKSPACE_CONFIG, which deterministic cuBLAS needs, is set on importing fsad (fsad/__init__.py).
    # warn_only: grid_sample's and interpolate's backward (the STNs, training) have no deterministic
    # CUDA kernel; they warn and run, so CUDA trainings differ run to run (README, Decisions).
    torch.use_deterministic_algorithms(True, warn_only=True)
    # That call also makes every torch.empty write NaN into its memory (a guard against code
    # reading it uninitialised, which fsad's tests would catch as changed results): 24 % of
    # the CPU time of RegAD's feature extraction in a profile at 128 px. Results are equal without it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def exact_float32() -> None:
    """Full float32 on CUDA: no TF32 in convolutions (PyTorch's default on Ampere and later GPUs) nor in matmuls.

    TF32 rounds the inputs of a product to 10 mantissa bits (float32 keeps 23), which moves
    features and Mahalanobis scores away from the CPU's; fsad keeps GPU results comparable with
    CPU ones and gives up TF32's speed-up. ``resolve_device`` calls it for every CUDA device.
    """
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """A generator for one epoch's sampling, derived from ``(seed, epoch)`` alone.

    Deriving it (instead of carrying one generator across epochs) makes a resumed
    training draw exactly the batches an uninterrupted one would.
    """
    return np.random.default_rng([seed, epoch])
