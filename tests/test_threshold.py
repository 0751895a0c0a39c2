"""The threshold rules of ``fsad fit --threshold`` (fsad.product.threshold) on hand-made reference scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsad.components import views as support_views_module
from fsad.product import threshold as module
from fsad.product.threshold import NUM_VIEWS, RULE_NAMES, RULES, TYPICAL_VIEWS, References, Threshold, check_rule, log_spread, loo_shift

ATYPICAL = 1000.0  # the score of every view outside TYPICAL_VIEWS: far above any real good part


def views_of(*typical: list[float]) -> np.ndarray:
    """22 K view scores, image-major: each image's TYPICAL_VIEWS given, the other 14 views at ATYPICAL."""
    views = np.full((len(typical), NUM_VIEWS), ATYPICAL)
    views[:, list(TYPICAL_VIEWS)] = typical
    return views.ravel()


# SHIFT = 1 makes the leave-one-out factor 1 - 1/K: 0.75 at K = 4, 0.5 at K = 2.
LOO = References(leave_one_out=np.array([4.0, 8.0, 12.0, 40.0]), good=np.array([5.0, 7.0]),
                 synthetic=np.array([40.0, 80.0, 120.0]), k=4)
# Typical views 2, 4, 6, 8 (4 times each; view 0 is the image's leave-one-out score): the same median as the images.
VIEWS = References(leave_one_out=np.array([4.0, 6.0]), views=views_of([4, 2, 6, 8, 2, 4, 6, 8], [6, 2, 4, 8, 2, 4, 6, 8]), k=2)


@pytest.fixture
def shift_one(monkeypatch):
    monkeypatch.setattr(module, "SHIFT", 1.0)


def level(rule, refs, target_fpr=0.01):
    return Threshold.level(rule, refs, target_fpr)


def test_every_rule_is_named_and_documented():
    assert set(RULES) == set(RULE_NAMES)
    for rule in RULE_NAMES:
        assert f"\n{rule}" in module.__doc__


def test_max_margin_is_todays_rule_on_unshifted_scores(shift_one):
    # R = 4, 8, 12, 40, 5, 7: median 7.5, threshold 40 + (40 - 7.5).
    assert level("max_margin", LOO) == (72.5, 7.5)
    single = Threshold.level("max_margin", References(good=np.array([5.0])))
    assert single == (pytest.approx(5.5), 5.0)


def test_leave_one_out_shift(shift_one):
    assert (loo_shift(4), loo_shift(2), loo_shift(1)) == (0.75, 0.5, 1.0)
    assert LOO.normal("leave_one_out").tolist() == [3.0, 6.0, 9.0, 30.0, 5.0, 7.0]  # good scores are not shifted
    assert sorted(VIEWS.normal("views").tolist()) == sorted([1.0, 2.0, 3.0, 4.0] * 4)  # the 14 atypical views left out
    # Typical views are rescaled to the leave-one-out median (10 / 5) before the shift.
    rescaled = References(leave_one_out=np.array([10.0, 10.0]), views=views_of([5.0] * 8, [2, 5, 8, 5, 5, 5, 5, 5]),
                          good=np.array([7.0]), k=2)
    assert rescaled.normal("views").tolist() == [5.0] * 8 + [2.0, 5.0, 8.0] + [5.0] * 5 + [7.0]
    assert LOO.normal("views").tolist() == LOO.normal("leave_one_out").tolist()  # no views: leave-one-out


def test_mad(shift_one):
    # R = 3, 5, 6, 7, 9, 30: median 6.5, absolute deviations 0.5, 0.5, 1.5, 2.5, 3.5, 23.5 -> MAD 2.
    assert level("mad", LOO) == (pytest.approx(6.5 + 3 * 1.4826 * 2.0), 6.5)


def test_quantile(shift_one):
    # R = 1, 2, 3, 4: the 0.75 quantile (linear) is 3.25.
    assert level("quantile", VIEWS, target_fpr=0.25) == (pytest.approx(3.25), 2.5)


def test_exponential_tails(shift_one):
    # Above u = 6.5: 7, 9, 30 (p = 1/2), mean excess 26.5 / 3; threshold u + beta ln(p / f).
    assert level("tail", LOO) == (pytest.approx(6.5 + 26.5 / 3 * math.log(0.5 / 0.01)), 6.5)
    # Views 1, 2, 3, 4: u = 2.5, excess 0.5, 1.5 (beta 1, p 1/2), f = 0.1.
    assert level("views_tail", VIEWS, target_fpr=0.1) == (pytest.approx(2.5 + math.log(5)), 2.5)


def test_lognormal(shift_one):
    logs = np.log([1.0, 2.0, 3.0, 4.0])
    median = (logs[1] + logs[2]) / 2
    sigma = 1.4826 * (abs(logs[1] - median) + abs(logs[3] - median)) / 2  # deviations 0.20, 0.20, 0.49, 0.90
    expected = math.exp(median + 1.2815515655446004 * sigma)  # z(0.9)
    assert level("lognormal", VIEWS, target_fpr=0.1) == (pytest.approx(expected), 2.5)


def test_typical_views_are_the_small_pose_changes_of_support_views():
    # The indices follow fsad.components.views' order: image, 8 rotations, 8 shifts, flip, grey, 3 turns.
    assert NUM_VIEWS == support_views_module.NUM_VIEWS
    rotations = [support_views_module.ROTATIONS[i - 1] for i in TYPICAL_VIEWS if 1 <= i <= 8]
    shifts = [support_views_module.TRANSLATIONS[i - 9] for i in TYPICAL_VIEWS if 9 <= i <= 16]
    assert rotations == [-11.25, 11.25] and sorted(shifts) == sorted((x, y) for x in (-0.1, 0.1) for y in (-0.1, 0.1))
    assert TYPICAL_VIEWS[0] == 0 and TYPICAL_VIEWS[-1] == 17  # the image and the horizontal flip


def test_atypical_views_do_not_set_the_spread():
    # metal_plate at 224 px (docs/calibration.md): views rotated by 22.5-45 degrees scored up to 2x the images and
    # put the threshold above every good test part. Here they score 1000; the view rules see only the typical ones.
    low = References(leave_one_out=VIEWS.leave_one_out, views=np.where(VIEWS.views == ATYPICAL, 1.0, VIEWS.views), k=2)
    for rule in ("lognormal", "quantile", "views_tail"):
        threshold, normal = level(rule, VIEWS, target_fpr=0.05)
        assert (threshold, normal) == level(rule, low, target_fpr=0.05), rule  # the same whatever the 14 others score
        assert normal == pytest.approx(5.0 * loo_shift(2)) and threshold < 10.0, rule  # typical views: 2-8
    with pytest.raises(ValueError, match="References.views holds 4 scores for K = 2; expected 22 K"):
        level("lognormal", References(leave_one_out=np.array([4.0, 6.0]), views=np.ones(4), k=2))


def test_lognormal_spread_of_logs_is_at_least_five_percent():
    assert log_spread(np.array([40.0, 40.0, 40.0])) == 0.05  # not 5 % of log(40) = 0.18, as before
    assert log_spread(np.exp(np.array([0.0, 1.0, 2.0]))) == pytest.approx(1.4826)


def test_synthetic_lies_between_normal_and_anomalous(shift_one):
    # R max 30; synthetic x 0.75 = 30, 60, 90 (median 60): (30 + 60) / 2.
    assert level("synthetic", LOO)[0] == pytest.approx(45.0)
    below = References(leave_one_out=LOO.leave_one_out, good=LOO.good, synthetic=np.array([8.0]), k=4)
    assert level("synthetic", below)[0] == pytest.approx(30.0)  # anomalies below the normal maximum: the maximum
    with pytest.raises(ValueError, match="needs K >= 2"):
        level("synthetic", References(good=np.array([1.0, 2.0]), k=1))


def test_a_threshold_at_the_normal_level_is_raised_above_it():
    refs = References(good=np.array([1.0, 1.0, 1.0, 5.0]), k=1)
    # The 0.51 quantile is 1 = the median; MAD 0 -> sigma = 5 % of the median.
    assert level("quantile", refs, target_fpr=0.49) == (pytest.approx(1.05), 1.0)


def test_normalised_scores():
    threshold = Threshold.from_rule("max_margin", References(leave_one_out=np.array([1.0, 2.0, 4.0]), k=3),
                                    References(leave_one_out=np.array([2.0, 3.0, 7.0]), k=3))
    assert (threshold.image, threshold.image_normal, threshold.pixel, threshold.pixel_normal) == (6.0, 2.0, 11.0, 3.0)
    assert threshold.normalise_image(np.array([2.0, 6.0, 10.0, 50.0, 0.0])).tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]


def test_bad_rule_or_target_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown --threshold 'median'; choose from max_margin"):
        check_rule("median", 0.01)
    for bad in (0.0, 0.5, -1.0):
        with pytest.raises(ValueError, match="--target-fpr must be between 0 and 0.5"):
            check_rule("tail", bad)


def test_each_method_takes_its_measured_floor_of_the_log_spread():
    tight = {"leave_one_out": np.array([4.0, 4.0]), "views": views_of([4.0] * 8, [4.0] * 8), "k": 2}  # sigma(log) = 0
    z = 1.6448536269514722  # the 95th percentile of a standard normal
    for method in ("padim_views", "anomalydino", "patchcore", "fastrecon"):
        threshold, normal = level("lognormal", References(**tight, method=method), target_fpr=0.05)
        floor = module.MIN_LOG_SPREADS[method]
        assert (threshold, normal) == pytest.approx((normal * math.exp(z * floor), 4.0 * module.loo_shift(2))), method
    assert module.min_log_spread("spade") == module.MIN_LOG_SPREADS["padim_views"]  # not measured: padim_views'
    assert module.MIN_LOG_SPREADS["anomalydino"] > module.MIN_LOG_SPREADS["padim_views"]
