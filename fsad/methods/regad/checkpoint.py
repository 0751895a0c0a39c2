"""Atomic checkpoint files that load with ``weights_only=True``, and what they were made from.

A checkpoint (``checkpoint.pt`` while training, ``regad.pt`` when done) records the
training settings, the training categories and the fingerprint of each one's
``train/good`` images; :func:`checkpoint_differences` is the one test of whether a file
may be resumed or reused for a run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fsad.components.backbones import build_backbone
from fsad.config import RegADConfig, training_settings
from fsad.data.fingerprint import category_fingerprint
from fsad.data.mvtec import Category, as_hw
from fsad.methods.regad.network import RegAD
from fsad.seed import seed_everything

log = logging.getLogger(__name__)

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


def training_fingerprints(categories: Sequence[Category]) -> dict[str, str]:
    """``{category name: fingerprint of its train/good images}``: all that RegAD training reads."""
    return {c.name: category_fingerprint(c, ("train",)) for c in categories}


def checkpoint_differences(state: dict[str, Any], settings: RegADConfig, categories: Sequence[Category],
                           path: Path) -> list[str]:
    """What differs between a saved checkpoint and the training asked for (empty: same training).

    Settings are compared through ``RegADConfig.from_dict``, so a file written before a
    setting existed compares with that setting's default (and still resumes). A file
    without training-data fingerprints (written by an older fsad) is accepted with a
    warning: retraining it costs hours and its category names still match.

    Args:
        state: The loaded checkpoint (``load_checkpoint``).
        settings: The training settings asked for.
        categories: The training categories asked for.
        path: The checkpoint's file, for messages.

    Returns:
        One line per difference, e.g. ``"lr: 0.01 -> 0.001"`` or ``"train images of
        .../bottle/train/good changed (fingerprint ... -> ...)"``.
    """
    saved = training_settings(RegADConfig.from_dict(state["config"], source=str(path)))
    wanted = training_settings(settings)
    changed = [f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in sorted(wanted) if saved.get(k) != wanted[k]]
    names = [c.name for c in categories]
    if state.get("train_categories") != names:
        return [*changed, f"training categories: {state.get('train_categories')} -> {names}"]
    recorded = state.get("train_fingerprints")
    if recorded is None:
        log.warning("%s records no fingerprint of its training images (an older fsad wrote it): assuming they "
                    "did not change; delete it to retrain", path)
        return changed
    now = training_fingerprints(categories)
    changed += [f"train images of {c.path / 'train' / 'good'} changed (fingerprint {recorded.get(c.name)} -> "
                f"{now[c.name]})" for c in categories if recorded.get(c.name) != now[c.name]]
    return changed


def build_model(config: RegADConfig) -> RegAD:
    """A RegAD network for ``config`` (backbone weights per ``config.pretrained``)."""
    backbone = build_backbone(config.backbone, pretrained=config.pretrained, normalize=config.normalize)
    return RegAD(backbone, as_hw(config.image_size), config.stn_mode, predictor_bias=config.predictor_bias,
                 inverse_warp=config.inverse_warp)


def untrained_regad(settings: RegADConfig) -> RegAD:
    """RegAD with its registration training off: ImageNet backbone, STNs at identity, fixed by ``settings.seed``."""
    seed_everything(settings.seed)
    return build_model(settings).eval()


def load_model(path: Path, expected: RegADConfig | None = None) -> tuple[RegAD, RegADConfig]:
    """Rebuild a trained RegAD from its checkpoint (no ImageNet weights needed: all are in the file)."""
    state = load_checkpoint(path, expected)
    config = RegADConfig.from_dict(state["config"], source=str(path)).replace(pretrained=False)
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.eval(), config
