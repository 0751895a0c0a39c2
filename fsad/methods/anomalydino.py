"""AnomalyDINO: 1-NN cosine distance of test patches to the support patches (Damm et al., WACV 2025).

Paper: "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection with DINOv2",
https://arxiv.org/abs/2405.14529; official code https://github.com/dammsi/AnomalyDINO. What is
taken from them (facts, not code):

- Patch features, L2-normalised; memory bank = every patch of the K supports; a test patch's
  anomaly is its cosine distance ``1 - cos = |a - b|^2 / 2`` to its nearest bank patch
  (``src/detection.py``, ``run_anomaly_detection``: ``knn_metric="L2_normalized"``, 1 neighbour,
  distances / 2).
- Supports augmented by rotations of 0, 45, ..., 315 degrees about the centre, bilinear,
  reflected borders (``src/utils.py``, ``augment_image``; on for every category in the
  "agnostic" preset of ``get_dataset_info``). ``rotation=False`` is the "informed" choice for
  aligned objects.
- Image score: the mean of the top 1 % patch distances, the largest one where 1 % is less than
  one patch (``src/post_eval.py``, ``mean_top1p``); map: bilinear resize + Gaussian blur sigma 4
  (``dists2map``, here ``fsad.components.anomaly_map``).
- Optional foreground masking of the test image (``src/backbones.py``,
  ``DINOv2Wrapper.compute_background_mask``): first PCA component of the image's own raw patch
  features > ``mask_threshold`` (10 for DINOv2), flipped to ``< -threshold`` when the centre crop
  (20 % border) keeps at most 35 % of its patches, then a 3 x 3 dilation and a 3 x 3 closing;
  masked-out patches score 0. Supports are not masked (the code's ``mask_ref_images=False``).
  Off by default: the presets mask only capsule, hazelnut, pill, screw and toothbrush on MVTec,
  none of fsad-mini's categories.

Backbones: ``DinoV2Features`` (ViT-S/14, the paper's; images resized bicubically to
``resolution`` = 448, the preset's shorter side) or a three-stage CNN of
``fsad.components.backbones``, whose patch features are FastRecon's / PatchCore's locally aware
stride-8 features (``fsad.methods.fastrecon.locally_aware_features``): a stride-8 CNN position
sees far less context than a ViT token, and the 3 x 3 aggregation is how those CNN methods add it.

Deviations: exact nearest neighbours by matmul (``fsad.methods.base.nearest_distances``) instead
of faiss (same result); rotations by kornia (grid sampling with reflection, cv2's ``BORDER_DEFAULT``
is reflect-101); the PCA's sign is fixed so that the largest loading is positive (sklearn's
convention), before the centre test that may flip it.

Example:
    >>> detector = AnomalyDINO(build_backbone("mobilenet_v2"), image_size=128)
    >>> detector.fit(support)  # K x 3 x 128 x 128 -> bank of 8 K rotated supports
    >>> scores = detector.predict(test_images)  # maps N x 128 x 128, image N
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fsad.components.anomaly_map import anomaly_map
from fsad.components.backbones import FeatureExtractor
from fsad.components.dinov2 import DinoV2Features
from fsad.data.loading import to_float
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
from fsad.methods.fastrecon import locally_aware_features

ROTATIONS = tuple(float(a) for a in range(0, 360, 45))  # the "agnostic" preset's angles, degrees
TOP_FRACTION = 0.01  # image score: mean of the top 1 % patch distances
BORDER = 0.2  # centre crop of the masking test: 20 % border on each side
MIN_CENTRE_KEPT = 0.35  # ... of which more than 35 % must be foreground, else the sign flips


def rotated_copies(images: torch.Tensor) -> torch.Tensor:
    """Each image rotated by 0, 45, ..., 315 degrees about its centre (reflected borders).

    Args:
        images: K x 3 x H x W in [0, 1].

    Returns:
        8K x 3 x H x W, angle-major: the K images at 0 degrees first.
    """
    import kornia  # here, as in fsad.components.views: start-up of commands that never rotate

    k = len(images)
    angles = images.new_tensor(ROTATIONS).repeat_interleave(k)  # 8K
    return kornia.geometry.transform.rotate(images.repeat(len(ROTATIONS), 1, 1, 1), angles, padding_mode="reflection")


def mean_top_fraction(distances: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Per row, the mean of the ``int(fraction * P)`` largest of its P values; the largest when that is 0.

    Args:
        distances: N x P patch distances.

    Returns:
        N image scores.
    """
    count = max(1, int(distances.shape[1] * fraction))
    return distances.topk(count, dim=1).values.mean(dim=1)


def first_component(features: torch.Tensor) -> torch.Tensor:
    """Scores of the P x D rows on their first principal component (centred), sign: largest loading positive."""
    centred = features - features.mean(dim=0)  # P x D
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    direction = vh[0]  # D
    direction = direction * torch.sign(direction[direction.abs().argmax()])
    return centred @ direction  # P


def foreground_mask(features: torch.Tensor, threshold: float) -> torch.Tensor:
    """AnomalyDINO's PCA foreground mask of one image's raw patch features.

    Args:
        features: D x h x w.
        threshold: On the first principal component's score (10 for DINOv2 ViT-S/14).

    Returns:
        h x w bool, True = foreground (scored).
    """
    _, h, w = features.shape
    score = first_component(positions(features[None])).view(h, w)  # h x w
    mask = score > threshold
    top, left = int(h * BORDER), int(w * BORDER)
    centre = mask[top:int(h * (1 - BORDER)), left:int(w * (1 - BORDER))]
    if centre.sum() <= centre.numel() * MIN_CENTRE_KEPT:  # the object is on the other side of the component
        mask = -score > threshold
    grid = mask.float()[None, None]  # 1 x 1 x h x w
    dilated = F.max_pool2d(grid, 3, stride=1, padding=1)
    closed = -F.max_pool2d(-F.max_pool2d(dilated, 3, stride=1, padding=1), 3, stride=1, padding=1)  # dilate, then erode
    return closed[0, 0] > 0.5


class AnomalyDINO(Detector):
    """Nearest support patch by cosine distance, over supports rotated in steps of 45 degrees.

    Args:
        backbone: ``DinoV2Features`` or a three-stage CNN ``FeatureExtractor`` (kept frozen).
        image_size: Side of the square input images and output maps, or their (H, W).
        rotation: Add the 7 rotated copies of every support (the "agnostic" preset).
        masking: Score only the PCA foreground of each test image.
        mask_threshold: Threshold on the first principal component (10 for DINOv2; on another
            backbone's scale choose it from that backbone's features).
        resolution: Side the images are resized to for a ViT (multiple of its patch size; the
            paper: 448), the short side of a non-square ``image_size`` (the long one in
            proportion); ``None`` for a CNN, which sees ``image_size``.
        sigma: Gaussian blur of the maps, in pixels (the paper: 4).
        device: Where features are computed and compared.
    """

    def __init__(self, backbone: FeatureExtractor | DinoV2Features, image_size: int | tuple[int, int], rotation: bool = True, masking: bool = False,
                 mask_threshold: float = 10.0, resolution: int | None = None, sigma: float = 4.0, device: str = "cpu"):
        vit = isinstance(backbone, DinoV2Features)
        if vit and (resolution is None or resolution < backbone.patch_size or resolution % backbone.patch_size):
            raise ValueError(f"fsad/methods/anomalydino.py: resolution must be a multiple of {backbone.patch_size} for "
                             f"{backbone.name}, got {resolution}; the paper uses 448")
        if not vit and resolution is not None:
            raise ValueError(f"fsad/methods/anomalydino.py: resolution={resolution} is for a ViT backbone; a CNN sees "
                             "image_size: drop resolution or set image_size")
        self.name = "anomalydino_dinov2" if vit else "anomalydino"  # the registry name of each backbone
        self.backbone = frozen(backbone, device)
        self.image_size, self.rotation, self.masking, self.mask_threshold = image_size, rotation, masking, mask_threshold
        self.resolution, self.sigma, self.device = resolution, sigma, device
        self.bank: torch.Tensor | None = None  # M x D, unit rows

    def _vit_size(self) -> tuple[int, int]:
        """The ViT's input (H, W): ``resolution`` on the short side of ``image_size``, the long side in proportion,
        rounded to the patch size (square: resolution x resolution, the paper's)."""
        height, width = as_hw(self.image_size)
        patch, scale = self.backbone.patch_size, self.resolution / min(height, width)
        return tuple(max(patch, round(side * scale / patch) * patch) for side in (height, width))

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S in [0, 1] -> B x D x h x w patch features before normalisation."""
        if self.resolution is None:
            return locally_aware_features(self.backbone, x)
        x = F.interpolate(x, size=self._vit_size(), mode="bicubic", antialias=True, align_corners=False)
        return self.backbone(x.clamp(0, 1))

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self._raw(x)  # B x D x h x w
        if self.masking:
            mask = torch.stack([foreground_mask(f, self.mask_threshold) for f in raw])  # B x h x w
        else:
            mask = torch.ones(raw.shape[0], *raw.shape[2:], dtype=torch.bool, device=raw.device)
        return F.normalize(raw, dim=1), mask

    def embed(self, images: torch.Tensor) -> Embedding:
        """Unit patch features N x D x h x w and the foreground masks N x h x w (all True without masking)."""
        return batched(self._features, images, self.device)

    def fit(self, support: torch.Tensor) -> None:
        images = to_float(support.to(self.device))  # K x 3 x S x S, rotated on the device
        if self.rotation:
            images = rotated_copies(images)  # 8K x 3 x S x S
        self.bank = positions(self.embed(images)[0]).to(self.device)  # (8K h w) x D

    def architecture(self) -> dict[str, Any]:
        if self.resolution is None:
            return backbone_architecture(self.backbone, self.image_size)
        size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {"backbone": self.backbone.name, "channels": [self.backbone.channels], "image_size": size,
                "resolution": self.resolution}

    def state(self) -> dict[str, Any]:
        """Backbone weights and the bank of unit support patches (M x D)."""
        return self._state(self.bank, backbone=module_state(self.backbone), bank=self.bank.cpu() if self.bank is not None else None)

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.backbone.load_state_dict(state["backbone"])
        self.bank = state["bank"].to(self.device)

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.bank is None:
            raise RuntimeError("fsad/methods/anomalydino.py: call fit(support) before scoring")
        # Queries per matmul such that the chunk x M ranking matrix stays near 64 MiB (the bank has 8 K h w rows).
        chunk = max(256, 2**24 // len(self.bank))
        maps, image = [], []
        for _, (features, mask) in device_chunks(embedded, self.device):  # B x D x h x w, B x h x w
            b, _, h, w = features.shape
            euclidean = nearest_distances(positions(features), self.bank, chunk=chunk)[0][:, 0]  # (B h w), unit vectors
            distances = (euclidean.square() / 2).view(b, h, w) * mask  # 1 - cos; background scores 0
            maps.append(anomaly_map(distances, as_hw(self.image_size), self.sigma).cpu())
            image.append(mean_top_fraction(distances.flatten(1)).cpu())
        return Scores(maps=torch.cat(maps), image=torch.cat(image))
