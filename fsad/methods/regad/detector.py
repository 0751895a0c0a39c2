"""RegAD as a ``Detector``: a trained (or untrained) registration network + Gaussian.

Paper: https://arxiv.org/abs/2207.07361. Wraps the project's RegAD test-time pipeline
(``fsad.study.evaluation``: registered features, 22 support views, per-position Gaussian,
Mahalanobis maps) so the comparison harness treats it like every other method. With an
untrained network (identity STNs, ImageNet backbone) it is the ablation "registration
training off".

Example:
    >>> model, config = load_model(Path("runs/fsad-mini/models/pcb/regad.pt"))
    >>> regad = RegADMethod(model, config)
    >>> regad.fit(support)
    >>> scores = regad.predict(test_images)
"""

from __future__ import annotations

from typing import Any

import torch

from fsad.components.anomaly_map import anomaly_map, image_scores
from fsad.components.gaussian import Gaussian, fit_gaussian, mahalanobis
from fsad.components.views import support_views
from fsad.config import RegADConfig, resolve_device
from fsad.methods.base import Detector, Embedding, Scores, gaussian_from_state, gaussian_state, module_state, to_float
from fsad.methods.regad.checkpoint import ARCHITECTURE_KEYS
from fsad.methods.regad.network import RegAD


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
        out.append(model.registered_features(to_float(chunk).to(device)).cpu())
    return torch.cat(out)


def fit_support(model: RegAD, support: torch.Tensor, config: RegADConfig, device: str) -> Gaussian:
    """Per-position Gaussian of the support images' registered features (22 views each unless disabled)."""
    x = to_float(support)  # K x 3 x H x W
    if config.augment_support:
        x = support_views(x).flatten(0, 1)  # 22K x 3 x H x W
    features = extract_features(model, x, device).to(device)  # 22K x D x h x w
    return fit_gaussian(features, eps=config.eps)


def score_maps(gaussian: Gaussian, features: torch.Tensor, config: RegADConfig, device: str) -> torch.Tensor:
    """N x S x S anomaly maps of test features against a support Gaussian."""
    maps = []
    for chunk in features.split(64):
        distances = mahalanobis(chunk.to(device), gaussian)  # B x h x w
        maps.append(anomaly_map(distances, (config.image_size, config.image_size), config.blur_sigma).cpu())
    return torch.cat(maps)


class RegADMethod(Detector):
    """RegAD's test-time protocol on a given network.

    Args:
        model: The RegAD network (trained on other categories, or untrained).
        config: Test-time settings (image size, eps, blur, ``augment_support``, device).
        name: Name in the results (``regad``, ``untrained``, an ablation's name).
    """

    def __init__(self, model: RegAD, config: RegADConfig, name: str = "regad"):
        self.model, self.config, self.name = model.eval(), config, name
        self.device, self.image_size = resolve_device(config.device), config.image_size
        self.min_support = 1 if config.augment_support else 2
        self.gaussian: Gaussian | None = None

    def embed(self, images: torch.Tensor) -> Embedding:
        """Registered features, N x D x h x w."""
        return (extract_features(self.model, images, self.device),)

    def fit(self, support: torch.Tensor) -> None:
        if not self.config.augment_support and len(support) < 2:
            raise ValueError("fsad/methods/regad/detector.py: without support views a covariance needs K >= 2")
        self.gaussian = fit_support(self.model, support, self.config, self.device)

    def architecture(self) -> dict[str, Any]:
        settings = self.config.to_dict()
        return {k: settings[k] for k in ARCHITECTURE_KEYS}

    def state(self) -> dict[str, Any]:
        """The network's weights (backbone, STNs, Siamese head) and the per-position Gaussian."""
        return self._state(self.gaussian, model=module_state(self.model),
                           gaussian=gaussian_state(self.gaussian) if self.gaussian else None)

    def load_state(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.gaussian = gaussian_from_state(state["gaussian"], self.device)

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.gaussian is None:
            raise RuntimeError("fsad/methods/regad/detector.py: call fit(support) before scoring")
        maps = score_maps(self.gaussian, embedded[0], self.config, self.device)  # N x S x S
        return Scores(maps=maps, image=image_scores(maps))
