"""SPADE: semantic pyramid anomaly detection by k nearest neighbours (Cohen and Hoshen, 2020).

Paper: https://arxiv.org/abs/2005.02357. Two kNN steps on pretrained features, no training:
1. image level: the distance of a test image's pooled deepest feature to its ``top_k``
   nearest normal images (mean over them) is its image score, and those images are
   kept as its gallery;
2. pixel level: every position's multi-layer feature (the three stages upsampled to
   stride 4 and concatenated) is compared with all positions of the gallery images; the
   mean distance to its ``kappa`` nearest gallery features is its anomaly.
The paper uses top_k = 50 and kappa = 1; with K <= 50 supports, every test image's gallery
is the whole support set. Maps are upsampled and blurred (sigma 4) as in the paper.

Example:
    >>> spade = SPADE(build_backbone("mobilenet_v2"), image_size=128)
    >>> spade.fit(support)  # K x 3 x 128 x 128
    >>> scores = spade.predict(test_images)  # maps N x 128 x 128, image N (pooled kNN distance)
"""

from __future__ import annotations

from typing import Any

import torch

from fsad.components.anomaly_map import anomaly_map
from fsad.components.backbones import FeatureExtractor
from fsad.data.mvtec import as_hw
from fsad.methods.base import (
    Detector,
    Embedding,
    Scores,
    backbone_architecture,
    batched,
    concat_stages,
    device_chunks,
    frozen,
    module_state,
    nearest_distances,
    positions,
)


class SPADE(Detector):
    """Image-level kNN, then per-pixel kNN against the nearest normal images' features.

    Args:
        backbone: Pretrained three-stage feature extractor (kept frozen).
        image_size: Side of the square input images and output maps, or their (H, W).
        top_k: Nearest normal images per test image (paper: 50).
        kappa: Nearest gallery features per pixel (paper: 1).
        sigma: Gaussian blur of the maps, in pixels.
        device: Where features are computed and compared.
    """

    name = "spade"

    def __init__(self, backbone: FeatureExtractor, image_size: int | tuple[int, int], top_k: int = 50, kappa: int = 1,
                 sigma: float = 4.0, device: str = "cpu"):
        if top_k < 1 or kappa < 1:
            raise ValueError(f"fsad/methods/spade.py: top_k and kappa must be >= 1, got {top_k}, {kappa}")
        self.backbone = frozen(backbone, device)
        self.image_size, self.top_k, self.kappa, self.sigma, self.device = image_size, top_k, kappa, sigma, device
        self.support: Embedding | None = None

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stages = self.backbone(x)
        pooled = stages[-1].mean(dim=(2, 3))  # B x C_3
        return pooled, concat_stages(stages)  # B x D x h x w

    def embed(self, images: torch.Tensor) -> Embedding:
        """Pooled deepest features (N x C_3) and multi-layer pixel features (N x D x h x w)."""
        return batched(self._features, images, self.device)

    def fit(self, support: torch.Tensor) -> None:
        self.support = self.embed(support)

    def architecture(self) -> dict[str, Any]:
        return backbone_architecture(self.backbone, self.image_size)

    def state(self) -> dict[str, Any]:
        """Backbone weights and the support embeddings (pooled N x C_3, pixels N x D x h x w)."""
        return self._state(self.support, backbone=module_state(self.backbone), support=list(self.support or ()))

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.backbone.load_state_dict(state["backbone"])
        self.support = tuple(state["support"])

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.support is None:
            raise RuntimeError("fsad/methods/spade.py: call fit(support) before scoring")
        support_pooled, support_pixels = (t.to(self.device) for t in self.support)
        k = min(self.top_k, len(support_pooled))
        image_distances, nearest_images = nearest_distances(embedded[0].to(self.device), support_pooled, k)  # N x k each
        # With k = K every test image's gallery is the whole support set: (K h w) x D.
        gallery = positions(support_pixels) if k == len(support_pooled) else None
        maps = []
        for start, (_, pixels) in device_chunks(embedded, self.device):  # B x D x h x w
            b, _, h, w = pixels.shape
            if gallery is not None:
                distances = nearest_distances(positions(pixels), gallery, self.kappa)[0]  # (B h w) x kappa
                distances = distances.mean(dim=1).view(b, h, w)
            else:
                distances = torch.stack([
                    nearest_distances(positions(pixels[i : i + 1]), positions(support_pixels[nearest_images[start + i]]),
                                      self.kappa)[0].mean(dim=1).view(h, w)
                    for i in range(b)
                ])  # B x h x w
            maps.append(anomaly_map(distances, as_hw(self.image_size), self.sigma).cpu())
        return Scores(maps=torch.cat(maps), image=image_distances.mean(dim=1).cpu())
