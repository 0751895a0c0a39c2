"""``fsad fit --method auto`` through the command line: it ranks the candidates, keeps the ranking, refuses bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_product import fails, fsad, product  # noqa: F401 (product: the fixture)

from fsad.components.weights import MissingWeightsError
from fsad.methods.base import Scores
from fsad.methods.registry import DETECTORS, Entry, load_detector
from fsad.product import selection


def _blind(regad, options, model_path, backbone):
    """padim_views that gives every image the same score: it cannot tell a defect from a good part."""
    detector = DETECTORS["padim_views"].build(regad, options, model_path, backbone)
    detector.name = "blind"
    fitted = detector.predict_embedded
    detector.predict_embedded = lambda embedded: Scores(fitted(embedded).maps, torch.zeros(len(embedded[0])))
    return detector


def _no_dinov2(source, weights_path=None):
    raise MissingWeightsError(f"fsad/components/weights.py: weight file {source.files[0]!r} not found; looked in:\n  here")


@pytest.fixture
def candidates(monkeypatch):
    """A blind candidate first (a pick-the-first bug picks it) and DINOv2 without its weight file."""
    monkeypatch.setitem(DETECTORS, "blind", Entry(_blind, ("n_channels", "seed")))
    monkeypatch.setattr(selection, "CANDIDATES", ("blind", "padim_views", "patchcore", "anomalydino_dinov2"))
    monkeypatch.setattr(selection, "locate_weights", _no_dinov2)


def test_auto_ranks_records_and_fits_a_method_that_separates(product, candidates, capsys):  # noqa: F811
    tmp = product["tmp"]
    fsad("fit", product["good"], "--method", "auto", "--config", product["config"], "--out", tmp / "detector")
    printed = capsys.readouterr().out
    detector, record = load_detector(tmp / "detector")
    chosen = record["selection"]["chosen"]
    assert chosen in ("padim_views", "patchcore") and record["method"] == chosen == detector.name
    ranking = record["selection"]["ranking"]
    assert [row["method"] for row in ranking][-1] == "blind" and ranking[-1]["auroc"] == 0.5
    assert ranking[0]["method"] == chosen and ranking[0]["auroc"] > 0.5
    for row in ranking:  # K = 4 held-out good images, 9 synthetic anomalies from each
        assert (len(row["normal_scores"]), len(row["synthetic_scores"])) == (4, 36) and row["seconds"] > 0
    assert record["selection"]["skipped"][0]["method"] == "anomalydino_dinov2"
    assert "dinov2_vits14_pretrain.pth' not found" in record["selection"]["skipped"][0]["why"]
    assert f"1. {chosen}" in printed and "<- chosen" in printed and "anomalydino_dinov2   skipped" in printed
    assert f"{chosen} fitted on K = 4" in printed

    fsad("predict", tmp / "detector", product["test"], "--out", tmp / "results")
    printed = capsys.readouterr().out
    assert f"{chosen} was chosen by fsad fit --method auto" in printed and f"(1 of {len(ranking)} candidates" in printed
    rows = pd.read_csv(tmp / "results" / "predictions.csv")
    assert len(rows) == len(list(product["test"].rglob("*.png"))) and set(rows["label"]) <= {"normal", "anomalous"}
    page = (tmp / "results" / "report.html").read_text()
    assert 'id="selection"' in page and f"{chosen} (chosen)" in page and "skipped: weight file" in page

    # The same auto fit again is the same detector; another method into its folder needs --force.
    fsad("fit", product["good"], "--method", "auto", "--config", product["config"], "--out", tmp / "detector")
    assert "other method" in fails(capsys, "fit", product["good"], "--method", "patchcore", "--config", product["config"],
                                   "--out", tmp / "detector")
    assert json.loads((tmp / "detector" / "detector.json").read_text())["selection"]["chosen"] == chosen


def test_auto_bad_inputs_are_one_line_errors_before_any_fit(product, candidates, capsys, monkeypatch):  # noqa: F811
    tmp, config = product["tmp"], product["config"]
    one = min(product["good"].rglob("*.png"))
    line = fails(capsys, "fit", one, "--method", "auto", "--config", config, "--out", tmp / "d")
    assert "needs K >= 2" in line and "--method padim_views" in line and "--good" in line
    options = tmp / "options.yaml"
    options.write_text(config.read_text() + "options:\n  n_channels: 10\n")
    assert "drop the options: section (n_channels)" in fails(capsys, "fit", product["good"], "--method", "auto",
                                                              "--config", options, "--out", tmp / "d")
    assert "drop --model" in fails(capsys, "fit", product["good"], "--method", "auto", "--model", config,
                                   "--config", config, "--out", tmp / "d")
    line = fails(capsys, "fit", product["good"], "--method", "best", "--config", config, "--out", tmp / "d")
    assert "unknown --method 'best'; choose auto or one of" in line and "padim_views" in line
    monkeypatch.setattr(selection, "CANDIDATES", ("anomalydino_dinov2",))
    line = fails(capsys, "fit", product["good"], "--method", "auto", "--config", config, "--out", tmp / "d")
    assert "no candidate that runs here (anomalydino_dinov2: weight file" in line
    assert not (tmp / "d").exists()


def test_ranking_breaks_separation_ties_by_the_margin_then_the_candidate_order():
    rows = [{"method": "a", "auroc": 1.0, "margin": 1.2}, {"method": "b", "auroc": 1.0, "margin": 3.0},
            {"method": "c", "auroc": 0.9, "margin": 9.0}, {"method": "d", "auroc": 1.0, "margin": 1.2}]
    assert [row["method"] for row in selection.rank(rows)] == ["b", "a", "d", "c"]
    normal, synthetic = np.array([1.0, 2.0]), np.array([3.0, 5.0, 1.5])
    assert selection.separation(normal, synthetic) == (pytest.approx(5 / 6), pytest.approx(0.75))


def test_auto_fits_the_prior_unless_another_candidate_separates_clearly_better():
    ranked = [{"method": "patchcore", "auroc": 1.0}, {"method": selection.PRIOR, "auroc": 0.85}]
    assert selection.pick(ranked) == selection.PRIOR  # 15 points better: not a clear failure of the prior
    ranked[1]["auroc"] = 0.75
    assert selection.pick(ranked) == "patchcore"  # 25 points better: vetoed
    assert selection.pick([{"method": "padim", "auroc": 0.6}, {"method": "fastrecon", "auroc": 0.9}]) == "padim"  # no prior
