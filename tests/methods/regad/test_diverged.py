"""A diverged STN ends training with one clear error, not a segmentation fault (issue 19, item 11).

The crash seen on an AMD EPYC machine: with the test suite's lr, the STN's transform grew
past 1e22 and then became NaN (oneDNN's AVX2 kernels round differently from AVX-512 ones, so
only some CPUs got there); ``grid_sample``'s CPU backward with reflection padding does not
bound-check a NaN position and wrote out of bounds. The tests run the failing step in a
child process, since without the guard in ``fsad.methods.regad.stn.warp`` it kills the
interpreter. ``OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 pytest tests/methods/regad`` imitates
such a CPU on an AVX-512 machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from fsad.config import RegADConfig
from fsad.data.mvtec import load_category
from fsad.methods.regad.training import CHECKPOINT_NAME, train_regad
from fsad.paths import ROOT

TINY = RegADConfig(pretrained=False, image_size=32, epochs=2, batch_size=4, train_shots=(2,), lr=0.005, device="cpu")
ERROR = "fsad: error: RegAD's STN produced a transform that is not finite (NaN or infinity): the training diverged; lower regad.lr"

NAN_WARP_BACKWARD = """
import torch
from fsad.methods.regad.stn import warp

features = torch.rand(12, 32, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
theta = torch.eye(2, 3).repeat(12, 1, 1)
theta[3, 0, 0] = float("nan")
try:
    warp(features, theta.requires_grad_()).sum().backward()
except ValueError as error:
    print(error)
"""


def child(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_warp_refuses_a_nan_transform_instead_of_crashing_in_backward(tmp_path):
    done = child(["-c", NAN_WARP_BACKWARD], tmp_path)
    assert done.returncode == 0, f"exit {done.returncode} (-11: segmentation fault):\n{done.stderr[-2000:]}"
    assert "transform that is not finite" in done.stdout


def test_fsad_train_resuming_a_diverged_checkpoint_is_one_error(toy_root, tmp_path):
    train_regad([load_category(toy_root, c) for c in ("ring", "stripes")], TINY, tmp_path / "model", progress=False)
    checkpoint = tmp_path / "model" / CHECKPOINT_NAME
    state = torch.load(checkpoint, weights_only=True)
    state["epoch"], state["history"] = 1, state["history"][:1]  # as if cut after epoch 1 ...
    state["model"]["stns.2.regressor.3.bias"][0] = float("nan")  # ... with a diverged STN: its transform is NaN at the next step
    torch.save(state, checkpoint)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"regad": TINY.to_dict()}))
    done = child(["-m", "fsad.cli", "train", "--data", str(toy_root), "--target", "disc", "--config", "train.yaml", "--out", "model"],
                 tmp_path)
    assert done.returncode == 2, f"exit {done.returncode} (-11: segmentation fault):\n{done.stderr[-2000:]}"
    assert done.stderr.strip().splitlines()[-1].startswith(ERROR), done.stderr[-2000:]
