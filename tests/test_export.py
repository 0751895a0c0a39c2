"""``fsad export``: a detector folder whose features run from its own ONNX graph; predictions unchanged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import fsad

import fsad as fsad_package
from fsad.components import runtime

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CONFIG = "regad:\n  pretrained: false\n  image_size: 32\n  device: cpu\n  runtime: {runtime}\n"


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
    # The same scoring code on the graph's features: the scores of eager PyTorch to float32 rounding.
    assert ((exported["score"] - reference["score"]).abs() / reference["score"].abs()).max() <= 1e-5
    assert (exported["label"] == reference["label"]).all()


def test_predict_on_an_exported_folder_builds_no_network(toy_root, tmp_path):
    """Issue 21, start-up: scoring from features.onnx imports neither torchvision nor torch._dynamo (2 s of
    fsad predict's 4.2 s) nor the exporter, nor what only fit or the studies use (auto's ranking, scipy.stats,
    pandas: 1.6 s more), in a fresh interpreter run from another folder with an empty cache."""
    import subprocess
    import sys

    detector = fit(toy_root, tmp_path)
    fsad("export", detector)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    test = toy_root / "disc" / "test"
    code = (f"import sys\nfrom fsad.cli import main\nmain(['predict', {str(detector)!r}, {str(test)!r}, '--out', 'out'])\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'onnx', 'fsad.product.selection', 'scipy.stats', "
            "'pandas') if m in sys.modules))")
    env = {**os.environ, "FSAD_CACHE": str(tmp_path / "empty_cache"), "PYTHONPATH": str(Path(fsad_package.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True, cwd=elsewhere,
                          env=env)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert len(pd.read_csv(elsewhere / "out" / "predictions.csv")) == 8
    assert not (tmp_path / "empty_cache").exists()  # nothing was exported


def test_a_folder_graph_of_other_weights_is_not_used(toy_root, tmp_path, monkeypatch, caplog):
    """A features.onnx that does not match the detector's weights (copied from another folder) is ignored, saying so."""
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "cache"))
    first = fit(toy_root, tmp_path)
    fsad("export", first)
    second = fit(toy_root, tmp_path, method="patchcore")  # same backbone weights: the graph fits
    record = json.loads((first / "detector.json").read_text())["export"]
    record["weights"] = "0" * 32  # as if made from other weights
    saved = json.loads((second / "detector.json").read_text())
    (second / "detector.json").write_text(json.dumps({**saved, "export": record}))
    shutil.copy(first / "features.onnx", second / "features.onnx")
    from fsad.components.backbones import ExportedFeatures, FeatureExtractor
    from fsad.product.export import load_exported

    assert isinstance(load_exported(first)[0].backbone, ExportedFeatures)
    detector, _ = load_exported(second)
    assert isinstance(detector.backbone, FeatureExtractor)
    assert "made from other weights than the detector's; run fsad export on the folder again" in caplog.text


def test_export_refuses_regad_features(toy_root, tmp_path, capsys):
    detector = fit(toy_root, tmp_path, method="untrained")
    with pytest.raises(SystemExit):
        fsad("export", detector)
    assert "untrained computes its features with more than a backbone" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["spade", "patchcore", "fastrecon", "anomalydino"])
def test_every_cnn_method_scores_alike_from_its_exported_graph(toy_root, tmp_path, method):
    """The exported folder's detector (no network, ExportedFeatures) runs each method's own code: its maps and
    image scores are those of the same folder with the network built and eager PyTorch features."""
    import torch

    from fsad.components.backbones import ExportedFeatures
    from fsad.config import RegADConfig
    from fsad.data.mvtec import read_image, resize_image
    from fsad.methods.registry import build_detector, load_detector, save_detector
    from fsad.product.export import export_detector, load_exported

    def images(folder: Path) -> torch.Tensor:
        return torch.stack([resize_image(read_image(path, None), 32) for path in sorted(folder.rglob("*.png"))])

    regad = RegADConfig(pretrained=False, image_size=32, device="cpu")
    detector = build_detector(method, regad)
    detector.fit(images(toy_root / "disc" / "train" / "good")[:4])
    save_detector(tmp_path / method, detector, regad)
    export_detector(tmp_path / method)
    exported, _ = load_exported(tmp_path / method)
    assert isinstance(exported.backbone, ExportedFeatures)
    eager, _ = load_detector(tmp_path / method)
    eager.backbone.runtime = "torch"
    test = images(toy_root / "disc" / "test")
    fast, reference = exported.predict(test), eager.predict(test)
    assert ((fast.image - reference.image).abs() / reference.image.abs()).max() <= 1e-5
    assert (fast.maps - reference.maps).abs().max() <= 1e-5 * reference.maps.abs().max()


needs_openvino = pytest.mark.skipif(not runtime.openvino_available(), reason="openvino is not installed "
                                    "(pip install openvino): --format openvino cannot run")


def opened_precisions(monkeypatch) -> list[str]:
    """The precision of every OpenVINO model compiled from now on (the runtime really ran)."""
    opened: list[str] = []
    compile_model = runtime.OpenVinoFeatures._open

    def counted(self, graph):
        opened.append((self.precision, Path(graph).name))
        return compile_model(self, graph)

    monkeypatch.setattr(runtime.OpenVinoFeatures, "_open", counted)
    return opened


@needs_openvino
def test_export_openvino_then_predict_runs_the_folder_ir(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "cache"))
    detector = fit(toy_root, tmp_path, runtime_name="auto")
    eager = tmp_path / "unexported"
    shutil.copytree(detector, eager)
    fsad("export", detector)  # onnx first: the openvino export replaces its file
    fsad("export", detector, "--format", "openvino")
    assert "features.xml" in capsys.readouterr().out
    assert sorted(p.name for p in detector.glob("features.*")) == ["features.bin", "features.xml"]
    assert json.loads((detector / "detector.json").read_text())["export"]["format"] == "openvino"

    moved = tmp_path / "line_pc" / "detector"  # another machine: no cache, and no exporter
    shutil.copytree(detector, moved)
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "empty_cache"))

    def no_export(*args, **kwargs):
        raise AssertionError("predict exported a graph although the folder holds one")

    monkeypatch.setattr(runtime, "export_graph", no_export)
    opened = opened_precisions(monkeypatch)
    test = toy_root / "disc" / "test"
    fsad("predict", moved, test, "--out", tmp_path / "exported")
    assert opened == [("fp32", "features.xml")]
    monkeypatch.undo()
    fsad("predict", eager, test, "--out", tmp_path / "eager")  # runtime auto: the eager-equal fp32 path
    exported = pd.read_csv(tmp_path / "exported" / "predictions.csv")
    reference = pd.read_csv(tmp_path / "eager" / "predictions.csv")
    assert len(exported) == 8
    assert (exported["score"] - reference["score"]).abs().max() <= 1e-4 * reference["score"].abs().max()
    assert (exported["label"] == reference["label"]).all()


@needs_openvino
def test_a_bf16_detector_exports_to_openvino_only(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "bf16.yaml"
    config.write_text(CONFIG.format(runtime="auto") + "  precision: bf16\n")
    detector = tmp_path / "bf16"
    fsad("fit", toy_root / "disc" / "train" / "good", "--method", "padim_views", "--config", config, "--out", detector)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        fsad("export", detector, "--format", "onnx")
    assert exit_.value.code == 2
    assert "runs its features in bf16, which --format onnx cannot" in capsys.readouterr().err
    assert not (detector / "features.onnx").exists()
    fsad("export", detector, "--format", "openvino")
    opened = opened_precisions(monkeypatch)
    fsad("predict", detector, toy_root / "disc" / "test", "--out", tmp_path / "predicted")
    assert opened == [("bf16", "features.xml")]
    assert len(pd.read_csv(tmp_path / "predicted" / "predictions.csv")) == 8


def test_onnxruntime_with_bf16_is_a_config_error(toy_root, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.format(runtime="onnxruntime") + "  precision: bf16\n")
    with pytest.raises(SystemExit) as exit_:
        fsad("fit", toy_root / "disc" / "train" / "good", "--method", "padim", "--config", config, "--out", tmp_path / "d")
    assert exit_.value.code == 2
    assert f"{config}: regad" in (err := capsys.readouterr().err)  # the config is refused before any work
    assert "precision: bf16 cannot run in runtime onnxruntime (no bf16 CPU kernels)" in err


def test_without_openvino_export_refuses_and_predict_falls_back(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path / "cache"))
    detector = fit(toy_root, tmp_path, runtime_name="auto")
    fsad("export", detector)
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        fsad("export", detector, "--format", "openvino")
    assert exit_.value.code == 2
    assert "--format openvino needs the openvino package (pip install openvino)" in capsys.readouterr().err
    # A folder exported on a machine with openvino, scored on one without: PyTorch, saying so.
    record = json.loads((detector / "detector.json").read_text())
    (detector / "detector.json").write_text(json.dumps({**record, "export": {**record["export"], "format": "openvino"}}))
    with pytest.warns(UserWarning, match="exported for openvino, which is not installed here"):
        fsad("predict", detector, toy_root / "disc" / "test", "--out", tmp_path / "predicted")
    assert len(pd.read_csv(tmp_path / "predicted" / "predictions.csv")) == 8
