"""Stage ``support_estimation@<category>``: what registration does to the support set.

At test time RegAD turns K support images into 22 K views, runs them through the trained
backbone and STNs, and estimates a Gaussian per feature position. This module exposes the
pieces to look at: every view warped by its composed STN transform (what the last stage
sees), the rotation each STN chain applies, and the per-position variance the Gaussian
is estimated from.

Example:
    >>> model, config = load_model(model_path("mono"))  # doctest: +SKIP
    >>> reg = register_views(model, support[0])  # doctest: +SKIP
    >>> reg.angles[:3]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from fsad.components.views import ROTATIONS, TRANSLATIONS, support_views
from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import to_float
from fsad.methods.regad.detector import extract_features
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.stn import compose_theta, warp


def view_names() -> list[tuple[str, str, float]]:
    """``(name, kind, applied rotation in degrees)`` of the 22 views, in ``support_views`` order."""
    names = [("original", "original", 0.0)]
    names += [(f"rot {a:+g}", "rotation", a) for a in ROTATIONS]
    names += [(f"shift {tx:+g},{ty:+g}", "translation", 0.0) for tx, ty in TRANSLATIONS]
    names += [("flip", "flip", 0.0), ("grey", "grey", 0.0)]
    names += [(f"rot {a}", "rotation", float(a)) for a in (90, 180, 270)]
    return names


@dataclass
class RegisteredViews:
    """The views of one support image and what the STNs make of them.

    Attributes:
        views: 22 x 3 x S x S views in [0, 1].
        warped: 22 x 3 x S x S views warped by the composition of the three STN transforms.
        theta: 22 x 2 x 3 composed transforms.
    """

    views: torch.Tensor
    warped: torch.Tensor
    theta: torch.Tensor

    @property
    def angles(self) -> list[float]:
        """Rotation of each composed transform, in degrees."""
        return [math.degrees(math.atan2(float(t[1, 0]), float(t[0, 0]))) for t in self.theta]

    @property
    def scales(self) -> list[float]:
        """Area scale of each composed transform (determinant of its linear part)."""
        return [float(t[0, 0] * t[1, 1] - t[0, 1] * t[1, 0]) for t in self.theta]


@torch.no_grad()
def register_views(model: RegAD, image: torch.Tensor, device: str = "cpu") -> RegisteredViews:
    """Warp the 22 views of one support image (3 x S x S, uint8 or float) by their STN transforms.

    Every STN works in normalised coordinates, so a stage's transform applies to the image
    as to its feature map; composing the three gives the frame of the last stage.
    """
    x = to_float(image)  # 3 x S x S
    views = support_views(x[None])[0]  # 22 x 3 x S x S
    model.eval().to(device)
    _, thetas = model.transformed_features(views.to(device))
    composed = thetas[0]
    for theta in thetas[1:]:
        composed = compose_theta(composed, theta)  # 22 x 2 x 3
    warped = warp(views.to(device), composed)  # 22 x 3 x S x S
    return RegisteredViews(views, warped.cpu(), composed.cpu())


def angle_table(registered: list[RegisteredViews]) -> pd.DataFrame:
    """One row per (support image, view): view name and kind, applied and STN rotation, STN scale."""
    names = view_names()
    rows = []
    for i, reg in enumerate(registered):
        for (name, kind, applied), angle, scale in zip(names, reg.angles, reg.scales):
            rows.append({"support_image": i, "view": name, "view_kind": kind, "applied_angle": applied,
                         "stn_angle": angle, "stn_scale": scale})
    return pd.DataFrame(rows)


def feature_variance(model: RegAD, support: torch.Tensor, config: RegADConfig) -> torch.Tensor:
    """Per-position variance of the registered support features (mean over channels): h x w.

    The same samples the Gaussian is fitted to: 22 views per image unless
    ``augment_support`` is off.
    """
    x = to_float(support)  # K x 3 x S x S
    if config.augment_support:
        x = support_views(x).flatten(0, 1)  # 22K x 3 x S x S
    features = extract_features(model, x, resolve_device(config.device))  # N x D x h x w
    return features.var(dim=0).mean(dim=0)  # h x w


__all__ = ["RegisteredViews", "angle_table", "feature_variance", "register_views", "view_names"]
