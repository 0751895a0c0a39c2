"""The RegAD paper's numbers (Huang et al., ECCV 2022), and the few-shot methods' published means, to print beside ours.

MVTec AD: Table 1 of the paper, image / pixel AUROC in %, mean over 10 support sets, per
category for K = 2, 4, 8. MPDD: Table 4, the mean over categories only, K = 4, 8, 16.
Transcribed from ``../shared/spec/REGAD_REFERENCE.md``.

Example:
    >>> paper_numbers("mvtec_ad").query("category == 'bottle' and shots == 2")["image_auroc"].item()
    99.4
    >>> benchmark_of(["bottle", "cable"])
    'mvtec_ad'
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

MEAN = "mean"

# category -> {K: (image AUROC %, pixel AUROC %)}
MVTEC_AD: dict[str, dict[int, tuple[float, float]]] = {
    "bottle": {2: (99.4, 98.0), 4: (99.4, 98.4), 8: (99.8, 97.5)},
    "cable": {2: (65.1, 91.7), 4: (76.1, 92.7), 8: (80.6, 94.9)},
    "capsule": {2: (67.5, 97.3), 4: (72.4, 97.6), 8: (76.3, 98.2)},
    "carpet": {2: (96.5, 98.9), 4: (97.9, 98.9), 8: (98.5, 98.9)},
    "grid": {2: (84.0, 77.4), 4: (91.2, 85.7), 8: (91.5, 88.7)},
    "hazelnut": {2: (96.0, 98.1), 4: (95.8, 98.0), 8: (96.5, 98.5)},
    "leather": {2: (99.4, 98.0), 4: (100.0, 99.1), 8: (100.0, 98.9)},
    "metal_nut": {2: (91.4, 96.9), 4: (94.6, 97.8), 8: (98.3, 96.9)},
    "pill": {2: (81.3, 93.6), 4: (80.8, 97.4), 8: (80.6, 97.8)},
    "screw": {2: (52.5, 94.4), 4: (56.6, 95.0), 8: (63.4, 97.1)},
    "tile": {2: (94.3, 94.3), 4: (95.5, 94.9), 8: (97.4, 95.2)},
    "toothbrush": {2: (86.6, 98.2), 4: (90.9, 98.5), 8: (98.5, 98.7)},
    "transistor": {2: (86.0, 93.4), 4: (85.2, 93.8), 8: (93.4, 96.8)},
    "wood": {2: (99.2, 93.5), 4: (98.6, 94.7), 8: (99.4, 94.6)},
    "zipper": {2: (86.3, 95.1), 4: (88.5, 94.0), 8: (94.0, 97.4)},
    MEAN: {2: (85.7, 94.6), 4: (88.2, 95.8), 8: (91.2, 96.8)},
}

# MPDD: the paper gives the mean over its six categories only.
MPDD: dict[str, dict[int, tuple[float, float]]] = {
    MEAN: {4: (68.8, 93.9), 8: (71.9, 95.1), 16: (75.3, 96.3)},
}
MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")

BENCHMARKS = {"mvtec_ad": MVTEC_AD, "mpdd": MPDD}
CATEGORIES = {"mvtec_ad": tuple(c for c in MVTEC_AD if c != MEAN), "mpdd": MPDD_CATEGORIES}


def paper_numbers(benchmark: str) -> pd.DataFrame:
    """The paper's numbers of ``benchmark`` as rows (category, shots, image_auroc, pixel_auroc), in %.

    Raises:
        ValueError: ``benchmark`` is not ``mvtec_ad`` or ``mpdd``.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"fsad/reporting/paper.py: no paper numbers for benchmark {benchmark!r}; known: {sorted(BENCHMARKS)}")
    rows = [
        {"category": category, "shots": k, "image_auroc": image, "pixel_auroc": pixel}
        for category, by_k in BENCHMARKS[benchmark].items()
        for k, (image, pixel) in by_k.items()
    ]
    return pd.DataFrame(rows)


# Category means (image AUROC %, pixel AUROC % or None) of the few-shot methods beside RegAD, as
# published: (benchmark, method) -> {K: (image, pixel)}. Sources in ../shared/spec/REGAD_REFERENCE.md,
# "Newer few-shot anchors": FastRecon's README table (ICCV 2023, WRN-50; its PatchCore and RegAD
# rows on MPDD too; its RegAD MPDD K = 4 is 68.3 where the RegAD paper has 68.8), AnomalyDINO (WACV 2025,
# DINOv2 ViT-S/14 at 448 px, MVTec 1-shot, image only).
PUBLISHED_MEANS: dict[tuple[str, str], dict[int, tuple[float, float | None]]] = {
    ("mvtec_ad", "regad"): {k: MVTEC_AD[MEAN][k] for k in (2, 4, 8)},
    ("mvtec_ad", "patchcore"): {2: (87.81, 94.75), 4: (89.49, 94.99), 8: (94.31, 95.60)},
    ("mvtec_ad", "fastrecon"): {2: (90.97, 95.86), 4: (94.24, 96.98), 8: (95.19, 97.27)},
    ("mvtec_ad", "anomalydino_dinov2"): {1: (96.6, None)},
    ("mpdd", "regad"): {2: (63.4, 93.2), 4: (68.3, 93.9), 8: (71.9, 95.1)},
    ("mpdd", "patchcore"): {2: (59.55, 79.15), 4: (59.78, 79.82), 8: (59.95, 80.30)},
    ("mpdd", "fastrecon"): {2: (73.65, 97.03), 4: (79.85, 97.60), 8: (82.50, 97.92)},
}


def published_numbers() -> pd.DataFrame:
    """``PUBLISHED_MEANS`` as rows (benchmark, method, shots, image_auroc, pixel_auroc), in %; NaN where none was published.

    Example:
        >>> published_numbers().query("benchmark == 'mpdd' and method == 'fastrecon' and shots == 8")["image_auroc"].item()
        82.5
    """
    rows = [{"benchmark": benchmark, "method": method, "shots": k, "image_auroc": image,
             "pixel_auroc": float("nan") if pixel is None else pixel}
            for (benchmark, method), by_k in PUBLISHED_MEANS.items() for k, (image, pixel) in by_k.items()]
    return pd.DataFrame(rows)


def benchmark_of(categories: Iterable[str]) -> str | None:
    """``mvtec_ad`` or ``mpdd`` when every category belongs to that benchmark, else ``None``.

    A data set that mixes categories of several sources (e.g. fsad-mini) is no paper
    benchmark: its numbers are not comparable with the paper's.
    """
    names = set(categories)
    for benchmark, known in CATEGORIES.items():
        if names and names <= set(known):
            return benchmark
    return None


__all__ = ["BENCHMARKS", "MEAN", "PUBLISHED_MEANS", "benchmark_of", "paper_numbers", "published_numbers"]
