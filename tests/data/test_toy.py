"""The generated toy data set: layout, exact masks, determinism, detectability."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from fsad.data.loading import as_float, load_images
from fsad.data.mvtec import list_categories, load_category
from fsad.data.toy import make_toy_dataset


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(toy_root):
    assert list_categories(toy_root) == ["disc", "ring", "stripes"]
    for name in ("disc", "ring", "stripes"):
        folder = toy_root / name
        assert sorted(p.name for p in (folder / "train" / "good").iterdir()) == [
            f"{i:03d}.png" for i in range(12)]
        assert sorted(p.name for p in (folder / "test").iterdir()) == ["colour", "good", "texture"]
        assert len(list((folder / "test" / "good").iterdir())) == 4
        for defect in ("colour", "texture"):
            assert sorted(p.name for p in (folder / "test" / defect).iterdir()) == ["000.png", "001.png"]
            assert sorted(p.name for p in (folder / "ground_truth" / defect).iterdir()) == [
                "000_mask.png", "001_mask.png"]
        image = Image.open(folder / "train" / "good" / "000.png")
        assert (image.mode, image.size) == ("RGB", (64, 64))


def test_masks_are_exact_squares_covering_the_defect(toy_root):
    for defect in ("colour", "texture"):
        mask = np.asarray(Image.open(toy_root / "disc" / "ground_truth" / defect / "000_mask.png"))
        assert set(np.unique(mask).tolist()) == {0, 255}
        rows, cols = np.nonzero(mask)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert height == width and 8 <= height <= 12 and len(rows) == height * width
    # The colour defect is green on a red disc over grey: the green pixels are the mask, exactly.
    image = np.asarray(Image.open(toy_root / "disc" / "test" / "colour" / "000.png"))
    mask = np.asarray(Image.open(toy_root / "disc" / "ground_truth" / "colour" / "000_mask.png"))
    green = (image[..., 1] > 150) & (image[..., 0] < 100)
    assert np.array_equal(green, mask > 0)


def test_deterministic_and_images_independent_of_counts(tmp_path):
    first = make_toy_dataset(tmp_path / "a", categories=("ring",), n_train=3, size=32)
    second = make_toy_dataset(tmp_path / "b", categories=("ring",), n_train=3, size=32)
    assert _digests(first) == _digests(second)
    larger = make_toy_dataset(tmp_path / "c", categories=("ring",), n_train=5, size=32)
    assert _digests(larger)["ring/train/good/002.png"] == _digests(first)["ring/train/good/002.png"]
    other_seed = make_toy_dataset(tmp_path / "d", categories=("ring",), n_train=3, size=32, seed=1)
    assert _digests(other_seed)["ring/train/good/000.png"] != _digests(first)["ring/train/good/000.png"]


def test_without_masks_and_odd_defect_count(tmp_path):
    root = make_toy_dataset(tmp_path / "t", categories=("stripes",), n_test_defect=3,
                            with_masks=False)
    category = load_category(root, "stripes")
    assert category.has_masks is False
    assert [s.defect for s in category.test if s.label == 1] == ["colour", "colour", "texture"]


def test_rebuild_same_arguments_returns_and_other_content_is_refused(tmp_path):
    root = make_toy_dataset(tmp_path / "t", categories=("disc",), n_train=2)
    assert make_toy_dataset(root, categories=("disc",), n_train=2) == root
    with pytest.raises(FileExistsError, match=str(root)):
        make_toy_dataset(root, categories=("disc",), n_train=3)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no partial build left behind
    with pytest.raises(ValueError, match="'cube'"):
        make_toy_dataset(tmp_path / "u", categories=("cube",))


def test_defects_detected_by_a_per_pixel_gaussian(toy_root):
    for name in list_categories(toy_root):
        category = load_category(toy_root, name)
        train = as_float(load_images(category.train, 64))  # N x 3 x H x W
        mean, std = train.mean(0), train.std(0) + 0.05
        test = as_float(load_images(category.test, 64))  # N x 3 x H x W
        distance = ((test - mean) / std).pow(2).sum(1)  # N x H x W
        scores = distance.flatten(1).topk(40, dim=1).values.mean(1)  # N
        labels = [s.label for s in category.test]
        assert roc_auc_score(labels, scores.numpy()) > 0.9, name
