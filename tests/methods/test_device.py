"""Every detector is device-consistent and its folders move between devices, proven on the CPU.

No GPU runs in CI, so a tensor created on the wrong device would only fail on a researcher's
GPU. ``misplaced_tensors_fail`` makes it fail here: inside it, a factory call that names no
device (``torch.zeros(n)``, ``torch.arange(n)``, ``torch.tensor(...)``, a module built there)
creates its tensor on PyTorch's ``meta`` device, which has no data, so any use of it beside the
detector's CPU tensors raises ("Tensor on device meta is not on the expected device cpu").
On a GPU that call would have put the tensor on the CPU beside CUDA tensors. Code that means
a host tensor says so (``device="cpu"``, ``with torch.device("cpu")``); tensors made from
others (``zeros_like``, ``new_tensor``, ops) follow their inputs and pass.

Covered under the guard: ``fit`` and ``predict`` of every method of ``fsad.methods.registry``
(RegAD-L's ``fit`` is its whole per-support-set training), ``embed`` + ``predict_embedded`` as
the harness calls them, and RegAD's aggregated training step (``training_step``, forward,
backward and the three SGD optimisers). Not covered: a tensor moved to the CPU on purpose
(``.cpu()``) and then mixed with device tensors, and factory calls inside C++ kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fsad.config import RegADConfig
from fsad.methods.base import PREDICT_CHUNK
from fsad.methods.regad.checkpoint import build_model
from fsad.methods.regad.training import make_optimizers, training_step
from fsad.methods.registry import DETECTORS, build_detector, load_detector, read_detector_file, save_detector
from fsad.paths import ROOT

SETTINGS = RegADConfig(pretrained=False, image_size=32, device="cpu")
OPTIONS = {"padim": {"n_channels": 20}, "patchcore": {"coreset_ratio": 0.5}, "regad_l": {"epochs": 1},
           "fastrecon": {"coreset_ratio": 0.5}, "anomalydino_dinov2": {"resolution": 28, "rotation": False}}


def misplaced_tensors_fail():
    """Inside: a tensor created without naming its device is a ``meta`` tensor (no data), not a CPU one."""
    return torch.device("meta")


def _built(name: str, model_files, settings: RegADConfig = SETTINGS):
    return build_detector(name, settings, OPTIONS.get(name), model_files.get(name))


def test_the_guard_catches_a_tensor_created_without_its_device():
    features = torch.rand(4, 3)
    with misplaced_tensors_fail(), pytest.raises(RuntimeError, match="meta"):
        features + torch.zeros(3)  # noqa: B018: the misplaced tensor of a GPU run
    with misplaced_tensors_fail():
        features + torch.zeros(3, device=features.device) + torch.zeros_like(features)  # placed: passes


@pytest.mark.parametrize("name", list(DETECTORS))
def test_fit_and_predict_create_no_tensor_off_the_inputs_device(name, model_files, images):
    support, test = images
    detector = _built(name, model_files)
    with misplaced_tensors_fail():
        detector.fit(support)
        scores = detector.predict(test)
        embedded = scores if detector.embedding_depends_on_support else detector.predict_embedded(detector.embed(test))
    assert scores.maps.shape == (3, 32, 32) and torch.isfinite(scores.maps).all()
    assert torch.equal(scores.image, embedded.image)


def test_regad_training_step_creates_no_tensor_off_the_inputs_device():
    config = SETTINGS.replace(lr=0.01)
    model = build_model(config).train()
    optimizers, _ = make_optimizers(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    query, support = torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)  # B x 3 x S x S, B x K x 3 x S x S
    with misplaced_tensors_fail():
        loss = training_step(model, optimizers, query, support, identity_penalty=1.0)  # the penalty builds an identity
    assert loss == loss and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- the contract of every detector
# On the CPU the first test is true by construction; where a GPU is visible it runs there too.
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def tensor_devices(value) -> set[str]:
    """The device types of every tensor in nested dicts, lists and tuples."""
    if torch.is_tensor(value):
        return {value.device.type}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return set().union(*(tensor_devices(item) for item in items))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(DETECTORS))
def test_predict_returns_cpu_scores_and_the_saved_state_is_cpu_only(name, device, model_files, images, tmp_path):
    support, test = images
    detector = _built(name, model_files, SETTINGS.replace(device=device))
    detector.fit(support)
    scores = detector.predict(test)
    assert scores.maps.device.type == "cpu" and scores.image.device.type == "cpu"
    assert tensor_devices(detector.state()) == {"cpu"}
    save_detector(tmp_path / name, detector, SETTINGS, OPTIONS.get(name))
    assert tensor_devices(read_detector_file(tmp_path / name)["state"]) == {"cpu"}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_a_folder_fitted_on_cuda_loads_and_predicts_on_the_cpu(name, model_files, images, tmp_path):
    """A folder written on a GPU machine says ``device: cuda``; here (no GPU) it loads on the CPU and predicts the same."""
    support, test = images
    detector = _built(name, model_files)
    detector.fit(support)
    expected = detector.predict(test)
    cuda = SETTINGS.replace(device="cuda")
    save_detector(tmp_path / name, detector, cuda, OPTIONS.get(name))
    assert read_detector_file(tmp_path / name)["settings"]["regad"]["device"] == "cuda"
    for device, runs_on in ((None, "cuda" if torch.cuda.is_available() else "cpu"), ("cpu", "cpu")):  # None: auto
        loaded, record = load_detector(tmp_path / name, device=device)
        assert loaded.device == runs_on and record["settings"]["regad"]["device"] == "cuda"
        scores = loaded.predict(test)
        torch.testing.assert_close(scores.maps, expected.maps)


# ----------------------------------------------------------------------------- memory: the test set in chunks
class MovedToDevice(torch.overrides.TorchFunctionMode):
    """Records the dtype and bytes of every part of ``inputs`` sent to a device with ``.to(device)``."""

    def __init__(self, inputs: tuple[torch.Tensor, ...]):
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr() for t in inputs}
        self.moved: list[tuple[torch.dtype, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_device = any(isinstance(a, (str, torch.device)) for a in args[1:]) or "device" in kwargs
        if func is torch.Tensor.to and to_device and args[0].untyped_storage().data_ptr() in self.storages:
            self.moved.append((args[0].dtype, args[0].nbytes))
        return func(*args, **kwargs)


# Test images scored per device transfer: PREDICT_CHUNK for the nearest-neighbour methods, 64 for the
# Mahalanobis ones (RegAD, PaDiM, ResAD: reduced features, chunked before issue 22).
MOST_PER_TRANSFER = 64
CHUNKED_BY_ISSUE_22 = ("spade", "patchcore", "fastrecon", "anomalydino", "anomalydino_dinov2")


@pytest.mark.parametrize("name", list(DETECTORS))
def test_scoring_moves_the_test_set_to_the_device_in_chunks(name, model_files, images):
    support, _ = images
    n = 2 * MOST_PER_TRANSFER + 3
    test = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    detector = _built(name, model_files)
    detector.fit(support)
    embedded = detector.embed(test)  # N x ... on the CPU
    per_image = max(t[0].nbytes for t in embedded)
    with MovedToDevice(embedded) as mode:
        detector.predict_embedded(embedded)
    largest = max(nbytes for _, nbytes in mode.moved)
    bound = (PREDICT_CHUNK if name in CHUNKED_BY_ISSUE_22 else MOST_PER_TRANSFER) * per_image
    assert largest <= bound, f"{name} moved {largest / per_image:.0f} test images' worth at once"
    with MovedToDevice((test,)) as mode:
        detector.embed(test)
    assert mode.moved and {dtype for dtype, _ in mode.moved} == {torch.uint8}, f"{name}: images converted to float before the transfer"


def test_regad_l_trains_under_no_grad():
    """fsad fit and the harness call fit without gradients; RegAD-L's training enables its own."""
    detector = build_detector("regad_l", SETTINGS.replace(lr=0.01), {"epochs": 1})
    untrained = build_model(SETTINGS.replace(lr=0.01)).state_dict()
    support = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    with torch.no_grad():
        detector.fit(support)
    trained = detector.model.state_dict()
    assert any(not torch.equal(untrained[k], trained[k]) for k in trained if trained[k].is_floating_point())


# ----------------------------------------------------------------------------- on a GPU (skipped without one)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: benchmarks/gpu.py --smoke is the GPU check")
def test_gpu_smoke(tmp_path):
    """benchmarks/gpu.py --smoke: tiny training, every method's fit / predict on CUDA, a CPU folder on the GPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all checks passed" in done.stdout

