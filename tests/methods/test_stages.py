"""The ablations and baselines stages of dvc.yaml agree with their notebooks and params.yaml."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml

from fsad.paths import ROOT

STAGES = {"ablations": "05_ablations", "baselines": "06_baselines"}
INJECTED = re.compile(r"-p (\w+) \$\{([\w.]+)\}")
ASSIGNED = re.compile(r"""^(\w+) = params\["(\w+)"\]\["(\w+)"\]""", re.MULTILINE)
KEY_READ = re.compile(r"""params\["(\w+)"\]\["(\w+)"\]""")
SECTION_READ = re.compile(r"""params\["(\w+)"\](?!\[)""")


def stage(name: str) -> dict:
    dvc = ROOT / "dvc.yaml"
    if not dvc.is_file():
        pytest.skip("no dvc.yaml")
    stages = yaml.safe_load(dvc.read_text())["stages"]
    if name not in stages:
        pytest.skip(f"dvc.yaml has no {name} stage yet")
    return stages[name]


def cells(notebook: str) -> list[dict]:
    return json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]


def code(notebook: str) -> str:
    return "\n".join("".join(c["source"]) for c in cells(notebook) if c["cell_type"] == "code")


@pytest.mark.parametrize("name", STAGES)
def test_injected_parameters_are_the_parameters_cell(name):
    body = stage(name)
    tagged = [c for c in cells(STAGES[name]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assigned = {(p, f"{s}.{k}") for p, s, k in ASSIGNED.findall("".join(tagged[0]["source"]))}
    assert set(INJECTED.findall(body["cmd"])) == assigned
    assert all(key.startswith(f"{name}.") for _, key in assigned)


@pytest.mark.parametrize("name", STAGES)
def test_declared_params_are_exactly_those_read(name):
    text = code(STAGES[name]).replace("params = load_params()", "")
    read = {f"{s}.{k}" for s, k in KEY_READ.findall(text)} | set(SECTION_READ.findall(text))
    assert read == set(stage(name)["params"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in read:
        value = params
        for part in key.split("."):
            value = value[part]  # KeyError: params.yaml lacks a key the notebook reads


@pytest.mark.parametrize("name", STAGES)
def test_code_dependencies_cover_the_notebook_imports(name):
    spec = importlib.util.spec_from_file_location("code_deps", ROOT / "tests" / "pipeline" / "code_deps.py")
    if spec is None or not (ROOT / "tests" / "pipeline" / "code_deps.py").is_file():
        pytest.skip("tests/pipeline/code_deps.py not found")
    code_deps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code_deps)
    deps = [ROOT / d for d in stage(name)["deps"]]
    assert ROOT / "notebooks" / f"{STAGES[name]}.ipynb" in deps and ROOT / "data" / "support_sets" in deps
    missing = [p for p in code_deps.notebook_closure(ROOT / "notebooks" / f"{STAGES[name]}.ipynb")
               if not any(p == d or d in p.parents for d in deps)]
    assert not missing
    assert all(d.exists() for d in deps if d.parts[len(ROOT.parts)] == "fsad")
