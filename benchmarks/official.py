"""The official RegAD test procedure, rebuilt as a speed baseline from its description.

Written from ``../shared/spec/REGAD_REFERENCE.md`` ("The official test procedure, as the
speed baseline must reproduce it": official ``test.py`` 153-157 and 199-205,
``utils/funcs.py`` 22-25; and "Official code vs fsad"), not copied. It keeps the official
library calls, dtype, loops and memory layout, because they are what the official
users waited for:

- fit: float32 torch; ``torch.mean`` over the samples; a C x C x HW ``torch.zeros``
  tensor filled one position at a time with ``torch.cov(x.T) + 0.01 * I``;
- score: per position, ``torch.linalg.inv`` of the strided C x C slice ``cov[:, :, i]``,
  then a Python loop over the test images of ``mahalanobis_torch`` (``sqrt(d . (S^-1 d))``);
  the nested list of 0-dim tensors goes through ``torch.tensor`` and is transposed;
- maps: bilinear upsampling, then ``scipy.ndimage.gaussian_filter(sigma=4)`` per image;
  image score = max of the map;
- features: stage -> STN three times on raw [0, 1] images, each stage's output warped
  back one step at a time (stage i by the inverses of STN i, ..., 1, reflection padding at
  every step), concatenated at stage-1 resolution with PaDiM's unfold / fold concat.

Every loop can stop after the first ``positions`` positions, so a benchmark can time a
subset and scale linearly (each position costs the same).

Example:
    >>> support = torch.randn(44, 8, 16)  # N x C x P
    >>> mean, cov = official_fit(support)
    >>> official_score(torch.randn(3, 8, 16), mean, cov).shape
    torch.Size([3, 16])
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from fsad.methods.regad.network import RegAD
from fsad.methods.regad.stn import invert_theta, warp

EPS = 0.01  # the official ridge on the covariance diagonal


def official_fit(embedding: torch.Tensor, positions: int | None = None,
                 clock: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean and covariance, the official way (``test.py`` 153-157).

    Args:
        embedding: N x C x P support features (float32 in the official code).
        positions: fill the covariance of the first ``positions`` positions only (all: None);
            the C x C x P tensor is still allocated whole, as the official code does.
        clock: if given, receives the seconds of the setup (mean, the zeroed C x C x P
            tensor: 2.5 GB at C = 448, 56 x 56, paid once whatever ``positions``) under
            ``"setup"`` and of the per-position loop under ``"loop"``, so a benchmark scales
            only the loop.

    Returns:
        C x P means and C x C x P covariances (+ 0.01 I), on ``embedding.device``.
    """
    _, c, p = embedding.shape
    start = time.perf_counter()
    mean = torch.mean(embedding, dim=0)  # C x P
    cov = torch.zeros(c, c, p, device=embedding.device)  # C x C x P: one strided C x C slice per position
    identity = torch.eye(c, device=embedding.device)
    _synchronize(embedding.device)
    setup = time.perf_counter()
    for i in range(p if positions is None else positions):
        cov[:, :, i] = torch.cov(embedding[:, :, i].T) + EPS * identity  # C x C
    _synchronize(embedding.device)
    if clock is not None:
        clock["setup"], clock["loop"] = setup - start, time.perf_counter() - setup
    return mean, cov


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mahalanobis_torch(u: torch.Tensor, v: torch.Tensor, cov_inv: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance of two C vectors under a C x C inverse covariance (``utils/funcs.py`` 22-25)."""
    delta = u - v  # C
    return torch.sqrt(torch.dot(delta, torch.matmul(cov_inv, delta)))


def official_score(embedding: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                   positions: int | None = None) -> torch.Tensor:
    """Distances the official way (``test.py`` 199-205): inverse and image loop per position.

    Args:
        embedding: B x C x P test features.
        mean, cov: C x P and C x C x P from :func:`official_fit`.
        positions: score the first ``positions`` positions only (all: None).

    Returns:
        B x positions distances (float32, on the CPU as ``torch.tensor`` builds them).
    """
    distances = []
    for i in range(embedding.shape[2] if positions is None else positions):
        mean_i = mean[:, i]  # C
        cov_inv = torch.linalg.inv(cov[:, :, i])  # C x C, from a strided slice
        distances.append([mahalanobis_torch(sample[:, i], mean_i, cov_inv) for sample in embedding])
    # The official code hands the nested list of 0-dim tensors to torch.tensor.
    return torch.tensor([[float(d) for d in row] for row in distances]).transpose(1, 0)  # B x positions


def official_maps(distances: torch.Tensor, image_size: int, sigma: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """B x h x w distances -> B x S x S maps (bilinear, then scipy blur per image) and B image scores."""
    maps = F.interpolate(distances.unsqueeze(1), size=image_size, mode="bilinear",
                         align_corners=False).squeeze(1).cpu().numpy()  # B x S x S
    for i in range(maps.shape[0]):
        maps[i] = gaussian_filter(maps[i], sigma=sigma)
    return maps, maps.reshape(maps.shape[0], -1).max(axis=1)


def embedding_concat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PaDiM's concat: B x C1 x H x W and B x C2 x h x w (H = s h) -> B x (C1 + C2) x H x W.

    ``x`` is cut into s x s cells (unfold), ``y`` is appended to every cell, and the
    cells are folded back; each position of ``x`` gets the ``y`` of its cell.
    """
    b, c1, height, width = x.shape
    _, c2, h, w = y.shape
    s = height // h
    cells = F.unfold(x, kernel_size=s, stride=s).view(b, c1, s * s, h, w)  # B x C1 x s*s x h x w
    joined = torch.zeros(b, c1 + c2, s * s, h, w, device=x.device)  # B x (C1 + C2) x s*s x h x w
    for i in range(s * s):
        joined[:, :, i] = torch.cat((cells[:, :, i], y), dim=1)
    joined = joined.view(b, -1, h * w)  # B x (C1 + C2)*s*s x h*w
    return F.fold(joined, kernel_size=s, output_size=(height, width), stride=s)  # B x (C1 + C2) x H x W


@torch.no_grad()
def official_features(model: RegAD, images: torch.Tensor) -> torch.Tensor:
    """Registered features the official way, in one batch.

    Args:
        model: a RegAD network with STNs (its backbone stages and STN modules are used).
        images: B x 3 x H x W floats in [0, 1] (the official inputs are not normalised).

    Returns:
        B x (C1 + C2 + C3) x H1 x W1 float32.
    """
    x = model.backbone.normalize(images)  # identity for normalize=False, the official inputs
    maps, inverses = [], []
    for stage, stn in zip(model.backbone.stages, model.stns, strict=True):
        x, theta = stn(stage(x))  # B x C_i x H_i x W_i, B x 2 x 3
        maps.append(x)
        inverses.append(invert_theta(theta))
    back = []
    for i, feature in enumerate(maps):
        for inverse in reversed(inverses[: i + 1]):  # STN i's inverse first, STN 1's last
            feature = warp(feature, inverse)
        back.append(feature)
    embedding = back[0]
    for feature in back[1:]:
        embedding = embedding_concat(embedding, feature)
    return embedding  # B x D x H1 x W1
