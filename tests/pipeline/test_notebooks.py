"""The committed notebooks are sources: stripped of outputs and run metadata, holding no algorithm,
reading their settings through the schema."""

from __future__ import annotations

import ast
import json

import pytest
from code_deps import notebook_code

from fsad.paths import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What a notebook may import: fsad for all the work, and display helpers.
ALLOWED_IMPORTS = ("fsad", "IPython", "pandas")


def test_the_pipeline_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_overview", "01_data_prep", "02_aggregated_training", "03_support_estimation", "04_evaluation", "07_report"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    notebook = json.loads(path.read_text())
    assert "language_info" not in notebook["metadata"], f"{path}: run nbstripout (see docs/pipeline.md)"
    assert "papermill" not in notebook["metadata"], f"{path} is an executed copy, not a source"
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path}: a code cell has outputs"
        assert "execution" not in cell.get("metadata", {}), f"{path}: a cell holds execution timestamps"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_holds_no_algorithm(path):
    """Cells call fsad; functions, classes and array libraries belong in the package."""
    for code in notebook_code(path):
        tree = ast.parse(code)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda)), f"{path}: move {ast.unparse(node)[:60]!r} into fsad"
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in ALLOWED_IMPORTS, f"{path} imports {module}: call fsad instead"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_params_through_the_schema(path):
    """params.yaml is read by fsad.pipeline.params (validated before any work), never as a raw mapping."""
    for code in notebook_code(path):
        for node in ast.walk(ast.parse(code)):
            name = getattr(node, "id", None) or getattr(node, "attr", None)
            assert name not in ("load_params", "safe_load", "from_dict"), f"{path}: read params.yaml with section() or a params builder"
