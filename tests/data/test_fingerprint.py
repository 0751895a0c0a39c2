"""Content fingerprints: stable under moves and order, sensitive to names and bytes."""

from __future__ import annotations

import os
import shutil

import pytest

from fsad.data import fingerprint as fingerprint_module
from fsad.data.fingerprint import category_files, category_fingerprint, fingerprint
from fsad.data.mvtec import load_category


@pytest.fixture
def copy_root(toy_root, tmp_path):
    """A writable copy of the toy data set (``disc`` only)."""
    root = tmp_path / "data"
    shutil.copytree(toy_root / "disc", root / "disc")
    return root


def test_names_and_bytes_matter_location_and_order_do_not(copy_root, tmp_path):
    files = sorted((copy_root / "disc" / "train" / "good").iterdir())
    reference = fingerprint(files, root=copy_root)
    assert len(reference) == 16 and int(reference, 16) >= 0
    assert fingerprint(files[::-1], root=copy_root) == reference
    moved = tmp_path / "elsewhere"
    shutil.copytree(copy_root, moved)
    assert fingerprint(sorted((moved / "disc" / "train" / "good").iterdir()), root=moved) == reference
    assert fingerprint(files[:-1], root=copy_root) != reference  # a file removed
    files[0].rename(files[0].with_name("renamed.png"))
    renamed = sorted((copy_root / "disc" / "train" / "good").iterdir())
    assert fingerprint(renamed, root=copy_root) != reference
    files[0].with_name("renamed.png").rename(files[0])  # back to the original name: same fingerprint again
    assert fingerprint(files, root=copy_root) == reference


def test_edit_is_seen_through_the_cache_touch_is_not(copy_root):
    image = copy_root / "disc" / "train" / "good" / "000.png"
    reference = fingerprint([image])
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert fingerprint([image]) == reference
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    assert fingerprint([image]) != reference


def test_cache_reads_each_file_once(copy_root, monkeypatch):
    files = sorted((copy_root / "disc" / "train" / "good").iterdir())
    fingerprint(files)
    opened = []
    real_open = open
    monkeypatch.setattr(fingerprint_module, "open",
                        lambda *a, **k: opened.append(a[0]) or real_open(*a, **k), raising=False)
    fingerprint(files)
    assert opened == []


def test_category_parts(copy_root):
    disc = load_category(copy_root, "disc")
    assert category_files(disc, ("train",)) == [s.path for s in disc.train]
    masks = category_files(disc, ("masks",))
    assert masks and all("ground_truth" in p.parts for p in masks)
    train_only = category_fingerprint(disc)
    assert category_fingerprint(disc, ("train", "test")) != train_only
    (copy_root / "disc" / "test" / "good" / "000.png").unlink()  # test data do not feed train
    assert category_fingerprint(load_category(copy_root, "disc")) == train_only
    with pytest.raises(ValueError, match="unknown part"):
        category_files(disc, ("tests",))


def test_errors_name_the_file(copy_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot fingerprint .*missing\.png"):
        fingerprint([copy_root / "missing.png"])
    with pytest.raises(ValueError, match="is not under"):
        fingerprint([copy_root / "disc" / "train" / "good" / "000.png"], root=tmp_path / "other")
