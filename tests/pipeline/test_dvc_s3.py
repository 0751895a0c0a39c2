"""DVC remotes on a real S3 object store: SeaweedFS's S3 gateway, started by the tests on 127.0.0.1 (slow).

What docs/pipeline.md ("An S3 bucket") promises for a lab's bucket, through the dvc-s3 plugin
that `make install` installs: the remote's URL and endpoint committed in .dvc/config, the
credentials only in each clone's .dvc/config.local;
- a data set goes up with `dvc push` and comes back byte-identical into a fresh clone with
  `dvc pull`, and a wrong secret is refused;
- the lab path: clone A runs `dvc repro` and `dvc push --run-cache`; clone B, with an empty
  cache, runs `dvc pull --run-cache` and `dvc repro`, which runs no stage; a setting that A
  computed but did not commit comes back from the run-cache (`dvc repro --pull`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from dvc_helpers import checksums, run
from s3_server import S3Server, seaweedfs_s3

from fsad.data.toy import make_toy_dataset
from fsad.pipeline.data_prep import file_md5

pytestmark = pytest.mark.slow  # 20-60 s each on 2 shared cores: a dozen dvc commands in subprocesses

DATASET = Path("data") / "datasets" / "tiny"
BUCKET = "fsad-lab"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    """The S3 server with the lab's bucket created, for every test of this module; stopped after the last one.

    The dvc commands get credentials from .dvc/config.local only: the machine's AWS files and
    metadata service are switched off for them.
    """
    folder = tmp_path_factory.mktemp("seaweedfs")
    no_aws_files = folder / "empty-aws-config"
    no_aws_files.touch()
    with pytest.MonkeyPatch.context() as env, seaweedfs_s3(folder) as server:
        env.setenv("AWS_CONFIG_FILE", str(no_aws_files))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_aws_files))
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def dvc(*args: str, cwd: Path, check: bool = True):
    return run("dvc", *args, cwd=cwd, check=check)


def add_credentials(repo: Path, s3: S3Server) -> None:
    """What each machine does once: the bucket's keys into .dvc/config.local (not committed)."""
    dvc("remote", "modify", "--local", "lab", "access_key_id", s3.access_key_id, cwd=repo)
    dvc("remote", "modify", "--local", "lab", "secret_access_key", s3.secret_access_key, cwd=repo)


def new_lab_repo(repo: Path, s3: S3Server, prefix: str) -> None:
    """A git + DVC repository whose default remote is s3://BUCKET/prefix on the test server."""
    repo.mkdir()
    run("git", "init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    dvc("remote", "add", "-d", "lab", f"s3://{BUCKET}/{prefix}", cwd=repo)
    dvc("remote", "modify", "lab", "endpointurl", s3.endpoint, cwd=repo)
    add_credentials(repo, s3)


def clone(repo: Path, target: Path) -> Path:
    run("git", "clone", "-q", str(repo), str(target), cwd=target.parent)
    return target


def stored_keys(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_push_and_pull_a_data_set_through_s3(s3, tmp_path):
    lab = tmp_path / "lab"
    new_lab_repo(lab, s3, "data")
    make_toy_dataset(lab / DATASET, categories=("disc", "ring"), n_train=4, n_test_good=2, n_test_defect=2, size=32)
    dvc("add", str(DATASET), cwd=lab)
    dvc("push", cwd=lab)
    run("git", "add", "-A", cwd=lab)
    run("git", "commit", "-q", "-m", "tiny data set on the lab's bucket", cwd=lab)
    expected = checksums(lab / DATASET)
    assert "access_key_id" not in run("git", "show", "HEAD:.dvc/config", cwd=lab).stdout, "credentials were committed"
    assert len([k for k in stored_keys(s3, "data") if not k.endswith(".dir")]) == len(expected)

    machine = clone(lab, tmp_path / "another-machine")
    dvc("remote", "modify", "--local", "lab", "access_key_id", s3.access_key_id, cwd=machine)
    dvc("remote", "modify", "--local", "lab", "secret_access_key", "not-the-secret", cwd=machine)
    refused = dvc("pull", cwd=machine, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr and not (machine / DATASET).exists(), refused.stderr

    dvc("remote", "modify", "--local", "lab", "secret_access_key", s3.secret_access_key, cwd=machine)
    dvc("pull", cwd=machine)
    assert checksums(machine / DATASET) == expected


STAGE_SCRIPT = '''\
"""The tiny pipeline's stages; each run appends its name to $STAGE_LOG, so a test sees what really ran."""
import json, os, sys
from pathlib import Path

import yaml

stage = sys.argv[1]
with open(os.environ["STAGE_LOG"], "a") as log:
    log.write(stage + "\\n")
if stage == "inventory":
    files = sorted(p for p in Path("data/datasets/tiny").rglob("*.png"))
    Path("results").mkdir(exist_ok=True)
    Path("results/inventory.json").write_text(json.dumps({p.as_posix(): p.stat().st_size for p in files}, indent=1))
else:
    scale = yaml.safe_load(Path("params.yaml").read_text())["summary"]["scale"]
    sizes = json.loads(Path("results/inventory.json").read_text()).values()
    Path("summary.json").write_text(json.dumps({"files": len(sizes), "scaled_bytes": scale * sum(sizes)}))
'''

PIPELINE = {"stages": {
    "inventory": {"cmd": "python stages.py inventory", "deps": ["stages.py", str(DATASET)], "outs": ["results/inventory.json"]},
    # A folder holding another stage's outputs as a dependency, like the real `report` (results/): it also
    # holds the .gitignore dvc writes there, which B has only if A commits it.
    "summary": {"cmd": "python stages.py summary", "deps": ["stages.py", "results"], "params": ["summary.scale"],
                "outs": ["summary.json"]},
}}


def repro(repo: Path, stage_log: Path, *args: str) -> str:
    """`dvc repro` with this interpreter first on PATH; its console output."""
    env = {"STAGE_LOG": str(stage_log), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = run("dvc", "repro", *args, cwd=repo, env=env)
    return result.stdout + result.stderr


def set_scale(repo: Path, scale: int) -> None:
    (repo / "params.yaml").write_text(f"summary:\n  scale: {scale}\n")


def ran(stage_log: Path) -> list[str]:
    return stage_log.read_text().split() if stage_log.exists() else []


def test_another_machine_reruns_nothing_after_pull_run_cache(s3, tmp_path):
    lab, log_a, log_b = tmp_path / "clone-a", tmp_path / "ran-in-a.txt", tmp_path / "ran-in-b.txt"
    new_lab_repo(lab, s3, "pipeline")
    make_toy_dataset(lab / DATASET, categories=("disc", "ring"), n_train=4, n_test_good=2, n_test_defect=2, size=32)
    dvc("add", str(DATASET), cwd=lab)
    (lab / "stages.py").write_text(STAGE_SCRIPT)
    (lab / "dvc.yaml").write_text(json.dumps(PIPELINE, indent=1))  # JSON is YAML
    set_scale(lab, 3)
    repro(lab, log_a)
    summary_at_3 = (lab / "summary.json").read_bytes()
    # Pushed while its outputs are in the workspace: `push --run-cache` sends every run-cache entry
    # but only the outputs of the workspace's stages.
    dvc("push", "--run-cache", cwd=lab)
    set_scale(lab, 2)  # the setting A commits; scale 3 stays only in the run-cache
    repro(lab, log_a)
    assert ran(log_a) == ["inventory", "summary", "summary"]
    dvc("push", "--run-cache", cwd=lab)
    run("git", "add", "-A", cwd=lab)  # what dvc asks: dvc.lock and the .gitignore files beside the outputs
    run("git", "commit", "-q", "-m", "tiny pipeline, scale 2", cwd=lab)
    committed = ("results/inventory.json", "summary.json", "dvc.lock", "data/datasets/tiny.dvc")
    expected = {name: file_md5(lab / name) for name in committed}

    machine = clone(lab, tmp_path / "clone-b")
    assert not (machine / ".dvc" / "cache").exists() and not (machine / "summary.json").exists()
    add_credentials(machine, s3)
    dvc("pull", "--run-cache", cwd=machine)
    output = repro(machine, log_b)
    assert "Running stage" not in output and ran(log_b) == [], output
    assert re.findall(r"Stage '(\w+)' (?:didn't change, skipping|is cached - skipping run)", output) == ["inventory", "summary"]
    assert {name: file_md5(machine / name) for name in committed} == expected
    assert checksums(machine / DATASET) == checksums(lab / DATASET)
    assert "Data and pipelines are up to date." in dvc("status", cwd=machine).stdout

    set_scale(machine, 3)
    output = repro(machine, log_b, "--pull")
    assert "Stage 'summary' is cached - skipping run, checking out outputs" in output, output
    assert ran(log_b) == [] and (machine / "summary.json").read_bytes() == summary_at_3
