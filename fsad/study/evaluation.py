"""The ONE evaluation loop: for every support set, fit a detector, predict the test set, measure.

``fsad run`` (the RegAD experiment), the comparison, the ablations, the DVC ``evaluate``
stage and the notebooks all score through :func:`evaluate_detector`, so a metric, a timing
or a map means the same thing everywhere. Test images are embedded once per detector when
the embedding does not depend on the support set (every method but RegAD-L), then scored
against each support set's fitted model; the maps of the support sets a caller asks to
keep (``keep``) come back with the rows, so figures never refit.

Example:
    >>> test = TestSet.load(category, size=128)
    >>> run = evaluate_detector(detector, category, support_sets, test, ("image_auroc", "pixel_auroc"))
    >>> run.rows[0]  # {"method": ..., "category": ..., "shots": 2, "support_set": 0, "image_auroc": ..., ...}
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from fsad.data.loading import load_images, load_masks
from fsad.data.mvtec import Category
from fsad.data.support_sets import support_samples
from fsad.methods.base import Detector, Scores
from fsad.study.metrics import aupro, f1_max, image_auroc, pixel_auroc

PIXEL_METRICS = ("pixel_auroc", "aupro")
IMAGE_METRICS = ("image_auroc", "f1_max")


def clock(device: str) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` is done (CUDA kernels run asynchronously)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def warm_up(device: str) -> None:
    """Pay CUDA's start-up on ``device`` before anything is timed: a tiny convolution (cuDNN), matmul
    (cuBLAS), Cholesky (cuSOLVER) and grid sample; nothing on the CPU."""
    if not device.startswith("cuda"):
        return
    x = torch.ones(1, 3, 8, 8, device=device)
    torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device=device))
    torch.linalg.cholesky(torch.eye(4, device=device) + x[0, 0, :4, :4] @ x[0, 0, :4, :4].T)
    torch.nn.functional.grid_sample(x, torch.zeros(1, 2, 2, 2, device=device), align_corners=False)
    torch.cuda.synchronize(device)


@dataclass
class TestSet:
    """A category's test images, labels, masks and their file names relative to the category."""

    __test__ = False  # a data class, not a pytest test class

    images: torch.Tensor  # N x 3 x H x W uint8
    labels: np.ndarray  # N
    masks: torch.Tensor  # N x H x W
    has_masks: bool
    files: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, category: Category, size: int | tuple[int, int]) -> TestSet:
        labels = np.array([s.label for s in category.test])
        files = [s.path.relative_to(category.path).as_posix() for s in category.test]
        return cls(load_images(category.test, size, desc=f"test {category.name}"), labels, load_masks(category.test, size),
                   category.has_masks, files)


def metrics_of(scores: Scores, test: TestSet, metrics: Sequence[str]) -> dict[str, float]:
    """Image metrics from the detector's image scores, pixel metrics from its maps (NaN without masks)."""
    out: dict[str, float] = {}
    for name in metrics:
        if name == "image_auroc":
            out[name] = image_auroc(test.labels, scores.image.numpy())
        elif name == "f1_max":
            out[name] = f1_max(test.labels, scores.image.numpy())
        elif name in PIXEL_METRICS:
            if not test.has_masks:
                out[name] = float("nan")
            elif name == "pixel_auroc":
                out[name] = pixel_auroc(test.masks.numpy(), scores.maps.numpy())
            else:
                out[name] = aupro(test.masks.numpy(), scores.maps.numpy())
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {IMAGE_METRICS + PIXEL_METRICS}")
    return out


@dataclass
class Evaluated:
    """What :func:`evaluate_detector` returns.

    Attributes:
        rows: One dict per (K, support set): method, category, shots, support_set, each
            metric. No timings: two identical runs give identical rows (results.csv).
        kept: ``(K, set) -> Scores`` of the support sets the caller asked to keep.
        seconds: ``fit_seconds`` and ``predict_seconds`` summed over the support sets (the
            studies' timings.csv / training.csv).
    """

    rows: list[dict]
    kept: dict[tuple[int, int], Scores]
    seconds: dict[str, float]


def evaluate_detector(
    detector: Detector,
    category: Category,
    support_sets: dict[int, list[list[str]]],
    test: TestSet,
    metrics: Sequence[str],
    keep: Collection[tuple[int, int]] = (),
    progress: bool = True,
) -> Evaluated:
    """Fit ``detector`` on every support set of every K and score ``test`` against it.

    Args:
        detector: Any method (``fsad.methods``); its ``name`` fills the ``method`` column.
        category: The target category (support paths are relative to it).
        support_sets: ``K -> [relative image paths]`` per set (``fsad.data.support_sets``).
        test: The category's test set at the detector's image size.
        metrics: Names in ``IMAGE_METRICS + PIXEL_METRICS``.
        keep: ``(K, set index)`` pairs whose scores (maps included) to return.
        progress: Show a tqdm bar over the support sets.
    """
    size = tuple(test.images.shape[-2:])  # (H, W): the support is read at the test images' shape
    warm_up(detector.device)  # else the first fit_seconds would hold CUDA's start-up
    embedded = None if detector.embedding_depends_on_support else detector.embed(test.images)
    rows, kept, seconds = [], {}, {"fit_seconds": 0.0, "predict_seconds": 0.0}
    jobs = [(k, i, paths) for k in sorted(support_sets) for i, paths in enumerate(support_sets[k])]
    for k, i, paths in tqdm(jobs, desc=f"{detector.name} {category.name}", disable=not progress, leave=False):
        support = load_images(support_samples(category, paths), size)  # K x 3 x H x W
        tic = clock(detector.device)
        detector.fit(support)
        fitted = clock(detector.device)  # the fit's queued GPU work counts as fit time
        scores = detector.predict(test.images) if embedded is None else detector.predict_embedded(embedded)
        predicted = clock(detector.device)  # before the metrics: predict_seconds times the detector alone
        seconds["fit_seconds"] += fitted - tic
        seconds["predict_seconds"] += predicted - fitted
        rows.append({"method": detector.name, "category": category.name, "shots": k, "support_set": i,
                     **metrics_of(scores, test, metrics)})
        if (k, i) in keep:
            kept[(k, i)] = scores
    return Evaluated(rows, kept, seconds)


def per_image_scores(scores: Scores, test: TestSet) -> dict[str, np.ndarray]:
    """Columns of a per-image score table: file, label, score (the image score of ``scores``)."""
    return {"file": np.array(test.files), "label": test.labels, "score": scores.image.numpy()}


__all__ = ["IMAGE_METRICS", "PIXEL_METRICS", "Evaluated", "TestSet", "clock", "evaluate_detector", "metrics_of", "per_image_scores",
           "warm_up"]
