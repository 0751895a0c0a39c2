"""PatchCore: a memory bank of locally aware patch features (Roth et al., CVPR 2022).

Paper: https://arxiv.org/abs/2106.08265. Features of the middle stages (stride 8 and 16;
WRN-50's layer2 and layer3 in the paper) are each averaged over a 3 x 3 neighbourhood
(local awareness), the deeper one is upsampled to stride 8, and both are concatenated.
All support patches form the memory bank, optionally subsampled by greedy k-center
coreset selection (on a random projection, as in the paper); few-shot banks are small,
so ``coreset_ratio=1.0`` (keep everything) is the default here. A patch's anomaly is its
distance to the nearest bank patch. The image score is the largest patch score, reweighted
by how isolated its nearest bank patch is (paper, eq. 7):
``s = (1 - exp|m_test - m*| / sum_{m in N_b(m*)} exp|m_test - m|) * s*``.

Example:
    >>> patchcore = PatchCore(build_backbone("mobilenet_v2"), image_size=128, coreset_ratio=0.1)
    >>> patchcore.fit(support)
    >>> scores = patchcore.predict(test_images)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fsad.components.anomaly_map import anomaly_map
from fsad.components.backbones import FeatureExtractor
from fsad.data.mvtec import as_hw
from fsad.methods.base import (
    Detector,
    Embedding,
    Scores,
    backbone_architecture,
    batched,
    device_chunks,
    frozen,
    module_state,
    nearest_distances,
    positions,
)


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int | None = 128, seed: int = 0) -> torch.Tensor:
    """Indices of ``count`` rows chosen by greedy k-center selection.

    Starts at a seeded random row; each step adds the row farthest (Euclidean) from all
    chosen ones. Distances are measured after a seeded Gaussian random projection to
    ``projection_dim`` dimensions when the features have more (Johnson-Lindenstrauss, as
    in the paper); ``None`` measures them on the features themselves.

    Args:
        features: N x D.
        count: Rows to keep, 1 <= count <= N.

    Returns:
        ``count`` indices in the order they were chosen.

    Example:
        >>> greedy_coreset(torch.tensor([[0.0], [1.0], [10.0]]), 2, projection_dim=None, seed=0)
        tensor([0, 2])
    """
    n, d = features.shape
    if not 1 <= count <= n:
        raise ValueError(f"fsad/methods/patchcore.py: coreset size must be in [1, {n}], got {count}")
    generator = torch.Generator().manual_seed(seed)  # on the host: the same draws on every device
    if projection_dim is not None and d > projection_dim:
        projection = torch.randn(d, projection_dim, generator=generator, device="cpu") / math.sqrt(projection_dim)
        features = features @ projection.to(features)  # N x projection_dim
    chosen = [int(torch.randint(n, (1,), generator=generator, device="cpu"))]
    closest = torch.linalg.vector_norm(features - features[chosen[0]], dim=1)  # N
    for _ in range(count - 1):
        index = int(closest.argmax())
        chosen.append(index)
        closest = torch.minimum(closest, torch.linalg.vector_norm(features - features[index], dim=1))
    return torch.tensor(chosen, device=features.device)


def reweighted_score(patch_feature: torch.Tensor, bank: torch.Tensor, neighbours: int) -> torch.Tensor:
    """PatchCore's image score from the most anomalous test patch (paper, eq. 7).

    Args:
        patch_feature: D, the test patch m_test with the largest nearest-neighbour distance s*.
        bank: M x D memory bank.
        neighbours: b, the size of N_b(m*) (m* itself included).

    Returns:
        The scalar ``(1 - softmax_{m in N_b(m*)}(|m_test - m|)[m*]) * s*``.
    """
    distances = torch.linalg.vector_norm(bank - patch_feature, dim=1)  # M
    nearest = int(distances.argmin())
    b = min(neighbours, len(bank))
    around = torch.linalg.vector_norm(bank - bank[nearest], dim=1).topk(b, largest=False).indices  # N_b(m*)
    around = torch.cat([around.new_tensor([nearest]), around[around != nearest]])[:b]  # m* first
    weight = 1 - torch.softmax(distances[around], dim=0)[0]
    return weight * distances[nearest]


class PatchCore(Detector):
    """Nearest-neighbour distance to a (coreset-subsampled) bank of support patches.

    Args:
        backbone: Pretrained three-stage feature extractor (kept frozen); stages 2 and 3 are used.
        image_size: Side of the square input images and output maps, or their (H, W).
        coreset_ratio: Fraction of support patches kept in the bank, in (0, 1].
        projection_dim: Random-projection size for the coreset distances (None: none).
        neighbours: b of the reweighting (N_b(m*)).
        sigma: Gaussian blur of the maps, in pixels (the paper: 4).
        seed: Seed of the coreset start and projection.
        device: Where features are computed and compared.
    """

    name = "patchcore"

    def __init__(self, backbone: FeatureExtractor, image_size: int | tuple[int, int], coreset_ratio: float = 1.0,
                 projection_dim: int | None = 128, neighbours: int = 9, sigma: float = 4.0, seed: int = 0,
                 device: str = "cpu"):
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"fsad/methods/patchcore.py: coreset_ratio must be in (0, 1], got {coreset_ratio}")
        self.backbone = frozen(backbone, device)
        self.image_size, self.coreset_ratio, self.projection_dim = image_size, coreset_ratio, projection_dim
        self.neighbours, self.sigma, self.seed, self.device = neighbours, sigma, seed, device
        self.bank: torch.Tensor | None = None

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        _, mid, deep = self.backbone(x)
        # 3 x 3 neighbourhood average (zero padding, as the paper's unfold) = local awareness.
        mid, deep = (F.avg_pool2d(f, 3, stride=1, padding=1) for f in (mid, deep))
        deep = F.interpolate(deep, size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return (torch.cat([mid, deep], dim=1),)  # B x D x h x w

    def embed(self, images: torch.Tensor) -> Embedding:
        """Locally aware patch features at stride 8, N x D x h x w."""
        return batched(self._features, images, self.device)

    def fit(self, support: torch.Tensor) -> None:
        patches = positions(self.embed(support)[0]).to(self.device)  # (K h w) x D
        if self.coreset_ratio < 1:
            count = max(1, round(self.coreset_ratio * len(patches)))
            patches = patches[greedy_coreset(patches, count, self.projection_dim, self.seed).to(self.device)]
        self.bank = patches

    def architecture(self) -> dict[str, Any]:
        return backbone_architecture(self.backbone, self.image_size)

    def state(self) -> dict[str, Any]:
        """Backbone weights and the memory bank (M x D)."""
        return self._state(self.bank, backbone=module_state(self.backbone),
                           bank=self.bank.cpu() if self.bank is not None else None)

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.backbone.load_state_dict(state["backbone"])
        self.bank = state["bank"].to(self.device)

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.bank is None:
            raise RuntimeError("fsad/methods/patchcore.py: call fit(support) before scoring")
        maps, image = [], []
        for _, (features,) in device_chunks(embedded, self.device):  # B x D x h x w
            b, _, h, w = features.shape
            patches = positions(features)  # (B h w) x D
            distances = nearest_distances(patches, self.bank)[0].view(b, h * w)  # B x hw
            worst = distances.argmax(dim=1)  # B
            image += [reweighted_score(patches[i * h * w + int(worst[i])], self.bank, self.neighbours).cpu() for i in range(b)]
            maps.append(anomaly_map(distances.view(b, h, w), as_hw(self.image_size), self.sigma).cpu())
        return Scores(maps=torch.cat(maps), image=torch.stack(image))
