"""A lab's data set through DVC remotes: `dvc add` + `dvc push` once, `dvc pull` in fresh clones.

A tiny MVTec-layout data set goes to a local directory remote, comes back into a clone,
then comes back again from the same remote served read-only over HTTP on 127.0.0.1, and
the data_prep step reads the pulled copy.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dvc_helpers import checksums, free_ports, run
from PIL import Image

from fsad.data.toy import make_toy_dataset
from fsad.pipeline.data_prep import prepare_data

DATASET = Path("data") / "datasets" / "tiny"


@contextlib.contextmanager
def http_server(folder: Path):
    """``python -m http.server`` on 127.0.0.1 serving ``folder``; yields its URL."""
    port, = free_ports(1)
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """The lab's repository after `dvc add` + `dvc push` to a directory remote; its remote; the data's checksums."""
    base = tmp_path_factory.mktemp("lab")
    repo, remote = base / "repo", base / "remote"
    repo.mkdir()
    run("git", "init", "-q", "-b", "main", cwd=repo)
    run("dvc", "init", "-q", cwd=repo)
    run("dvc", "config", "core.analytics", "false", cwd=repo)
    make_toy_dataset(repo / DATASET, categories=("disc", "ring"), n_train=4, n_test_good=2, n_test_defect=2, size=32)
    run("dvc", "add", str(DATASET), cwd=repo)
    run("dvc", "remote", "add", "-d", "lab", str(remote), cwd=repo)
    run("dvc", "push", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", "tiny data set, tracked by DVC", cwd=repo)
    return repo, remote, checksums(repo / DATASET)


def test_dvc_add_tracks_the_data_outside_git(lab):
    repo, remote, _ = lab
    tracked = run("git", "ls-files", cwd=repo).stdout.split()
    assert "data/datasets/tiny.dvc" in tracked and not [f for f in tracked if f.startswith("data/datasets/tiny/")]
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"


def test_pull_from_a_directory_remote_into_a_fresh_clone(lab, tmp_path, pipeline_root):
    repo, _, expected = lab
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / DATASET).exists()
    run("dvc", "pull", cwd=clone)
    assert checksums(clone / DATASET) == expected
    summary = prepare_data(str(clone / DATASET), ["disc"], [2], 2, 0, progress=False)
    assert summary["categories"] == ["disc", "ring"] and summary["has_masks"] == {"disc": True, "ring": True}
    assert (pipeline_root / "data" / "support_sets" / "disc.json").is_file()


def test_pull_from_a_read_only_http_remote(lab, tmp_path, pipeline_root):
    repo, remote, expected = lab
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    with http_server(remote) as url:
        run("dvc", "remote", "add", "--local", "-d", "web", url, cwd=clone)
        run("dvc", "pull", cwd=clone)
        assert checksums(clone / DATASET) == expected
        changed = clone / DATASET / "disc" / "train" / "good" / "000.png"
        Image.open(changed).convert("L").convert("RGB").save(changed)  # new content, still an image (preflight checks)
        run("dvc", "add", str(DATASET), cwd=clone)
        pushed = run("dvc", "push", cwd=clone, check=False)
        assert pushed.returncode != 0, "an HTTP remote served by http.server must refuse uploads"
    prepare_data(str(clone / DATASET), ["ring"], [2], 1, 0, progress=False)
    assert (pipeline_root / "data" / "prepared" / "training_sets" / "ring.json").is_file()
