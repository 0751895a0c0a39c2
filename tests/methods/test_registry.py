"""The detector registry and detector folders: shared settings reach every method; save -> load predicts the same."""

from __future__ import annotations

import pytest
import torch

from fsad.config import RegADConfig
from fsad.methods.padim import PaDiM
from fsad.methods.registry import DETECTORS, build_detector, load_detector, save_detector

SETTINGS = RegADConfig(pretrained=False, image_size=32, device="cpu", eps=0.05, blur_sigma=1.5)
OPTIONS = {"padim": {"n_channels": 20}, "patchcore": {"coreset_ratio": 0.5}, "regad_l": {"epochs": 1},
           "anomalydino_dinov2": {"resolution": 28, "rotation": False}}  # a random ViT on a 2 x 2 grid: seconds, not minutes


def _built(name: str, model_files) -> object:
    return build_detector(name, SETTINGS, OPTIONS.get(name), model_files.get(name))


@pytest.mark.parametrize("name", list(DETECTORS))
def test_save_load_predicts_exactly_as_the_fitted_detector(name, model_files, images, tmp_path):
    support, test = images
    detector = _built(name, model_files)
    detector.fit(support)
    before = detector.predict(test)
    save_detector(tmp_path / name, detector, SETTINGS, OPTIONS.get(name), {"note": "made by the test"})
    loaded, record = load_detector(tmp_path / name)
    after = loaded.predict(test)
    assert torch.equal(before.maps, after.maps) and torch.equal(before.image, after.image)
    assert record["method"] == name and record["note"] == "made by the test"
    assert (tmp_path / name / "detector.json").is_file()


@pytest.mark.parametrize("name", list(DETECTORS))
def test_shared_test_time_settings_reach_every_method(name, model_files):
    detector = _built(name, model_files)
    assert detector.image_size == 32 and detector.device == "cpu"
    if hasattr(detector, "config"):  # the RegAD pipelines read them from their config
        assert (detector.config.eps, detector.config.blur_sigma) == (0.05, 1.5)
    else:
        assert detector.sigma == 1.5
        if isinstance(detector, PaDiM):
            assert detector.eps == 0.05


def test_unknown_option_names_the_method_and_its_options():
    with pytest.raises(ValueError, match=r"'patchcore' has no option\(s\) sigma; its options: coreset_ratio"):
        build_detector("patchcore", SETTINGS, {"sigma": 2})
    with pytest.raises(ValueError, match="unknown method 'padimm'"):
        build_detector("padimm", SETTINGS)


@pytest.mark.parametrize("name", ["regad", "resad"])
def test_methods_with_a_trained_model_need_the_file(name, tmp_path):
    with pytest.raises(ValueError, match="--model"):
        build_detector(name, SETTINGS)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_detector(name, SETTINGS, model_path=tmp_path / "missing.pt")


def test_untrained_is_seeded_by_the_settings():
    first, second = (build_detector("untrained", SETTINGS).model.state_dict() for _ in range(2))
    other = build_detector("untrained", SETTINGS.replace(seed=1)).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_load_refuses_what_is_not_a_detector_of_this_kind(images, tmp_path):
    support, _ = images
    with pytest.raises(FileNotFoundError, match="no detector folder"):
        load_detector(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a detector folder"):
        load_detector(tmp_path / "plain")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "detector.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable detector file"):
        load_detector(tmp_path / "junk")
    padim = build_detector("padim", SETTINGS, {"n_channels": 20})
    with pytest.raises(RuntimeError, match="not fitted"):
        save_detector(tmp_path / "padim", padim, SETTINGS, {"n_channels": 20})
    padim.fit(support)
    save_detector(tmp_path / "padim", padim, SETTINGS, {"n_channels": 20})
    with pytest.raises(ValueError, match="holds a 'padim' detector, not 'spade'"):
        load_detector(tmp_path / "padim", method="spade")
    state = padim.state()
    with pytest.raises(ValueError, match="saved by method 'padim', not 'patchcore'"):
        build_detector("patchcore", SETTINGS).load_state(state)
    with pytest.raises(ValueError, match="image_size: saved 32 vs 64"):
        build_detector("padim", SETTINGS.replace(image_size=64), {"n_channels": 20}).load_state(state)


def test_random_backbones_come_from_the_seed_and_leave_the_callers_random_state():
    """Two builds of one config with pretrained: false score alike (fsad compare twice gives one table)."""
    settings = RegADConfig(pretrained=False, image_size=32, device="cpu")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = build_detector("patchcore", settings).backbone.state_dict()
    second = build_detector("patchcore", settings).backbone.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = build_detector("patchcore", settings.replace(seed=1)).backbone.state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)
