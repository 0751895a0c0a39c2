"""Atomic checkpoint files that load with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fsad.components.backbones import build_backbone
from fsad.config import RegADConfig
from fsad.methods.regad.network import RegAD

# Settings that change the network's architecture or meaning: a checkpoint made with
# other values cannot be loaded into (or resumed as) this run.
ARCHITECTURE_KEYS = ("backbone", "stn_mode", "image_size", "normalize")


def load_checkpoint(path: Path, expected: RegADConfig | None = None) -> dict[str, Any]:
    """Load a checkpoint safely and check it was made with ``expected``'s architecture.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The checkpoint's backbone, STN mode, image size or normalisation
            differ from ``expected``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (fsad train ...) or fix the path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if expected is not None:
        saved = state["config"]
        wanted = expected.to_dict()
        diff = {k: (saved.get(k), wanted[k]) for k in ARCHITECTURE_KEYS if saved.get(k) != wanted[k]}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{path} was trained with another architecture ({details}); "
                "use a checkpoint made with these settings, change the settings, or delete it to retrain"
            )
    return state


def build_model(config: RegADConfig) -> RegAD:
    """A RegAD network for ``config`` (backbone weights per ``config.pretrained``)."""
    backbone = build_backbone(config.backbone, pretrained=config.pretrained, normalize=config.normalize)
    return RegAD(backbone, (config.image_size, config.image_size), config.stn_mode)


def load_model(path: Path, expected: RegADConfig | None = None) -> tuple[RegAD, RegADConfig]:
    """Rebuild a trained RegAD from its checkpoint (no ImageNet weights needed: all are in the file)."""
    state = load_checkpoint(path, expected)
    config = RegADConfig.from_dict(state["config"], source=str(path)).replace(pretrained=False)
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.eval(), config
