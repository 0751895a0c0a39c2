"""RegAD's training pool beyond the target's data set (issue 20): what trains the model, and the honest epoch choice."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fsad.config import ConfigError, ExperimentConfig, RegADConfig, training_settings
from fsad.data.mvtec import load_category
from fsad.methods.regad.training import MODEL_NAME
from fsad.study.experiment import run_experiment
from fsad.study.models import POOL_SELECTED_NAME
from fsad.study.pools import load_extra, training_pool

TINY = RegADConfig(pretrained=False, image_size=32, epochs=1, batch_size=4, train_shots=(2,), lr=0.001, device="cpu")


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> str:
    """A folder of class folders of plain images (dtd-mini's layout): 2 classes x 7 images."""
    root = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(0)
    for name in ("woven", "dotted"):
        (root / name).mkdir()
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{name}_{i}.png")
    return str(root)


def test_a_folder_of_class_folders_gives_one_category_per_class_with_spare_images(textures):
    extra = load_extra([textures])
    source = textures.rstrip("/").split("/")[-1]
    assert [c.name for c in extra] == [f"{source}/dotted", f"{source}/woven"]
    woven = extra[1]
    # 7 images: 6 train, the last (sorted) is spare, never trained on.
    assert [s.path.name for s in woven.train] == [f"woven_{i}.png" for i in range(6)]
    assert [(s.path.name, s.label) for s in woven.test] == [("woven_6.png", 0)]
    assert woven.path.name == "woven"


def test_one_category_of_a_source_and_an_unknown_one(toy_root):
    assert [c.name for c in load_extra([f"{toy_root}/ring"])] == [f"{toy_root.name}/ring"]
    assert [c.name for c in load_extra([str(toy_root)])] == [f"{toy_root.name}/{n}" for n in ("disc", "ring", "stripes")]
    with pytest.raises(FileNotFoundError, match="train_extra: 'elpv/nothing': elpv has no category 'nothing'; available: mono, poly"):
        load_extra(["elpv/nothing"])
    with pytest.raises(FileNotFoundError, match="train_extra: .*/absent"):
        load_extra(["/nonexistent/absent"])


def test_the_pool_never_holds_the_target_and_counts_a_category_once(toy_root):
    own = {name: load_category(toy_root, name) for name in ("disc", "ring", "stripes")}
    target, others = own["disc"], [own["stripes"], own["ring"]]
    extra = load_extra([str(toy_root)])  # the target's own data set again, the target included
    pool = training_pool(target, others, extra)
    assert [c.name for c in pool] == ["ring", "stripes"]  # disc (the target) and the repeats are dropped
    assert [c.name for c in training_pool(target, others, [], train_own=1)] == ["ring"]  # the first in name order
    with pytest.raises(ValueError, match="training pool of 'disc' is empty .*train_own: 0"):
        training_pool(target, others, [], train_own=0)


def test_a_copy_of_the_target_is_left_out_and_a_folder_holding_some_of_its_images_refused(toy_root, tmp_path):
    import shutil

    target = load_category(toy_root, "disc")
    others = [load_category(toy_root, "ring")]
    copies = tmp_path / "copies"
    shutil.copytree(toy_root / "disc", copies / "disc_renamed")  # the target under another name and path
    shutil.copytree(toy_root / "ring", copies / "ring")  # a repeat of an own category
    assert [c.name for c in training_pool(target, others, load_extra([str(copies)]))] == ["ring"]

    mixed = tmp_path / "mixed"
    shutil.copytree(toy_root / "stripes", mixed / "stripes")
    leaked = min((toy_root / "disc" / "test" / "good").glob("*.png"))
    shutil.copy(leaked, mixed / "stripes" / "train" / "good" / "zz_leaked.png")  # one of the target's test images
    with pytest.raises(ValueError, match=r"pool of 'disc': '.*stripes' .* holds 1 of the target's images"):
        training_pool(target, others, load_extra([str(mixed)]))


def test_the_pool_is_recorded_by_the_model_not_by_its_settings(toy_root, textures, tmp_path, caplog):
    config = ExperimentConfig(dataset=str(toy_root), categories=("disc",), shots=(2,), n_sets=1, metrics=("image_auroc",),
                              untrained_baseline=False, regad=TINY.replace(train_own=1, train_extra=(textures,)))
    run_experiment(config, tmp_path, progress=False)
    state = torch.load(tmp_path / "models" / "disc" / MODEL_NAME, weights_only=True)
    source = textures.rstrip("/").split("/")[-1]
    assert state["train_categories"] == ["ring", f"{source}/dotted", f"{source}/woven"]
    assert set(state["train_fingerprints"]) == set(state["train_categories"])
    assert state["config"]["train_extra"] == [textures] and state["config"]["train_own"] == 1
    assert "train_extra" not in training_settings(config.regad)
    # Another pool is another model: retrained, saying which categories changed.
    with caplog.at_level(logging.WARNING):
        run_experiment(config.replace(regad=config.regad.replace(train_own=2)), tmp_path, progress=False)
    assert "training categories" in caplog.text and "'stripes'" in caplog.text
    assert torch.load(tmp_path / "models" / "disc" / MODEL_NAME, weights_only=True)["train_categories"][:2] == ["ring", "stripes"]


def test_the_honest_epoch_choice_reads_only_the_pool(toy_root, tmp_path):
    config = ExperimentConfig(dataset=str(toy_root), categories=("disc",), shots=(2,), n_sets=1, metrics=("image_auroc",),
                              untrained_baseline=False, pool_selected=True, validation_images=3,
                              regad=TINY.replace(epochs=2))
    results = run_experiment(config, tmp_path, progress=False)
    assert sorted(set(results["method"])) == ["regad", "regad_pool_selected"]
    chosen = torch.load(tmp_path / "models" / "disc" / POOL_SELECTED_NAME, weights_only=True)
    history = pd.DataFrame(torch.load(tmp_path / "models" / "disc" / MODEL_NAME, weights_only=True)["history"])
    # Epochs 0 (untrained), 1, 2 scored on the pool; the kept one is the best of them.
    assert history["epoch"].tolist() == [0, 1, 2]
    best = (history["pool_image_auroc"] + history["pool_pixel_auroc"]).to_numpy()
    assert chosen["epoch"] == int(np.argmax(best)) and chosen["score"] == pytest.approx(best.max())
    # Nothing of the target: its test images are not among what the validation scored (only ring / stripes spare images).
    assert "image_auroc" not in history  # no target diagnostics were asked


def test_pool_settings_are_checked_at_config_read():
    with pytest.raises(ConfigError, match="train_extra.*listed twice"):
        RegADConfig(train_extra=["elpv", "elpv"])
    with pytest.raises(ConfigError, match="train_own"):
        RegADConfig(train_own=-1)


def test_the_kept_epoch_is_the_best_so_far_across_a_resume(tmp_path):
    from fsad.methods.regad.checkpoint import untrained_regad
    from fsad.study.models import keep_if_best

    model, path, best = untrained_regad(TINY), tmp_path / POOL_SELECTED_NAME, None
    for epoch, score in enumerate([0.5, 0.9, 0.7]):
        best = keep_if_best(path, best, score, model, epoch, TINY)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    # A resumed training (best unknown) reads the file's score: a worse epoch 3 does not replace epoch 1.
    assert keep_if_best(path, None, 0.8, model, 3, TINY) == 0.9
    assert torch.load(path, weights_only=True)["epoch"] == 1
