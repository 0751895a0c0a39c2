"""Importing the official RegAD support-set files: every image matched to its train/good file."""

from __future__ import annotations

import pytest
import torch

from fsad.data.loading import as_float, load_images
from fsad.data.mvtec import load_category
from fsad.data.official_support import OFFICIAL_SIZE, import_official_support, official_file
from fsad.data.support_sets import load_support_sets, save_support_sets


def fabricate(category, folder, k: int, sets: list[list[int]], noise: float = 0.0) -> None:
    """Write an official-format file: a list of K x 3 x 224 x 224 tensors in [0, 1]."""
    images = as_float(load_images(category.train, OFFICIAL_SIZE))  # N x 3 x 224 x 224
    generator = torch.Generator().manual_seed(0)
    tensors = [(images[idx] + noise * torch.randn(images[idx].shape, generator=generator)).clamp(0, 1) for idx in sets]
    path = official_file(folder, category.name, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)


def test_import_recovers_the_files_in_the_official_order(toy_root, tmp_path):
    disc = load_category(toy_root, "disc")
    chosen = {2: [[5, 1], [0, 11]], 4: [[3, 2, 9, 7]]}
    for k, sets in chosen.items():
        fabricate(disc, tmp_path, k, sets, noise=0.003)  # a resize filter's worth of difference
    sets = import_official_support(disc, tmp_path, shots=[2, 4])
    names = [s.path.relative_to(disc.path).as_posix() for s in disc.train]
    assert sets == {k: [[names[i] for i in s] for s in v] for k, v in chosen.items()}
    save_support_sets(tmp_path / "disc.json", disc, sets, seed=-1)
    assert load_support_sets(tmp_path / "disc.json", disc) == sets


def test_a_file_of_another_category_is_refused_naming_it(toy_root, tmp_path):
    disc, ring = load_category(toy_root, "disc"), load_category(toy_root, "ring")
    fabricate(ring, tmp_path, 2, [[0, 1]])
    (tmp_path / "disc").mkdir()
    official_file(tmp_path, "ring", 2).rename(official_file(tmp_path, "disc", 2))
    with pytest.raises(ValueError, match=r"disc/2_10\.pt matches no train/good image"):
        import_official_support(disc, tmp_path, shots=[2])


def test_wrong_k_and_missing_files_are_clear_errors(toy_root, tmp_path):
    disc = load_category(toy_root, "disc")
    fabricate(disc, tmp_path, 2, [[0, 1, 2]])  # 3 images in a 2-shot file
    with pytest.raises(ValueError, match=r"set 0 of .*2_10\.pt has shape \(3, 3, 224, 224\)"):
        import_official_support(disc, tmp_path, shots=[2])
    with pytest.raises(FileNotFoundError, match=r"disc/8_10\.pt does not exist"):
        import_official_support(disc, tmp_path, shots=[8])
