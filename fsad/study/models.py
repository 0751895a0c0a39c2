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

import numpy as np
import torch

from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import to_float
from fsad.data.mvtec import Category
from fsad.io import save_atomic
from fsad.methods.regad.checkpoint import checkpoint_differences, load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.training import MODEL_NAME, EpochMonitor, train_regad
from fsad.study.evaluation import TestSet, evaluate_detector

# The weights of the epoch with the best per-epoch test AUROC (the official protocol's
# test-set selection), kept beside ``regad.pt`` only to measure what that selection adds.
TEST_SELECTED_NAME = "regad_test_selected.pt"

log = logging.getLogger(__name__)


class EpochDiagnostics:
    """A ``train_regad`` monitor: the target category's test AUROCs and the STN statistics per epoch.

    Each call scores the network (epoch 0: untrained) with a few of the target's support sets
    through ``evaluate_detector`` (image and pixel AUROC, mean and std over the sets) and
    records ``RegAD.transform_statistics`` over the test images. Nothing here chooses the
    model; with ``keep_test_selected`` the weights of the epoch whose image + pixel AUROC is
    the best so far (the official ``train.py`` 94-142 criterion) are also written to
    ``folder/regad_test_selected.pt``, labelled, for measuring the selection.

    Args:
        category: The held-out target category.
        support_sets: ``K -> sets`` to score with (a subset of the study's).
        test: The target's test set.
        settings: Test-time settings (eps, blur, views, device).
        folder: The model's folder.
        keep_test_selected: Write the test-selected weights.
    """

    def __init__(self, category: Category, support_sets: dict[int, list[list[str]]], test: TestSet, settings: RegADConfig,
                 folder: Path, keep_test_selected: bool = False):
        self.category, self.support_sets, self.test, self.settings = category, support_sets, test, settings
        self.path = Path(folder) / TEST_SELECTED_NAME if keep_test_selected else None
        self.best: float | None = None

    def __call__(self, model: RegAD, epoch: int) -> dict[str, float]:
        run = evaluate_detector(RegADMethod(model, self.settings, name="epoch"), self.category, self.support_sets, self.test,
                                ("image_auroc", "pixel_auroc"), progress=False)
        values = {}
        for metric in ("image_auroc", "pixel_auroc"):
            per_set = np.array([row[metric] for row in run.rows])
            values[metric], values[f"{metric}_std"] = float(per_set.mean()), float(per_set.std())
        values.update(model.eval().transform_statistics(to_float(self.test.images.to(resolve_device(self.settings.device)))))
        if self.path is not None:
            self._keep_if_best(model, epoch, values)
        return values

    def _keep_if_best(self, model: RegAD, epoch: int, values: dict[str, float]) -> None:
        score = float(values["image_auroc"] + np.nan_to_num(values["pixel_auroc"]))  # no masks: image AUROC alone
        if epoch == 0:  # a fresh training: an older file is not a candidate
            self.best = None
        elif self.best is None and self.path.is_file():  # resumed: the best of the epochs before
            self.best = float(torch.load(self.path, map_location="cpu", weights_only=True)["score"])
        if self.best is None or score > self.best:
            self.best = score
            save_atomic({"config": self.settings.to_dict(), "model": model.state_dict(), "epoch": epoch, "score": score}, self.path)


def leave_one_out_regad(others: list[Category], settings: RegADConfig, folder: Path, reuse: Path | None = None,
                        progress: bool = True, monitor: EpochMonitor | None = None) -> tuple[RegAD, Path]:
    """The RegAD network that scores a held-out category, trained on ``others`` only.

    Args:
        others: The training categories (every category but the target).
        settings: Training (and architecture) settings.
        folder: The model's own folder: ``folder/regad.pt``, trained (resumably) here when
            no usable model exists.
        reuse: Another run's model file, only read: used when it was made with these
            settings and categories.
        progress: Show tqdm bars while training.
        monitor: Per-epoch diagnostics while training (``EpochDiagnostics``); not run when an
            existing model is reused.

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
    train_regad(others, settings, path.parent, progress=progress, monitor=monitor)
    return load_model(path, expected=settings)[0], path


__all__ = ["TEST_SELECTED_NAME", "EpochDiagnostics", "leave_one_out_regad", "untrained_regad"]
