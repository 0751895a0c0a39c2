"""Stage ``train@<category>``: RegAD trained on every other category (leave one out).

Training does not depend on K, so one model per held-out category serves every K.
An interrupted stage leaves ``checkpoint.pt`` beside the model and the next run resumes
from it, but only when it was made with the same settings and training images
(``fsad.methods.regad.checkpoint.checkpoint_differences``): a checkpoint of another ``lr``
or of changed images would silently mix two trainings.

Example:
    >>> model, history = train_target("mono", RegADConfig(epochs=1))  # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
import torch

from fsad.config import RegADConfig
from fsad.data.mvtec import load_category
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.training import CHECKPOINT_NAME, train_regad
from fsad.pipeline import layout
from fsad.pipeline.manifest import dataset_root, training_set


def train_target(target: str, config: RegADConfig, progress: bool = True) -> tuple[RegAD, pd.DataFrame]:
    """Train the model that will score ``target``: on the train images of every other category.

    Args:
        target: The held-out category.
        config: Training settings.
        progress: Show tqdm bars with an ETA (in a terminal and in a notebook).

    Returns:
        The trained model (eval mode) and its per-epoch history (loss, seconds, images/s).
    """
    training = training_set(target)
    root = dataset_root(training["dataset"])
    others = training["train_categories"]
    out_dir = layout.model_path(target).parent
    checkpoint = out_dir / CHECKPOINT_NAME
    # train_regad resumes the checkpoint only when its settings and training images are these.
    model = train_regad([load_category(root, c) for c in others], config, out_dir, resume=True, progress=progress)
    checkpoint.unlink(missing_ok=True)  # the final model is written; the checkpoint only served resuming
    history = pd.DataFrame(torch.load(layout.model_path(target), map_location="cpu", weights_only=True)["history"])
    return model, history


__all__ = ["train_target"]
