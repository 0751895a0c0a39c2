"""The study commands' promises about their output folder, through ``fsad run / compare / ablate`` themselves.

- A folder belongs to one config: another config (of the same file name, landing in the
  same ``runs/<name>``) or another study is refused before any work, ``--force`` takes it
  over (``fsad.study.run_folder.claim``; its own tests are in test_run_folder.py).
- Results are on disk as each category finishes: a category that fails keeps the others'
  rows, and Ctrl-C keeps what finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fsad.cli import main
from fsad.study import ablations, comparison, evaluation, experiment
from fsad.study.run_folder import RECORD

# command -> (module, the function doing its work)
STUDIES = {"run": (experiment, "run_experiment"), "compare": (comparison, "run_comparison"), "ablate": (ablations, "run_ablations")}
TINY = {"pretrained": False, "image_size": 32, "epochs": 1, "batch_size": 4, "train_shots": [2], "lr": 0.01, "device": "cpu"}


class Ran(Exception):
    """The study's work began (raised by the stub instead of working)."""


def exit_code(capsys, *argv) -> tuple[int | str, str]:
    """``fsad *argv``'s exit status (``"ran"`` where a stubbed study began its work) and stderr."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code: int | str = 0
    except SystemExit as exit_info:
        code = exit_info.code
    except Ran:
        code = "ran"
    return code, capsys.readouterr().err


@pytest.fixture
def project(toy_root, tmp_path, monkeypatch):
    """The current directory at tmp_path (the default output folder is ./runs/<config name>), the toy data at
    ./data, and two configs named study.yaml with other lr."""
    shutil.copytree(toy_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for folder, lr in (("a", 0.01), ("b", 0.001)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "study.yaml").write_text(yaml.safe_dump(
            {"dataset": "../data", "shots": [2], "n_sets": 1, "regad": {**TINY, "lr": lr}}))
    return tmp_path


def stub_studies(monkeypatch) -> list[tuple[str, Path]]:
    """Replace each command's work by one that records (command, output folder) and stops."""
    ran: list[tuple[str, Path]] = []
    for command, (module, name) in STUDIES.items():
        def work(config, out_dir, *args, command=command, **kwargs):
            ran.append((command, Path(out_dir).resolve()))
            raise Ran
        monkeypatch.setattr(module, name, work)
    return ran


@pytest.mark.parametrize("command", list(STUDIES))
def test_another_config_of_the_same_name_is_refused_before_any_work(project, monkeypatch, capsys, command):
    ran = stub_studies(monkeypatch)
    out = project / "runs" / "study"
    with pytest.raises(Ran):
        main([command, "--config", "a/study.yaml"])
    assert ran == [(command, out)] and (out / RECORD).is_file(), f"fsad {command} did not claim its output folder"
    claimed = json.loads((out / RECORD).read_text())

    code, err = exit_code(capsys, command, "--config", "b/study.yaml")
    assert code == 2, f"fsad {command} began work in the folder of another config (exit {code!r})"
    assert f"holds the results of `fsad {command} --config {project / 'a' / 'study.yaml'}`" in err
    assert "regad.lr: 0.01 -> 0.001" in err and "--out" in err and "--force" in err
    assert ran == [(command, out)] and json.loads((out / RECORD).read_text()) == claimed

    with pytest.raises(Ran):
        main([command, "--config", "b/study.yaml", "--force"])
    assert ran[-1] == (command, out) and json.loads((out / RECORD).read_text())["config"] == str(project / "b" / "study.yaml")


@pytest.mark.parametrize("command", list(STUDIES))
def test_a_folder_of_another_study_is_refused(project, monkeypatch, capsys, command):
    ran = stub_studies(monkeypatch)
    other = next(c for c in STUDIES if c != command)
    with pytest.raises(Ran):
        main([other, "--config", "a/study.yaml", "--out", "shared"])
    code, err = exit_code(capsys, command, "--config", "a/study.yaml", "--out", "shared")
    assert code == 2, f"fsad {command} began work in a folder of fsad {other} (exit {code!r})"
    assert f"holds the results of `fsad {other} --config" in err, err
    assert ran == [(other, project / "shared")]


def fail_in(monkeypatch, category: str, error: BaseException) -> None:
    """Loading ``category``'s test images raises ``error`` (after preflight, as a disk or decoder failure would)."""
    real = evaluation.TestSet.load.__func__

    def load(cls, cat, size):
        if cat.name == category:
            raise error
        return real(cls, cat, size)

    monkeypatch.setattr(evaluation.TestSet, "load", classmethod(load))


def study_config(project, **values) -> str:
    values = {"dataset": "data", "categories": ["disc", "ring", "stripes"], "shots": [2], "n_sets": 1, "regad": TINY, **values}
    (project / "three.yaml").write_text(yaml.safe_dump(values))
    return "three.yaml"


STUDY_OPTIONS = {"run": {"untrained_baseline": False}, "compare": {"methods": ["padim"], "measure_costs": False}}


@pytest.mark.parametrize("command", list(STUDY_OPTIONS))
def test_a_failing_category_keeps_the_others_results_on_disk(project, monkeypatch, capsys, command):
    fail_in(monkeypatch, "ring", OSError("ring/test/good/000.png: image file is truncated"))
    config = study_config(project, **STUDY_OPTIONS[command])
    code, err = exit_code(capsys, command, "--config", config, "--out", "out")
    assert code == 2 and "1 category failed" in err and "ring: OSError: ring/test/good/000.png" in err, err
    assert (project / "out" / "results.csv").is_file(), f"fsad {command} lost every result to one failing category"
    results = pd.read_csv(project / "out" / "results.csv")
    assert sorted(results["category"].unique()) == ["disc", "stripes"] and len(results) == 2


@pytest.mark.parametrize("command", list(STUDY_OPTIONS))
def test_ctrl_c_keeps_the_categories_that_finished(project, monkeypatch, capsys, command):
    fail_in(monkeypatch, "stripes", KeyboardInterrupt())
    code, err = exit_code(capsys, command, "--config", study_config(project, **STUDY_OPTIONS[command]), "--out", "out")
    assert code == 130 and "finished results are kept in out" in err
    assert (project / "out" / "results.csv").is_file(), f"fsad {command} wrote nothing before Ctrl-C"
    assert sorted(pd.read_csv(project / "out" / "results.csv")["category"]) == ["disc", "ring"]
