"""FastRecon: each test image's features reconstructed from the support features (Fang et al., ICCV 2023).

Paper: "FastRecon: Few-shot Industrial Anomaly Detection via Fast Feature Reconstruction",
ICCV 2023 open access (openaccess.thecvf.com, "Fang_FastRecon_..._ICCV_2023_paper");
official code https://github.com/FzJun26th/FastRecon (``main.py``, class ``STPM``). What is taken
from them (facts, not code):

- Features (``STPM.__init__`` / ``training_step``): the backbone's stride-8 and stride-16 stages
  (WRN-50 ``layer2`` and ``layer3`` there), each averaged over 3 x 3 neighbourhoods, the deeper
  one repeated onto the stride-8 grid and concatenated (``embedding_concat``: a nearest-neighbour
  upsampling, ``fsad.methods.base.concat_stages``).
- Support pool: every position of the K support images, subsampled by greedy k-center coreset
  selection (``training_epoch_end``; ``--coreset_sampling_ratio 0.01`` in the README's usage; ``int(ratio * positions)`` rows) to
  S (M x D). The distribution prior mu: the mean support feature at each position (``Cal_Mu_Cor``,
  hw x D).
- Regression with distribution regularisation (``test_step``): for a query's features Q (hw x D),
  ``W = argmin |Q - W S|^2 + lambda |mu - W S|^2 = (Q + lambda mu) S^T ((1 + lambda) S S^T)^-1``,
  ``lambda = 2`` (``--lambde``); the reconstruction is ``Q_hat = W S``, which keeps the query's
  look (first term) but only the normal samples' content (rows of S, pulled towards mu).
- Anomaly of a position: ``|Q - Q_hat|`` (L2 over channels); image score: the largest position
  score; map: bilinear resize + Gaussian blur sigma 4 (``fsad.components.anomaly_map``).

``W S = ((Q + lambda mu) / (1 + lambda)) P`` with ``P = S^T (S S^T)^-1 S``, the projection onto the
span of the coreset rows; ``fit`` computes P once per support set (D x D), so scoring is one
matmul per image. Deviation: P is computed with the pseudo-inverse (``torch.linalg.pinv(S) S``),
equal to the official inverse whenever ``S S^T`` is invertible (M <= D and S of full rank) and
still defined when it is not (M > D, e.g. a 128-channel MobileNetV2 with many supports, where P
becomes the identity and the score the distance to ``(Q + lambda mu) / (1 + lambda)``).
The coreset is ``fsad.methods.patchcore.greedy_coreset`` (Gaussian projection to 128 dimensions
where features are wider) instead of the official sparse random projection; at least one row is kept.
Deviation: the default ratio keeps the official number of rows per support image (1 % of the 28 x 28
positions of a 224-px image, 7.84) at every image size (``coreset_ratio_for``): a fixed 1 % of a
smaller grid spans fewer directions (5 rows for K = 2 at 128 px, 1 on a 64-px image, where the
reconstruction is meaningless); ``coreset_ratio=0.01`` is the official setting as such.

Example:
    >>> fastrecon = FastRecon(build_backbone("mobilenet_v2"), image_size=128)
    >>> fastrecon.fit(support)  # K x 3 x 128 x 128
    >>> scores = fastrecon.predict(test_images)  # maps N x 128 x 128, image N
"""

from __future__ import annotations

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
    concat_stages,
    device_chunks,
    frozen,
    module_state,
    positions,
)
from fsad.methods.patchcore import greedy_coreset

# The official 1 % coreset of a 224-px input's 28 x 28 stride-8 grid: 7.84 rows per support image.
OFFICIAL_RATIO = 0.01
OFFICIAL_POSITIONS = 28 * 28


def coreset_ratio_for(image_size: int | tuple[int, int]) -> float:
    """The ratio that keeps the official number of coreset rows per support image at ``image_size`` (a side or (H, W)).

    ``0.01 * 784 / ((H // 8) (W // 8))``, at most 1: 0.01 at 224 px, 0.031 at 128 px, 0.0077 at 256 px.
    """
    height, width = as_hw(image_size)
    return min(1.0, OFFICIAL_RATIO * OFFICIAL_POSITIONS / max(1, (height // 8) * (width // 8)))


def locally_aware_features(backbone: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
    """FastRecon's patch features: stages 2 and 3, 3 x 3 averaged, concatenated at stride 8.

    Args:
        backbone: A three-stage extractor (strides 4, 8, 16).
        images: B x 3 x S x S in [0, 1].

    Returns:
        B x (C_2 + C_3) x S/8 x S/8; stage 3 repeated over each 2 x 2 block (nearest), as the
        official ``embedding_concat``.
    """
    _, mid, deep = backbone(images)
    # Zero-padded 3 x 3 mean (count_include_pad, as torch.nn.AvgPool2d(3, 1, 1) of the official code).
    mid, deep = (F.avg_pool2d(f, 3, stride=1, padding=1) for f in (mid, deep))
    return concat_stages([mid, deep])


def span_projection(coreset: torch.Tensor) -> torch.Tensor:
    """``P = S^T (S S^T)^+ S = S^+ S``: the D x D orthogonal projection onto the span of the M x D rows of S."""
    return torch.linalg.pinv(coreset) @ coreset  # D x D


def reconstruct(queries: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor, regularization: float) -> torch.Tensor:
    """FastRecon's closed-form reconstruction ``W S`` of each image's positions.

    Args:
        queries: N x hw x D test features Q.
        mean: hw x D support mean mu at each position.
        projection: D x D, ``span_projection(S)``.
        regularization: lambda, the weight of ``|mu - W S|^2``.

    Returns:
        N x hw x D, ``((Q + lambda mu) / (1 + lambda)) P``.
    """
    return ((queries + regularization * mean) / (1 + regularization)) @ projection


class FastRecon(Detector):
    """Reconstruction error of test features rebuilt from a coreset of support features.

    Args:
        backbone: Pretrained three-stage feature extractor (kept frozen); stages 2 and 3 are used.
        image_size: Side of the square input images and output maps, or their (H, W).
        coreset_ratio: Fraction of the support positions kept in S, in (0, 1]; ``None``:
            ``coreset_ratio_for(image_size)``, the official 1 % at 224 px scaled to keep its rows per image.
        regularization: lambda of the distribution regulariser (official: 2), >= 0.
        sigma: Gaussian blur of the maps, in pixels (official: 4).
        seed: Seed of the coreset's start and projection.
        device: Where features are computed and compared.
    """

    name = "fastrecon"

    def __init__(self, backbone: FeatureExtractor, image_size: int | tuple[int, int], coreset_ratio: float | None = None, regularization: float = 2.0,
                 sigma: float = 4.0, seed: int = 0, device: str = "cpu"):
        coreset_ratio = coreset_ratio_for(image_size) if coreset_ratio is None else coreset_ratio
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"fsad/methods/fastrecon.py: coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if regularization < 0:
            raise ValueError(f"fsad/methods/fastrecon.py: regularization (lambda) must be >= 0, got {regularization}")
        self.backbone = frozen(backbone, device)
        self.image_size, self.coreset_ratio, self.regularization = image_size, coreset_ratio, regularization
        self.sigma, self.seed, self.device = sigma, seed, device
        self.coreset: torch.Tensor | None = None  # M x D
        self.mean: torch.Tensor | None = None  # hw x D
        self.projection: torch.Tensor | None = None  # D x D

    def embed(self, images: torch.Tensor) -> Embedding:
        """Locally aware features at stride 8, N x D x h x w."""
        return batched(lambda x: (locally_aware_features(self.backbone, x),), images, self.device)

    def fit(self, support: torch.Tensor) -> None:
        features = self.embed(support)[0].to(self.device)  # K x D x h x w
        pool = positions(features)  # (K h w) x D
        count = max(1, int(self.coreset_ratio * len(pool)))  # int(): the official count
        self._set(pool[greedy_coreset(pool, count, seed=self.seed).to(self.device)],
                  positions(features.mean(dim=0, keepdim=True)))  # M x D, hw x D

    def _set(self, coreset: torch.Tensor, mean: torch.Tensor) -> None:
        self.coreset, self.mean = coreset, mean
        self.projection = span_projection(coreset)

    def architecture(self) -> dict[str, Any]:
        return backbone_architecture(self.backbone, self.image_size)

    def state(self) -> dict[str, Any]:
        """Backbone weights, the coreset S (M x D) and the position means mu (hw x D)."""
        fitted = self.coreset is not None
        return self._state(self.coreset, backbone=module_state(self.backbone),
                           coreset=self.coreset.cpu() if fitted else None, mean=self.mean.cpu() if fitted else None)

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.backbone.load_state_dict(state["backbone"])
        self._set(state["coreset"].to(self.device), state["mean"].to(self.device))

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.projection is None:
            raise RuntimeError("fsad/methods/fastrecon.py: call fit(support) before scoring")
        _, _, h, w = embedded[0].shape  # N x D x h x w
        if h * w != len(self.mean):
            raise ValueError(f"fsad/methods/fastrecon.py: test features are {h}x{w} positions, the support mean has "
                             f"{len(self.mean)}; score images of the size the detector was fitted on ({self.image_size} px)")
        maps, image = [], []
        for _, (features,) in device_chunks(embedded, self.device):  # B x D x h x w
            queries = features.flatten(2).transpose(1, 2)  # B x hw x D
            errors = torch.linalg.vector_norm(queries - reconstruct(queries, self.mean, self.projection, self.regularization), dim=2)
            errors = errors.view(len(features), h, w)  # B x h x w
            maps.append(anomaly_map(errors, as_hw(self.image_size), self.sigma).cpu())
            image.append(errors.flatten(1).amax(dim=1).cpu())
        return Scores(maps=torch.cat(maps), image=torch.cat(image))
