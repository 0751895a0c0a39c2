"""RegAD at test time: support views -> registered features -> Gaussian -> anomaly maps -> metrics.

Test features do not depend on the support set, so they are extracted once per
(category, model) and scored against every support set's Gaussian.

Example:
    >>> model, config = load_model(Path("models/toy/disc/regad.pt"))
    >>> rows = evaluate_category(model, config, category, support_sets)  # one row per (K, set)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fsad.components.anomaly_map import anomaly_map, image_scores
from fsad.components.gaussian import Gaussian, fit_gaussian, mahalanobis
from fsad.components.views import support_views
from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import as_float, load_images, load_masks
from fsad.data.mvtec import Category
from fsad.data.support_sets import support_samples
from fsad.methods.regad.network import RegAD
from fsad.study.metrics import aupro, f1_max, image_auroc, pixel_auroc

PIXEL_METRICS = ("pixel_auroc", "aupro")
IMAGE_METRICS = ("image_auroc", "f1_max")


@torch.no_grad()
def extract_features(model: RegAD, images: torch.Tensor, device: str, batch_size: int = 32) -> torch.Tensor:
    """Registered features of uint8 or float images, on the CPU.

    Args:
        images: N x 3 x H x W (uint8 or float in [0, 1]).

    Returns:
        N x D x h x w float32.
    """
    model.eval().to(device)
    out = []
    for chunk in images.split(batch_size):
        x = as_float(chunk) if chunk.dtype == torch.uint8 else chunk
        out.append(model.registered_features(x.to(device)).cpu())
    return torch.cat(out)


def fit_support(model: RegAD, support: torch.Tensor, config: RegADConfig, device: str) -> Gaussian:
    """Per-position Gaussian of the support images' registered features (22 views each unless disabled)."""
    x = as_float(support) if support.dtype == torch.uint8 else support  # K x 3 x H x W
    if config.augment_support:
        x = support_views(x).flatten(0, 1)  # 22K x 3 x H x W
    features = extract_features(model, x, device).to(device)  # 22K x D x h x w
    return fit_gaussian(features, eps=config.eps)


@dataclass
class TestSet:
    """A category's test images, labels, masks and (once extracted) features."""

    images: torch.Tensor  # N x 3 x S x S uint8
    labels: np.ndarray  # N
    masks: torch.Tensor  # N x S x S
    has_masks: bool

    @classmethod
    def load(cls, category: Category, size: int) -> TestSet:
        labels = np.array([s.label for s in category.test])
        return cls(load_images(category.test, size, desc=f"test {category.name}"), labels, load_masks(category.test, size), category.has_masks)


def score_maps(gaussian: Gaussian, features: torch.Tensor, config: RegADConfig, device: str) -> torch.Tensor:
    """N x S x S anomaly maps of test features against a support Gaussian."""
    maps = []
    for chunk in features.split(64):
        distances = mahalanobis(chunk.to(device), gaussian)  # B x h x w
        maps.append(anomaly_map(distances, (config.image_size, config.image_size), config.blur_sigma).cpu())
    return torch.cat(maps)


def metrics_of(maps: torch.Tensor, test: TestSet, metrics: Sequence[str], image: torch.Tensor | None = None) -> dict[str, float]:
    """The requested metrics; pixel metrics are NaN for a category without masks.

    Args:
        maps: N x S x S anomaly maps.
        image: N image scores where a method defines its own; ``None``: each map's maximum.
    """
    scores = (image_scores(maps) if image is None else image).numpy()
    out: dict[str, float] = {}
    for name in metrics:
        if name == "image_auroc":
            out[name] = image_auroc(test.labels, scores)
        elif name == "f1_max":
            out[name] = f1_max(test.labels, scores)
        elif name in PIXEL_METRICS:
            if not test.has_masks:
                out[name] = float("nan")
            elif name == "pixel_auroc":
                out[name] = pixel_auroc(test.masks.numpy(), maps.numpy())
            else:
                out[name] = aupro(test.masks.numpy(), maps.numpy())
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {IMAGE_METRICS + PIXEL_METRICS}")
    return out


def evaluate_category(
    model: RegAD,
    config: RegADConfig,
    category: Category,
    support_sets: dict[int, list[list[str]]],
    metrics: Sequence[str] = ("image_auroc", "pixel_auroc"),
    test: TestSet | None = None,
    progress: bool = True,
) -> list[dict]:
    """Score every support set of every K against the category's test set.

    Returns:
        One dict per (K, support set): category, shots, support_set and each metric.
    """
    device = resolve_device(config.device)
    test = test or TestSet.load(category, config.image_size)
    features = extract_features(model, test.images, device)  # N x D x h x w
    rows = []
    jobs = [(k, i, paths) for k in sorted(support_sets) for i, paths in enumerate(support_sets[k])]
    for k, i, paths in tqdm(jobs, desc=f"support sets {category.name}", disable=not progress, leave=False):
        support = load_images(support_samples(category, paths), config.image_size)
        gaussian = fit_support(model, support, config, device)
        maps = score_maps(gaussian, features, config, device)
        rows.append({"category": category.name, "shots": k, "support_set": i, **metrics_of(maps, test, metrics)})
    return rows
