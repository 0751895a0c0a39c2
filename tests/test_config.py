"""The settings schema: YAML read as meant, every mistake one line naming the file and the key."""

from __future__ import annotations

import pytest
import yaml

from fsad.config import AblationConfig, ComparisonConfig, ConfigError, EvalSettings, ExperimentConfig, RegADConfig, ResADSettings, Settings
from fsad.paths import ROOT
from fsad.pipeline import params
from fsad.pipeline.params import SECTIONS, ablation_config, comparison_config, section

MODELS = (RegADConfig, ResADSettings, EvalSettings, ExperimentConfig, ComparisonConfig, AblationConfig, *SECTIONS.values())
FLOAT_FIELDS = sorted({(model, name) for model in MODELS for name, field in model.model_fields.items() if field.annotation is float},
                      key=lambda pair: (pair[0].__name__, pair[1]))
# configs/<prefix>*.yaml -> its schema (fsad compare, fsad ablate; fsad run for the rest)
CONFIG_KINDS = {"compare_": ComparisonConfig, "ablations_": AblationConfig}
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def valid_values(model: type[Settings]) -> dict:
    """Values ``model`` accepts: its params.yaml section (the pipeline-only sections have no defaults), else none."""
    names = [name for name, m in SECTIONS.items() if m is model]
    return section(names[0]).to_dict() if names else {}


def write(tmp_path, text: str):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "pydantic" not in message and "Traceback" not in message
    return message


def test_float_fields_are_found():
    assert len(FLOAT_FIELDS) >= 8, FLOAT_FIELDS  # lr, momentum, eps, blur_sigma, margin, coreset_ratio, ...


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    path = write(tmp_path, "regad:\n  lr: 1e-3\n")
    assert yaml.safe_load(path.read_text())["regad"]["lr"] == "1e-3"  # YAML 1.1: a string
    assert ExperimentConfig.from_yaml(path).regad.lr == 0.001


@pytest.mark.parametrize(("model", "name"), FLOAT_FIELDS, ids=lambda x: getattr(x, "__name__", x))
def test_every_float_field_takes_an_exponent_string(model, name):
    assert getattr(model.from_dict({**valid_values(model), name: "1e-3"}), name) == 0.001


def test_a_word_for_an_integer_is_refused_naming_the_key(tmp_path):
    path = write(tmp_path, "regad:\n  epochs: three\n")
    assert refused(ExperimentConfig.from_yaml, path) == f"{path}: regad.epochs: 'three' is not an integer"


def test_every_problem_is_one_line(tmp_path):
    path = write(tmp_path, "shots: [2, 0]\nn_sets: 0\nregad: {lr: -1, image_size: 16, eps: 0, blur_sigma: -1, batch_size: 0}\n")
    lines = refused(ExperimentConfig.from_yaml, path).splitlines()
    assert lines == [f"{path}: shots[1]: 0 must be >= 1", f"{path}: n_sets: 0 must be >= 1",
                     f"{path}: regad.image_size: 16 must be >= 32", f"{path}: regad.batch_size: 0 must be >= 1",
                     f"{path}: regad.lr: -1 must be > 0", f"{path}: regad.eps: 0 must be > 0",
                     f"{path}: regad.blur_sigma: -1 must be >= 0"]


@pytest.mark.parametrize(("model", "key", "value", "expected"), [
    (ExperimentConfig, "shots", 2, (2,)),
    (ExperimentConfig, "categories", "disc", ("disc",)),
    (ExperimentConfig, "metrics", "image_auroc", ("image_auroc",)),
    (RegADConfig, "train_shots", 4, (4,)),
    (ComparisonConfig, "methods", "padim", ("padim",)),
    (AblationConfig, "stn_modes", "affine", ("affine",)),
])
def test_a_scalar_where_a_list_belongs_is_a_one_element_list(model, key, value, expected):
    assert getattr(model.from_dict({key: value}), key) == expected


@pytest.mark.parametrize(("model", "values", "line"), [
    (ExperimentConfig, {"metrics": ["image_auroc", "iou"]}, "metrics[1]: unknown metric 'iou'; choose from ['image_auroc', 'f1_max', 'pixel_auroc', 'aupro']"),
    (ComparisonConfig, {"methods": ["regad", "magic"]}, "methods[1]: unknown method 'magic'; choose from ['regad', 'untrained', 'spade', "),
    (RegADConfig, {"stn_mode": "spin"}, "stn_mode: unknown STN mode 'spin'; choose from ['affine', "),
    (AblationConfig, {"stn_modes": "none"}, "stn_modes[0]: unknown STN mode 'none'; choose from ['affine', "),
    (RegADConfig, {"backbone": "vgg16"}, "backbone: unknown backbone 'vgg16'; choose from ['resnet18', "),
    (RegADConfig, {"device": "gpu"}, "device: unknown device 'gpu'; choose from auto, cpu, cuda, cuda:N"),
])
def test_an_unknown_name_is_refused_with_the_choices(model, values, line):
    assert refused(model.from_dict, values, source="x.yaml").startswith(f"x.yaml: {line}")


def test_the_stn_mode_none_and_cuda_devices_are_accepted():
    assert RegADConfig.from_dict({"stn_mode": "none", "device": "cuda:1"}).device == "cuda:1"


def test_an_unknown_key_is_named_with_the_known_ones():
    message = refused(ExperimentConfig.from_dict, {"shot": [2], "regad": {"epoch": 3}}, source="x.yaml")
    assert message.splitlines() == [
        f"x.yaml: unknown key 'regad.epoch'; known: {sorted(RegADConfig.model_fields)}",
        f"x.yaml: unknown key 'shot'; known: {sorted(ExperimentConfig.model_fields)}",
    ]


def test_nested_settings_name_their_whole_key_path():
    message = refused(ComparisonConfig.from_dict, {"resad": {"steps": 0}, "regad": {"lr": "fast"}}, source="params.yaml", at="baselines")
    assert message.splitlines() == ["params.yaml: baselines.regad.lr: 'fast' is not a number",
                                    "params.yaml: baselines.resad.steps: 0 must be >= 1"]


def test_settings_built_in_code_and_replaced_are_checked_too():
    assert refused(RegADConfig, epochs=0) == "RegADConfig: epochs: 0 must be >= 1"
    assert refused(RegADConfig().replace, lr=0) == "RegADConfig.replace: lr: 0 must be > 0"
    config = RegADConfig().replace(train_shots=[4])
    assert config.train_shots == (4,) and config.to_dict()["train_shots"] == [4]


def test_settings_are_frozen_and_round_trip_through_to_dict():
    config = ExperimentConfig.from_dict({"shots": 2, "regad": {"epochs": 3}})
    with pytest.raises(ValueError):
        config.n_sets = 3
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_the_shared_data_fields_are_declared_once():
    shared = ("dataset", "categories", "shots", "n_sets", "support_seed", "metrics")
    for model in (ExperimentConfig, ComparisonConfig, AblationConfig):
        assert all(name in model.model_fields for name in shared)
    assert ExperimentConfig().dataset == "elpv" and ComparisonConfig().dataset == AblationConfig().dataset == "toy"


def test_a_malformed_yaml_file_is_one_line(tmp_path):
    path = write(tmp_path, "regad: [unclosed\n")
    message = refused(ExperimentConfig.from_yaml, path)
    assert message.startswith(f"{path}: not valid YAML") and "\n" not in message


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_validates(path):
    model = next((m for prefix, m in CONFIG_KINDS.items() if path.name.startswith(prefix)), ExperimentConfig)
    assert isinstance(model.from_yaml(path), model)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_params_yaml_section_validates(name):
    assert isinstance(section(name), SECTIONS[name])


def test_the_study_stages_build_their_studies_from_params_yaml():
    ablations, baselines = ablation_config(), comparison_config()
    train = section("train")
    assert ablations.regad.epochs == section("ablations").epochs and ablations.regad.lr == train.lr
    first = train.for_seed(train.seeds[0])  # the studies use the first seed's models
    assert ablations.regad.seed == first.seed and ablations.regad.train_extra == train.train_extra
    assert baselines.regad == first.replace(eps=section("evaluate").eps, blur_sigma=section("evaluate").blur_sigma)
    assert baselines.regad_models.endswith(f"models/seed{train.seeds[0]}")
    assert baselines.resad.steps == section("baselines").resad_steps


def test_a_wrong_params_value_names_the_section_and_key(tmp_path):
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    values["train"]["epochs"] = "three"
    values["baselines"]["n_sets"] = values["support"]["n_sets"] + 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    assert refused(section, "train", path) == f"{path}: train.epochs: 'three' is not an integer"
    assert section("support", path).n_sets == values["support"]["n_sets"]  # the other sections still read
    values["train"]["epochs"] = 3
    path.write_text(yaml.safe_dump(values))
    assert refused(comparison_config, path).startswith(f"{path}: baselines.n_sets: {values['baselines']['n_sets']} exceeds support.n_sets")


def test_a_missing_key_or_section_of_params_yaml_is_named(tmp_path):
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    del values["support"]["seed"]
    values["trian"] = values.pop("report")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    assert "unknown section(s) ['trian']" in refused(params.load_params, path)
    del values["trian"]
    path.write_text(yaml.safe_dump(values))
    assert refused(section, "support", path) == f"{path}: support.seed: missing; this file must set it"
    assert refused(section, "report", path) == f"{path}: the 'report' section is missing"


@pytest.mark.parametrize(("model", "values", "line"), [
    (ExperimentConfig, {"categories": ["disc", "ring", "disc"]}, "x.yaml: categories[2]: 'disc' listed twice; list each once"),
    (ExperimentConfig, {"categories": ["disqu\u00e9", "disque\u0301"]}, "x.yaml: categories[1]: 'disque\u0301' listed twice"),
    (ComparisonConfig, {"methods": ["padim", "spade", "padim"]}, "x.yaml: methods[2]: 'padim' listed twice"),
    (AblationConfig, {"metrics": ["image_auroc", "image_auroc"]}, "x.yaml: metrics[1]: 'image_auroc' listed twice"),
])
def test_a_name_listed_twice_is_refused_naming_its_place(model, values, line):
    assert refused(model.from_dict, values, source="x.yaml").startswith(line)


def test_test_selection_without_the_diagnostics_is_refused_when_read():
    message = refused(ExperimentConfig.from_dict, {"test_selected": True}, source="x.yaml")
    assert message == "x.yaml: test_selected: true needs epoch_diagnostics: true (the selection reads the per-epoch scores)"


def test_the_diagnostic_k_is_one_of_the_k_to_draw():
    assert ExperimentConfig(shots=[4], epoch_diagnostics=True, diagnostic_shots=2).required_shots == (2, 4)
    assert ExperimentConfig(shots=[4], diagnostic_shots=2).required_shots == (4,)  # no diagnostics: not drawn
