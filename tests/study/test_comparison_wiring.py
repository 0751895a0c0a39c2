"""What ``run_comparison``'s rows are made of: every method on the support sets it saved, with the config's shared settings.

test_comparison.py checks that the support-set file exists and every method detects the
toy defects; neither fails when a method is scored on other support sets or without the
config's ``eps`` / ``blur_sigma``. Here each row is recomputed by the registry's detector on
the saved sets.
"""

from __future__ import annotations

import pandas as pd
import pytest

from fsad.components.backbones import MissingWeightsError, resolve_weights
from fsad.config import ComparisonConfig, RegADConfig
from fsad.data.mvtec import load_category
from fsad.data.support_sets import load_support_sets
from fsad.methods.registry import build_detector
from fsad.study.comparison import run_comparison
from fsad.study.evaluation import TestSet, evaluate_detector

METRICS = ("image_auroc", "pixel_auroc", "aupro")
KEY = ["method", "category", "shots", "support_set"]


def test_every_method_is_scored_on_the_saved_support_sets_with_the_shared_settings(toy_root, tmp_path):
    try:
        resolve_weights("mobilenet_v2")  # seeded random weights would differ between two builds
    except MissingWeightsError:
        pytest.skip("mobilenet_v2 ImageNet weights are not installed")
    # blur_sigma and eps away from their defaults: a method built without them scores other maps
    settings = RegADConfig(image_size=32, blur_sigma=1.0, eps=0.05, device="cpu")
    config = ComparisonConfig(dataset=str(toy_root), categories=("ring",), shots=(2, 4), n_sets=2, metrics=METRICS,
                              methods=("padim", "spade"), padim={"n_channels": 40}, measure_costs=False, regad=settings)
    results = run_comparison(config, tmp_path, progress=False).set_index(KEY)[list(METRICS)]
    assert len(results) == 2 * 2 * 2  # methods x K x sets
    ring = load_category(toy_root, "ring")
    sets = load_support_sets(tmp_path / "support_sets" / "ring.json", ring)
    test = TestSet.load(ring, settings.image_size)
    for name, options in (("padim", {"n_channels": 40}), ("spade", {})):
        expected = pd.DataFrame(evaluate_detector(build_detector(name, settings, options), ring, sets, test, METRICS,
                                                  progress=False).rows).set_index(KEY)[list(METRICS)]
        pd.testing.assert_frame_equal(results.loc[expected.index], expected, check_exact=False, rtol=1e-6)
    # the recomputation can tell the settings apart: default blur and eps score other pixel metrics
    default = pd.DataFrame(evaluate_detector(build_detector("spade", RegADConfig(image_size=32, device="cpu")), ring, sets, test,
                                             METRICS, progress=False).rows).set_index(KEY)[list(METRICS)]
    assert not results.loc[default.index].equals(default)
