"""The threshold rules of ``fsad fit --threshold`` (fsad.product.threshold) on hand-made reference scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsad.product import threshold as module
from fsad.product.threshold import RULE_NAMES, RULES, References, Threshold, check_rule, loo_shift

# SHIFT = 1 makes the leave-one-out factor 1 - 1/K: 0.75 at K = 4, 0.5 at K = 2.
LOO = References(leave_one_out=np.array([4.0, 8.0, 12.0, 40.0]), good=np.array([5.0, 7.0]),
                 synthetic=np.array([40.0, 80.0, 120.0]), k=4)
VIEWS = References(leave_one_out=np.array([4.0, 6.0]), views=np.array([2.0, 4.0, 6.0, 8.0]), k=2)  # same medians


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
    assert VIEWS.normal("views").tolist() == [1.0, 2.0, 3.0, 4.0]
    # Views are rescaled to the leave-one-out median (10 / 5) before the shift.
    rescaled = References(leave_one_out=np.array([10.0]), views=np.array([2.0, 5.0, 8.0]), good=np.array([7.0]), k=2)
    assert rescaled.normal("views").tolist() == [2.0, 5.0, 8.0, 7.0]
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
