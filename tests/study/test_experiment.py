"""The whole protocol on the toy tree: support sets, leave-one-out training, evaluation."""

import json
import logging
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from fsad.config import ExperimentConfig, RegADConfig
from fsad.data.mvtec import load_category
from fsad.methods.regad.training import MODEL_NAME, train_regad
from fsad.paths import ROOT
from fsad.pipeline.params import TrainParams
from fsad.study.experiment import run_experiment

TINY = RegADConfig(pretrained=False, image_size=32, epochs=1, batch_size=4, train_shots=(2,), lr=0.001, device="cpu")


def smoke_config(toy_root, **changes) -> ExperimentConfig:
    values = dict(dataset=str(toy_root), categories=("disc",), shots=(2, 4), n_sets=2,
                  metrics=("image_auroc", "pixel_auroc", "aupro", "f1_max"), regad=TINY)
    return ExperimentConfig(**{**values, **changes})


def test_smoke_train_one_epoch_and_evaluate(toy_root, tmp_path):
    results = run_experiment(smoke_config(toy_root), tmp_path, progress=False)
    assert (tmp_path / "models" / "disc" / MODEL_NAME).is_file()
    assert (tmp_path / "support_sets" / "disc.json").is_file()
    # 2 variants x 2 K x 2 support sets
    assert len(results) == 8
    assert set(results["method"]) == {"regad", "untrained"}
    assert sorted(results["shots"].unique()) == [2, 4]
    metrics = results[["image_auroc", "pixel_auroc", "aupro", "f1_max"]].to_numpy()
    assert np.isfinite(metrics).all() and (metrics >= 0).all() and (metrics <= 1).all()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv"), results, check_dtype=False)


def test_epoch_diagnostics_draw_their_own_k_when_it_is_not_evaluated(toy_root, tmp_path):
    config = smoke_config(toy_root, shots=(4,), n_sets=1, metrics=("image_auroc",), untrained_baseline=False,
                          epoch_diagnostics=True, diagnostic_shots=2, diagnostic_sets=3)
    results = run_experiment(config, tmp_path, progress=False)
    assert results[["category", "shots"]].values.tolist() == [["disc", 4]]
    assert pd.read_csv(tmp_path / "models" / "disc" / "epochs.csv")["epoch"].tolist() == [0, 1]
    sets = json.loads((tmp_path / "support_sets" / "disc.json").read_text())["sets"]
    assert {k: len(v) for k, v in sets.items()} == {"2": 3, "4": 1}  # the 3 diagnostic sets of K=2 beside the study's


def test_one_model_per_shot_when_asked(toy_root, tmp_path):
    config = smoke_config(toy_root, model_per_shot=True, untrained_baseline=False)
    results = run_experiment(config, tmp_path, progress=False)
    for k in (2, 4):
        assert (tmp_path / "models" / "disc" / f"K{k}" / MODEL_NAME).is_file()
    assert not (tmp_path / "models" / "disc" / MODEL_NAME).exists()
    assert sorted(results["shots"]) == [2, 2, 4, 4]


def test_changed_training_settings_restart_training(toy_root, tmp_path, caplog):
    categories = [load_category(toy_root, c) for c in ("ring", "stripes")]
    train_regad(categories, TINY, tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="fsad.methods.regad.training"):
        train_regad(categories, TINY.replace(lr=0.01), tmp_path, progress=False)
    assert "lr" in caplog.text and "from scratch" in caplog.text
    caplog.clear()
    # A test-time setting needs no retraining.
    with caplog.at_level(logging.WARNING, logger="fsad.methods.regad.training"):
        train_regad(categories, TINY.replace(lr=0.01, blur_sigma=2.0), tmp_path, progress=False)
    assert caplog.text == ""


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"dataset": "toy", "shot": [2]}))
    with pytest.raises(ValueError, match=r"bad.yaml.*'shot'"):
        ExperimentConfig.from_yaml(path)


def test_paper_config_has_the_reference_settings():
    config = ExperimentConfig.from_yaml(ROOT / "configs" / "regad_paper.yaml")
    r = config.regad
    assert (r.backbone, r.image_size, r.epochs, r.batch_size, r.lr, r.momentum) == ("resnet18", 224, 50, 32, 1e-4, 0.9)
    assert (r.normalize, r.stn_mode, r.eps, r.blur_sigma) == (False, "rotation_scale", 0.01, 4)
    assert config.shots == (2, 4, 8) and config.n_sets == 10


def committed(path: str) -> dict:
    """``path`` (relative to the checkout) as committed at HEAD: a user's edits and ``dvc exp run -S`` live in the
    working tree, so a test of what the project ships must not read it."""
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{path}"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"not a git checkout: the committed {path} is unknown (the working tree's may hold a user's edits)")
    return yaml.safe_load(text)


def test_default_config_matches_the_pipeline_params():
    # `make run` (configs/default.yaml) and `dvc repro` (params.yaml) must run the same RegAD, as committed.
    config = ExperimentConfig.from_dict(committed("configs/default.yaml"), source="HEAD:configs/default.yaml")
    params = committed("params.yaml")
    assert config.dataset == params["data"]["dataset"] == "elpv"
    assert list(config.shots) == params["support"]["shots"] and config.n_sets == params["support"]["n_sets"]
    train = TrainParams.from_dict(params["train"])
    pipeline = train.for_seed(train.seeds[0]).replace(**{k: params["evaluate"][k] for k in ("eps", "blur_sigma", "augment_support")})
    assert config.regad == pipeline  # the pipeline's first seed
