"""Stage ``train@<category>-<seed>``: RegAD trained on the target's training pool, once per seed.

The pool (``data/prepared/training_sets/<category>.json``, written by data_prep) is the
data set's other categories (leave one out) plus ``train.train_extra``'s categories of other
data sets; the target is never in it. Training does not depend on K, so one model per
(target, seed) serves every K; the seeds (``train.seeds``) measure the training noise.
An interrupted stage leaves ``checkpoint.pt`` beside the model and the next run resumes
from it, but only when it was made with the same settings and training images
(``fsad.methods.regad.checkpoint.checkpoint_differences``): a checkpoint of another ``lr``
or of changed images would silently mix two trainings.

Example:
    >>> model, history = train_target("mono", section("train").for_seed(1))  # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
import torch

from fsad.config import RegADConfig
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.training import CHECKPOINT_NAME, train_regad
from fsad.pipeline import layout
from fsad.pipeline.manifest import prepared_pool


def train_target(target: str, config: RegADConfig, progress: bool = True) -> tuple[RegAD, pd.DataFrame]:
    """Train the model that will score ``target`` (``models/seed<config.seed>/<target>/regad.pt``) on its pool.

    Args:
        target: The held-out category.
        config: Training settings (``TrainParams.for_seed``): ``seed``, ``train_extra`` and ``train_own`` included.
        progress: Show tqdm bars with an ETA (in a terminal and in a notebook).

    Returns:
        The trained model (eval mode) and its per-epoch history (loss, seconds, images/s).
    """
    pool = prepared_pool(target, config.train_extra, config.train_own)
    path = layout.model_path(target, config.seed)
    # train_regad resumes the checkpoint only when its settings and training images are these.
    model = train_regad(pool, config, path.parent, resume=True, progress=progress)
    (path.parent / CHECKPOINT_NAME).unlink(missing_ok=True)  # the final model is written; the checkpoint only served resuming
    history = pd.DataFrame(torch.load(path, map_location="cpu", weights_only=True)["history"])
    return model, history


__all__ = ["train_target"]
