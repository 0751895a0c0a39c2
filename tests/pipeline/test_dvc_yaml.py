"""dvc.yaml, params.yaml and the notebooks agree: every stage declares exactly what its notebook reads."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from code_deps import notebook_closure, notebook_code

from fsad.config import TEST_TIME_KEYS, RegADConfig
from fsad.paths import ROOT
from fsad.pipeline import layout

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# Stages other helpers add (ablations, baselines) are checked by their own tests.
OWN_STAGES = ("data_prep", "train", "support_estimation", "evaluate", "report")
INJECTED = re.compile(r"-p (\w+) \$\{([\w.]+)\}")
PARAM_READ = re.compile(r"""params\["(\w+)"\]\["(\w+)"\]""")
ASSIGNED = re.compile(r"""^(\w+) = params\["(\w+)"\]\["(\w+)"\]""", re.MULTILINE)


def stage_body(name: str) -> dict:
    stage = DVC["stages"][name]
    return stage["do"] if "foreach" in stage else stage


def notebook_of(name: str):
    notebook = re.search(r"fsad notebook (\w+)", stage_body(name)["cmd"]).group(1)
    return ROOT / "notebooks" / f"{notebook}.ipynb"


def parameters_cell(name: str) -> str:
    cells = [c for c in json.loads(notebook_of(name).read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{notebook_of(name)} needs exactly one cell tagged 'parameters'"
    return "".join(cells[0]["source"])


def lookup(key: str):
    value = PARAMS
    for part in key.split("."):
        value = value[part]
    return value


def test_every_interpolated_key_exists_in_params_yaml():
    text = (ROOT / "dvc.yaml").read_text()
    keys = set(re.findall(r"\$\{([\w.]+)\}", text)) - {"item"}
    assert keys, "dvc.yaml interpolates nothing: the test would pass vacuously"
    for key in sorted(keys):
        lookup(key)  # KeyError names the missing key


@pytest.mark.parametrize("name", OWN_STAGES)
def test_injected_parameters_match_the_notebooks_parameters_cell(name):
    body = stage_body(name)
    injected = {(p, key) for p, key in INJECTED.findall(body["cmd"]) if key != "item"}
    assigned = {(p, f"{section}.{key}") for p, section, key in ASSIGNED.findall(parameters_cell(name))}
    assert injected == assigned, f"{name}: -p in dvc.yaml {sorted(injected)} vs parameters cell {sorted(assigned)}"
    if "foreach" in DVC["stages"][name]:
        assert "-p category ${item}" in body["cmd"] and re.search(r'^category = "', parameters_cell(name), re.MULTILINE)


@pytest.mark.parametrize("name", OWN_STAGES)
def test_declared_params_are_exactly_those_the_notebook_reads(name):
    read = {f"{s}.{k}" for code in notebook_code(notebook_of(name)) for s, k in PARAM_READ.findall(code)}
    declared = set(stage_body(name).get("params", []))
    assert read == declared, f"{name}: notebook reads {sorted(read)}, dvc.yaml declares {sorted(declared)}"


@pytest.mark.parametrize("name", OWN_STAGES)
def test_code_dependencies_cover_every_fsad_module_the_notebook_imports(name):
    deps = [ROOT / d for d in stage_body(name)["deps"] if d.startswith("fsad")]
    for dep in deps:
        assert dep.exists(), f"{name}: dependency {dep} does not exist"
    missing = [p.relative_to(ROOT).as_posix() for p in notebook_closure(notebook_of(name))
               if not any(p == d or d in p.parents for d in deps)]
    assert not missing, f"{name}: add these to its deps in dvc.yaml: {missing}"
    assert ROOT / "notebooks" / notebook_of(name).name in [ROOT / d for d in stage_body(name)["deps"]]


def test_training_reads_no_test_time_setting():
    """Changing an evaluation parameter must rerun evaluation only, never training."""
    train_params = {p.split(".")[1] for p in stage_body("train")["params"]}
    assert not train_params & (set(TEST_TIME_KEYS) - {"device"})  # device: where to train
    assert not [p for p in stage_body("train")["params"] if not p.startswith("train.")]
    readers = {name for name in OWN_STAGES if "evaluate.blur_sigma" in stage_body(name).get("params", [])}
    assert readers == {"evaluate"}


def test_sections_use_the_regad_config_vocabulary():
    config = RegADConfig.from_dict(PARAMS["train"], source="params.yaml: train")
    assert config.image_size == PARAMS["train"]["image_size"]
    evaluate_only = {"metrics", "untrained_baseline"}
    RegADConfig.from_dict({k: v for k, v in PARAMS["evaluate"].items() if k not in evaluate_only})


def test_per_category_outputs_are_where_the_code_writes_them():
    item = "somecategory"
    train_outs = [o.replace("${item}", item) for o in stage_body("train")["outs"]]
    assert layout.model_path(item).relative_to(ROOT).as_posix() in train_outs
    evaluate = stage_body("evaluate")
    assert layout.training_set_manifest(item).relative_to(ROOT).as_posix() in [
        d.replace("${item}", item) for d in stage_body("train")["deps"]]
    assert (layout.results_dir(item) / "metrics.json").relative_to(ROOT).as_posix() in [
        m.replace("${item}", item) for m in evaluate["metrics"]]
    assert layout.support_file(item).relative_to(ROOT).as_posix() in [d.replace("${item}", item) for d in evaluate["deps"]]


def test_foreach_stages_iterate_over_the_target_categories():
    for name in ("train", "support_estimation", "evaluate"):
        assert DVC["stages"][name]["foreach"] == "${data.categories}"
    assert isinstance(PARAMS["data"]["categories"], list) and PARAMS["data"]["categories"]
