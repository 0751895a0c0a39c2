"""The official-recipe switches of RegADConfig pin the official code's behaviour (issue 10).

Each test compares against a plain re-implementation of the official lines
(MediaBrain-SJTU/RegAD at 5e2c1f8) or a hand-computed value, so a switch that does nothing fails.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fsad.components.backbones import build_backbone
from fsad.config import ExperimentConfig, RegADConfig, training_settings
from fsad.methods.regad.checkpoint import build_model, load_checkpoint
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.stn import determinant, rotation_degrees, stn_identity_deviation
from fsad.methods.regad.training import MODEL_NAME, make_optimizers, official_lr_factor

# lr_per_epoch steps the schedulers without training
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of")

NEW_KEYS = ("lr_schedule", "separate_forwards", "predictor_bias", "inverse_warp", "stn_lr", "stn_identity_penalty")


def tiny(**changes) -> RegADConfig:
    return RegADConfig(pretrained=False, image_size=32, epochs=3, batch_size=4, lr=0.1, device="cpu", **changes)


def lr_per_epoch(config: RegADConfig) -> list[list[float]]:
    """The rate of every parameter group of every optimiser while each epoch runs."""
    optimizers, schedulers = make_optimizers(build_model(config), config)
    rates = []
    for _ in range(config.epochs):
        rates.append([g["lr"] for o in optimizers for g in o.param_groups])
        for s in schedulers:
            s.step()
    return rates


def test_official_schedule_is_set_before_each_epoch_and_ends_at_zero():
    # train.py 320: lr = init_lr * 0.5 * (1 + cos(pi * epoch / epochs)) for epoch = 1..E, before training it
    official = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in (1, 2, 3)]  # 0.075, 0.025, 0
    rates = lr_per_epoch(tiny(lr_schedule="official"))
    assert np.allclose([r[0] for r in rates], official, atol=1e-12) and np.allclose(official, [0.075, 0.025, 0.0])
    assert all(len(set(np.round(r, 12))) == 1 for r in rates)  # all three optimisers
    assert [official_lr_factor(e, 3) for e in range(3)] == pytest.approx([0.75, 0.25, 0.0])
    # fsad's default: stepped after each epoch, starts at the full rate, never reaches 0
    assert np.allclose([r[0] for r in lr_per_epoch(tiny())], [0.1, 0.075, 0.025])


def test_stn_learning_rate_is_a_group_of_its_own():
    config = tiny(stn_lr=0.001)
    model = build_model(config)
    optimizers, _ = make_optimizers(model, config)
    backbone_group, stn_group = optimizers[0].param_groups
    assert backbone_group["lr"] == 0.1 and stn_group["lr"] == 0.001
    assert {id(p) for p in stn_group["params"]} == {id(p) for p in model.stns.parameters()}
    assert lr_per_epoch(tiny(stn_lr=0.001, lr_schedule="official"))[1] == pytest.approx([0.025, 0.00025, 0.025, 0.025])
    # without it: one group, as before (old checkpoints' optimiser states still load)
    assert len(make_optimizers(model, tiny())[0][0].param_groups) == 1


def test_predictor_of_the_official_code_has_no_bias():
    assert build_model(tiny(predictor_bias=False)).predictor[-1].bias is None
    assert build_model(tiny()).predictor[-1].bias is not None


def test_separate_forwards_give_queries_and_supports_their_own_batch_statistics():
    torch.manual_seed(0)
    model = RegAD(build_backbone("mobilenet_v2", pretrained=False), (32, 32)).train()
    query, support = torch.rand(3, 3, 32, 32), torch.rand(3, 2, 3, 32, 32) * 0.5 + 0.5  # other brightness: other BN statistics
    # official train.py 169-178: STN(query), STN(support) as two calls, support feature = mean over K
    query_feat = model.transformed_features(query)[0][-1]
    support_feat = model.transformed_features(support.flatten(0, 1))[0][-1].unflatten(0, (3, 2)).mean(dim=1)
    z1, z2 = model.encoder(query_feat), model.encoder(support_feat)
    p1, p2 = model.predictor(z1), model.predictor(z2)
    official = 0.5 * (-F.cosine_similarity(p1, z2.detach(), dim=1).mean()) + 0.5 * (-F.cosine_similarity(p2, z1.detach(), dim=1).mean())
    separate = model.registration_loss(query, support, separate_forwards=True)
    joint = model.registration_loss(query, support)
    assert torch.allclose(separate, official, atol=1e-6)
    assert abs(separate.item() - joint.item()) > 1e-4


def official_fixstn(x, theta):
    """models/stn.py _fixstn: affine_grid + grid_sample with reflection (torch's default align_corners=False)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def official_inverse(theta):
    """models/stn.py 255: np.linalg.inv of the 3 x 3 homogeneous matrix, top two rows."""
    bottom = np.tile(np.array([0, 0, 1]), (theta.shape[0], 1, 1)).astype(np.float32)
    return torch.from_numpy(np.linalg.inv(np.concatenate((theta.numpy(), bottom), axis=1))[:, :-1, :]).float()


def test_per_stage_inverse_warp_is_the_official_composition(pooling_backbone):
    torch.manual_seed(0)
    model = RegAD(pooling_backbone, (128, 128), stn_mode="rotation_translation_scale", inverse_warp="per_stage").eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        for stn, params in zip(model.stns, ([0.4, 0.05, 0.0, 1.1, 0.9], [-0.3, 0.0, 0.1, 1.0, 1.2], [0.2, -0.1, 0.0, 0.8, 1.0])):
            stn.regressor[-1].bias.copy_(torch.tensor(params))
        maps, thetas = model.transformed_features(x)
        got = model.registered_features(x)
        inverses = [official_inverse(t) for t in thetas]
        stage1 = official_fixstn(maps[0], inverses[0])
        stage2 = official_fixstn(official_fixstn(maps[1], inverses[1]), inverses[0])
        stage3 = official_fixstn(official_fixstn(official_fixstn(maps[2], inverses[2]), inverses[1]), inverses[0])
        expected = torch.cat([F.interpolate(m, size=(32, 32), mode="nearest") for m in (stage1, stage2, stage3)], dim=1)
        assert torch.allclose(got, expected, atol=1e-5)
        model.inverse_warp = "composed"  # one warp by the composed inverse: other values at the borders
        assert (model.registered_features(x) - expected).abs().max() > 1e-2
    with pytest.raises(ValueError, match="inverse_warp"):
        RegAD(pooling_backbone, (128, 128), inverse_warp="official")


def test_identity_penalty_is_zero_at_identity_and_pulls_back_to_it():
    identity = torch.eye(2, 3).expand(4, 2, 3)
    assert stn_identity_deviation([identity, identity]).item() == 0.0
    moved = identity.clone()
    moved[:, 0, 2] = 0.3  # a translation of 0.3 in one stage
    assert stn_identity_deviation([moved, identity]).item() == pytest.approx(0.09)
    torch.manual_seed(0)
    model = RegAD(build_backbone("mobilenet_v2", pretrained=False), (32, 32)).train()
    with torch.no_grad():
        model.stns[0].regressor[-1].bias.copy_(torch.tensor([0.5, 1.0, 1.0]))  # rotated by 0.5 rad
    query, support = torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)
    torch.manual_seed(1)
    plain = model.registration_loss(query, support)
    torch.manual_seed(1)
    penalised = model.registration_loss(query, support, identity_penalty=2.0)
    expected_penalty = 2 * ((math.cos(0.5) - 1) ** 2 * 2 + math.sin(0.5) ** 2 * 2)
    assert (penalised - plain).item() == pytest.approx(expected_penalty, rel=1e-4)


def test_stn_statistics():
    angle, scale = math.radians(30), 2.0
    theta = torch.tensor([[[scale * math.cos(angle), -scale * math.sin(angle), 0.1], [scale * math.sin(angle), scale * math.cos(angle), 0]]])
    assert rotation_degrees(theta).item() == pytest.approx(30, abs=1e-4)
    assert determinant(theta).item() == pytest.approx(4.0)


def test_defaults_are_todays_recipe_and_old_files_compare_equal():
    config = RegADConfig()
    assert (config.lr_schedule, config.separate_forwards, config.predictor_bias, config.inverse_warp, config.stn_lr,
            config.stn_identity_penalty) == ("stepped", False, True, "composed", None, 0.0)
    old = {k: v for k, v in config.to_dict().items() if k not in NEW_KEYS}  # a checkpoint written before the switches
    assert training_settings(RegADConfig.from_dict(old)) == training_settings(config)
    assert set(NEW_KEYS) <= set(training_settings(config))  # each identifies a trained model


def test_official_config_sets_every_switch():
    config = ExperimentConfig.from_yaml("configs/regad_official_fsad_mini.yaml")
    regad = config.regad
    assert (regad.normalize, regad.lr, regad.batch_size, regad.lr_schedule, regad.separate_forwards, regad.predictor_bias,
            regad.inverse_warp, regad.train_shots) == (False, 1e-4, 32, "official", True, False, "per_stage", (2,))
    assert config.epoch_diagnostics and config.test_selected
    gpu = ExperimentConfig.from_yaml("configs/regad_official_gpu.yaml")
    assert gpu.regad.image_size == 224 and gpu.model_per_shot and training_settings(gpu.regad)["lr_schedule"] == "official"


def test_epoch_diagnostics_never_select(tmp_path):
    from fsad.study.experiment import run_experiment

    config = ExperimentConfig.from_dict({
        "dataset": "toy", "categories": ["ring"], "shots": [2], "n_sets": 2, "metrics": ["image_auroc", "pixel_auroc"],
        "epoch_diagnostics": True, "test_selected": True,
        "regad": {"pretrained": False, "normalize": False, "image_size": 32, "epochs": 2, "batches_per_epoch": 2, "batch_size": 4,
                  "lr": 0.05, "train_shots": [2], "lr_schedule": "official", "separate_forwards": True, "predictor_bias": False,
                  "inverse_warp": "per_stage", "device": "cpu"}})
    rows = run_experiment(config, tmp_path, progress=False)
    epochs = pd.read_csv(tmp_path / "models" / "ring" / "epochs.csv")
    assert epochs["epoch"].tolist() == [0, 1, 2]
    assert {"loss", "image_auroc", "pixel_auroc", "stn1_rotation", "stn3_determinant", "lr"} <= set(epochs.columns)
    assert epochs["lr"].iloc[-1] == 0.0 and epochs["stn1_rotation"].iloc[0] == 0.0
    means = rows.groupby("method")[["image_auroc", "pixel_auroc"]].mean()
    # epoch 0 is the untrained network; the last epoch is the model (scored as "regad")
    assert means.loc["untrained", "pixel_auroc"] == pytest.approx(epochs["pixel_auroc"].iloc[0], abs=1e-6)
    assert means.loc["regad", "pixel_auroc"] == pytest.approx(epochs["pixel_auroc"].iloc[-1], abs=1e-6)
    best = (epochs["image_auroc"] + epochs["pixel_auroc"]).idxmax()
    assert means.loc["regad_test_selected", "pixel_auroc"] == pytest.approx(epochs["pixel_auroc"].iloc[best], abs=1e-6)
    saved = load_checkpoint(tmp_path / "models" / "ring" / MODEL_NAME)
    assert [h["epoch"] for h in saved["history"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="test_selected"):
        run_experiment(config.replace(epoch_diagnostics=False), tmp_path / "x", progress=False)
