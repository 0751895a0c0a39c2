"""The interface every few-shot method of the comparison implements, and shared helpers.

A method sees only the K support images of the target category at test time: ``fit``
builds its normal model from them and ``score`` turns test images into anomaly maps and
image scores. Test images are first ``embed``-ded, a step that does not depend on the
support set for most methods, so the comparison harness embeds a test set once and scores
it against every support set (``predict_embedded``). Methods whose embedding changes with
the support set (RegAD-L retrains its network in ``fit``) set
``embedding_depends_on_support``.

A fitted detector is saved and loaded without refitting: ``state`` returns everything
``fit`` built plus the weights of its networks (so loading needs no weight file), and
``load_state`` puts it back into a detector built with the same settings, refusing a
state of another method or architecture. ``fsad.methods.registry.save_detector`` and
``load_detector`` write and read a whole detector folder.

Example:
    >>> method = PaDiM(build_backbone("mobilenet_v2"), image_size=128)  # any Detector
    >>> method.fit(support)  # K x 3 x 128 x 128 uint8
    >>> scores = method.predict(test_images)  # scores.maps: N x 128 x 128, scores.image: N
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fsad.components.backbones import FeatureExtractor
from fsad.components.gaussian import Gaussian
from fsad.data.loading import to_float

# What ``embed`` returns: tensors whose first dimension indexes the images.
Embedding = tuple[torch.Tensor, ...]
# Embedded test images moved to the device at a time by ``predict_embedded``: SPADE's WRN-50 pixel
# features are ~22 MB per 224-px image, so a whole test set (3.7 GB for 167 images) never is.
PREDICT_CHUNK = 16


@dataclass
class Scores:
    """A method's output for N test images.

    Attributes:
        maps: N x H x W anomaly maps (higher = more anomalous).
        image: N image scores: the map's maximum, or the method's own image score
            where its paper defines one (SPADE, PatchCore).
    """

    maps: torch.Tensor
    image: torch.Tensor


class Detector(ABC):
    """A few-shot anomaly detector: ``fit`` on K normal images, then ``score`` test images.

    Attributes:
        name: Registry name (the ``method`` column of the results).
        embedding_depends_on_support: True when ``embed`` must run after every ``fit``.
        min_support: The fewest support images ``fit`` accepts.
        image_size: Side of the square images it takes and the maps it returns, or their (H, W)
            (``fsad.data.mvtec.as_hw`` reads both).
        device: Where it computes (``cpu``, ``cuda``, ``cuda:N``); inputs and outputs are CPU tensors.
    """

    name: str = ""
    device: str = "cpu"
    embedding_depends_on_support: bool = False
    min_support: int = 1
    image_size: int | tuple[int, int]

    @abstractmethod
    def embed(self, images: torch.Tensor) -> Embedding:
        """Support-independent representation of N x 3 x S x S images (uint8 or [0, 1] floats)."""

    @abstractmethod
    def fit(self, support: torch.Tensor) -> None:
        """Build the normal model from K x 3 x S x S support images (uint8 or [0, 1] floats)."""

    @abstractmethod
    def predict_embedded(self, embedded: Embedding) -> Scores:
        """Anomaly maps and image scores of embedded test images against the fitted model."""

    def predict(self, images: torch.Tensor) -> Scores:
        """``predict_embedded(embed(images))``."""
        return self.predict_embedded(self.embed(images))

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The fitted detector as tensors and plain values (CPU), for ``torch.save``.

        Holds ``method`` and ``architecture`` (what ``load_state`` checks), the weights of
        every network it runs, and what ``fit`` built. Raises ``RuntimeError`` before ``fit``.
        """

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a ``state()`` of a detector built with the same settings; no refit.

        Raises:
            ValueError: ``state`` was saved by another method or architecture.
        """

    def check_support(self, support: torch.Tensor, why: str) -> None:
        """Refuse fewer than ``min_support`` support images, saying ``why`` the method needs them."""
        if len(support) < self.min_support:
            raise ValueError(f"fsad/methods: {self.name} needs K >= {self.min_support} support images, got {len(support)}: {why}")

    def architecture(self) -> dict[str, Any]:
        """What a state must match to load into this detector (the ``method`` aside)."""
        return {}

    def _state(self, fitted: Any, **parts: Any) -> dict[str, Any]:
        """A ``state()`` dict: method, architecture and ``parts``; refuses an unfitted detector."""
        if fitted is None:
            raise RuntimeError(f"fsad/methods: {self.name} is not fitted; call fit(support) before saving it")
        return {"method": self.name, "architecture": self.architecture(), **parts}

    def _check_state(self, state: dict[str, Any]) -> None:
        """Refuse a state of another method or architecture, naming what differs."""
        if state.get("method") != self.name:
            raise ValueError(f"fsad/methods: this detector state was saved by method {state.get('method')!r}, "
                             f"not {self.name!r}; load it as {state.get('method')!r}")
        saved, wanted = state.get("architecture", {}), self.architecture()
        diff = [f"{k}: saved {saved.get(k)!r} vs {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
        if diff:
            raise ValueError(f"fsad/methods: the {self.name} state has another architecture ({', '.join(diff)}); "
                             "build the detector with the settings it was saved with")


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's ``state_dict`` as CPU tensors (a saved state loads on any device)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def backbone_architecture(backbone: FeatureExtractor, image_size: int | tuple[int, int]) -> dict[str, Any]:
    """The backbone name, stage channels and input size (a side, or [H, W]): what a saved state's tensors depend on."""
    return {"backbone": backbone.name, "channels": list(backbone.channels),
            "image_size": image_size if isinstance(image_size, int) else list(image_size)}


def gaussian_state(gaussian: Gaussian) -> dict[str, Any]:
    """A per-position Gaussian as a dict of CPU tensors and plain values."""
    return {"mean": gaussian.mean.cpu(), "factor": gaussian.factor.cpu(), "eps": gaussian.eps,
            "low_rank": gaussian.low_rank, "size": list(gaussian.size),
            "mixing": None if gaussian.mixing is None else gaussian.mixing.cpu()}


def gaussian_from_state(state: dict[str, Any], device: str) -> Gaussian:
    """The ``Gaussian`` of ``gaussian_state``, on ``device``."""
    mixing = state["mixing"]
    return Gaussian(mean=state["mean"].to(device), factor=state["factor"].to(device), eps=state["eps"],
                    low_rank=state["low_rank"], size=tuple(state["size"]),
                    mixing=None if mixing is None else mixing.to(device))


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], Sequence[torch.Tensor]], images: torch.Tensor, device: str,
            batch_size: int = 32) -> Embedding:
    """Apply ``fn`` to float batches of ``images`` on ``device``; concatenate each output on the CPU.

    uint8 images are converted to float on the device, after the transfer (a quarter of the bytes).
    """
    outputs: list[list[torch.Tensor]] = []
    for chunk in images.split(batch_size):
        result = fn(to_float(chunk.to(device)))
        outputs.append([t.cpu() for t in result])
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def device_chunks(embedded: Embedding, device: str, size: int = PREDICT_CHUNK):
    """The embedded images ``size`` at a time on ``device``: bounded device memory whatever the test set.

    Yields:
        ``(start, chunk)``: the index of the chunk's first image and its tensors (B x ...) on ``device``.
    """
    for start in range(0, len(embedded[0]), size):
        yield start, tuple(t[start : start + size].to(device) for t in embedded)


def frozen(backbone: FeatureExtractor, device: str) -> FeatureExtractor:
    """The backbone in eval mode, on ``device``, with no gradients (a fixed feature extractor)."""
    backbone = backbone.eval().to(device)
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    return backbone


def concat_stages(stages: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stage maps upsampled (nearest) to the first one's size and concatenated, as PaDiM does.

    Args:
        stages: B x C_i x H_i x W_i maps, the first the largest.

    Returns:
        B x sum(C_i) x H_0 x W_0.
    """
    size = stages[0].shape[-2:]
    return torch.cat([F.interpolate(s, size=size, mode="nearest") for s in stages], dim=1)


def nearest_distances(queries: torch.Tensor, gallery: torch.Tensor, k: int = 1,
                      chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances from each query to its k nearest gallery vectors, in chunks.

    Args:
        queries: Q x D.
        gallery: G x D, G >= k.
        k: Neighbours per query.
        chunk: Queries per matmul (bounds the Q x G temporary).

    Returns:
        Q x k distances (ascending) and Q x k gallery indices.
    """
    if gallery.shape[0] < k:
        raise ValueError(f"fsad/methods/base.py: {k} nearest neighbours asked from a gallery of {gallery.shape[0]}")
    values, indices = [], []
    gallery_norms = (gallery * gallery).sum(dim=1)  # G
    for part in queries.split(chunk):
        # Rank by |g|^2 - 2 q.g (one matmul; |q|^2 is the same for every g), then measure
        # the winners exactly: faster than cdist, and exact for near-equal vectors.
        ranking = torch.addmm(gallery_norms, part, gallery.T, alpha=-2)  # q x G
        index = ranking.argmin(dim=1, keepdim=True) if k == 1 else ranking.topk(k, dim=1, largest=False).indices  # q x k
        distance = torch.linalg.vector_norm(part[:, None] - gallery[index], dim=2)  # q x k
        distance, order = distance.sort(dim=1)
        values.append(distance)
        indices.append(index.gather(1, order))
    return torch.cat(values), torch.cat(indices)


def positions(features: torch.Tensor) -> torch.Tensor:
    """B x C x H x W maps -> (B * H * W) x C vectors, row-major per image."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
