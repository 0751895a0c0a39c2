"""Every report figure builds from small inputs and saves as a PNG, without pyplot or a display."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fsad.data.mvtec import load_category
from fsad.io import save_figure_atomic
from fsad.reporting.figures import (
    bars_across_k,
    best_and_worst,
    dataset_figure,
    overlay_figure,
    registered_views_figure,
    roc_figure,
    stn_angles_figure,
    support_set_figure,
    variance_figure,
)

PNG_MAGIC = b"\x89PNG"


def saved(figure, path) -> bool:
    save_figure_atomic(figure, path)
    return path.read_bytes()[:4] == PNG_MAGIC


def test_best_and_worst_rank_anomalous_images_only():
    labels = np.array([0, 1, 1, 0, 1, 1])
    scores = np.array([99.0, 5.0, 7.0, 0.0, 1.0, 3.0])
    assert best_and_worst(labels, scores, n=2) == ([2, 1], [4, 5])
    assert best_and_worst(np.array([0, 1]), np.array([0.0, 1.0]), n=2) == ([1], [1])


def test_every_figure_saves_as_png(toy_root, tmp_path):
    disc = load_category(toy_root, "disc")
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    maps = torch.rand(4, 32, 32)
    scores = pd.DataFrame({"method": ["regad"] * 4 + ["untrained"] * 4, "shots": 2, "label": [0, 1] * 4,
                           "score": [0.1, 0.9, 0.2, 0.8, 0.5, 0.4, 0.3, 0.6]})
    results = pd.DataFrame({"method": "regad", "category": ["a", "a", "b", "b"], "shots": [2, 4, 2, 4],
                            "support_set": 0, "image_auroc": [0.7, 0.8, 0.9, 0.95]})
    angles = pd.DataFrame({"applied_angle": [0.0, 45.0], "stn_angle": [1.0, -20.0], "view_kind": ["original", "rotation"]})
    figures = {
        "dataset": dataset_figure([disc], size=32),
        "support": support_set_figure(images[:2], ["a.png", "b.png"], "support"),
        "overlays": overlay_figure(images, torch.zeros(4, 32, 32), maps, [1, 3], ["best", "worst"]),
        "overlays_no_masks": overlay_figure(images, None, maps, [1], ["best"]),
        "roc": roc_figure(scores, "disc"),
        "bars": bars_across_k(results, "image_auroc", "image AUROC (%)"),
        "views": registered_views_figure(images[:3].float() / 255, images[:3].float() / 255, ["a", "b", "c"], [0.0, 1.0, 2.0]),
        "angles": stn_angles_figure(angles, "disc"),
        "variance": variance_figure(images[0], torch.rand(8, 8), 2),
    }
    for name, figure in figures.items():
        assert saved(figure, tmp_path / f"{name}.png"), name


def test_roc_legend_reports_the_auroc():
    scores = pd.DataFrame({"method": "regad", "shots": 2, "label": [0, 0, 1, 1], "score": [0.1, 0.4, 0.35, 0.8]})
    legend = roc_figure(scores, "x").axes[0].get_legend().get_texts()[0].get_text()
    assert legend == "regad K=2 (AUROC 75.0)"
