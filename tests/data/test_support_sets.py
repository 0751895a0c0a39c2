"""Support sets: reproducible, distinct within a set, independent of shot order, JSON round trip."""

from __future__ import annotations

import json

import pytest

from fsad.data.mvtec import load_category
from fsad.data.support_sets import (
    load_support_sets,
    make_support_sets,
    save_support_sets,
    support_samples,
)


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
