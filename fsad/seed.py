"""One seed fixes every random number generator the project uses."""

from __future__ import annotations

import os
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
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # That call also makes every torch.empty write NaN into its memory (a guard against code
    # reading it uninitialised, which fsad's tests would catch as changed results): 24 % of
    # the CPU time of RegAD's feature extraction in a profile at 128 px. Results are equal without it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """A generator for one epoch's sampling, derived from ``(seed, epoch)`` alone.

    Deriving it (instead of carrying one generator across epochs) makes a resumed
    training draw exactly the batches an uninterrupted one would.
    """
    return np.random.default_rng([seed, epoch])
