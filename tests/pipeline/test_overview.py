"""The teaching tour runs top to bottom (25-60 s on 2 CPU cores) and writes nothing into the project."""

from __future__ import annotations

import json

import papermill
import pytest

from fsad.paths import ROOT


@pytest.mark.slow
def test_overview_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("FSAD_ROOT", str(tmp_path))  # the kernel's data/ and runs/ go to tmp_path
    monkeypatch.setenv("PYTHONWARNINGS", "ignore::Warning:tqdm.auto")
    out = tmp_path / "00_overview.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "00_overview.ipynb"), str(out), kernel_name="python3",
                               language="python", cwd=str(tmp_path), progress_bar=False)
    cells = json.loads(out.read_text())["cells"]
    images = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the tour shows the data, the registered views and the anomaly maps"
    assert (tmp_path / "data" / "embedded" / "toy").is_dir()
