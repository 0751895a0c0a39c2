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

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import load_images, to_float
from fsad.data.mvtec import Category
from fsad.data.synthesis import SCRATCH, AnomalySynthesizer
from fsad.io import save_atomic
from fsad.methods.regad.checkpoint import checkpoint_differences, load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.network import RegAD
from fsad.methods.regad.training import MODEL_NAME, EpochMonitor, train_regad
from fsad.study.evaluation import TestSet, evaluate_detector

# The weights of the epoch with the best per-epoch test AUROC (the official protocol's
# test-set selection), kept beside ``regad.pt`` only to measure what that selection adds.
TEST_SELECTED_NAME = "regad_test_selected.pt"
# The epoch chosen on the training pool's spare images (``PoolValidation``): never the target's data.
POOL_SELECTED_NAME = "regad_pool_selected.pt"

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
        self.best = keep_if_best(self.path, self.best, score, model, epoch, self.settings)


def keep_if_best(path: Path, best: float | None, score: float, model: RegAD, epoch: int, settings: RegADConfig) -> float:
    """Write ``model`` to ``path`` when ``score`` beats ``best`` (the best so far); return the new best.

    Epoch 0 starts a fresh training (an older file is not a candidate); a resumed training
    reads the best of its earlier epochs from the file.
    """
    if epoch == 0:
        best = None
    elif best is None and path.is_file():
        best = float(torch.load(path, map_location="cpu", weights_only=True)["score"])
    if best is None or score > best:
        best = score
        save_atomic({"config": settings.to_dict(), "model": model.state_dict(), "epoch": epoch, "score": score}, path)
    return best


class PoolValidation:
    """A ``train_regad`` monitor: the honest epoch choice, on the training pool's own spare images (issue 20).

    The official protocol keeps the epoch with the best TEST AUROC of the target. This one
    reads no target data: each pool category's spare normal images (its ``test/good``, or the
    spare sixth of a class folder, ``fsad.study.pools``; training reads only ``train/good``)
    and one synthetic anomaly made from each (``fsad.data.synthesis``: cut-paste, noise,
    scratch blobs of at most 5 % of the image, masks exact) are scored with one seeded support
    set of K = ``shots`` training images of that category. The epoch (0 = untrained included)
    with the best mean image + pixel AUROC over the categories is kept in
    ``folder/regad_pool_selected.pt``.

    Args:
        pool: The training categories.
        settings: Test-time settings (eps, blur, views, device); ``image_size`` too.
        folder: The model's folder.
        images: Spare normal images per category (the first ones); a category with none is skipped.
        shots: K of each category's support set.
    """

    def __init__(self, pool: Sequence[Category], settings: RegADConfig, folder: Path, images: int = 12, shots: int = 2):
        self.settings, self.path, self.best = settings, Path(folder) / POOL_SELECTED_NAME, None
        self.sets: list[tuple[Category, dict[int, list[list[str]]], TestSet]] = []
        for category in pool:
            spare = [s for s in category.test if s.label == 0][:images]
            if not spare or len(category.train) < shots:
                log.info("pool validation: %s has no spare normal image or < %d training images: not scored", category.name, shots)
                continue
            normal = load_images(spare, settings.image_size)  # n x 3 x S x S uint8
            # Seeded by the category's name: the same anomalies in every run and epoch.
            synthesize = AnomalySynthesizer(seed=_name_seed(category.name), kinds=("cutpaste", "noise", SCRATCH), max_fraction=0.05)
            made = [synthesize(image)[:2] for image in normal]
            scored = torch.cat([normal, torch.stack([m[0] for m in made])])  # 2n x 3 x S x S
            masks = torch.cat([torch.zeros(normal.shape[0], *normal.shape[-2:]), torch.stack([m[1] for m in made])])  # 2n x S x S
            labels = np.r_[np.zeros(len(normal), int), np.ones(len(normal), int)]
            picks = np.random.default_rng(_name_seed(category.name)).choice(len(category.train), shots, replace=False)
            support = [category.train[i].path.relative_to(category.path).as_posix() for i in sorted(picks)]
            self.sets.append((category, {shots: [support]}, TestSet(scored, labels, masks, True)))
        if not self.sets:
            raise ValueError("pool_selected: no training category has spare normal images (test/good) to validate on; "
                             "add one with test/good to the pool or set pool_selected: false")

    def __call__(self, model: RegAD, epoch: int) -> dict[str, float]:
        image, pixel = [], []
        for category, sets, test in self.sets:
            run = evaluate_detector(RegADMethod(model, self.settings, name="epoch"), category, sets, test,
                                    ("image_auroc", "pixel_auroc"), progress=False)
            image.append(run.rows[0]["image_auroc"])
            pixel.append(run.rows[0]["pixel_auroc"])
        values = {"pool_image_auroc": float(np.mean(image)), "pool_pixel_auroc": float(np.mean(pixel))}
        self.best = keep_if_best(self.path, self.best, values["pool_image_auroc"] + values["pool_pixel_auroc"], model, epoch,
                                 self.settings)
        return values


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def combined(*monitors: EpochMonitor | None) -> EpochMonitor | None:
    """One ``train_regad`` monitor calling each given one; their values in one history row."""
    active = [m for m in monitors if m is not None]
    if not active:
        return None
    return lambda model, epoch: {k: v for m in active for k, v in m(model, epoch).items()}


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


__all__ = ["POOL_SELECTED_NAME", "TEST_SELECTED_NAME", "EpochDiagnostics", "PoolValidation", "combined", "keep_if_best",
           "leave_one_out_regad", "untrained_regad"]
