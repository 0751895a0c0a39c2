"""Crash reports: a segmentation fault in native code (a torch kernel) names the Python line it came from.

Issue 19 item 11: a crash in the backward pass seen on an AMD EPYC machine; without
faulthandler such a crash leaves only "Segmentation fault" and no place to start.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys

from fsad.paths import ROOT

# `fsad data` whose work crashes the interpreter the way a faulty kernel would (faulthandler's own test hook)
CRASHING_COMMAND = """
import faulthandler
import fsad.cli

def crashing_kernel(args):
    faulthandler._sigsegv()

fsad.cli.cmd_data = crashing_kernel
fsad.cli.main(["data", "toy", "--out", "unused"])
"""


def test_the_cli_prints_the_python_stack_of_a_segmentation_fault(tmp_path):
    done = subprocess.run([sys.executable, "-c", CRASHING_COMMAND], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert "Fatal Python error: Segmentation fault" in done.stderr, done.stderr
    assert "in crashing_kernel" in done.stderr and "in main" in done.stderr, done.stderr


def test_pytest_runs_with_faulthandler_on():
    # pytest's faulthandler plugin enables it for every test; `-p no:faulthandler` in addopts would silence crashes in CI
    assert faulthandler.is_enabled()
