import pytest
import torch

from fsad.config import AblationConfig, RegADConfig
from fsad.methods.regad.stn import STN_MODES
from fsad.study.ablations import ablation_table, ablation_variants, plot_ablations, run_ablations


def test_variants_cover_the_paper_ablations():
    variants = ablation_variants(AblationConfig(regad=RegADConfig(stn_mode="affine", lr=0.01)))
    names = [v.name for v in variants]
    assert names[0] == "stn_affine"  # the default mode first
    assert {f"stn_{m}" for m in STN_MODES} <= set(names)
    assert {"no_stn", "frozen_bn", "untrained", "no_augmentation", "k_sweep"} <= set(names)
    by_name = {v.name: v for v in variants}
    regad = RegADConfig(stn_mode="affine", lr=0.01)
    settings = {v.name: v.settings(regad) for v in variants}
    assert settings["no_stn"].stn_mode == "none" and by_name["no_stn"].trained
    assert not by_name["untrained"].trained and not by_name["no_augmentation"].augment_support
    assert by_name["k_sweep"].shots == (1, 2, 4, 8, 16)
    assert settings["frozen_bn"].freeze_backbone_bn and settings["frozen_bn"].stn_mode == "affine"
    assert sum(s.freeze_backbone_bn for s in settings.values()) == 1
    # issue 10's two ways to keep registration near the identity, each a row of its own
    assert settings["stn_lr_x0.1"] == regad.replace(stn_lr=0.001)
    assert settings["identity_penalty_1"] == regad.replace(stn_identity_penalty=1.0)
    assert {v.folder(regad) for v in variants if v.trained} == {
        *(f"{m}" for m in STN_MODES), "none", "affine-frozen_bn", "affine-stn_lr_x0.1", "affine-identity_penalty_1"}
    flipped = {v.name: v for v in ablation_variants(AblationConfig(regad=RegADConfig(freeze_backbone_bn=True, stn_lr=0.001,
                                                                                      stn_identity_penalty=2.0)))}
    assert {"frozen_bn", "stn_lr_x0.1", "identity_penalty_1"}.isdisjoint(flipped)
    default = RegADConfig(freeze_backbone_bn=True, stn_lr=0.001, stn_identity_penalty=2.0)
    assert flipped["trained_bn"].settings(default) == default.replace(freeze_backbone_bn=False)
    assert flipped["stn_lr_shared"].settings(default) == default.replace(stn_lr=None)
    assert flipped["no_identity_penalty"].settings(default) == default.replace(stn_identity_penalty=0.0)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown STN mode"):
        AblationConfig.from_dict({"stn_modes": ["spin"]})


def test_ablations_on_toy(toy_root, tmp_path):
    config = AblationConfig(dataset=str(toy_root), categories=("disc",), shots=(2,), k_sweep=(1, 2, 16), n_sets=1,
                            stn_modes=("rotation_scale", "translation"), metrics=("image_auroc", "pixel_auroc"),
                            regad=RegADConfig(image_size=64, epochs=1, batch_size=8, pretrained=False, device="cpu"))
    results = run_ablations(config, tmp_path, progress=False)
    variants = set(results["method"])
    assert variants == {"stn_rotation_scale", "stn_translation", "no_stn", "frozen_bn", "stn_lr_x0.1", "identity_penalty_1", "untrained",
                        "no_augmentation", "k_sweep"}
    assert set(results.loc[results["method"] == "k_sweep", "shots"]) == {1, 2}  # toy has 12 train images: no K=16
    assert (tmp_path / "models" / "none" / "disc" / "regad.pt").is_file()
    for folder in ("rotation_scale-frozen_bn", "rotation_scale-stn_lr_x0.1", "rotation_scale-identity_penalty_1"):
        assert (tmp_path / "models" / folder / "disc" / "regad.pt").is_file()
    metric = results.set_index(["method", "shots"])["image_auroc"]
    assert metric[("k_sweep", 2)] == metric[("stn_rotation_scale", 2)]  # shared K: the default variant's rows
    frozen, default = (torch.load(tmp_path / "models" / m / "disc" / "regad.pt", weights_only=True)["model"]
                       for m in ("rotation_scale-frozen_bn", "rotation_scale"))
    stats = [k for k in frozen if k.startswith("backbone.") and k.endswith("running_mean")]
    assert stats and not all(torch.equal(frozen[k], default[k]) for k in stats)  # toy AUROC saturates: compare the models
    table = ablation_table(results, ("image_auroc", "pixel_auroc"))
    assert list(table.columns) == ["K=1", "K=2"]
    figure = plot_ablations(results, "image_auroc", tmp_path / "figures" / "ablations.png")
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels[0] == "stn_rotation_scale" and "k_sweep" not in labels and len(labels) == len(variants) - 1
    assert (tmp_path / "figures" / "ablations.png").stat().st_size > 0


def test_shared_support_sets_are_read_not_rewritten(toy_root, tmp_path):
    from fsad.data.mvtec import load_category
    from fsad.data.support_sets import load_support_sets, make_support_sets, save_support_sets
    from fsad.study.ablations import _support_sets

    disc = load_category(toy_root, "disc")
    shared = tmp_path / "shared"
    save_support_sets(shared / "disc.json", disc, make_support_sets(disc, (2,), 3, seed=0), 0)
    before = (shared / "disc.json").read_bytes()
    config = AblationConfig(dataset=str(toy_root), n_sets=2, support_seed=0, support_dir=str(shared))
    sets = _support_sets(disc, config, (1, 2), tmp_path / "out")
    assert (shared / "disc.json").read_bytes() == before  # the pipeline's data_prep output is untouched
    assert sets[2] == load_support_sets(shared / "disc.json", disc)[2][:2]
    assert sets[1] == make_support_sets(disc, (1,), 2, seed=0)[1]  # drawn as data_prep would
    assert (tmp_path / "out" / "support_sets" / "disc.json").is_file()
