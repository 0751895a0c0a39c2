"""fsad: few-shot anomaly detection, RegAD (ECCV 2022) and its peers, reproducibly."""

import os

__version__ = "0.1.0"

# Deterministic cuBLAS matmuls (fsad.seed.seed_everything) need this before cuBLAS is first used,
# which may be before any seeding (a comparison runs PaDiM before RegAD): set on importing fsad.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
