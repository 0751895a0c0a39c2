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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fsad.components.anomaly_map import anomaly_map, image_scores
from fsad.components.backbones import FeatureExtractor
from fsad.components.flow import Flow
from fsad.config import ResADSettings
from fsad.data.fingerprint import PARTS, category_fingerprint
from fsad.data.loading import load_images, load_masks
from fsad.data.mvtec import Category, as_hw
from fsad.data.synthesis import AnomalySynthesizer, textures_from_folder
from fsad.io import save_atomic
from fsad.methods.base import (
    Detector,
    Embedding,
    Scores,
    backbone_architecture,
    batched,
    frozen,
    module_state,
    nearest_distances,
    positions,
)


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
        image_size: Side of the square input images and output maps, or their (H, W).
        head: A trained head (``None``: a fresh one; call ``train`` or ``load`` before use).
        sigma: Gaussian blur of the maps, in pixels.
        device: Where everything runs.
    """

    name = "resad"

    def __init__(self, backbone: FeatureExtractor, image_size: int | tuple[int, int], head: ResADHead | None = None,
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

    def architecture(self) -> dict[str, Any]:
        return backbone_architecture(self.backbone, self.image_size)

    def state(self) -> dict[str, Any]:
        """Backbone and head weights, the head's flow size, and the reference pools ((K h w) x C per stage)."""
        flows = len(self.head.flows[0].couplings)
        return self._state(self.references, backbone=module_state(self.backbone), head=module_state(self.head),
                           flow_blocks=flows, references=[r.cpu() for r in self.references or ()])

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.backbone.load_state_dict(state["backbone"])
        # The seed only initialises the flows' permutations, which the state dict then overwrites.
        head = ResADHead(self.backbone.channels, state["flow_blocks"])
        head.load_state_dict(state["head"])
        self.head = head.to(self.device).eval()
        self.references = [r.to(self.device) for r in state["references"]]

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
            maps.append(anomaly_map(distances, as_hw(self.image_size), self.sigma).cpu())
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
        with self.backbone.full_precision():  # precision is a test-time setting: the head learns from fp32 features
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

    def save(self, path: Path, settings: ResADSettings, sources: dict[str, str], categories: Sequence[Category] = ()) -> None:
        """Write the head, the settings, the anomaly sources and the fingerprints of the training
        ``categories``' files to ``path`` (all of them: real anomalies come from their test images)."""
        save_atomic({"head": self.head.state_dict(), "settings": settings.to_dict(), "sources": sources,
                     "backbone": self.backbone.name, "image_size": self.image_size,
                     "train_fingerprints": {c.name: category_fingerprint(c, PARTS) for c in categories}}, Path(path))

    @staticmethod
    def saved_differences(path: Path, settings: ResADSettings, categories: Sequence[Category]) -> list[str]:
        """What differs between the head saved at ``path`` and the training asked for (empty: reuse it).

        A file without fingerprints (an older fsad wrote it) counts as changed: retraining takes minutes.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, wanted = state["settings"], settings.to_dict()
        changed = [f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in sorted(wanted) if saved.get(k) != wanted[k]]
        recorded = state.get("train_fingerprints")
        now = {c.name: category_fingerprint(c, PARTS) for c in categories}
        if recorded is None:
            changed.append("it records no fingerprint of its training data (an older fsad wrote it)")
        elif recorded != now:
            names = sorted(n for n in {*recorded, *now} if recorded.get(n) != now.get(n))
            changed.append(f"the files of training categor{'y' if len(names) == 1 else 'ies'} {', '.join(names)} changed")
        return changed

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
