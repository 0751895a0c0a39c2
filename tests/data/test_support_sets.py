"""Support sets: reproducible, distinct within a set, independent of shot order, JSON round trip."""

from __future__ import annotations

import json
import shutil

import pytest

from fsad.data.mvtec import load_category
from fsad.data.support_sets import OFFICIAL_SEED, load_support_sets, make_support_sets, save_support_sets, support_samples, support_sets_for


@pytest.fixture
def disc(toy_root):
    return load_category(toy_root, "disc")


def test_sets_are_train_images_distinct_within_a_set(disc):
    sets = make_support_sets(disc, shots=(1, 4, 12), n_sets=5, seed=0)
    assert sorted(sets) == [1, 4, 12]
    train = {s.path.relative_to(disc.path).as_posix() for s in disc.train}
    for shot, lists in sets.items():
        assert len(lists) == 5
        for support in lists:
            assert len(support) == shot == len(set(support))
            assert set(support) <= train
            assert all(p.startswith("train/good/") for p in support)
    assert len({tuple(s) for s in sets[4]}) > 1  # the 5 draws are not all the same


def test_deterministic_and_independent_of_shot_order_and_other_shots(disc):
    reference = make_support_sets(disc, shots=(2, 4), n_sets=3, seed=7)
    assert make_support_sets(disc, shots=(4, 2), n_sets=3, seed=7) == reference
    assert make_support_sets(disc, shots=(4,), n_sets=3, seed=7)[4] == reference[4]
    assert make_support_sets(disc, shots=(4,), n_sets=3, seed=8)[4] != reference[4]


def test_categories_draw_independently(toy_root):
    disc = make_support_sets(load_category(toy_root, "disc"), shots=(4,), n_sets=3)[4]
    ring = make_support_sets(load_category(toy_root, "ring"), shots=(4,), n_sets=3)[4]
    # Same file names in both categories, but each category has its own generator.
    assert disc != ring


def test_too_many_shots_names_category_and_counts(disc):
    with pytest.raises(ValueError, match=r"'disc' has 12 train images, so K=13"):
        make_support_sets(disc, shots=(2, 13))


def test_json_round_trip(disc, tmp_path):
    sets = make_support_sets(disc, shots=(2, 8), n_sets=2, seed=3)
    path = tmp_path / "supports" / "disc.json"
    save_support_sets(path, disc, sets, seed=3)
    document = json.loads(path.read_text())
    assert (document["category"], document["seed"], sorted(document["sets"])) == ("disc", 3, ["2", "8"])
    assert load_support_sets(path, disc) == sets
    assert load_support_sets(path) == sets
    assert [p.name for p in path.parent.iterdir()] == ["disc.json"]  # no temp file left


def test_load_checks_images_and_category(disc, toy_root, tmp_path):
    path = tmp_path / "disc.json"
    save_support_sets(path, disc, {2: [["train/good/000.png", "train/good/099.png"]]}, seed=0)
    with pytest.raises(FileNotFoundError, match=r"disc\.json lists image .*train/good/099\.png"):
        load_support_sets(path, disc)
    with pytest.raises(ValueError, match="category 'disc', not 'ring'"):
        load_support_sets(path, load_category(toy_root, "ring"))
    path.write_text('{"category": "disc", "sets": {"2": [["train/good/000.png"]]}}')
    with pytest.raises(ValueError, match="2-shot set"):
        load_support_sets(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"disc\.json is not a support-set file"):
        load_support_sets(path)


def test_support_samples(disc):
    samples = support_samples(disc, ["train/good/005.png", "train/good/001.png"])
    assert [s.path for s in samples] == [disc.path / "train/good/005.png",
                                         disc.path / "train/good/001.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in samples)
    with pytest.raises(ValueError, match=r"'test/good/000.png' is not a train image"):
        support_samples(disc, ["test/good/000.png"])


# --- support_sets_for: reuse only what would be made now -------------------------------


@pytest.fixture
def disc_copy(toy_root, tmp_path):
    """A writable copy of the toy ``disc`` category."""
    shutil.copytree(toy_root / "disc", tmp_path / "data" / "disc")
    return load_category(tmp_path / "data", "disc")


def test_reuse_keeps_the_file_and_serves_fewer_sets_as_a_prefix(disc, tmp_path):
    sets = support_sets_for(disc, (2, 4), 3, 0, tmp_path)
    path = tmp_path / "disc.json"
    document = json.loads(path.read_text())
    assert (document["seed"], document["shots"], document["n_sets"]) == (0, [2, 4], 3)
    assert len(document["train_fingerprint"]) == 16
    before = path.stat().st_mtime_ns
    assert support_sets_for(disc, (4, 2), 3, 0, tmp_path) == sets
    assert support_sets_for(disc, (2,), 2, 0, tmp_path, read_only=True) == {2: sets[2][:2]}
    assert make_support_sets(disc, (2,), 2, seed=0)[2] == sets[2][:2]  # why a prefix is valid
    assert path.stat().st_mtime_ns == before  # never rewritten


def test_missing_k_is_drawn_and_the_others_kept(disc, tmp_path):
    support_sets_for(disc, (2,), 3, 0, tmp_path)
    sets = support_sets_for(disc, (2, 8), 3, 0, tmp_path)
    assert sets == make_support_sets(disc, (2, 8), 3, seed=0)
    assert sorted(load_support_sets(tmp_path / "disc.json")) == [2, 8]
    with pytest.raises(ValueError, match=r"disc\.json does not fit this run: it holds 0 sets of K=4, 3 asked"):
        support_sets_for(disc, (4,), 3, 0, tmp_path, read_only=True)
    with pytest.raises(FileNotFoundError, match=r"ring\.json does not exist"):
        support_sets_for(load_category(disc.root, "ring"), (2,), 3, 0, tmp_path, read_only=True)


def test_changed_seed_is_redrawn_with_a_message_or_refused_when_shared(disc, tmp_path, caplog):
    support_sets_for(disc, (2,), 3, 0, tmp_path)
    with pytest.raises(ValueError, match=r"disc\.json does not fit this run: it was drawn with seed 0, not 1\..*dvc repro"):
        support_sets_for(disc, (2,), 3, 1, tmp_path, read_only=True)
    with caplog.at_level("WARNING", logger="fsad.data.support_sets"):
        sets = support_sets_for(disc, (2,), 3, 1, tmp_path)
    assert "drawn with seed 0, not 1" in caplog.text and "disc.json" in caplog.text
    assert sets == make_support_sets(disc, (2,), 3, seed=1)
    assert json.loads((tmp_path / "disc.json").read_text())["seed"] == 1


def test_changed_train_images_are_seen(disc_copy, tmp_path, caplog):
    folder = tmp_path / "supports"
    support_sets_for(disc_copy, (2,), 3, 0, folder)
    (disc_copy.path / "train" / "good" / "011.png").unlink()  # the data set changed under the file
    smaller = load_category(disc_copy.root, "disc")
    with pytest.raises(ValueError, match=r"disc\.json does not fit this run: the train images of .*disc/train/good changed"):
        support_sets_for(smaller, (2,), 3, 0, folder, read_only=True)
    with caplog.at_level("WARNING", logger="fsad.data.support_sets"):
        sets = support_sets_for(smaller, (2,), 3, 0, folder)
    assert "train images" in caplog.text
    assert sets == make_support_sets(smaller, (2,), 3, seed=0)


def test_older_file_without_record_is_remade(disc, tmp_path, caplog):
    path = tmp_path / "disc.json"
    path.write_text(json.dumps({"category": "disc", "seed": 0, "sets": {"2": make_support_sets(disc, (2,), 3)[2]}}))
    with pytest.raises(ValueError, match="records no fingerprint"):
        support_sets_for(disc, (2,), 3, 0, tmp_path, read_only=True)
    with caplog.at_level("WARNING", logger="fsad.data.support_sets"):
        support_sets_for(disc, (2,), 3, 0, tmp_path)
    assert "older fsad" in caplog.text
    assert "train_fingerprint" in json.loads(path.read_text())


def test_official_sets_stand_for_any_seed_but_are_not_topped_up(disc, tmp_path, caplog):
    official = make_support_sets(disc, (2,), 3, seed=5)
    save_support_sets(tmp_path / "disc.json", disc, official, seed=OFFICIAL_SEED)
    assert support_sets_for(disc, (2,), 3, 0, tmp_path, read_only=True) == official
    with caplog.at_level("WARNING", logger="fsad.data.support_sets"):
        sets = support_sets_for(disc, (2, 4), 3, 0, tmp_path)
    assert "official sets" in caplog.text
    assert sets == make_support_sets(disc, (2, 4), 3, seed=0)
