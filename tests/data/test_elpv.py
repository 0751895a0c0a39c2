"""The embedded ELPV data set: layout, raw bytes, sources, determinism, atomic build."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fsad.data import elpv
from fsad.data.elpv import build_elpv_dataset
from fsad.data.mvtec import list_categories, load_category

COUNTS = {"n_train": 4, "n_test_good": 2, "n_test_defect": 3}


@pytest.fixture(scope="module")
def elpv_root(tmp_path_factory) -> Path:
    return build_elpv_dataset(tmp_path_factory.mktemp("elpv") / "elpv", **COUNTS)


def _sources(root: Path) -> list[dict[str, str]]:
    with open(root / "SOURCES.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_layout_and_counts(elpv_root):
    assert list_categories(elpv_root) == ["mono", "poly"]
    for name in ("mono", "poly"):
        category = load_category(elpv_root, name)
        labels = [s.label for s in category.test]
        assert (len(category.train), labels.count(0), labels.count(1)) == (4, 2, 3)
        assert {s.defect for s in category.test} == {"good", "defect"}
        assert category.has_masks is False
    assert {"README.md", "SOURCES.csv"} <= {p.name for p in elpv_root.iterdir()}


def test_sources_probabilities_and_raw_bytes(elpv_root):
    rows = _sources(elpv_root)
    assert len(rows) == 2 * (4 + 2 + 3)
    data_dir = elpv._package_data_dir()
    labels = {path: (probability, kind) for path, probability, kind in
              elpv._read_labels(data_dir / "labels.csv")}
    for row in rows:
        probability, kind = labels[row["source_file"]]
        assert kind == row["category"] and float(row["probability"]) == probability
        assert probability == (1.0 if row["defect"] == "defect" else 0.0)
        assert (elpv_root / row["file"]).read_bytes() == (data_dir / row["source_file"]).read_bytes()
    files = [row["source_file"] for row in rows]
    assert len(set(files)) == len(files)  # no cell in two splits


def test_readme_credits_the_source(elpv_root):
    readme = (elpv_root / "README.md").read_text()
    assert "Deitsch" in readme and "elpv-dataset" in readme and "CC-BY-NC-SA-4.0" in readme


def test_deterministic_seeded_and_idempotent(elpv_root, tmp_path):
    again = build_elpv_dataset(tmp_path / "again", **COUNTS)
    assert _tree(again) == _tree(elpv_root) and _sources(again) == _sources(elpv_root)
    other = build_elpv_dataset(tmp_path / "other", **COUNTS, seed=1)
    assert _sources(other) != _sources(elpv_root)
    assert build_elpv_dataset(again, **COUNTS) == again
    with pytest.raises(FileExistsError, match="again"):
        build_elpv_dataset(again, **COUNTS, seed=2)


def test_too_many_images_fails_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="mono test/defect asks for 5000"):
        build_elpv_dataset(tmp_path / "big", n_test_defect=5000)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(elpv.shutil, "copyfile", fail)
    with pytest.raises(KeyboardInterrupt):
        build_elpv_dataset(tmp_path / "cut", **COUNTS)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(elpv, "PACKAGE", "elpv_dataset_not_installed")
    with pytest.raises(ModuleNotFoundError, match="pip install elpv-dataset"):
        build_elpv_dataset(tmp_path / "none", **COUNTS)
