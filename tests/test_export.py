"""``fsad export``: a detector folder whose features run from its own ONNX graph; predictions unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fsad.cli import main
from fsad.components import runtime

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CONFIG = "regad:\n  pretrained: false\n  image_size: 32\n  device: cpu\n  runtime: {runtime}\n"


def fsad(*argv) -> None:
    main([str(a) for a in argv])


def fit(toy_root: Path, tmp: Path, method: str = "padim_views", runtime_name: str = "onnxruntime") -> Path:
    config = tmp / f"{runtime_name}.yaml"
    config.write_text(CONFIG.format(runtime=runtime_name))
    out = tmp / f"{method}-{runtime_name}"
    fsad("fit", toy_root / "disc" / "train" / "good", "--method", method, "--config", config, "--out", out)
    return out


def test_export_then_predict_runs_the_folder_graph(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "cache"))
    detector = fit(toy_root, tmp_path)
    eager = tmp_path / "unexported"
    shutil.copytree(detector, eager)
    fsad("export", detector)
    assert "features.onnx" in capsys.readouterr().out
    record = json.loads((detector / "detector.json").read_text())
    assert record["export"]["file"] == "features.onnx" and record["export"]["size"] == [32, 32]

    moved = tmp_path / "line_pc" / "detector"  # another machine: no cache, and no exporter
    shutil.copytree(detector, moved)
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "empty_cache"))

    def no_export(*args, **kwargs):
        raise AssertionError("predict exported a graph although the folder holds one")

    monkeypatch.setattr(runtime, "export_graph", no_export)
    test = toy_root / "disc" / "test"
    fsad("predict", moved, test, "--out", tmp_path / "exported")
    monkeypatch.undo()
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)  # the same detector in eager PyTorch
    with pytest.warns(UserWarning, match="onnxruntime asked for but the package is not installed"):
        fsad("predict", eager, test, "--out", tmp_path / "eager")
    exported = pd.read_csv(tmp_path / "exported" / "predictions.csv")
    reference = pd.read_csv(tmp_path / "eager" / "predictions.csv")
    assert len(exported) == 8
    assert (exported["score"] - reference["score"]).abs().max() <= 1e-4 * reference["score"].abs().max()
    assert (exported["label"] == reference["label"]).all()


def test_a_folder_graph_of_other_weights_is_not_used(toy_root, tmp_path, monkeypatch):
    """A features.onnx that does not match the detector's weights (copied from another folder) is ignored."""
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "cache"))
    first = fit(toy_root, tmp_path)
    fsad("export", first)
    second = fit(toy_root, tmp_path, method="patchcore")  # same backbone weights: the graph fits
    record = json.loads((first / "detector.json").read_text())["export"]
    record["key"] = "0" * 32  # as if made from other weights
    saved = json.loads((second / "detector.json").read_text())
    (second / "detector.json").write_text(json.dumps({**saved, "export": record}))
    shutil.copy(first / "features.onnx", second / "features.onnx")
    from fsad.methods.registry import load_detector
    from fsad.product.export import use_exported_features

    detector, _ = load_detector(second)
    assert not use_exported_features(detector, second)


def test_export_refuses_regad_features(toy_root, tmp_path, capsys):
    detector = fit(toy_root, tmp_path, method="untrained")
    with pytest.raises(SystemExit):
        fsad("export", detector)
    assert "untrained computes its features with more than a backbone" in capsys.readouterr().err
