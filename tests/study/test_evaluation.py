"""The one evaluation loop: one row per support set, kept maps equal a fresh fit + predict."""

import torch

from fsad.config import RegADConfig
from fsad.data.loading import load_images
from fsad.data.mvtec import load_category
from fsad.data.support_sets import make_support_sets, support_samples
from fsad.methods.registry import build_detector
from fsad.study.evaluation import TestSet, evaluate_detector


def test_rows_per_support_set_and_kept_maps_equal_a_fresh_fit(toy_root):
    torch.manual_seed(0)
    settings = RegADConfig(pretrained=False, image_size=32, device="cpu")
    category = load_category(toy_root, "disc")
    sets = make_support_sets(category, (2, 4), n_sets=2, seed=0)
    test = TestSet.load(category, 32)
    detector = build_detector("padim", settings)
    run = evaluate_detector(detector, category, sets, test, ("image_auroc", "pixel_auroc"), keep=[(4, 1)], progress=False)
    assert [(r["shots"], r["support_set"]) for r in run.rows] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert {r["method"] for r in run.rows} == {"padim"} and set(run.kept) == {(4, 1)}
    detector.fit(load_images(support_samples(category, sets[4][1]), 32))
    fresh = detector.predict(test.images)
    assert torch.equal(run.kept[(4, 1)].maps, fresh.maps) and torch.equal(run.kept[(4, 1)].image, fresh.image)
