"""data_prep: manifests that make per-category reruns exact, support sets, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from fsad.data.toy import make_toy_dataset
from fsad.pipeline import layout
from fsad.pipeline.data_prep import prepare_data
from fsad.pipeline.manifest import prepared_category, prepared_pool, prepared_support_sets, training_set


def manifests(root) -> dict[str, str]:
    folder = root / "data" / "prepared"
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*.json"))}


def test_changing_one_categorys_images_changes_only_the_manifests_that_read_them(toy_root, pipeline_root):
    data = shutil.copytree(toy_root, pipeline_root / "toy")
    summary = prepare_data(str(data), ["disc", "ring", "stripes"], [2, 4], 3, 0, progress=False)
    assert summary["categories"] == ["disc", "ring", "stripes"] and summary["benchmark"] is None
    before = manifests(pipeline_root)
    (data / "ring" / "test" / "good" / "000.png").write_bytes((data / "ring" / "test" / "good" / "001.png").read_bytes())
    prepare_data(str(data), ["disc", "ring", "stripes"], [2, 4], 3, 0, progress=False)
    changed = {k for k, v in manifests(pipeline_root).items() if before[k] != v}
    assert changed == {"test/ring.json"}  # only evaluate@ring reruns
    (data / "ring" / "train" / "good" / "000.png").write_bytes((data / "ring" / "train" / "good" / "001.png").read_bytes())
    prepare_data(str(data), ["disc", "ring", "stripes"], [2, 4], 3, 0, progress=False)
    after = manifests(pipeline_root)
    changed = {k for k, v in after.items() if before[k] != v}
    # the models trained on ring's images (disc's, stripes') and ring's own evaluation
    assert changed == {"test/ring.json", "train/ring.json", "training_sets/disc.json", "training_sets/stripes.json"}


def test_support_sets_and_training_sets_are_written_for_the_targets(toy_root, pipeline_root):
    prepare_data(str(toy_root), ["disc"], [2, 4], 3, 0, progress=False)
    disc = prepared_category("disc")
    sets = prepared_support_sets(disc)
    assert sorted(sets) == [2, 4] and len(sets[4]) == 3 and len(sets[4][0]) == 4
    assert training_set("disc")["train_categories"] == ["ring", "stripes"]
    assert [p.name for p in layout.SUPPORT_DIR.iterdir()] == ["disc.json"]
    dataset = json.loads(layout.DATASET_MANIFEST.read_text())
    assert dataset["has_masks"] == {"disc": True, "ring": True, "stripes": True}
    assert not dataset["root"].startswith("/")  # relative to the project root: the same on every machine


def test_an_unknown_target_names_the_available_categories(toy_root, pipeline_root):
    with pytest.raises(ValueError, match=r"category 'mono' not in .*available: disc, ring, stripes"):
        prepare_data(str(toy_root), ["mono"], [2], 1, 0, progress=False)
    assert not layout.PREPARED_DIR.exists()


def test_official_support_source_reads_the_official_folder(tmp_path, pipeline_root):
    one = make_toy_dataset(tmp_path / "small", categories=("disc", "ring"), n_train=4, size=32)
    with pytest.raises(FileNotFoundError, match=r"official_support/disc/2_10\.pt does not exist"):
        prepare_data(str(one), ["disc"], [2], 1, 0, source="official", progress=False)
    with pytest.raises(ValueError, match="support.source is 'random'"):
        prepare_data(str(one), ["disc"], [2], 1, 0, source="random", progress=False)


def test_the_training_manifest_lists_the_pools_categories_and_files(toy_root, pipeline_root, tmp_path):
    """train@<target>-<seed> depends on its pool's manifest: an extra category's image change reruns it."""
    data = make_toy_dataset(tmp_path / "own", categories=("disc", "ring"), n_train=4, size=32)
    textures = tmp_path / "textures"  # a folder of class folders (dtd-mini's layout): each class a category
    for first, name in ((0, "banded"), (6, "dotted")):  # other images: identical classes would count once
        (textures / name).mkdir(parents=True)
        for i in range(6):  # 5 train, the last sixth spare (fsad.study.pools)
            shutil.copy(toy_root / "stripes" / "train" / "good" / f"{first + i:03d}.png", textures / name / f"{i}.png")
    prepare_data(str(data), ["disc"], [2], 1, 0, progress=False, train_extra=[str(textures), "toy/stripes"])
    listed = training_set("disc")
    assert listed["train_categories"] == ["ring", "textures/banded", "textures/dotted", "toy/stripes"]
    assert listed["images"] == {"ring": 4, "textures/banded": 5, "textures/dotted": 5, "toy/stripes": 12}
    assert sorted(listed["files"]["textures/banded"]) == [f"{i}.png" for i in range(5)]  # the spare image never trains
    assert len(listed["files"]["toy/stripes"]) == 12 and len(listed["files"]["ring"]) == 4
    before = manifests(pipeline_root)
    shutil.copy(toy_root / "stripes" / "train" / "good" / "000.png", textures / "dotted" / "2.png")  # not the target's
    prepare_data(str(data), ["disc"], [2], 1, 0, progress=False, train_extra=[str(textures), "toy/stripes"])
    assert {k for k, v in manifests(pipeline_root).items() if before[k] != v} == {"training_sets/disc.json"}
    assert [c.name for c in prepared_pool("disc", [str(textures), "toy/stripes"], None)] == listed["train_categories"]


def test_train_own_limits_the_data_sets_categories_and_the_pool_never_holds_the_target(toy_root, pipeline_root):
    prepare_data(str(toy_root), ["disc", "ring"], [2], 1, 0, progress=False, train_extra=[str(toy_root)], train_own=1)
    # the data set again as an extra source: the same folders count once, the target never
    assert training_set("disc")["train_categories"] == ["ring", f"{toy_root.name}/stripes"]
    assert training_set("ring")["train_categories"] == ["disc", f"{toy_root.name}/stripes"]


def test_a_pool_that_changed_since_data_prep_is_refused_by_name(toy_root, pipeline_root):
    prepare_data(str(toy_root), ["disc"], [2], 1, 0, progress=False)
    with pytest.raises(ValueError, match=r"training_sets/disc\.json lists the pool \['ring', 'stripes'\], train\.train_extra "
                                         r"and train_own give \['ring'\]; run the data stage again"):
        prepared_pool("disc", [], 1)
    with pytest.raises(FileNotFoundError, match="train_extra: 'nowhere' is neither a data set"):
        prepare_data(str(toy_root), ["disc"], [2], 1, 0, progress=False, train_extra=["nowhere"])
