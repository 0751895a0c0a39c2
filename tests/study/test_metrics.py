"""Metrics against hand-computed cases and sklearn on flattened arrays."""

import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fsad.study.metrics import aupro, f1_max, image_auroc, mean_std, pixel_auroc


def test_image_auroc_hand_cases():
    # Positive/negative pairs ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4) -> 3 of 4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert image_auroc([1, 0, 0], [0.0, 1.0, 2.0]) == pytest.approx(0.0)


def test_single_class_is_an_error():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_max([1, 1], [0.1, 0.2])


def test_pixel_auroc_matches_sklearn_on_flattened():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 8, 8)) > 0.8).astype(np.float32)
    maps = rng.random((3, 8, 8)) + masks * 0.3
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_pixel_metrics_need_anomalous_pixels():
    with pytest.raises(ValueError, match="need masks"):
        pixel_auroc(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))
    with pytest.raises(ValueError, match="need masks"):
        aupro(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) and \(2, 4, 5\)"):
        pixel_auroc(np.ones((2, 4, 4)), np.random.rand(2, 4, 5))


def _blobs(rng, count=6, size=32):
    masks = np.zeros((count, size, size))
    for mask in masks:
        y, x = rng.integers(0, size - 8, 2)
        mask[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = 1
    return masks


def test_aupro_perfect_and_inverted():
    masks = _blobs(np.random.default_rng(0))
    assert aupro(masks, masks) == pytest.approx(1.0)
    assert aupro(masks, 1 - masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_two_region_hand_case():
    # Image 0: region A (2 px) scores 3, 3; normals 2, 0, 0, 0.
    # Image 1: region B (4 px) scores 3, 1, 1, 1; normals 0, 0.
    # Thresholds 0, 1, 2, 3 give (FPR, PRO): t=3 (0, (1 + 1/4) / 2), t=2 (1/6, 0.625),
    # t=1 (1/6, 1), t=0 (1, 1). Area to 0.3: 1/6 * 0.625 + (0.3 - 1/6) * 1, over 0.3.
    # Pooling pixels instead of averaging regions would give 0.5 at t=3, and
    # labelling across images would merge A and B into one 6 px region.
    masks = np.array([[[1, 1, 0, 0, 0, 0]], [[1, 1, 1, 1, 0, 0]]])
    maps = np.array([[[3, 3, 2, 0, 0, 0]], [[3, 1, 1, 1, 0, 0]]], dtype=float)
    expected = (1 / 6 * 0.625 + (0.3 - 1 / 6)) / 0.3
    assert aupro(masks, maps, max_fpr=0.3, num_thresholds=4) == pytest.approx(expected)
    # Integrating to FPR 1 adds the segment from (1/6, 1) to (1, 1).
    assert aupro(masks, maps, max_fpr=1.0, num_thresholds=4) == pytest.approx(1 / 6 * 0.625 + 5 / 6)


def test_aupro_uses_8_connectivity():
    # Diagonal pair (0,0)-(1,1) is one 8-connected region; (3,3) is another.
    # 13 normal pixels, one scoring 1. Thresholds 0, 1, 2: at t=2 (FPR 0) the pair
    # is half found and (3,3) fully: PRO (0.5 + 1) / 2 = 0.75; t=1 adds FPR 1/13.
    # Up to max_fpr = 1/13 the curve is flat at 0.75. 4-connectivity would split
    # the pair and give (1 + 0 + 1) / 3 = 2/3.
    masks = np.zeros((1, 4, 4))
    masks[0, [0, 1, 3], [0, 1, 3]] = 1
    maps = np.zeros((1, 4, 4))
    maps[0, [0, 3], [0, 3]] = 2
    maps[0, 0, 3] = 1
    assert aupro(masks, maps, max_fpr=1 / 13, num_thresholds=3) == pytest.approx(0.75)


def test_aupro_never_exceeds_one_on_random_maps():
    rng = np.random.default_rng(3)
    masks = _blobs(rng)
    for _ in range(20):
        maps = rng.random(masks.shape) + masks * rng.random()
        max_fpr, thresholds = rng.uniform(0.05, 1.0), int(rng.integers(2, 300))
        value = aupro(masks, maps, max_fpr=max_fpr, num_thresholds=thresholds)
        assert 0.0 <= value <= 1.0 + 1e-12


def test_aupro_random_map_is_near_chance():
    # With scores independent of the masks PRO(t) ~ FPR(t): area 0.3**2 / 2, over 0.3.
    rng = np.random.default_rng(4)
    masks = _blobs(rng, count=20, size=64)
    assert aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.02)


def test_aupro_is_fast_enough():
    rng = np.random.default_rng(5)
    masks = _blobs(rng, count=300, size=224)
    maps = rng.random(masks.shape).astype(np.float32)
    start = time.perf_counter()
    aupro(masks, maps)
    assert time.perf_counter() - start < 10.0


def test_f1_max_hand_case():
    # Threshold 0.35 flags 0.35, 0.4, 0.8: precision 2/3, recall 1 -> F1 0.8 (best).
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert f1_max([0, 1, 1], [0.1, 0.5, 0.9]) == pytest.approx(1.0)


def test_mean_std():
    mean, std = mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(np.sqrt(((0.1**2) * 2) / 2))  # ddof = 1
    assert mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_auroc_with_many_ties_equals_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.random(5000) < 0.2
    scores = np.round(rng.random(5000) + 0.3 * labels, 1)  # 15 distinct values: ties everywhere
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
