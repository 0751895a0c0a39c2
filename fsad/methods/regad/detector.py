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
from fsad.components.backbones import ModuleSnapshot
from fsad.components.gaussian import Gaussian, fit_gaussian, mahalanobis
from fsad.components.views import SupportViewFeatures
from fsad.config import RegADConfig, resolve_device
from fsad.data.mvtec import as_hw
from fsad.methods.base import Detector, Embedding, Scores, gaussian_from_state, gaussian_state, module_state, to_float
from fsad.methods.regad.checkpoint import ARCHITECTURE_KEYS
from fsad.methods.regad.network import RegAD


@torch.inference_mode()
def extract_features(model: RegAD, images: torch.Tensor, device: str, batch_size: int = 32) -> torch.Tensor:
    """Registered features of uint8 or float images, on the CPU.

    Args:
        images: N x 3 x H x W (uint8 or float in [0, 1]).

    Returns:
        N x D x h x w float32, channels-last in memory: each position's D channels are
        contiguous, so scoring and fitting gather whole vectors per position (2-3x faster
        Mahalanobis distances than from the N x D x h x w layout, same values).
    """
    model.eval().to(device)
    out = []
    for chunk in images.split(batch_size):
        # Channels-last input: oneDNN's convolutions skip a layout conversion per layer (with the
        # network's weights channels-last too, RegADMethod.inference_network: 1.7x at 128 px).
        chunk = to_float(chunk.to(device)).contiguous(memory_format=torch.channels_last)  # B x 3 x H x W, float on the device
        features = model.registered_features(chunk)  # B x D x h x w
        out.append(features.contiguous(memory_format=torch.channels_last).cpu())
    return torch.cat(out)  # N x D x h x w, channels-last


def fit_support(model: RegAD, support: torch.Tensor, config: RegADConfig, device: str,
                views: SupportViewFeatures | None = None) -> Gaussian:
    """Per-position Gaussian of the support images' registered features (22 views each unless disabled).

    ``views`` reuses the view features of images seen before (a detector keeps one); without
    it they are computed afresh, with the same per-image batches, so both give equal Gaussians.
    """
    with torch.inference_mode():
        if config.augment_support:
            views = SupportViewFeatures() if views is None else views
            features = views(support, model, lambda x: extract_features(model, x, device), settings=device)  # 22K x D x h x w
        else:
            features = extract_features(model, support, device)  # K x D x h x w
        return fit_gaussian(features.to(device), eps=config.eps)


@torch.inference_mode()
def score_maps(gaussian: Gaussian, features: torch.Tensor, config: RegADConfig, device: str) -> torch.Tensor:
    """N x H x W anomaly maps of test features against a support Gaussian (H x W: ``config.image_size``)."""
    maps = []
    for chunk in features.split(64):
        distances = mahalanobis(chunk.to(device), gaussian)  # B x h x w
        maps.append(anomaly_map(distances, as_hw(config.image_size), config.blur_sigma).cpu())
    return torch.cat(maps)


class RegADMethod(Detector):
    """RegAD's test-time protocol on a given network.

    Features come from ``inference_network()`` (the network with batch norms folded and
    channels-last weights, same features within float32 rounding) and each support image's 22 view features are
    computed once and reused across support sets and K (``views``, bounded LRU), both
    rebuilt whenever ``model``'s weights change.

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
        # Support images recur across a category's sets: their view features are computed once.
        self.views = SupportViewFeatures()
        self._folded: tuple[ModuleSnapshot, RegAD] | None = None

    def inference_network(self) -> RegAD:
        """``model`` with its batch norms folded (``RegAD.folded``) and channels-last weights, rebuilt whenever ``model`` changes."""
        snapshot = ModuleSnapshot(self.model)
        if self._folded is None or self._folded[0] != snapshot:
            self._folded = (snapshot, self.model.folded().to(self.device, memory_format=torch.channels_last))
        return self._folded[1]

    def embed(self, images: torch.Tensor) -> Embedding:
        """Registered features, N x D x h x w."""
        return (extract_features(self.inference_network(), images, self.device),)

    def fit(self, support: torch.Tensor) -> None:
        self.check_support(support, "without the 22 support views a covariance needs two images")
        self.gaussian = fit_support(self.inference_network(), support, self.config, self.device, self.views)

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
