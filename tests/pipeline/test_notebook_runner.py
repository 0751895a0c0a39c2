"""fsad notebook: parameters injected, outputs written atomically, a failing notebook leaves nothing."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from fsad.notebook_runner import parse_value, run_notebook, stage_root
from fsad.paths import ROOT


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
    executed, html = run_notebook("stage", {"k": 21, "name": "mono"}, tag="mono", log_output=False, root=tmp_path)
    assert executed == tmp_path / "reports" / "notebooks" / "stage_mono.ipynb"
    outputs = json.loads(executed.read_text())["cells"][-1]["outputs"]
    assert "".join(outputs[0]["text"]) == "42 mono\n"
    assert html.name == "stage_mono.html" and "42 mono" in html.read_text()


def test_a_failing_notebook_leaves_no_output(notebooks, tmp_path):
    notebooks("broken", "k = 1", "raise RuntimeError('boom')")
    with pytest.raises(Exception, match="boom"):
        run_notebook("broken", {}, log_output=False, root=tmp_path)
    assert not list((tmp_path / "reports").rglob("*.ipynb")) and not list((tmp_path / "reports").rglob("*.html"))
    with pytest.raises(FileNotFoundError, match=r"available: \['broken'\]"):
        run_notebook("missing", {}, root=tmp_path)
