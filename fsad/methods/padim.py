"""PaDiM: a Gaussian per patch position on pretrained multi-layer features (Defard et al., 2020).

Paper: https://arxiv.org/abs/2011.08785. The three stage outputs of a pretrained backbone
are upsampled to stride 4 and concatenated; ``n_channels`` of them are kept, drawn at
random once (the paper: 100 of 448 for ResNet-18, 550 of 1792 for WRN-50), which cuts the
covariance cost with little loss. At every position a Gaussian (unbiased covariance +
eps * I, eps = 0.01) is fitted on the support features, and a test feature's anomaly is
its Mahalanobis distance. Without training this is RegAD's scoring on unregistered
features; ``augment_support`` adds RegAD's 22 support views.

Example:
    >>> padim = PaDiM(build_backbone("mobilenet_v2"), image_size=128, n_channels=100)
    >>> padim.fit(support)  # K >= 2 images, or K >= 1 with augment_support=True
    >>> scores = padim.predict(test_images)
"""

from __future__ import annotations

from typing import Any

import torch

from fsad.components.anomaly_map import anomaly_map, image_scores
from fsad.components.backbones import FeatureExtractor
from fsad.components.gaussian import Gaussian, fit_gaussian, mahalanobis
from fsad.components.views import SupportViewFeatures
from fsad.data.mvtec import as_hw
from fsad.methods.base import (
    Detector,
    Embedding,
    Scores,
    backbone_architecture,
    batched,
    concat_stages,
    frozen,
    gaussian_from_state,
    gaussian_state,
    module_state,
)


def random_channels(total: int, count: int, seed: int) -> torch.Tensor:
    """``min(count, total)`` distinct channel indices of ``range(total)``, drawn with ``seed``, sorted.

    Example:
        >>> random_channels(448, 100, seed=0).shape
        torch.Size([100])
    """
    if count < 1:
        raise ValueError(f"fsad/methods/padim.py: n_channels must be >= 1, got {count}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[: min(count, total)].sort().values


class PaDiM(Detector):
    """Per-position Gaussian on randomly reduced multi-layer features.

    Args:
        backbone: Pretrained three-stage feature extractor (kept frozen).
        image_size: Side of the square input images and output maps, or their (H, W).
        n_channels: Feature channels kept (all when it exceeds the backbone's).
        augment_support: Fit on RegAD's 22 views of every support image.
        eps: Added to the covariance diagonal.
        sigma: Gaussian blur of the maps, in pixels.
        seed: Seed of the channel draw.
        device: Where features are computed and scored.
    """

    def __init__(self, backbone: FeatureExtractor, image_size: int | tuple[int, int], n_channels: int = 100,
                 augment_support: bool = False, eps: float = 0.01, sigma: float = 4.0, seed: int = 0,
                 device: str = "cpu"):
        self.backbone = frozen(backbone, device)
        self.channels = random_channels(sum(backbone.channels), n_channels, seed)
        self.name = "padim_views" if augment_support else "padim"
        self.min_support = 1 if augment_support else 2
        self.image_size, self.augment_support, self.eps, self.sigma, self.device = image_size, augment_support, eps, sigma, device
        self.gaussian: Gaussian | None = None
        self.views = SupportViewFeatures()  # support images recur across sets: view features computed once

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (concat_stages(self.backbone(x))[:, self.channels.to(x.device)],)  # B x d x h x w

    def embed(self, images: torch.Tensor) -> Embedding:
        """Reduced multi-layer features, N x d x h x w."""
        return batched(self._features, images, self.device)

    def fit(self, support: torch.Tensor) -> None:
        self.check_support(support, "a covariance needs two support features; use padim_views (augment_support) for K = 1")
        if self.augment_support:
            features = self.views(support, self.backbone, lambda views: self.embed(views)[0],
                                  settings=(self.device, tuple(self.channels.tolist())))  # 22K x d x h x w
        else:
            (features,) = self.embed(support)  # K x d x h x w
        self.gaussian = fit_gaussian(features.to(self.device), eps=self.eps)

    def architecture(self) -> dict[str, Any]:
        return backbone_architecture(self.backbone, self.image_size)

    def state(self) -> dict[str, Any]:
        """Backbone weights, the channel draw (d) and the per-position Gaussian."""
        return self._state(self.gaussian, backbone=module_state(self.backbone), channels=self.channels,
                           gaussian=gaussian_state(self.gaussian) if self.gaussian else None)

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.backbone.load_state_dict(state["backbone"])
        self.channels = state["channels"]
        self.gaussian = gaussian_from_state(state["gaussian"], self.device)

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.gaussian is None:
            raise RuntimeError("fsad/methods/padim.py: call fit(support) before scoring")
        maps = []
        for chunk in embedded[0].split(64):
            distances = mahalanobis(chunk.to(self.device), self.gaussian)  # B x h x w
            maps.append(anomaly_map(distances, as_hw(self.image_size), self.sigma).cpu())
        maps = torch.cat(maps)  # N x S x S
        return Scores(maps=maps, image=image_scores(maps))
