"""Preflight: every problem of a run's inputs in one error, before any training."""

from __future__ import annotations

import shutil
import unicodedata

import pytest
import torch
from PIL import Image

from fsad.study.preflight import PreflightError, preflight


@pytest.fixture
def data(toy_root, tmp_path):
    """A writable copy of the toy data set (disc, ring, stripes: 12 train, 4 + 4 test, masks)."""
    shutil.copytree(toy_root, tmp_path / "data")
    return tmp_path / "data"


def test_a_good_data_set_passes_and_comes_back_loaded(data):
    checked = preflight(data, ["disc"], shots=(2, 12), metrics=("image_auroc", "pixel_auroc", "f1_max"), device="cpu")
    assert checked.root == data.resolve() and checked.targets == ["disc"]
    assert sorted(checked.categories) == ["disc", "ring", "stripes"] and checked.notes == []
    assert sorted(preflight(data, ["disc"], training=False).categories) == ["disc"]


def test_every_problem_is_listed_at_once(data):
    disc, ring = data / "disc", data / "ring"
    broken = ring / "train" / "good" / "003.png"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated, as by an interrupted copy
    mask = next((disc / "ground_truth").rglob("*.png"))
    Image.new("L", (10, 10)).save(mask)
    for image in (disc / "test" / "good").iterdir():
        image.unlink()
    with pytest.raises(PreflightError) as raised:
        preflight(data, ["disc", "gadget"], shots=(2, 13), metrics=("image_auroc",))
    problems = raised.value.problems
    assert len(problems) == 5, problems
    text = str(raised.value)
    assert "5 problem(s)" in text
    assert "'gadget' not in" in text and "available: disc, ring, stripes" in text
    assert "category 'disc' has 12 images in" in text and "K=13" in text
    assert "category 'disc' has no normal (test/good) test image" in text
    assert f"category 'ring': cannot read image {broken.resolve()}" in text
    assert f"mask {mask.resolve()} is 10x10 but its image" in text


def test_categories_layout_errors_and_missing_root_are_problems(data, tmp_path):
    shutil.rmtree(data / "stripes" / "ground_truth" / next(iter(p.name for p in (data / "stripes" / "ground_truth").iterdir())))
    with pytest.raises(PreflightError, match=r"category 'stripes': 2 anomalous test image\(s\) have no mask"):
        preflight(data, ["disc"])
    preflight(data, ["disc"], training=False)  # stripes is not read without training
    with pytest.raises(PreflightError, match=r"(?s)1 problem.*nowhere does not exist"):
        preflight(tmp_path / "nowhere")


def test_unicode_names_and_masks_optional(data):
    decomposed = unicodedata.normalize("NFD", "disc\u00e9")
    (data / "disc").rename(data / decomposed)
    shutil.rmtree(data / decomposed / "ground_truth")
    checked = preflight(data, ["disc\u00e9"], metrics=("image_auroc", "aupro"))
    assert checked.targets == ["disc\u00e9"]
    assert checked.notes == ["category 'disc\u00e9' has no ground_truth folder: its aupro will be NaN"]


def test_leave_one_out_needs_two_categories(data):
    for name in ("ring", "stripes"):
        shutil.rmtree(data / name)
    with pytest.raises(PreflightError, match="has only the category 'disc'"):
        preflight(data)
    preflight(data, training=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_a_problem(data):
    with pytest.raises(PreflightError, match="no CUDA device"):
        preflight(data, ["disc"], device="cuda")
