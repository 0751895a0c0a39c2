"""fsad notebook: parameters injected, outputs written atomically, a failing notebook leaves its log only;
one console line per stage, progress bars and the kernel's chatter in the log, never in the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from fsad.notebook_runner import parse_value, run_notebook, stage_root
from fsad.notebook_streams import ProgressFilter
from fsad.paths import ROOT

# What tqdm writes for a bar closed with leave=False (blanked), then one closed with leave=True, then a warning.
TQDM_STREAM = ("\rload:   0%|          | 0/4 [00:00<?, ?it/s]\rload:  50%|#####     | 2/4 [00:01<00:01]"
               "\r                                            \r"
               "\repoch 1/2:   0%|          | 0/8\repoch 1/2: 100%|##########| 8/8 [00:03<00:00]\n"
               "/x/metrics.py:12: UserWarning: no masks\n  warnings.warn(\n")


def test_values_from_a_dvc_command_line():
    assert [parse_value(v) for v in ("true", "False", "None", "16", "0.01", "1e-05", "mobilenet_v2")] == \
        [True, False, None, 16, 0.01, 1e-05, "mobilenet_v2"]


def test_the_stage_root_is_the_dvc_workspace(tmp_path):
    assert stage_root(tmp_path) == ROOT
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "pyproject.toml").write_text("")
    assert stage_root(tmp_path) == tmp_path  # e.g. a queued experiment's temporary copy


@pytest.fixture
def notebooks(tmp_path):
    (tmp_path / "notebooks").mkdir()

    def write(name, *sources):
        cells = [new_code_cell(s) for s in sources]
        cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}),
                       tmp_path / "notebooks" / f"{name}.ipynb")
    return write


def test_parameters_are_injected_and_both_outputs_written(notebooks, tmp_path):
    notebooks("stage", "k = 1\nname = 'a'", "print(k * 2, name)")
    run = run_notebook("stage", {"k": 21, "name": "mono"}, tag="mono", root=tmp_path)
    assert run.executed == tmp_path / "reports" / "notebooks" / "stage_mono.ipynb"
    outputs = json.loads(run.executed.read_text())["cells"][-1]["outputs"]
    assert "".join(outputs[0]["text"]) == "42 mono\n"
    assert run.html.name == "stage_mono.html" and "42 mono" in run.html.read_text()
    assert run.log == tmp_path / "reports" / "logs" / "stage_mono.log" and run.cells == "3/3 cells"


def test_bars_are_told_from_lines_however_the_stream_is_cut():
    expected = [("load:  50%|#####     | 2/4 [00:01<00:01]", True), ("epoch 1/2: 100%|##########| 8/8 [00:03<00:00]", True),
                ("/x/metrics.py:12: UserWarning: no masks", False), ("  warnings.warn(", False)]
    for size in (1, 7, len(TQDM_STREAM)):  # a kernel flushes wherever it likes
        f = ProgressFilter()
        lines = [line for i in range(0, len(TQDM_STREAM), size) for line in f.feed(TQDM_STREAM[i:i + size])]
        assert lines + f.close() == expected
    f = ProgressFilter()
    assert f.feed("\rsets:  10%") == [] and f.current == "sets:  10%"  # what the stage's line shows meanwhile
    assert f.close() == [("sets:  10%", True)]
    assert ProgressFilter().feed("a\r\nb\n") == [("a", False), ("b", False)]  # Windows line ends are lines


@pytest.fixture
def project(notebooks, tmp_path):
    """A project folder as DVC runs a stage in (dvc.yaml, pyproject.toml) and `fsad notebook` in it."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "pyproject.toml").write_text("")

    def fsad_notebook(*args):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "stage@t", "OMP_NUM_THREADS": "1"}
        env.pop("PYTHONWARNINGS", None)
        return subprocess.run([sys.executable, "-m", "fsad.cli", "notebook", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    return notebooks, fsad_notebook


def test_a_stage_prints_one_line_and_keeps_bars_and_kernel_messages_in_its_log(project, tmp_path):
    notebooks, fsad_notebook = project
    notebooks("stage", "n = 1",
              "from tqdm.auto import tqdm\n"   # as fsad's loops do: a text bar without ipywidgets
              "for _ in tqdm(range(40 * n), desc='load', mininterval=0, leave=False): pass\n"
              "for _ in tqdm(range(40 * n), desc='epoch 1/1', mininterval=0): pass\n"
              "print('AUROC', 0.5 + n / 10)",
              "import warnings\nwarnings.warn('no masks: pixel metrics are empty')")
    done = fsad_notebook("stage", "--tag", "t", "-p", "n", "2")
    assert done.returncode == 0, done.stderr
    # One line for the stage, one for the real warning; no bar, no kernel message.
    assert len(done.stdout.splitlines()) == 1 and len(done.stderr.splitlines()) == 1, done.stdout + done.stderr
    [stage], [warning] = done.stdout.splitlines(), done.stderr.splitlines()
    assert stage.startswith("stage@t: 4/4 cells in ") and stage.endswith("-> reports/html/stage_t.html (log: reports/logs/stage_t.log)")
    assert warning.startswith("fsad: warning: stage@t, cell In[4]: ") and "UserWarning: no masks" in warning

    log = (tmp_path / "reports" / "logs" / "stage_t.log").read_text()
    assert "Kernel is running over TCP without encryption" in log
    assert "\nload:" in log and "\nepoch 1/1: 100%" in log and "UserWarning: no masks" in log
    assert log.count("epoch 1/1") == 1  # each bar as its last state, on one line

    cells = json.loads((tmp_path / "reports" / "notebooks" / "stage_t.ipynb").read_text())["cells"]
    assert [o.get("name") for o in cells[2]["outputs"]] == ["stdout"]  # the bars' stderr is gone, the result stays
    assert "".join(cells[2]["outputs"][0]["text"]) == "AUROC 0.7\n"
    assert "UserWarning: no masks" in "".join(cells[3]["outputs"][0]["text"])
    html = (tmp_path / "reports" / "html" / "stage_t.html").read_text()
    assert "AUROC 0.7" in html and "UserWarning: no masks" in html
    assert "it/s" not in html and "%|" not in html and "encryption" not in html
    assert html.count('data-mime-type="application/vnd.jupyter.stderr"') == 1  # the warning's box, no empty ones


def test_a_failing_notebook_shows_its_error_and_log_and_leaves_no_output(project, tmp_path):
    notebooks, fsad_notebook = project
    notebooks("broken", "k = 1", "import sys\nprint('read 3 images', file=sys.stderr)",
              "raise ValueError('params.yaml: train.epochs: three is not an integer')")
    failed = fsad_notebook("broken", "-p", "k", "2")  # the injected cell counts
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.splitlines() == ["fsad: error: notebook broken stopped in cell In[4]: ValueError: params.yaml: "
                                          "train.epochs: three is not an integer (log: reports/logs/broken.log)"]
    log = (tmp_path / "reports" / "logs" / "broken.log").read_text()
    assert "\nread 3 images\n" in log and "Traceback" in log and "ValueError: params.yaml" in log
    assert not list((tmp_path / "reports").rglob("*.ipynb")) and not list((tmp_path / "reports").rglob("*.html"))
    with pytest.raises(FileNotFoundError, match=r"available: \['broken'\]"):
        run_notebook("missing", {}, root=tmp_path)
