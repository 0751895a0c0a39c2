"""The fsad half of the peer benchmark (benchmarks/peer_anomalib.py) and its install check; anomalib is not needed."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from fsad.config import RegADConfig
from fsad.methods.registry import build_detector

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_anomalib.py"
_SPEC = importlib.util.spec_from_file_location("benchmarks_peer_anomalib", _PATH)
peer = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(peer)

SIZE = 64


def _images(n: int, seed: int) -> np.ndarray:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy()


@pytest.mark.parametrize(("method", "options", "channels"), [
    ("patchcore", {"coreset_ratio": 0.1}, [32, 96]),  # the settings the anomalib worker builds too
    ("padim", {"n_channels": 152}, [24, 32, 96]),
])
def test_fsad_half_scores_as_the_detector_with_the_stated_settings(method, options, channels):
    support, test = _images(3, 0), _images(4, 1)
    result = peer.run_fsad(method, "torch", support, test, weights=None, repeats=2)
    detector = build_detector(method, RegADConfig(backbone="mobilenet_v2", image_size=SIZE, pretrained=False,
                                                  runtime="torch", device="cpu"), options)
    detector.fit(torch.from_numpy(support))
    expected = detector.predict(torch.from_numpy(test)).image
    np.testing.assert_allclose(result["scores"], expected.numpy(), rtol=1e-6)
    assert len(result["predict_s"]) == 2 and result["fit_s"] > 0
    assert [f.shape[1] for f in result["features"]] == channels  # the stages this method reads, as anomalib's layers


def test_fsad_half_in_onnxruntime_scores_as_in_torch(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("FSAD_CACHE", str(tmp_path))
    support, test = _images(3, 0), _images(4, 1)
    eager = peer.run_fsad("padim", "torch", support, test, weights=None, repeats=1)
    onnx = peer.run_fsad("padim", "onnxruntime", support, test, weights=None, repeats=1)
    np.testing.assert_allclose(onnx["scores"], eager["scores"], rtol=1e-4)
    assert list(tmp_path.rglob("*.onnx")), "the onnxruntime path did not run the exported graph"


def test_a_failed_anomalib_install_stops_with_pips_message_and_the_fix(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # an interpreter whose pip cannot reach an index
    python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for anomalib==2.7.0' >&2\nexit 1\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(SystemExit) as stop:
        peer.ensure_peer_venv(venv, "2.7.0", openvino=True)
    message = str(stop.value)
    assert "could not install anomalib[openvino]==2.7.0" in message and str(venv) in message
    assert "No matching distribution found" in message and "fix:" in message


def test_the_peer_venv_gets_fsads_torch_pins(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\ntorch==2.15.0  # the regular build\ntorchvision == 0.29.2\n")
    assert peer.pinned("torch", requirements) == "torch==2.15.0"
    assert peer.pinned("torchvision", requirements) == "torchvision==0.29.2"
    with pytest.raises(SystemExit, match="pins no numpy"):
        peer.pinned("numpy", requirements)
