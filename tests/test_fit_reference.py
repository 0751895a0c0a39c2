"""``fsad fit``'s two promises on the threshold's reference, checked through the command.

Each support image's reference score comes from the detector fitted on the OTHER K - 1
images (leave one out), and the saved detector is the one fitted on ALL K. Both are
recomputed here from the saved detector's own weights (refitting only rebuilds the
statistics of the support images), so a fit on the wrong images cannot pass.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fsad.cli import main
from fsad.data.mvtec import read_image
from fsad.methods.registry import load_detector
from fsad.product.fit import DEFAULT_METHOD

SIZE = 32


@pytest.fixture
def fitted(toy_root, tmp_path):
    """``fsad fit`` on 4 good disc images (random-weight backbone, 32 px): its folder, support and test images."""
    good = tmp_path / "good"
    good.mkdir()
    for path in sorted((toy_root / "disc" / "train" / "good").glob("*.png"))[:4]:
        shutil.copy(path, good / path.name)
    config = tmp_path / "config.yaml"
    config.write_text(f"regad:\n  pretrained: false\n  image_size: {SIZE}\n  device: cpu\n")
    main(["fit", str(good), "--config", str(config), "--out", str(tmp_path / "detector")])
    detector, record = load_detector(tmp_path / "detector")
    support = torch.stack([read_image(p, SIZE) for p in record["support"]["images"]])  # K x 3 x S x S, in the record's order
    test = torch.stack([read_image(p, SIZE) for p in sorted((toy_root / "disc" / "test").rglob("*.png"))])
    return detector, record, support, test


def test_each_leave_one_out_score_comes_from_the_other_k_minus_1_images(fitted):
    detector, record, support, _ = fitted
    assert record["method"] == DEFAULT_METHOD
    saved = record["threshold"]["leave_one_out_scores"]
    expected = []
    for held in range(len(support)):
        detector.fit(torch.cat([support[:held], support[held + 1 :]]))
        expected.append(float(detector.predict(support[held : held + 1]).image[0]))
    assert np.allclose(saved, expected, rtol=1e-5), f"saved leave-one-out scores {saved} != scores by the other K - 1 {expected}"
    # and not the score of a detector that has seen the image (which a fit on all K gives)
    detector.fit(support)
    seen = detector.predict(support).image.numpy()
    assert (np.array(saved) > seen + 1e-6).all(), f"leave-one-out scores {saved} not above the all-K scores {seen}"


def test_the_saved_detector_is_fitted_on_all_k_images(fitted):
    detector, record, support, test = fitted
    assert record["support"]["count"] == len(support) == 4
    saved_scores = detector.predict(test).image.numpy()
    detector.fit(support)
    refitted_scores = detector.predict(test).image.numpy()
    assert np.allclose(saved_scores, refitted_scores, rtol=1e-5), \
        f"the saved detector scores {saved_scores}, the one fitted on all K {refitted_scores}"
