"""RegAD: registration-based few-shot anomaly detection (Huang et al., ECCV 2022).

Paper: https://arxiv.org/abs/2207.07361. A backbone with a spatial transformer after
each of its three stages learns, by Siamese feature registration on other categories,
to map images of one category into a common frame. At test time the support images'
registered features give a per-position Gaussian.

Example:
    >>> from fsad.components.backbones import build_backbone
    >>> model = RegAD(build_backbone("mobilenet_v2", pretrained=False), image_size=(224, 224))
    >>> loss = model.registration_loss(torch.rand(4, 3, 224, 224), torch.rand(4, 2, 3, 224, 224))
    >>> feats = model.registered_features(torch.rand(4, 3, 224, 224))  # 4 x 152 x 56 x 56
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fsad.components.backbones import FeatureExtractor, fold_batch_norms
from fsad.methods.regad.siamese import Encoder, Predictor, symmetric_loss
from fsad.methods.regad.stn import (
    NO_STN,
    SpatialTransformer,
    compose_theta,
    determinant,
    invert_theta,
    rotation_degrees,
    stn_identity_deviation,
    warp,
)

# How registered features are warped back to the input frame (``RegAD.registered_features``).
INVERSE_WARPS = ("composed", "per_stage")


class RegAD(nn.Module):
    """Backbone stages interleaved with STNs, plus the Siamese encoder/predictor.

    Args:
        backbone: A three-stage ``FeatureExtractor`` (strides 4, 8, 16).
        image_size: (H, W) of the input images; fixes the STNs' layer widths.
        stn_mode: Transform family of every STN (``fsad.methods.regad.stn.STN_MODES``), or
            ``"none"`` for no STN at all (the ablation "backbone + Siamese only").
        predictor_bias: Bias on the predictor's last conv (the official code has none).
        inverse_warp: ``"composed"`` or ``"per_stage"`` (the official code), see
            ``registered_features``.
    """

    def __init__(self, backbone: FeatureExtractor, image_size: tuple[int, int], stn_mode: str = "rotation_scale",
                 predictor_bias: bool = True, inverse_warp: str = "composed"):
        super().__init__()
        if inverse_warp not in INVERSE_WARPS:
            raise ValueError(f"unknown inverse_warp {inverse_warp!r}; choose one of {INVERSE_WARPS}")
        self.backbone = backbone
        self.image_size = tuple(image_size)
        self.stn_mode = stn_mode
        self.inverse_warp = inverse_warp
        sizes = [(-(-image_size[0] // s), -(-image_size[1] // s)) for s in backbone.strides]
        self.stns = nn.ModuleList(
            [] if stn_mode == NO_STN else (SpatialTransformer(c, size, stn_mode) for c, size in zip(backbone.channels, sizes))
        )
        self.encoder = Encoder(backbone.channels[-1])
        self.predictor = Predictor(backbone.channels[-1], bias=predictor_bias)

    def train(self, mode: bool = True, freeze_backbone_bn: bool = False) -> RegAD:
        """``nn.Module.train``; with ``freeze_backbone_bn`` the backbone's batch norms stay in eval
        mode, so training keeps their ImageNet running statistics."""
        super().train(mode)
        if mode and freeze_backbone_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def folded(self) -> RegAD:
        """An inference copy with batch norms folded into the convolutions (backbone stages, STN
        localisation nets; ``fold_batch_norms``): the same features within float32 rounding,
        1.4x faster. Not for training: its batch norms are gone. This network is unchanged."""
        folded = copy.deepcopy(self).eval()
        folded.backbone.stages = nn.ModuleList(fold_batch_norms(stage) for stage in folded.backbone.stages)
        for stn in folded.stns:
            stn.localization = fold_batch_norms(stn.localization)
        return folded

    def transformed_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run stage -> STN three times; each warped map feeds the next stage.

        Returns:
            The three warped maps (B x C_i x H_i x W_i) and their B x 2 x 3 transforms
            (identities when the model has no STN).
        """
        x = self.backbone.normalize(images)  # B x 3 x H x W
        identity = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)  # B x 2 x 3
        maps, thetas = [], []
        for i, stage in enumerate(self.backbone.stages):
            x = stage(x)
            x, theta = self.stns[i](x) if self.stns else (x, identity)
            maps.append(x)
            thetas.append(theta)
        return maps, thetas

    @torch.no_grad()
    def transform_statistics(self, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
        """Median |rotation| (degrees, ``rotation_degrees``) and median determinant (area ratio)
        of each STN's own transform over ``images`` (N x 3 x H x W floats), in the network's
        current mode: ``stn<i>_rotation``, ``stn<i>_determinant`` for i = 1, 2, 3 (none without STNs)."""
        thetas = [self.transformed_features(chunk)[1] for chunk in images.split(batch_size)]
        stats = {}
        for i in range(len(self.stns)):
            theta = torch.cat([t[i] for t in thetas])  # N x 2 x 3
            stats[f"stn{i + 1}_rotation"] = rotation_degrees(theta).abs().median().item()
            stats[f"stn{i + 1}_determinant"] = determinant(theta).median().item()
        return stats

    def registered_features(self, images: torch.Tensor) -> torch.Tensor:
        """Warped maps brought back to the input frame and concatenated at stage-1 resolution.

        Stage i's map is warped back (the RegAD test-time step), then upsampled (nearest, as
        PaDiM's embedding concat) to stage 1's size. ``inverse_warp == "composed"``: one warp by
        the inverse of the composed transform of STNs 1..i. ``"per_stage"`` (the official
        ``models/stn.py`` 255-271, ``_fixstn(_fixstn(x, inv theta_2), inv theta_1)``): a warp by
        the inverse of STN i, then of STN i-1, ..., 1; equal inside the image, each warp
        reflecting at the borders.

        Returns:
            B x (C_1 + C_2 + C_3) x H_1 x W_1 features.
        """
        maps, thetas = self.transformed_features(images)
        size = maps[0].shape[-2:]
        composed = thetas[0]
        registered = []
        for i, feature in enumerate(maps):
            if i > 0:
                composed = compose_theta(composed, thetas[i])
            back = feature  # B x C_i x H_i x W_i; without STNs nothing was warped: no (identity) resampling
            if self.stns and self.inverse_warp == "per_stage":
                for theta in reversed(thetas[: i + 1]):
                    back = warp(back, invert_theta(theta))
            elif self.stns:
                back = warp(feature, invert_theta(composed))
            registered.append(F.interpolate(back, size=size, mode="nearest"))
        return torch.cat(registered, dim=1)

    def registration_loss(self, query: torch.Tensor, support: torch.Tensor, separate_forwards: bool = False,
                          identity_penalty: float = 0.0) -> torch.Tensor:
        """Symmetric stop-gradient loss between a query and the mean of its K supports.

        Args:
            query: B x 3 x H x W images.
            support: B x K x 3 x H x W images of the query's category (never the query).
            separate_forwards: Forward queries and supports separately (the official
                ``train.py`` 169, 174: each batch norm normalises them with their own batch
                statistics); ``False``: one forward of both.
            identity_penalty: Weight of ``stn_identity_deviation`` of every image's transforms,
                added to the loss (0: the plain loss).
        """
        b, k = support.shape[:2]
        if separate_forwards:
            query_maps, query_thetas = self.transformed_features(query)
            support_maps, support_thetas = self.transformed_features(support.flatten(0, 1))  # B*K x ...
            query_feat, support_final = query_maps[-1], support_maps[-1]  # B x C x h x w, B*K x C x h x w
            thetas = [torch.cat(pair) for pair in zip(query_thetas, support_thetas)]  # (B + B*K) x 2 x 3 each
        else:
            both = torch.cat([query, support.flatten(0, 1)])  # (B + B*K) x 3 x H x W
            maps, thetas = self.transformed_features(both)
            query_feat, support_final = maps[-1][:b], maps[-1][b:]  # B x C x h x w, B*K x C x h x w
        support_feat = support_final.unflatten(0, (b, k)).mean(dim=1)  # B x C x h x w
        z1, z2 = self.encoder(query_feat), self.encoder(support_feat)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = symmetric_loss(p1, z1, p2, z2)
        if identity_penalty > 0 and self.stns:
            loss = loss + identity_penalty * stn_identity_deviation(thetas)
        return loss
