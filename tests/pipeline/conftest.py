"""Fixtures of the pipeline tests: a throwaway project root for the stage functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsad.pipeline import layout


@pytest.fixture
def pipeline_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every pipeline path of ``fsad.pipeline.layout`` into ``tmp_path``.

    The stage functions look these names up at call time, so the real project's
    ``data/``, ``models/``, ``results/`` and ``reports/`` are never touched.
    """
    monkeypatch.setattr(layout, "PREPARED_DIR", tmp_path / "data" / "prepared")
    monkeypatch.setattr(layout, "DATASET_MANIFEST", tmp_path / "data" / "prepared" / "dataset.json")
    monkeypatch.setattr(layout, "SUPPORT_DIR", tmp_path / "data" / "support_sets")
    monkeypatch.setattr(layout, "OFFICIAL_SUPPORT_DIR", tmp_path / "data" / "official_support")
    monkeypatch.setattr(layout, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(layout, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(layout, "FIGURES_DIR", tmp_path / "reports" / "figures")
    return tmp_path
