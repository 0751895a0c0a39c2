"""The speed benchmarks' official-procedure baseline (benchmarks/official.py) computes what fsad computes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fsad.components.anomaly_map import anomaly_map
from fsad.components.gaussian import fit_gaussian, mahalanobis
from fsad.config import RegADConfig
from fsad.methods.regad.checkpoint import untrained_regad

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "official.py"
_SPEC = importlib.util.spec_from_file_location("benchmarks_official", _PATH)
official = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(official)


@pytest.mark.parametrize("n", [12, 40])  # N < C (fsad's low-rank form) and N > C (full rank)
def test_official_fit_and_score_agree_with_fsad(n):
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(n, 16, 3, 4, generator=generator)  # N x C x H x W
    test = torch.randn(5, 16, 3, 4, generator=generator)  # B x C x H x W
    mean, cov = official.official_fit(support.flatten(2))
    got = official.official_score(test.flatten(2), mean, cov)  # B x P
    expected = mahalanobis(test, fit_gaussian(support, eps=official.EPS)).flatten(1)  # B x P
    assert got.shape == (5, 12)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)


def test_official_loops_stop_after_the_timed_positions():
    support, test = torch.randn(30, 6, 10), torch.randn(4, 6, 10)  # N x C x P, B x C x P
    mean, cov = official.official_fit(support, positions=3)
    assert cov.shape == (6, 6, 10)  # allocated whole, as the official code does
    assert bool((cov[:, :, 3:] == 0).all()) and bool((cov[:, :, :3] != 0).any())
    full_mean, full_cov = official.official_fit(support)
    torch.testing.assert_close(official.official_score(test, mean, cov, positions=3),
                               official.official_score(test, full_mean, full_cov)[:, :3])


def test_mahalanobis_torch_is_the_square_root_of_the_quadratic_form():
    value = official.mahalanobis_torch(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0]), torch.diag(torch.tensor([4.0, 1.0])))
    assert float(value) == pytest.approx(2.0)


def test_official_maps_match_fsad_maps():
    distances = torch.rand(2, 8, 8) * 5  # B x h x w
    maps, scores = official.official_maps(distances, 32)
    expected = anomaly_map(distances, (32, 32), sigma=4.0)  # B x 32 x 32
    torch.testing.assert_close(torch.from_numpy(maps), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(scores), expected.flatten(1).amax(1), rtol=1e-4, atol=1e-5)


def test_embedding_concat_gives_each_position_its_cell():
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 2, 2)
    expected = torch.cat([x, F.interpolate(y, size=(8, 8), mode="nearest")], dim=1)
    torch.testing.assert_close(official.embedding_concat(x, y), expected)


def test_official_features_equal_fsad_features_with_identity_stns():
    config = RegADConfig(backbone="mobilenet_v2", pretrained=False, normalize=False, image_size=32)
    model = untrained_regad(config)  # STNs initialised at the identity
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.registered_features(images)
    torch.testing.assert_close(official.official_features(model, images), expected, rtol=1e-5, atol=1e-5)
