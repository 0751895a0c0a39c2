"""The networks a study scores: RegAD trained leave-one-category-out (and, from checkpoint, untrained).

Every study (``fsad run``, the comparison, the ablations, the DVC pipeline) gets its RegAD
networks here, so "the model of target T" means one thing: trained on every category but
T with the given training settings, reused when a finished model of exactly those
settings and categories exists, else trained (resuming an interrupted training).

Example:
    >>> model, path = leave_one_out_regad(others, settings, Path("runs/x/models/bottle"))
    >>> reference = untrained_regad(settings)  # ImageNet backbone, identity STNs
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fsad.config import RegADConfig
from fsad.data.mvtec import Category
from fsad.methods.regad.checkpoint import checkpoint_differences, load_model, untrained_regad
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.training import MODEL_NAME, train_regad

log = logging.getLogger(__name__)


def leave_one_out_regad(others: list[Category], settings: RegADConfig, folder: Path, reuse: Path | None = None,
                        progress: bool = True) -> tuple[RegAD, Path]:
    """The RegAD network that scores a held-out category, trained on ``others`` only.

    Args:
        others: The training categories (every category but the target).
        settings: Training (and architecture) settings.
        folder: The model's own folder: ``folder/regad.pt``, trained (resumably) here when
            no usable model exists.
        reuse: Another run's model file, only read: used when it was made with these
            settings and categories.
        progress: Show tqdm bars while training.

    Returns:
        The network (eval mode) and the file it came from.
    """
    path = Path(folder) / MODEL_NAME
    for candidate in (reuse, path):
        if candidate is None or not Path(candidate).is_file():
            continue
        state = torch.load(candidate, map_location="cpu", weights_only=True)
        changed = checkpoint_differences(state, settings, others, Path(candidate))
        if not changed:
            return load_model(Path(candidate), expected=settings)[0], Path(candidate)
        log.warning("%s was made with other settings or data (%s): not used", candidate, "; ".join(changed))
    train_regad(others, settings, path.parent, progress=progress)
    return load_model(path, expected=settings)[0], path


__all__ = ["leave_one_out_regad", "untrained_regad"]
