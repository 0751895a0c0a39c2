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
from fsad.methods.regad.stn import NO_STN, SpatialTransformer, compose_theta, invert_theta, warp


class RegAD(nn.Module):
    """Backbone stages interleaved with STNs, plus the Siamese encoder/predictor.

    Args:
        backbone: A three-stage ``FeatureExtractor`` (strides 4, 8, 16).
        image_size: (H, W) of the input images; fixes the STNs' layer widths.
        stn_mode: Transform family of every STN (``fsad.methods.regad.stn.STN_MODES``), or
            ``"none"`` for no STN at all (the ablation "backbone + Siamese only").
    """

    def __init__(self, backbone: FeatureExtractor, image_size: tuple[int, int], stn_mode: str = "rotation_scale"):
        super().__init__()
        self.backbone = backbone
        self.image_size = tuple(image_size)
        self.stn_mode = stn_mode
        sizes = [(-(-image_size[0] // s), -(-image_size[1] // s)) for s in backbone.strides]
        self.stns = nn.ModuleList(
            [] if stn_mode == NO_STN else (SpatialTransformer(c, size, stn_mode) for c, size in zip(backbone.channels, sizes))
        )
        self.encoder = Encoder(backbone.channels[-1])
        self.predictor = Predictor(backbone.channels[-1])

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

    def registered_features(self, images: torch.Tensor) -> torch.Tensor:
        """Warped maps brought back to the input frame and concatenated at stage-1 resolution.

        Stage i's map is warped by the inverse of the composed transform of STNs 1..i (the
        RegAD test-time step), then upsampled (nearest, as PaDiM's embedding concat) to
        stage 1's size.

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
            # Without STNs nothing was warped: skip the (identity) resampling.
            back = warp(feature, invert_theta(composed)) if self.stns else feature  # B x C_i x H_i x W_i
            registered.append(F.interpolate(back, size=size, mode="nearest"))
        return torch.cat(registered, dim=1)

    def registration_loss(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Symmetric stop-gradient loss between a query and the mean of its K supports.

        Args:
            query: B x 3 x H x W images.
            support: B x K x 3 x H x W images of the query's category (never the query).
        """
        b, k = support.shape[:2]
        both = torch.cat([query, support.flatten(0, 1)])  # (B + B*K) x 3 x H x W
        final = self.transformed_features(both)[0][-1]  # (B + B*K) x C x h x w
        query_feat = final[:b]
        support_feat = final[b:].unflatten(0, (b, k)).mean(dim=1)  # B x C x h x w
        z1, z2 = self.encoder(query_feat), self.encoder(support_feat)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return symmetric_loss(p1, z1, p2, z2)
