"""``fsad fit --method auto``: anomalydino, unless the product's own good images show it failing.

A new product comes without defective images, so methods are ranked on what the K good
images give (issue 18, item 3). For each candidate and each support image: fit the candidate
on the other K - 1, score the held-out image (a normal score) and ``SYNTHETIC_DRAWS`` x 3
synthetic anomalies made from it (``fsad.product.calibration.synthetic_anomalies``:
cut-paste, noise, a thin scratch; seeded, so a rerun ranks alike). A candidate's
**separation** is the AUROC of its K normal scores against its 3 ``SYNTHETIC_DRAWS`` K
synthetic ones; ties (several methods often reach 1.0: the synthetic anomalies are easy) go
to the larger **margin**, the lowest synthetic score over the highest normal one (every
candidate scores a distance, >= 0: above 1 when all anomalies outscore every good image),
then to the earlier candidate of ``CANDIDATES``.

The ranking alone was a poor chooser: over the 18 (category, K) of the benchmark
(docs/method_choice.md) its first choice was within 1 test-AUROC point of the oracle-best
method in 9 (50 %; the target was 75 %): synthetic anomalies are easier than real defects.
anomalydino was within 1 point in 17 (and is the best prior on any 5 of the 6 categories). So
auto fits ``PRIOR`` (anomalydino) and uses the ranking as a veto (``pick``): a candidate whose
separation beats the prior's by more than ``VETO`` (20 AUROC points, a clear failure of the
prior on the product's own synthetic defects) is fitted instead; where the prior cannot run, the ranking's best is. The chosen
method is then fitted as ``--method`` would fit it, and the ranking (separation, margin and
seconds of every candidate, and why any was skipped) goes into the detector folder's record,
where ``fsad predict``'s report shows it.

Candidates are the methods that need neither training nor a trained model file, on the
configured backbone: ``CANDIDATES``. A candidate whose weight file is not here (DINOv2's
``dinov2_vits14_pretrain.pth``; ResNet / WRN ImageNet weights for ``backbone: resnet18``) is
skipped with a one-line note: never replaced by random weights. K = 1 has no leave-one-out
fit to rank with, so auto is refused there (the message names the fix).

Example:
    >>> selection = choose_method(support, RegADConfig(image_size=128))  # K x 3 x 128 x 128, K >= 2
    >>> selection["chosen"], [row["method"] for row in selection["ranking"]]
    ('anomalydino', ['patchcore', 'anomalydino', ...])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fsad.components.backbones import resolve_weights
from fsad.components.dinov2 import DINOV2_VITS14
from fsad.components.weights import MissingWeightsError, locate_weights
from fsad.config import RegADConfig
from fsad.data.loading import to_float
from fsad.methods.base import Detector
from fsad.methods.registry import build_detector
from fsad.product.calibration import synthetic_anomalies
from fsad.product.candidates import AUTO, CANDIDATES, CRITERION, PRIOR, SYNTHETIC_DRAWS, VETO
from fsad.study.metrics import image_auroc


def _weights_here(method: str, regad: RegADConfig) -> None:
    """Raise ``MissingWeightsError`` when ``method``'s weight file is not on this machine (searched as when building)."""
    if method == "anomalydino_dinov2":  # a ViT of its own: pretrained or not, without its file it is no candidate
        locate_weights(DINOV2_VITS14)
    elif regad.pretrained:
        resolve_weights(regad.backbone)


def _missing(error: MissingWeightsError) -> str:
    """The first line of a missing-weights message, without where it looked: ``weight file 'x.pth' not found``."""
    first = str(error).splitlines()[0]
    return first.split(": ", 1)[-1].removesuffix("; looked in:") + " (never replaced by random weights)"


def check_auto(k: int, options: dict[str, Any], model_path: object | None) -> None:
    """Refuse what ``--method auto`` cannot do, before any work (one-line ``ValueError``s)."""
    if k < 2:
        raise ValueError(f"fsad fit: --method auto ranks methods leave one out, which needs K >= 2 good images, got K = {k}; "
                         "add support images or name a method (--method padim_views fits K = 1 with --good DIR)")
    if options:
        raise ValueError(f"fsad fit: --method auto runs every candidate with its defaults; drop the options: section "
                         f"({', '.join(sorted(options))}) of --config or name --method")
    if model_path is not None:
        raise ValueError(f"fsad fit: --method auto ranks training-free methods only; drop --model {model_path} "
                         "or name --method regad / resad")


def held_out_scores(detector: Detector, support: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out scores of the support images and of synthetic anomalies made from them.

    Args:
        detector: An unfitted or fitted detector; it ends fitted on the last K - 1 subset.
        support: K x 3 x S x S images (uint8 or [0, 1]); K - 1 >= ``detector.min_support``.

    Returns:
        ``(normal, synthetic)``: K image scores and ``3 SYNTHETIC_DRAWS K`` image scores; the
        image held out of each fit and the anomalies made from it are scored by that fit.
    """
    normal, synthetic = [], []
    with torch.no_grad():
        for held in range(len(support)):
            detector.fit(torch.cat([support[:held], support[held + 1 :]]))  # (K - 1) x 3 x S x S
            anomalies = torch.cat([synthetic_anomalies(support[held], seed) for seed in range(SYNTHETIC_DRAWS)])  # 9 x 3 x S x S
            scores = detector.predict(torch.cat([to_float(support[held : held + 1]), to_float(anomalies)])).image
            normal.append(float(scores[0]))
            synthetic.extend(scores[1:].tolist())
    return np.array(normal), np.array(synthetic)


def separation(normal: np.ndarray, synthetic: np.ndarray) -> tuple[float, float]:
    """``(AUROC of normal vs synthetic scores, margin = lowest synthetic score / highest normal score)``.

    The margin is 0 where the highest normal score is not positive (no candidate scores so).
    """
    labels = np.r_[np.zeros(len(normal)), np.ones(len(synthetic))]
    auroc = image_auroc(labels, np.r_[normal, synthetic])
    return auroc, float(synthetic.min() / normal.max()) if normal.max() > 0 else 0.0


def rank(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidate rows (``method``, ``auroc``, ``margin``) best first: AUROC, then margin, then their given order."""
    return sorted(rows, key=lambda row: (-round(row["auroc"], 9), -row["margin"]))  # sorted is stable


def pick(ranking: Sequence[dict[str, Any]]) -> str:
    """The method auto fits from ``rank``'s rows: ``PRIOR`` unless the best row separates by more than ``VETO`` more
    (then the best); the best row where ``PRIOR`` did not run (skipped for its weights, or not a candidate)."""
    best = ranking[0]
    prior = next((row for row in ranking if row["method"] == PRIOR), None)
    return best["method"] if prior is None or best["auroc"] > prior["auroc"] + VETO else PRIOR


def choose_method(support: torch.Tensor, regad: RegADConfig, candidates: Sequence[str] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Rank ``candidates`` on ``support`` by held-out separation, choose by ``pick``; return the record of the choice.

    Args:
        support: K x 3 x S x S support images, K >= 2.
        regad: The shared settings every candidate is built with.
        candidates: Method names of ``fsad.methods.registry.DETECTORS`` (default ``CANDIDATES``).

    Returns:
        ``{"chosen", "criterion", "ranking": [{"method", "auroc", "margin", "seconds", "normal_scores",
        "synthetic_scores"}] best first, "skipped": [{"method", "why"}], "seconds"}``.

    Raises:
        ValueError: no candidate could run (each one's reason in the message).
    """
    tic = time.perf_counter()
    rows, skipped = [], []
    k = len(support)
    for method in tqdm(candidates or CANDIDATES, desc="auto: ranking methods", leave=False, disable=True if not progress else None):
        try:
            _weights_here(method, regad)
        except MissingWeightsError as error:
            skipped.append({"method": method, "why": _missing(error)})
            continue
        start = time.perf_counter()
        detector = build_detector(method, regad)
        if k - 1 < detector.min_support:
            skipped.append({"method": method, "why": f"needs K >= {detector.min_support + 1} to be fitted leave one out"})
            continue
        normal, synthetic = held_out_scores(detector, support)
        auroc, margin = separation(normal, synthetic)
        rows.append({"method": method, "auroc": auroc, "margin": margin, "seconds": time.perf_counter() - start,
                     "normal_scores": normal.tolist(), "synthetic_scores": synthetic.tolist()})
    if not rows:
        reasons = "; ".join(f"{row['method']}: {row['why']}" for row in skipped)
        raise ValueError(f"fsad fit: --method auto found no candidate that runs here ({reasons}); "
                         "install the weights (make install) or set backbone: mobilenet_v2 in --config")
    ranking = rank(rows)
    return {"chosen": pick(ranking), "criterion": CRITERION, "ranking": ranking, "skipped": skipped,
            "seconds": time.perf_counter() - tic}


def ranking_lines(selection: dict[str, Any]) -> list[str]:
    """The ranking as printed by ``fsad fit`` (one line per candidate, best first)."""
    lines = [(f"auto: {len(selection['ranking'])} candidates ranked by held-out separation "
              f"(AUROC of good vs synthetic anomalies, leave one out) in {selection['seconds']:.1f} s; "
              f"{PRIOR} is chosen unless another separates by more than {100 * VETO:g} points more:")]
    for place, row in enumerate(selection["ranking"], start=1):
        lines.append(f"  {place}. {row['method']:<20} separation {100 * row['auroc']:5.1f}  margin {row['margin']:5.2f}  "
                     f"{row['seconds']:6.1f} s" + ("  <- chosen" if row["method"] == selection["chosen"] else ""))
    lines += [f"  -  {row['method']:<20} skipped: {row['why']}" for row in selection["skipped"]]
    return lines


__all__ = ["AUTO", "CANDIDATES", "check_auto", "choose_method", "held_out_scores", "pick", "rank", "ranking_lines",
           "separation"]
