import numpy as np
import pytest
import torch

from fsad.config import RegADConfig
from fsad.data.mvtec import load_category
from fsad.methods.regad.checkpoint import load_checkpoint, load_model
from fsad.methods.regad.training import CHECKPOINT_NAME, MODEL_NAME, draw_supports, epoch_batches, train_regad

TINY = RegADConfig(pretrained=False, image_size=32, epochs=2, batch_size=4, train_shots=(2, 3), lr=0.005, device="cpu")


@pytest.fixture(scope="module")
def train_categories(toy_root):
    return [load_category(toy_root, c) for c in ("ring", "stripes")]


def test_supports_never_equal_their_query():
    rng = np.random.default_rng(0)
    queries = np.arange(5)
    supports = draw_supports(np.tile(queries, 200), n_images=5, k=8, rng=rng)  # 1000 x 8
    assert not (supports == np.tile(queries, 200)[:, None]).any()
    # with replacement and uniform over the other images
    counts = np.bincount(supports[np.tile(queries, 200) == 0].ravel(), minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 300
    with pytest.raises(ValueError, match="at least 2 images"):
        draw_supports(np.array([0]), 1, 2, rng)


def test_batches_hold_one_category_and_are_redrawn_each_epoch():
    config = TINY.replace(batch_size=3)
    first, second = epoch_batches([7, 5], config, 0), epoch_batches([7, 5], config, 1)
    assert sorted(len(b.queries) for b in first) == [1, 2, 3, 3, 3]
    for b in first:
        assert b.supports.shape == (len(b.queries), b.supports.shape[1]) and b.supports.shape[1] in (2, 3)
        assert b.supports.max() < (7 if b.category == 0 else 5)
    covered = sorted(np.concatenate([b.queries for b in first if b.category == 0]))
    assert covered == list(range(7))  # every image is a query once per epoch
    assert [b.queries.tolist() for b in first] != [b.queries.tolist() for b in second]
    assert [b.queries.tolist() for b in first] == [b.queries.tolist() for b in epoch_batches([7, 5], config, 0)]


def state_of(path):
    return load_checkpoint(path)["model"]


def test_two_runs_give_identical_weights(train_categories, tmp_path):
    train_regad(train_categories, TINY, tmp_path / "a", progress=False)
    train_regad(train_categories, TINY, tmp_path / "b", progress=False)
    a, b = state_of(tmp_path / "a" / MODEL_NAME), state_of(tmp_path / "b" / MODEL_NAME)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training changed the weights (the check above is not comparing two untouched models)
    from fsad.methods.regad.checkpoint import build_model
    from fsad.seed import seed_everything

    seed_everything(TINY.seed)  # the initial weights train_regad starts from (epochs >= 1 is the schema's)
    fresh = build_model(TINY).state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a if a[k].is_floating_point())


class Killed(Exception):
    pass


def test_resume_after_an_interruption_ends_with_the_same_weights(train_categories, tmp_path, monkeypatch):
    import fsad.methods.regad.training

    config = TINY.replace(epochs=3)
    train_regad(train_categories, config, tmp_path / "full", progress=False)

    real_save = fsad.methods.regad.training.save_atomic

    def save_then_die(obj, path):  # the process is killed right after epoch 1's checkpoint
        real_save(obj, path)
        if obj.get("epoch") == 1:
            raise Killed

    monkeypatch.setattr(fsad.methods.regad.training, "save_atomic", save_then_die)
    with pytest.raises(Killed):
        train_regad(train_categories, config, tmp_path / "cut", progress=False)
    monkeypatch.setattr(fsad.methods.regad.training, "save_atomic", real_save)
    assert not (tmp_path / "cut" / MODEL_NAME).exists()
    train_regad(train_categories, config, tmp_path / "cut", progress=False)
    full, resumed = state_of(tmp_path / "full" / MODEL_NAME), state_of(tmp_path / "cut" / MODEL_NAME)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert [h["epoch"] for h in load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["history"]] == [1, 2, 3]


def test_a_checkpoint_of_another_architecture_retrains_and_a_model_of_one_is_refused(train_categories, tmp_path, caplog):
    """A rerun with another architecture trains anew, saying what changed (issue 19 item 2); loading a
    model file where another architecture is expected is still an error."""
    train_regad(train_categories, TINY.replace(epochs=1), tmp_path, progress=False)
    with caplog.at_level("WARNING"):
        train_regad(train_categories, TINY.replace(epochs=2, stn_mode="affine"), tmp_path, progress=False)
    assert "stn_mode: 'rotation_scale' -> 'affine'" in caplog.text and "training from scratch" in caplog.text
    model, config = load_model(tmp_path / MODEL_NAME, expected=TINY.replace(epochs=2, stn_mode="affine"))
    assert config.stn_mode == "affine" and not model.training
    with pytest.raises(ValueError, match="backbone"):
        load_model(tmp_path / MODEL_NAME, expected=TINY.replace(backbone="resnet18", stn_mode="affine"))


def _backbone_bn_means(model) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_backbone_bn_keeps_the_imagenet_statistics(train_categories, tmp_path, freeze):
    from fsad.methods.regad.checkpoint import build_model

    config = TINY.replace(epochs=1, freeze_backbone_bn=freeze)
    torch.manual_seed(0)
    before = _backbone_bn_means(build_model(config))
    trained = train_regad(train_categories, config, tmp_path, progress=False)
    after = _backbone_bn_means(trained)
    kept = all(torch.equal(a, b) for a, b in zip(before, after))
    assert kept == freeze
    stn_bn = [m for m in trained.stns.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert stn_bn and all(m.num_batches_tracked > 0 for m in stn_bn)  # the STNs' own batch norms still learn


def test_checkpoint_without_newer_settings_resumes(train_categories, tmp_path):
    train_regad(train_categories, TINY.replace(epochs=1), tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    del state["config"]["freeze_backbone_bn"]  # a file written before the setting existed
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    train_regad(train_categories, TINY, tmp_path, progress=False)
    assert [h["epoch"] for h in torch.load(tmp_path / MODEL_NAME, weights_only=True)["history"]] == [1, 2]


def test_checkpoint_records_its_training_images_and_changed_images_retrain(toy_root, tmp_path, caplog):
    import shutil

    from PIL import Image

    from fsad.data.fingerprint import category_fingerprint
    from fsad.methods.regad.checkpoint import checkpoint_differences

    for name in ("ring", "stripes"):
        shutil.copytree(toy_root / name, tmp_path / "data" / name)
    categories = [load_category(tmp_path / "data", c) for c in ("ring", "stripes")]
    train_regad(categories, TINY.replace(epochs=1), tmp_path / "model", progress=False)
    state = torch.load(tmp_path / "model" / CHECKPOINT_NAME, weights_only=True)
    assert state["train_fingerprints"] == {c.name: category_fingerprint(c) for c in categories}
    assert checkpoint_differences(state, TINY.replace(epochs=1), categories, tmp_path) == []
    assert checkpoint_differences(state, TINY.replace(epochs=1, lr=0.1), categories, tmp_path) == ["lr: 0.005 -> 0.1"]

    image = tmp_path / "data" / "stripes" / "train" / "good" / "000.png"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)  # the data set changed
    changed = checkpoint_differences(state, TINY.replace(epochs=1), categories, tmp_path)
    assert len(changed) == 1 and "stripes/train/good changed" in changed[0]
    with caplog.at_level("WARNING", logger="fsad.methods.regad.training"):
        train_regad(categories, TINY, tmp_path / "model", progress=False)
    assert "stripes/train/good changed" in caplog.text and "training from scratch" in caplog.text


def test_checkpoint_without_fingerprints_resumes_with_a_warning(train_categories, tmp_path, caplog):
    train_regad(train_categories, TINY, tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    del state["train_fingerprints"]  # written before fingerprints were recorded
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with caplog.at_level("WARNING"):
        train_regad(train_categories, TINY, tmp_path, progress=False)
    assert "records no fingerprint" in caplog.text and "training from scratch" not in caplog.text
    assert [h["epoch"] for h in torch.load(tmp_path / MODEL_NAME, weights_only=True)["history"]] == [1, 2]


def test_a_small_pool_fills_its_epoch_to_the_same_number_of_queries_when_asked():
    config = RegADConfig(batch_size=4, train_shots=(2,), batches_per_epoch=6, seed=3)
    capped = epoch_batches([7], config, 0)  # one pass of 7 images: 2 batches, the cap does not add any
    filled = epoch_batches([7], config.replace(fill_batches=True), 0)
    assert len(capped) == 2 and len(filled) == 6
    # The first pass is the cap's, then further passes: each image once per pass.
    assert [b.queries.tolist() for b in filled[:2]] == [b.queries.tolist() for b in capped]
    for start in (2, 4):
        assert sorted(q for b in filled[start : start + 2] for q in b.queries.tolist()) == list(range(7))
    # A pool with enough batches is cut the same way with or without filling.
    large = epoch_batches([40, 30], config, 0)
    assert [b.queries.tolist() for b in large] == [b.queries.tolist() for b in epoch_batches([40, 30], config.replace(fill_batches=True), 0)]
