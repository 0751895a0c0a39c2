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

import torch

from fsad.components.anomaly_map import image_scores
from fsad.components.gaussian import Gaussian
from fsad.config import RegADConfig, resolve_device
from fsad.methods.base import Embedding, Detector, Scores
from fsad.methods.regad.network import RegAD
from fsad.study.evaluation import extract_features, fit_support, score_maps


class RegADMethod(Detector):
    """RegAD's test-time protocol on a given network.

    Args:
        model: The RegAD network (trained on other categories, or untrained).
        config: Test-time settings (image size, eps, blur, ``augment_support``, device).
        name: Name in the results (``regad``, ``untrained``, an ablation's name).
    """

    def __init__(self, model: RegAD, config: RegADConfig, name: str = "regad"):
        self.model, self.config, self.name = model.eval(), config, name
        self.device = resolve_device(config.device)
        self.gaussian: Gaussian | None = None

    def embed(self, images: torch.Tensor) -> Embedding:
        """Registered features, N x D x h x w."""
        return (extract_features(self.model, images, self.device),)

    def fit(self, support: torch.Tensor) -> None:
        if not self.config.augment_support and len(support) < 2:
            raise ValueError("fsad/methods/regad/detector.py: without support views a covariance needs K >= 2")
        self.gaussian = fit_support(self.model, support, self.config, self.device)

    def predict_embedded(self, embedded: Embedding) -> Scores:
        if self.gaussian is None:
            raise RuntimeError("fsad/methods/regad/detector.py: call fit(support) before scoring")
        maps = score_maps(self.gaussian, embedded[0], self.config, self.device)  # N x S x S
        return Scores(maps=maps, image=image_scores(maps))
