"""The decision threshold of a product detector (``fsad fit``), from normal images only.

Anomalib's threshold set on normal-only validation images flags nearly every new image
(anomalib issues #2433 and #3357). Here a named rule (``fsad fit --threshold RULE``) turns
reference scores (``References``, made by ``fsad.product.calibration``) into a threshold:

- ``leave_one_out``: every support image scored by the detector fitted on the other K - 1
  (none with K = 1);
- ``views``: RegAD's 22 views of every support image (flips, rotations, shifts, grey)
  scored by the detector fitted on the other K - 1 (22 K scores, image-major; view 0 is the
  image). The rules use the 8 that look like another good part (``TYPICAL_VIEWS``: the image,
  rotations by +-11.25 degrees, shifts by +-5 % of the side, the horizontal flip), not the
  rotations by 22.5-45 and 90-270 degrees, the 10 % shifts and the grey copy: on metal_plate at
  224 px those scored up to 90.6 where held-out good parts scored 41-47, and a spread taken
  from them put the threshold above every test image (docs/calibration.md);
- ``good``: the ``--good`` images scored by the detector fitted on all K;
- ``synthetic``: anomalies made from every support image (cut-paste, noise, thin
  scratches), scored by the detector fitted on the other K - 1.

The floor of the log spread was measured per method (``MIN_LOG_SPREADS``); a method not
measured takes padim_views'.

Typical views are rescaled to the median of the leave-one-out scores (augmented copies score
higher than the images: they give the spread, the images the level). A leave-one-out score comes
from a detector of K - 1 images, so it runs higher than the score
of a new good image against all K. The rules other than ``max_margin`` multiply the
leave-one-out kinds (leave_one_out, views, synthetic) by ``loo_shift(K) = 1 - SHIFT / K``
before use (``--good`` scores need none); SHIFT = 0.6 was measured on fsad-mini at 128 px
(median test/good score over median leave-one-out score: 0.64 at K = 2, 0.85 at K = 4, 0.94 at
K = 8; ``benchmarks/calibration.py``, docs/calibration.md).

The rules (R: the references named, "views" meaning the typical ones; med: median; sigma =
1.4826 x median absolute deviation, at least 5 % of |med| (of the logs: at least the method's
``MIN_LOG_SPREADS``); f: ``--target-fpr``):

=============  ===========================================  =====================================
rule           references R                                 threshold
=============  ===========================================  =====================================
max_margin     leave_one_out + good (not shifted)           max R + (max R - med R); with one
                                                            score, 1.1 x that score
mad            leave_one_out + good                         med R + 3 sigma
quantile       views + good                                 the (1 - f) quantile of R (linear)
tail           leave_one_out + good                         exponential tail above the median:
                                                            med + beta ln(p / f), beta = mean
                                                            excess over med, p = share above med
views_tail     views + good                                 the same on views + good
lognormal      views + good                                 exp(med log R + z(1 - f) sigma(log R))
synthetic      leave_one_out + good, and synthetic S        max(max R, (max R + med S) / 2)
=============  ===========================================  =====================================

The default, ``lognormal`` at f = 0.05, was chosen on ``benchmarks/calibration.py`` (128 px, all
22 views); at 224 px its 22-view spread put the threshold above every good part of metal_plate,
so the view rules use the typical views only. Its floor of the log spread is per method
(``MIN_LOG_SPREADS``: padim_views 0.15, anomalydino, patchcore and fastrecon 0.2, chosen at
224 px on 11 draws of K = 4 and 8 per category, the first K sorted images among them). With
``GOOD_FOR_TAIL`` (10) or more ``--good`` images the default is ``tail`` (``default_rule``): at
G = 30 it had no degenerate draw for padim_views, anomalydino and patchcore (fastrecon: 1 of 66
per K), and 53-85 % of draws in the 0.5-10 % FPR band (docs/calibration.md).

Every rule's normal level (normalised score 0) is med R; a threshold at or below it is
raised to med R + sigma. ``normalised = clip(0.5 + 0.5 (score - threshold) / (threshold -
normal), 0, 1)``: 0.5 is the threshold; ``label`` is ``anomalous`` when normalised > 0.5.
Pixels: the same rule on each reference image's map maximum gives the pixel threshold of
the heat-maps and masks (equal to the image one where the image score is the map's maximum).

Example:
    >>> refs = References(leave_one_out=np.array([1.0, 2.0, 3.0]))
    >>> threshold = Threshold.from_rule("max_margin", refs, refs)
    >>> threshold.image, threshold.normalise_image(np.array([2.0, 4.0]))
    (4.0, array([0. , 0.5]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MARGIN = 1.0  # max_margin: threshold = max + MARGIN x (max - median)
MAD_K = 3.0  # mad: threshold = median + MAD_K x sigma
MAD_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a normal distribution
MIN_SPREAD = 0.05  # sigma is at least this share of |median|, sigma of logs at least this (K = 2: two close scores)
NUM_VIEWS = 22  # fsad.components.views.support_views, in its order
# The views like another good part: the image (0), rotations by -11.25 and +11.25 degrees (4, 5), shifts by
# (+-0.1, +-0.1) of the half-size (9-12), the horizontal flip (17). Not: rotations by 22.5-45 degrees (reflected
# corners), the 0.2 shifts, grey, 90-270 degree turns (benchmarks/calibration.py, docs/calibration.md).
TYPICAL_VIEWS = (0, 4, 5, 9, 10, 11, 12, 17)
SHIFT = 0.6  # loo_shift(K) = 1 - SHIFT / K, measured in benchmarks/calibration.py
DEFAULT_RULE = "lognormal"  # chosen on benchmarks/calibration.py (docs/calibration.md), with few --good images
DEFAULT_RULE_WITH_GOOD = "tail"  # ... and with GOOD_FOR_TAIL or more: more pairs in the FPR band, fewer degenerate
GOOD_FOR_TAIL = 10
DEFAULT_TARGET_FPR = 0.05
RULE_NAMES = ("max_margin", "mad", "quantile", "tail", "views_tail", "lognormal", "synthetic")
# The fsad fit --help text on thresholds (measured in docs/calibration.md).
THRESHOLD_RULE = """\
threshold (normal images only, --threshold RULE): every support image is scored by the detector
fitted on the other K - 1 (leave one out; none with K = 1), with its 22 views and 3 synthetic
anomalies where the rule uses them, plus the --good images by the detector fitted on all K.
Rules: """ + ", ".join(RULE_NAMES) + """ (fsad.product.threshold).

Default: lognormal at --target-fpr 0.05: a log-normal model (median, 1.4826 MAD of the logs, at
least 0.15 for padim_views, 0.2 for anomalydino, patchcore and fastrecon) of the scores
of 8 of the 22 views of each support image, those like another good part (the image, rotations
by +-11.25 degrees, shifts by 5 % of the side, the flip; rescaled to the images' median,
x (1 - 0.6 / K) for the K - 1 vs K shift) and the --good scores, threshold at its 95th percentile.
With 10 or more --good images the default is tail (an exponential tail above the median of the
leave-one-out and --good scores).
Measured (benchmarks/calibration.py, 224 px, fsad-mini's 4 categories + ELPV mono / poly, 11
draws of K each: 10 random and the first K sorted; FPR on unseen good images, mean and 10-90 %
of draws; recall on defective ones):
  padim_views, no --good, K = 4: FPR 10.0 % (0 - 23 %), recall 42 %, 9 of 66 draws degenerate
    (FPR > 30 % or nothing flagged); K = 8: 6.8 % (0 - 12 %), 43 %, 2 of 66.
  padim_views, 30 --good, tail: K = 4: 5.4 % (0 - 12 %), recall 38 %, none degenerate; K = 8: 6.1 %, 47 %.
  anomalydino, no --good, K = 4: FPR 14.3 % (0 - 36 %), recall 67 %, 12 of 66 degenerate; K = 8:
    10.8 %, 66 %, 5 of 66; 30 --good, tail: K = 4: 5.9 % (0 - 17 %), recall 60 %, none degenerate;
    K = 8: 6.1 %, 64 %.
  patchcore, no --good, K = 4: FPR 14.0 % (0 - 30 %), recall 62 %, 6 of 66 degenerate; K = 8: 4.7 %,
    53 %, 1 of 66; 30 --good, tail: K = 4: 5.9 %, 53 %, none degenerate; K = 8: 5.6 %, 59 %.
  fastrecon, no --good, K = 4: FPR 7.6 % (0 - 19 %), recall 45 %, 4 of 66 degenerate; K = 8: 4.8 %,
    42 %, 2 of 66; 30 --good, tail: K = 4: 5.0 %, 44 %, 1 degenerate; K = 8: 5.7 %, 47 %, 1.
K consecutive parts vary less than production: with the first K sorted images and no --good the
FPR was 39 % (padim_views, K = 4) on average; --good images from other batches fix the level.
Other methods (padim, spade, regad, ...) take padim_views' settings, not measured on them (fit
says so).

normalised score = clip(0.5 + 0.5 (score - threshold) / (threshold - median), 0, 1), so 0.5 is
the threshold; label = anomalous when normalised > 0.5. The same rule on the maps' maxima sets
the pixel threshold of the heat-maps and masks. K = 1 needs --good."""


# The floor of sigma(log R) in ``lognormal`` per method: unseen good images spread at least this much. Chosen on
# benchmarks/calibration.py (224 px, K = 4 and 8, fsad-mini + ELPV; --summary, "chosen on all categories"): the floor
# of lognormal@0.05 with the most (category, draw) pairs in the 0.5-10 % FPR band less the degenerate ones
# (docs/calibration.md; patchcore and fastrecon: 10 random draws + the sorted one, as the others). A method not named
# here (not measured) takes padim_views'.
MIN_LOG_SPREADS: dict[str, float] = {"padim_views": 0.15, "anomalydino": 0.2, "patchcore": 0.2, "fastrecon": 0.2}


def min_log_spread(method: str) -> float:
    """``MIN_LOG_SPREADS`` of ``method`` (padim_views' where it was not measured)."""
    return MIN_LOG_SPREADS.get(method, MIN_LOG_SPREADS["padim_views"])


def default_rule(good: int) -> str:
    """The rule ``fsad fit`` uses without ``--threshold``: ``tail`` with ``GOOD_FOR_TAIL`` or more --good images, else
    ``lognormal`` (benchmarks/calibration.py at 224 px, G = 10 and 30, K = 4 and 8: tail had more (category, draw)
    pairs in the 0.5-10 % FPR band and no more degenerate ones for padim_views, anomalydino, patchcore and fastrecon,
    but for padim_views at K = 8, G = 10: 59.1 % and 3 against 60.6 % and 2; docs/calibration.md)."""
    return DEFAULT_RULE_WITH_GOOD if good >= GOOD_FOR_TAIL else DEFAULT_RULE


def loo_shift(k: int) -> float:
    """The factor that takes a leave-one-out score (K - 1 images) to the scale of a new good image (K)."""
    return 1.0 - SHIFT / k if k > 1 else 1.0


@dataclass(frozen=True)
class References:
    """Reference scores of one kind (image scores, or map maxima), by where they come from.

    Attributes:
        leave_one_out: K scores, each support image against the other K - 1 (empty with K = 1).
        views: 22 K scores of the support images' views against the other K - 1 (or empty).
        good: G scores of the --good images against all K.
        synthetic: S scores of synthetic anomalies against the other K - 1 (or empty).
        k: The number of support images (for the leave-one-out shift).
        method: The detector that scored them (its ``min_log_spread``).
    """

    leave_one_out: np.ndarray = field(default_factory=lambda: np.zeros(0))
    views: np.ndarray = field(default_factory=lambda: np.zeros(0))
    good: np.ndarray = field(default_factory=lambda: np.zeros(0))
    synthetic: np.ndarray = field(default_factory=lambda: np.zeros(0))
    k: int = 0
    method: str = "padim_views"

    def normal(self, kind: str, shifted: bool = True) -> np.ndarray:
        """``kind`` ('leave_one_out' or 'views'; views fall back to leave_one_out when absent), plus good.

        'views' are the ``typical_views``, rescaled to the leave-one-out scores' median first
        (x median(leave_one_out) / median(views)): shifted and rotated copies score higher than
        the images themselves, so they give the spread of the normal scores, the images their level.
        """
        factor = loo_shift(self.k) if shifted else 1.0
        scores = self.leave_one_out
        if kind == "views" and len(self.views):
            views = self.typical_views()
            scores = views * (float(np.median(self.leave_one_out)) / float(np.median(views)))
        return np.concatenate([np.asarray(scores, float) * factor, np.asarray(self.good, float)])

    def typical_views(self) -> np.ndarray:
        """The ``TYPICAL_VIEWS`` of each support image's 22 view scores: 8 K scores."""
        views = np.asarray(self.views, float)
        if len(views) != NUM_VIEWS * self.k:
            raise ValueError(f"fsad/product/threshold.py: References.views holds {len(views)} scores for K = {self.k}; "
                             f"expected {NUM_VIEWS} K (every view of fsad.components.views.support_views, image-major)")
        return views.reshape(self.k, NUM_VIEWS)[:, list(TYPICAL_VIEWS)].ravel()


def spread(reference: np.ndarray) -> float:
    """sigma = 1.4826 x median absolute deviation, at least MIN_SPREAD x |median| (and > 0)."""
    median = float(np.median(reference))
    mad = float(np.median(np.abs(reference - median)))
    return max(MAD_SIGMA * mad, MIN_SPREAD * abs(median), 1e-12)


def log_spread(reference: np.ndarray, floor: float = MIN_SPREAD) -> float:
    """sigma of log(reference) (> 0): 1.4826 x its median absolute deviation, at least ``floor`` (0.05: a 5 % spread)."""
    logs = np.log(reference)
    return max(MAD_SIGMA * float(np.median(np.abs(logs - np.median(logs)))), floor)


def _max_margin(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    r = refs.normal("leave_one_out", shifted=False)
    top, median = float(np.max(r)), float(np.median(r))
    margin = top - median if len(r) > 1 and top > median else 0.1 * max(abs(top), 1e-12)
    return top + MARGIN * margin, r


def _mad(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    r = refs.normal("leave_one_out")
    return float(np.median(r)) + MAD_K * spread(r), r


def _quantile(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    r = refs.normal("views")
    return float(np.quantile(r, 1 - target_fpr)), r


def exponential_tail(reference: np.ndarray, target_fpr: float) -> float:
    """The score exceeded with probability ``target_fpr`` under an exponential tail above the median.

    Peaks over a threshold (the generalised Pareto tail with shape 0): above u = median,
    P(X > u + t) = p exp(-t / beta), p = the share of scores above u, beta = their mean
    excess over u (its maximum-likelihood estimate); so threshold = u + beta ln(p / f).
    """
    u = float(np.median(reference))
    excess = reference[reference > u] - u
    p = len(excess) / len(reference)
    beta = float(excess.mean()) if len(excess) else spread(reference)
    p = max(p, 1 / (len(reference) + 1))  # no score above the median (all equal): one in N + 1
    return u + beta * max(math.log(p / target_fpr), 0.0)


def _tail(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    r = refs.normal("leave_one_out")
    return exponential_tail(r, target_fpr), r


def _views_tail(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    r = refs.normal("views")
    return exponential_tail(r, target_fpr), r


def lognormal_level(reference: np.ndarray, target_fpr: float, floor: float = MIN_SPREAD) -> float:
    """The (1 - target_fpr) quantile of a log-normal model of ``reference`` (median and MAD of the logs, that spread
    at least ``floor``: a method's ``min_log_spread``); a normal model of the scores themselves where one is <= 0."""
    z = NormalDist().inv_cdf(1 - target_fpr)
    if np.all(reference > 0):
        return float(np.exp(np.median(np.log(reference)) + z * log_spread(reference, floor)))
    return float(np.median(reference)) + z * spread(reference)


def _lognormal(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    r = refs.normal("views")
    return lognormal_level(r, target_fpr, min_log_spread(refs.method)), r


def _synthetic(refs: References, target_fpr: float) -> tuple[float, np.ndarray]:
    if not len(refs.synthetic):
        raise ValueError("fsad fit: --threshold synthetic needs K >= 2 support images (synthetic anomalies "
                         "are scored leave one out); choose another --threshold")
    r = refs.normal("leave_one_out")
    top = float(np.max(r))
    anomalous = float(np.median(np.asarray(refs.synthetic, float) * loo_shift(refs.k)))
    return max(top, (top + anomalous) / 2), r


@dataclass(frozen=True)
class Rule:
    """A named threshold rule: ``compute(references, target_fpr) -> (threshold, normal references)``."""

    compute: Callable[[References, float], tuple[float, np.ndarray]]
    needs: tuple[str, ...]  # reference kinds beyond leave_one_out and good: 'views', 'synthetic'
    uses_target_fpr: bool
    summary: str


RULES: dict[str, Rule] = {  # keys: RULE_NAMES
    "max_margin": Rule(_max_margin, (), False, "max + (max - median) of the leave-one-out and --good scores"),
    "mad": Rule(_mad, (), False, "median + 3 sigma (1.4826 MAD) of the shifted leave-one-out and --good scores"),
    "quantile": Rule(_quantile, ("views",), True, "the (1 - target_fpr) quantile of the shifted typical-view and "
                     "--good scores"),
    "tail": Rule(_tail, (), True, "exponential tail above the median of the shifted leave-one-out and --good scores, "
                 "at target_fpr"),
    "views_tail": Rule(_views_tail, ("views",), True, "exponential tail above the median of the shifted typical-view "
                       "and --good scores, at target_fpr"),
    "lognormal": Rule(_lognormal, ("views",), True, "log-normal model (median, MAD) of the shifted typical-view and --good "
                      "scores, at target_fpr"),
    "synthetic": Rule(_synthetic, ("synthetic",), False, "between the shifted leave-one-out / --good scores and "
                      "synthetic anomalies: max(max R, (max R + median S) / 2)"),
}


def check_rule(rule: str, target_fpr: float) -> Rule:
    """The rule named ``rule``; a clear error for an unknown name or a target FPR outside (0, 0.5)."""
    if rule not in RULES:
        raise ValueError(f"fsad fit: unknown --threshold {rule!r}; choose from {', '.join(RULE_NAMES)}")
    if not 0 < target_fpr < 0.5:
        raise ValueError(f"fsad fit: --target-fpr must be between 0 and 0.5 (e.g. 0.01), got {target_fpr}")
    return RULES[rule]


@dataclass(frozen=True)
class Threshold:
    """Image and pixel decision thresholds, and the typical normal score each is measured from.

    Attributes:
        image, pixel: Score at normalised 0.5.
        image_normal, pixel_normal: Median normal reference score (normalised 0).
    """

    image: float
    pixel: float
    image_normal: float
    pixel_normal: float

    @staticmethod
    def level(rule: str, refs: References, target_fpr: float = DEFAULT_TARGET_FPR) -> tuple[float, float]:
        """(threshold, normal level) of ``refs`` by ``rule``; the threshold stays above the normal level."""
        threshold, normal_refs = check_rule(rule, target_fpr).compute(refs, target_fpr)
        normal = float(np.median(normal_refs))
        if threshold <= normal:
            threshold = normal + spread(normal_refs)
        return threshold, normal

    @classmethod
    def from_rule(cls, rule: str, image_refs: References, map_refs: References,
                  target_fpr: float = DEFAULT_TARGET_FPR) -> Threshold:
        """The thresholds of image-score and map-maximum references by ``rule``."""
        image, image_normal = cls.level(rule, image_refs, target_fpr)
        pixel, pixel_normal = cls.level(rule, map_refs, target_fpr)
        return cls(image, pixel, image_normal, pixel_normal)

    @staticmethod
    def _normalise(values, threshold: float, normal: float):
        scale = threshold - normal  # > 0 by the rule
        return ((values - threshold) / (2 * scale) + 0.5).clip(0, 1)

    def normalise_image(self, scores: np.ndarray) -> np.ndarray:
        return self._normalise(scores, self.image, self.image_normal)

    def normalise_map(self, maps: torch.Tensor) -> torch.Tensor:
        return self._normalise(maps, self.pixel, self.pixel_normal)


def describe(rule: str, target_fpr: float) -> str:
    """One line for detector.json and the CLI: the rule, its formula and (where used) the target FPR."""
    entry = RULES[rule]
    return f"{rule}: {entry.summary}" + (f" (target_fpr = {target_fpr:g})" if entry.uses_target_fpr else "")


__all__ = [
    "DEFAULT_RULE",
    "DEFAULT_RULE_WITH_GOOD",
    "DEFAULT_TARGET_FPR",
    "GOOD_FOR_TAIL",
    "MIN_LOG_SPREADS",
    "NUM_VIEWS",
    "RULES",
    "RULE_NAMES",
    "THRESHOLD_RULE",
    "TYPICAL_VIEWS",
    "References",
    "Threshold",
    "check_rule",
    "default_rule",
    "describe",
    "exponential_tail",
    "log_spread",
    "lognormal_level",
    "loo_shift",
    "min_log_spread",
    "spread",
]
