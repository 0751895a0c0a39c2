"""The whole DVC pipeline on a copy of the project, at toy size (minutes: marked slow).

Shows what docs/pipeline.md promises: `dvc repro` end to end, `dvc status` clean after it,
an evaluation parameter reruns evaluation (and the report) only, and `dvc exp run --queue`
+ `dvc queue start -j 2` runs categories in parallel, their finished stages then taken
from the run-cache by `dvc exp run` in the workspace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fsad.paths import ROOT

pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "fsad test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "fsad test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
TOY = {"data": {"dataset": "toy", "categories": ["disc", "ring"]},
       "support": {"shots": [2, 4], "n_sets": 2},
       "train": {"image_size": 64, "epochs": 1, "batch_size": 8, "seeds": [0, 1]},
       "evaluate": {"untrained_baseline": False}}


def run(*args: str, cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The working tree as a fresh clone would have it (git-visible files only), at toy size, committed."""
    copy = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    for section, values in TOY.items():
        params[section].update(values)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git", "init", "-q", "-b", "main", cwd=copy)
    run("git", "add", "-A", cwd=copy)
    run("git", "commit", "-q", "-m", "project at toy size", cwd=copy)
    return copy


def test_repro_status_and_one_parameter(project):
    # `report` and everything upstream of it: the RegAD pipeline (ablations and baselines have their own tests)
    ran = stages_run(run("dvc", "repro", "report", cwd=project).stdout)
    assert ran == {"data_prep", "train@disc-0", "train@disc-1", "train@ring-0", "train@ring-1", "support_estimation@disc",
                   "support_estimation@ring", "evaluate@disc-0", "evaluate@disc-1", "evaluate@ring-0", "evaluate@ring-1", "report"}
    assert "up to date" in run("dvc", "status", "report", cwd=project).stdout
    metrics = run("dvc", "metrics", "show", cwd=project).stdout
    assert "results/disc/seed1/metrics.json" in metrics and "K2.pixel_auroc" in metrics and "K4.aupro" in metrics
    assert (project / "reports" / "table1.tex").is_file() and (project / "reports" / "html" / "04_evaluation_ring-0.html").is_file()
    ran = stages_run(run("dvc", "exp", "run", "-S", "evaluate.blur_sigma=2", "report", cwd=project).stdout)
    assert ran == {"evaluate@disc-0", "evaluate@disc-1", "evaluate@ring-0", "evaluate@ring-1", "report"}
    assert "up to date" in run("dvc", "status", "report", cwd=project).stdout
    # Where a stage runs is not what it makes (issue 22): a new device reruns nothing.
    ran = stages_run(run("dvc", "exp", "run", "-S", "train.device=cpu", "-S", "evaluate.device=cpu", "report", cwd=project).stdout)
    assert ran == set()


def test_queue_runs_categories_in_parallel_and_fills_the_run_cache(project):
    """Depends on the previous test's trained models being in the cache (module order)."""
    for category in ("disc", "ring"):
        run("dvc", "exp", "run", "--queue", "-S", "evaluate.blur_sigma=3", f"evaluate@{category}-0", f"evaluate@{category}-1", cwd=project)
    run("dvc", "queue", "start", "-j", "2", cwd=project)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run("dvc", "queue", "status", cwd=project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    output = run("dvc", "exp", "run", "-S", "evaluate.blur_sigma=3", "report", cwd=project).stdout
    assert stages_run(output) == {"report"}, output  # both evaluations come from the run-cache
    assert "Stage 'evaluate@disc-0' is cached - skipping run" in output
