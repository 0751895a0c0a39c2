"""CUDA's numerics are fixed before they matter (issue 22, item 5), proven on the CPU.

cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it is first used, which may be before any run
is seeded (a comparison runs PaDiM before RegAD): importing fsad sets it. Every CUDA device
``resolve_device`` hands out computes float32 in full precision (no TF32).
"""

from __future__ import annotations

import os
import subprocess
import sys

from fsad.paths import ROOT


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_importing_fsad_sets_the_cublas_workspace_before_any_seeding():
    assert _python("import os, fsad.methods.padim; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))") == ":4096:8"
    assert _python("import os, fsad.cli; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))") == ":4096:8"


def test_a_cuda_device_computes_float32_without_tf32():
    code = ("import torch; torch.cuda.is_available = lambda: True; torch.cuda.device_count = lambda: 1\n"
            "from fsad.config import resolve_device\n"
            "print(torch.backends.cudnn.conv.fp32_precision, resolve_device('cuda:0'), torch.backends.cudnn.conv.fp32_precision, "
            "torch.backends.cuda.matmul.fp32_precision)")
    assert _python(code) == "tf32 cuda:0 ieee ieee"  # PyTorch's default for convolutions is TF32
