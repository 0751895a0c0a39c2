"""ResAD: class-generalisable anomaly detection on residual features (Yao et al., NeurIPS 2024).

Paper: https://arxiv.org/abs/2410.20047. Pretrained features differ a lot from one
category to the next, but their *residuals* (a feature minus its nearest normal
reference feature) are small for normal patches of any category and large for defects.
ResAD therefore learns, on other categories, a class-agnostic model of normal residuals:
1. feature converter: at each of the three stages, residual = feature - nearest feature
   of the K-shot reference pool (all positions of the K support images, that stage);
2. feature constraintor: a small conv net per stage, trained with a one-class loss that
   pulls normal residuals into a hypersphere around 0 and keeps abnormal ones outside
   (here: mean squared norm per channel for normal positions, squared hinge
   ``relu(1 - rms(z))^2`` for abnormal ones);
3. distribution estimator: a normalising flow per stage (``fsad.components.flow.Flow``,
   unconditional here), trained by maximum likelihood on normal positions plus a
   boundary term pushing abnormal positions' negative log-likelihood above the 90 %
   quantile of the normal ones by ``margin`` nats per channel (after BGAD's
   boundary-guided loss, https://arxiv.org/abs/2207.01463).
The anomaly of a position is its negative log-likelihood per channel, upsampled to the
image and averaged over the stages; the image score is the map's maximum.

Training needs anomalies of the training categories: their real defective test images
and masks where they have masks, synthesised ones (``fsad.data.synthesis``: textures
from dtd-mini, cut-and-paste, noise) where they do not; ``train`` reports which.
The backbone stays frozen, so its features are computed once per training image.

Example:
    >>> resad = ResAD(build_backbone("mobilenet_v2"), image_size=128)
    >>> sources = resad.train(other_categories, ResADSettings(steps=300))  # {"bottle": "synthesised", ...}
    >>> resad.fit(support)
    >>> scores = resad.predict(test_images)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fsad.components.anomaly_map import anomaly_map, image_scores
from fsad.components.backbones import FeatureExtractor
from fsad.components.flow import Flow
from fsad.data.loading import load_images, load_masks
from fsad.data.mvtec import Category
from fsad.data.synthesis import AnomalySynthesizer, textures_from_folder
from fsad.io import save_atomic
from fsad.methods.base import (
    Embedding,
    Detector,
    Scores,
    batched,
    frozen,
    nearest_distances,
    positions,
)
from fsad.paths import DTD_MINI_DIR


@dataclass(frozen=True)
class ResADSettings:
    """Training settings of ResAD (CPU-sized defaults).

    Attributes:
        steps: Optimiser steps.
        normal_per_step: Normal query images per step.
        abnormal_per_step: Anomalous images per step.
        train_shots: K of the reference pool, drawn per step.
        lr: Adam learning rate.
        margin: Boundary margin of the flow loss, nats per channel.
        flow_blocks: Coupling layers per flow.
        max_images: Cap on normal and on anomalous images per training category.
        synthetic_per_category: Anomalies synthesised per category without masks.
        textures: Folder of texture images for synthesis ("" for none: cut-and-paste and noise only).
        seed: Seeds initialisation, sampling and synthesis.
    """

    steps: int = 300
    normal_per_step: int = 4
    abnormal_per_step: int = 4
    train_shots: tuple[int, ...] = (2, 4, 8)
    lr: float = 1e-3
    margin: float = 1.0
    flow_blocks: int = 4
    max_images: int = 120
    synthetic_per_category: int = 60
    textures: str = str(DTD_MINI_DIR)
    seed: int = 0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "train_shots": list(self.train_shots)}


def residuals(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each feature minus its nearest (Euclidean) reference feature.

    Args:
        features: B x C x h x w.
        reference: M x C pool of normal features.

    Returns:
        B x C x h x w residual features.
    """
    b, c, h, w = features.shape
    flat = positions(features)  # (B h w) x C
    nearest = nearest_distances(flat, reference)[1][:, 0]  # (B h w)
    return (flat - reference[nearest]).view(b, h, w, c).permute(0, 3, 1, 2)  # B x C x h x w


class Constraintor(nn.Module):
    """Two 3 x 3 convolutions (BN + ReLU between) that keep the channel count."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return self.net(residual)  # B x C x h x w


class ResADHead(nn.Module):
    """The trained part of ResAD: a constraintor and a flow per backbone stage."""

    def __init__(self, channels: Sequence[int], flow_blocks: int = 4, seed: int = 0):
        super().__init__()
        self.constraintors = nn.ModuleList(Constraintor(c) for c in channels)
        self.flows = nn.ModuleList(Flow(c, flow_blocks, seed=seed + i) for i, c in enumerate(channels))

    def level(self, i: int, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained features (B x C x h x w) and negative log-likelihood per channel (B x h x w)."""
        z = self.constraintors[i](residual)
        b, c, h, w = z.shape
        nll = -self.flows[i].log_prob(positions(z)) / c  # (B h w)
        return z, nll.view(b, h, w)


def one_class_loss(z: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """Normal positions into the sphere around 0, abnormal ones at RMS norm >= 1.

    Args:
        z: B x C x h x w constrained features; normal, abnormal: B x h x w boolean.
    """
    rms = z.pow(2).mean(dim=1).add(1e-12).sqrt()  # B x h x w
    loss = rms[normal].pow(2).mean()
    if abnormal.any():
        loss = loss + F.relu(1 - rms[abnormal]).pow(2).mean()
    return loss


def flow_loss(nll: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor, margin: float) -> torch.Tensor:
    """Maximum likelihood on normal positions; abnormal ones pushed ``margin`` above the normal boundary."""
    loss = nll[normal].mean()
    if abnormal.any():
        boundary = torch.quantile(nll[normal].detach(), 0.9)
        loss = loss + F.relu(boundary + margin - nll[abnormal]).mean()
    return loss


@dataclass
class _TrainingPool:
    """Frozen features of one training category: normal images and anomalies with masks."""

    name: str
    normal: list[torch.Tensor]  # per stage: N x C x h x w
    abnormal: list[torch.Tensor]  # per stage: A x C x h x w
    coverage: list[torch.Tensor]  # per stage: A x h x w, fraction of each cell inside the mask
    source: str  # "real", "synthesised" or "synthesised without textures"


class ResAD(Detector):
    """Residual features -> constraintor -> flow, trained on other categories.

    Args:
        backbone: Pretrained three-stage feature extractor (kept frozen).
        image_size: Side of the square input images and output maps.
        head: A trained head (``None``: a fresh one; call ``train`` or ``load`` before use).
        sigma: Gaussian blur of the maps, in pixels.
        device: Where everything runs.
    """

    name = "resad"

    def __init__(self, backbone: FeatureExtractor, image_size: int, head: ResADHead | None = None,
                 sigma: float = 4.0, device: str = "cpu"):
        self.backbone = frozen(backbone, device)
        self.head = (head or ResADHead(backbone.channels)).to(device).eval()
        self.image_size, self.sigma, self.device = image_size, sigma, device
        self.references: list[torch.Tensor] | None = None

    def embed(self, images: torch.Tensor) -> Embedding:
        """The three stage features, N x C_i x h_i x w_i each."""
        return batched(self.backbone, images, self.device)

    def fit(self, support: torch.Tensor) -> None:
        self.references = [positions(f).to(self.device) for f in self.embed(support)]  # per stage: (K h w) x C

    @torch.no_grad()
    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.references is None:
            raise RuntimeError("fsad/methods/resad.py: call fit(support) before scoring")
        self.head.eval()
        maps = []
        for start in range(0, len(embedded[0]), 32):
            levels = []
            for i, (features, reference) in enumerate(zip(embedded, self.references)):
                chunk = features[start : start + 32].to(self.device)
                nll = self.head.level(i, residuals(chunk, reference))[1]  # B x h x w
                levels.append(F.interpolate(nll[:, None], size=embedded[0].shape[-2:], mode="bilinear", align_corners=False)[:, 0])
            distances = torch.stack(levels).mean(dim=0)  # B x h_0 x w_0
            maps.append(anomaly_map(distances, (self.image_size, self.image_size), self.sigma).cpu())
        maps = torch.cat(maps)
        return Scores(maps=maps, image=image_scores(maps))

    def _pool(self, category: Category, settings: ResADSettings, rng: np.random.Generator,
              textures: torch.Tensor | None) -> _TrainingPool:
        """Features of a training category's normal images and of its (real or synthesised) anomalies."""
        train = list(category.train)
        if len(train) > settings.max_images:
            train = [train[i] for i in sorted(rng.choice(len(train), settings.max_images, replace=False))]
        normal_images = load_images(train, self.image_size, desc=f"resad {category.name}")
        defective = [s for s in category.test if s.label == 1]
        if category.has_masks and defective:
            if len(defective) > settings.max_images:
                defective = [defective[i] for i in sorted(rng.choice(len(defective), settings.max_images, replace=False))]
            abnormal_images, masks, source = load_images(defective, self.image_size), load_masks(defective, self.image_size), "real"
        else:
            synthesizer = AnomalySynthesizer(textures, seed=int(rng.integers(2**31)))
            made = [synthesizer(normal_images[int(rng.integers(len(normal_images)))]) for _ in range(settings.synthetic_per_category)]
            abnormal_images = torch.stack([m[0] for m in made])
            masks = torch.stack([m[1] for m in made])
            source = "synthesised" if textures is not None else "synthesised without textures"
        normal, abnormal = self.embed(normal_images), self.embed(abnormal_images)
        coverage = [F.adaptive_avg_pool2d(masks[:, None], f.shape[-2:])[:, 0] for f in abnormal]  # A x h x w
        return _TrainingPool(category.name, list(normal), list(abnormal), coverage, source)

    def train(self, categories: Sequence[Category], settings: ResADSettings = ResADSettings(),
              progress: bool = True) -> dict[str, str]:
        """Train the head on ``categories`` (every category but the target).

        Each step takes one training category, draws a K-shot reference pool and
        ``normal_per_step`` other normal images from its train images, and
        ``abnormal_per_step`` anomalies; a position of an anomaly is abnormal when at
        least a quarter of its cell is inside the mask and normal when none of it is.

        Returns:
            ``{category: "real" | "synthesised" | "synthesised without textures"}``, where
            each one's anomalies came from.
        """
        rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)
        # Without the texture folder (../shared absent) synthesis falls back to cut-and-paste and noise.
        has_textures = bool(settings.textures) and Path(settings.textures).is_dir()
        textures = textures_from_folder(settings.textures, self.image_size, limit=200, seed=settings.seed) if has_textures else None
        pools = [self._pool(c, settings, rng, textures) for c in categories]
        self.head = ResADHead(self.backbone.channels, settings.flow_blocks, settings.seed).to(self.device)
        optimizer = torch.optim.Adam(self.head.parameters(), lr=settings.lr)
        self.head.train()
        bar = tqdm(range(settings.steps), desc="resad", disable=not progress, leave=False)
        for _ in bar:
            pool = pools[int(rng.integers(len(pools)))]
            n = len(pool.normal[0])
            k = int(rng.choice([s for s in settings.train_shots if s < n] or [n - 1]))
            chosen = rng.permutation(n)[: k + settings.normal_per_step]
            refs, queries = chosen[:k], chosen[k:]
            bad = rng.integers(len(pool.abnormal[0]), size=settings.abnormal_per_step)
            loss = torch.zeros((), device=self.device)
            for i in range(len(pool.normal)):
                reference = positions(pool.normal[i][refs]).to(self.device)  # (K h w) x C
                features = torch.cat([pool.normal[i][queries], pool.abnormal[i][bad]]).to(self.device)  # B x C x h x w
                cover = torch.cat([torch.zeros_like(pool.normal[i][queries][:, 0]), pool.coverage[i][bad]]).to(self.device)  # B x h x w
                normal, abnormal = cover == 0, cover >= 0.25
                z, nll = self.head.level(i, residuals(features, reference))
                loss = loss + one_class_loss(z, normal, abnormal) + flow_loss(nll, normal, abnormal, settings.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        self.head.eval()
        return {p.name: p.source for p in pools}

    def save(self, path: Path, settings: ResADSettings, sources: dict[str, str]) -> None:
        """Write the head, the settings and the anomaly sources to ``path``."""
        save_atomic({"head": self.head.state_dict(), "settings": settings.to_dict(), "sources": sources,
                     "backbone": self.backbone.name, "image_size": self.image_size}, Path(path))

    def load(self, path: Path) -> dict:
        """Load a head saved by ``save``; returns the saved record (settings, sources)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["backbone"] != self.backbone.name or state["image_size"] != self.image_size:
            raise ValueError(f"fsad/methods/resad.py: {path} was trained with {state['backbone']} at {state['image_size']} px, "
                             f"not {self.backbone.name} at {self.image_size} px; delete it to retrain")
        head = ResADHead(self.backbone.channels, state["settings"]["flow_blocks"], state["settings"]["seed"])
        head.load_state_dict(state["head"])
        self.head = head.to(self.device).eval()
        return state
