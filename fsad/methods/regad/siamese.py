"""SimSiam-style head and loss (Chen & He, CVPR 2021, https://arxiv.org/abs/2011.10566).

RegAD applies it per feature position: the encoder and predictor are 1x1 convolutions,
and the negative cosine is averaged over batch and positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(channels: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class Encoder(nn.Sequential):
    """Three 1x1 convolutions without bias, BatchNorm + ReLU after the first two."""

    def __init__(self, channels: int):
        super().__init__(*conv_bn_relu(channels), *conv_bn_relu(channels), nn.Conv2d(channels, channels, 1, bias=False))


class Predictor(nn.Sequential):
    """1x1 conv + BatchNorm + ReLU, then a 1x1 conv.

    Args:
        channels: Input and output channels.
        bias: Whether the last conv has a bias; the official ``models/siamese.py`` (24, 66) has
            ``bias=False``.
    """

    def __init__(self, channels: int, bias: bool = True):
        super().__init__(*conv_bn_relu(channels), nn.Conv2d(channels, channels, 1, bias=bias))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-cos(p, stopgrad(z))`` over channels, averaged over batch and positions (B x C x H x W inputs)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def symmetric_loss(p1: torch.Tensor, z1: torch.Tensor, p2: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's ``1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1))``."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
