"""dvc.yaml, params.yaml and the notebooks agree: every stage declares exactly the keys it reads."""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap

import pytest
import yaml
from code_deps import notebook_closure, notebook_code

from fsad.config import TEST_TIME_KEYS
from fsad.notebook_runner import output_paths
from fsad.paths import ROOT
from fsad.pipeline import layout, params
from fsad.pipeline.params import SECTIONS

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = sorted(DVC["stages"])
# The sections a stage owns: every key of them is a parameter of the stage.
OWN_SECTIONS = {"data_prep": ("data", "support"), "train": ("train",), "evaluate": ("evaluate",), "report": ("report",),
                "ablations": ("ablations",), "baselines": ("baselines",)}
INJECTED = re.compile(r"-p (\w+) (\S+)")
INTERPOLATED = re.compile(r"\$\{([\w.]+)(?:\[(\d+)\])?\}")  # ${train.seeds}, ${train.seeds[0]}, ${item.seed}
# Where a stage runs, not what it makes: read by stages, declared by none (a new device reruns nothing).
DEVICES = {f"{section}.device" for section, keys in PARAMS.items() if "device" in keys}


def stage_body(name: str) -> dict:
    stage = DVC["stages"][name]
    return stage["do"] if "foreach" in stage else stage


def items(name: str) -> dict[str, tuple[str, str]]:
    """``{placeholder: (notebook parameter, params.yaml key it runs over)}`` of a foreach stage
    (``${item}``: the category) or a matrix stage (``${item.seed}``: the seed, ...)."""
    stage = DVC["stages"][name]
    if "foreach" in stage:
        return {"${item}": ("category", INTERPOLATED.fullmatch(stage["foreach"]).group(1))}
    return {f"${{item.{k}}}": (k, INTERPOLATED.fullmatch(v).group(1)) for k, v in stage.get("matrix", {}).items()}


def iterated(name: str) -> set[str]:
    """The params.yaml keys a foreach or matrix stage runs over: each of its stages reads one value, injected, not the list."""
    return {key for _, key in items(name).values()}


def notebook_of(name: str):
    notebook = re.search(r"fsad notebook (\w+)", stage_body(name)["cmd"]).group(1)
    return ROOT / "notebooks" / f"{notebook}.ipynb"


def parameters_cells(name: str) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(notebook_of(name).read_text())["cells"]
            if "parameters" in c.get("metadata", {}).get("tags", [])]


def expand(keys) -> set[str]:
    """``"train"`` -> every ``train.<key>`` of params.yaml; ``"train.lr"`` stays."""
    return {f"{k}.{sub}" for k in keys if "." not in k for sub in PARAMS[k]} | {k for k in keys if "." in k}


def section_reads(code: str) -> set[str]:
    """The params.yaml keys ``code`` reads through ``section("name")``: ``"name.key"`` for an
    attribute that is a field, ``"name"`` (all of it) when the section is used whole (passed on,
    or a method such as ``replace`` called on it)."""
    tree = ast.parse(code)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def use(section: str, parent: ast.AST | None) -> str:
        if isinstance(parent, ast.Attribute) and parent.attr in SECTIONS[section].model_fields:
            return f"{section}.{parent.attr}"
        return section

    bound, reads = {}, set()
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if not (isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "section"):
            continue
        assert node.args and isinstance(node.args[0], ast.Constant), f"section() needs a literal name: {ast.unparse(node)}"
        parent = parents.get(node)
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
            bound[parent.targets[0].id] = node.args[0].value
        else:
            reads.add(use(node.args[0].value, parent))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in bound:
            reads.add(use(bound[node.id], parents.get(node)))
    return reads


def stage_reads(name: str) -> set[str]:
    """What a stage's notebook reads: its ``section`` calls, and those of the
    ``fsad.pipeline.params`` builders it calls (``ablation_config``, ``comparison_config``)."""
    code = "\n".join(notebook_code(notebook_of(name)))  # one program: a name bound in a cell is read in later ones
    called = {node.func.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    builders = [getattr(params, n) for n in sorted(called) if n != "section" and inspect.isfunction(getattr(params, n, None))]
    sources = [code] + [textwrap.dedent(inspect.getsource(b)) for b in builders]
    return set().union(*(section_reads(s) for s in sources))


def test_section_reads_tell_fields_from_whole_sections():
    code = 'a = section("train")\nb = section("evaluate")\nx = section("data").dataset\nf(a.lr, b)\na.replace(lr=1)\n'
    assert section_reads(code) == {"train.lr", "train", "evaluate", "data.dataset"}
    assert section_reads('s = section("support")\nprint(s.shots, s.seed)') == {"support.shots", "support.seed"}


def test_every_interpolated_key_exists_in_params_yaml():
    text = (ROOT / "dvc.yaml").read_text()
    keys = {(key, index) for key, index in INTERPOLATED.findall(text) if key.split(".")[0] != "item"}
    assert keys, "dvc.yaml interpolates nothing: the test would pass vacuously"
    for key, index in sorted(keys):
        value = PARAMS
        for part in key.split("."):
            value = value[part]  # KeyError names the missing key
        if index:
            assert int(index) < len(value), f"dvc.yaml: ${{{key}[{index}]}}: params.yaml's {key} has {len(value)} entries"


# What a stage may inject beyond its items: the first training seed (the model support_estimation
# shows; the evaluate stage that also scores the untrained network). Its cmd changes with it.
FIRST_SEED = "${train.seeds[0]}"


@pytest.mark.parametrize("name", STAGES)
def test_only_the_stage_items_are_injected(name):
    """Settings come from params.yaml through the schema; a foreach or matrix stage passes its
    items (category, seed) and at most the first seed, nothing else does, and the notebook's
    parameters cell holds exactly what is injected."""
    injected = INJECTED.findall(stage_body(name)["cmd"])
    cells = parameters_cells(name)
    if items(name):
        wanted = [(parameter, placeholder) for placeholder, (parameter, _) in items(name).items()]
        assert [i for i in injected if i[1] != FIRST_SEED] == wanted, f"{name}: inject {wanted}, got {injected}"
        assert len(cells) == 1, f"{notebook_of(name)} needs exactly one cell tagged 'parameters'"
        assigned = [t.id for node in ast.parse(cells[0]).body for t in node.targets]
        assert assigned == [n for n, _ in injected], f"{notebook_of(name)}: the parameters cell must hold {injected}, not {assigned}"
    else:
        assert injected == [] and cells == [], f"{name}: read settings with fsad.pipeline.params, not papermill parameters"


@pytest.mark.parametrize("name", STAGES)
def test_declared_params_are_exactly_the_keys_the_stage_reads(name):
    declared = stage_body(name).get("params", [])
    for key in declared:
        section, _, field = key.partition(".")
        assert section in PARAMS and (not field or field in PARAMS[section]), f"{name}: params.yaml has no {key}"
    read = stage_reads(name)
    assert read, f"{name}: its notebook reads no section of params.yaml"
    assert not expand(declared) & DEVICES, f"{name}: declares a device; where a stage runs must not rerun it"
    # A matrix stage (train@mono-1) reads its own seed, injected: the list train.seeds is not its parameter.
    own = DEVICES | iterated(name)
    assert not expand(declared) & iterated(name), f"{name}: declares a key it iterates over"
    assert expand(read) - own == expand(declared), (f"{name}: the notebook reads {sorted(expand(read) - own)} "
                                                    f"(devices and iterated keys aside), dvc.yaml declares {sorted(expand(declared))}")


@pytest.mark.parametrize("name", sorted(OWN_SECTIONS))
def test_every_key_of_a_stages_section_is_in_its_params(name):
    declared = expand(stage_body(name).get("params", [])) | iterated(name)
    for section in OWN_SECTIONS[name]:
        missing = sorted(f"{section}.{key}" for key in PARAMS[section] if f"{section}.{key}" not in declared | DEVICES)
        assert not missing, f"{name}: add {missing} to its params: in dvc.yaml (or remove them from params.yaml)"


def test_every_section_is_owned_or_read():
    assert set(PARAMS) == set(SECTIONS), "params.yaml sections and fsad.pipeline.params.SECTIONS differ"
    read = {key.split(".")[0] for name in STAGES for key in stage_body(name).get("params", [])}
    assert read == set(PARAMS)


@pytest.mark.parametrize("name", STAGES)
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
    assert not train_params & set(TEST_TIME_KEYS)  # device included: where it trains is not what it trains
    assert not [p for p in stage_body("train")["params"] if not p.startswith("train.")]
    readers = {name for name in OWN_SECTIONS if "evaluate.blur_sigma" in expand(stage_body(name).get("params", []))}
    assert readers == {"evaluate", "ablations", "baselines"}


def test_each_stage_runs_on_its_own_device():
    """train.device for training (and the studies that train), evaluate.device for evaluate and support_estimation."""
    assert DEVICES == {"train.device", "evaluate.device"}
    reads = {name: expand(stage_reads(name)) & DEVICES for name in STAGES}
    assert reads == {"data_prep": set(), "train": {"train.device"}, "support_estimation": {"evaluate.device"},
                     "evaluate": {"evaluate.device"}, "report": set(), "ablations": {"train.device"}, "baselines": {"train.device"}}


def test_evaluate_runs_on_its_device_whatever_the_model_was_trained_on():
    from fsad.config import EvalSettings, RegADConfig

    trained_on_gpu = RegADConfig(device="cuda")  # what load_model returns for a model trained with train.device: cuda
    assert EvalSettings(device="cpu").apply(trained_on_gpu).device == "cpu"


def test_per_category_and_seed_outputs_are_where_the_code_writes_them():
    item, seed, first = "somecategory", 7, PARAMS["train"]["seeds"][0]

    def paths(name: str, kind: str) -> list[str]:
        return [p.replace("${item.category}", item).replace("${item}", item).replace("${item.seed}", str(seed))
                .replace(FIRST_SEED, str(first)) for p in stage_body(name)[kind]]

    def relative(path):
        return path.relative_to(ROOT).as_posix()

    assert relative(layout.model_path(item, seed)) in paths("train", "outs")
    assert relative(layout.training_set_manifest(item)) in paths("train", "deps")
    assert relative(layout.model_path(item, seed)) in paths("evaluate", "deps")
    assert relative(layout.model_path(item, first)) in paths("support_estimation", "deps")
    assert relative(layout.seed_results_dir(item, seed) / "metrics.json") in paths("evaluate", "metrics")
    assert {relative(layout.seed_results_dir(item, seed) / f) for f in ("results.csv", "scores.csv", "model.json")} <= set(paths("evaluate", "outs"))
    assert relative(layout.support_file(item)) in paths("evaluate", "deps")
    # the baselines reuse the first seed's models: their folder is a dependency
    assert relative(layout.seed_models_dir(first)) in paths("baselines", "deps")


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_declares_what_fsad_notebook_writes_its_log_included(name):
    """DVC caches, restores and git-ignores the executed notebook, its HTML and its log alike."""
    tag = re.search(r"--tag (\S+)", stage_body(name)["cmd"])
    tag = tag.group(1) if tag else None
    written = [p.relative_to(ROOT).as_posix() for p in output_paths(notebook_of(name).stem, tag)]
    assert [p for p in written if p not in stage_body(name)["outs"]] == []


def test_study_stages_read_the_support_sets_of_data_prep():
    for name in ("ablations", "baselines"):
        assert "data/support_sets" in stage_body(name)["deps"]


def test_per_target_stages_iterate_over_the_categories_and_the_trained_ones_over_the_seeds():
    assert DVC["stages"]["support_estimation"]["foreach"] == "${data.categories}"
    for name in ("train", "evaluate"):
        assert DVC["stages"][name]["matrix"] == {"category": "${data.categories}", "seed": "${train.seeds}"}
    assert isinstance(PARAMS["data"]["categories"], list) and PARAMS["data"]["categories"]
    assert len(PARAMS["train"]["seeds"]) >= 3, "Table 1's seed spread needs several training seeds"
