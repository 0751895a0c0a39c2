"""DINOv2 ViT-S/14 patch tokens (Oquab et al., 2023), the backbone of AnomalyDINO.

Paper: https://arxiv.org/abs/2304.07193; weights: https://github.com/facebookresearch/dinov2
(``dinov2_vits14``, 21 M parameters, patch 14, width 384, no register tokens). The architecture
comes from timm (``vit_small_patch14_dinov2``, the same ViT with LayerScale), built without
weights; the official checkpoint ``dinov2_vits14_pretrain.pth`` (the file ``torch.hub.load(
'facebookresearch/dinov2', 'dinov2_vits14')`` caches) is converted to timm's keys by timm's
``checkpoint_filter_fn`` and loaded strictly.

The weight file is looked for offline first, as every backbone's (``fsad.components.weights``):
the ``weights_path`` given, then ``torch.hub.get_dir()/checkpoints/dinov2_vits14_pretrain.pth``,
then its download URL; offline, ``MissingWeightsError`` names the file, where it looked and how
to provide it. ``pretrained=False`` (random weights) is only for tests of shapes.

Features are AnomalyDINO's (``src/backbones.py``, ``DINOv2Wrapper.extract_features``:
``get_intermediate_layers(x)[0]``): the patch tokens of the last block after the final
LayerNorm, on ImageNet-normalised input whose sides are multiples of 14. Deviation: timm
interpolates the 37 x 37 position embeddings to other grids with its own bicubic resampling,
DINOv2's hub model with a slightly offset scale factor; the two differ by interpolation error only.

Example:
    >>> vit = DinoV2Features()  # MissingWeightsError when the file is not here
    >>> vit(torch.rand(2, 3, 448, 448)).shape  # 2 x 384 x 32 x 32
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fsad.components.backbones import IMAGENET_MEAN, IMAGENET_STD
from fsad.components.weights import WeightSource, locate_weights

DINOV2_VITS14 = WeightSource(
    files=("dinov2_vits14_pretrain.pth",),
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
)


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise ImportError("fsad/components/dinov2.py: the DINOv2 backbone needs the package timm; "
                          "fix: `pip install timm` (pinned in requirements.txt)") from exc
    return timm


class DinoV2Features(nn.Module):
    """DINOv2 ViT-S/14 as a map of patch features.

    Args:
        pretrained: Load the official weights (``MissingWeightsError`` if not found); False:
            random init, for tests only.
        weights_path: An explicit ``dinov2_vits14_pretrain.pth``.

    Attributes:
        name: ``"dinov2_vits14"``.
        patch_size: 14; input sides must be multiples of it.
        channels: 384, the token width.
        weights_file: The loaded file, None for random init.
    """

    name = "dinov2_vits14"
    patch_size = 14
    channels = 384

    def __init__(self, pretrained: bool = True, weights_path: str | Path | None = None):
        super().__init__()
        if weights_path is not None and not pretrained:
            raise ValueError(f"fsad/components/dinov2.py: weights_path={str(weights_path)!r} with pretrained=False; "
                             "fix: set pretrained=True to load it, or drop weights_path")
        timm = _timm()
        # The file is found (or refused) before the network is built.
        path = locate_weights(DINOV2_VITS14, weights_path) if pretrained else None
        # dynamic_img_size: any multiple of 14 (position embeddings resampled); num_classes=0: no head.
        self.vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.weights_file: Path | None = None
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            self.vit.load_state_dict(checkpoint_filter_fn(state, self.vit), strict=True)
        except (RuntimeError, KeyError) as exc:
            raise RuntimeError(f"fsad/components/dinov2.py: {path} does not fit DINOv2 ViT-S/14 ({exc}); "
                               f"fix: pass the file {DINOV2_VITS14.files[0]} of facebookresearch/dinov2") from exc
        self.weights_file = path

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W images in [0, 1] (H, W multiples of 14) -> B x 384 x H/14 x W/14 patch tokens."""
        b, _, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"fsad/components/dinov2.py: input {h}x{w} is not a multiple of the patch size 14; "
                             "resize to a multiple of 14 first")
        tokens = self.vit.forward_features((images - self.mean) / self.std)  # B x (1 + hw) x 384, final LayerNorm applied
        patches = tokens[:, self.vit.num_prefix_tokens:]  # B x hw x 384
        return patches.transpose(1, 2).reshape(b, self.channels, h // self.patch_size, w // self.patch_size)


__all__ = ["DINOV2_VITS14", "DinoV2Features"]
