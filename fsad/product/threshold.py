"""The decision threshold of a product detector (``fsad fit``), from normal images only.

Anomalib's threshold set on normal-only validation images flags nearly every new image
(anomalib issues #2433 and #3357); the rule here:

1. Normal reference scores: every support image scored by the detector fitted on the
   other K - 1 (leave one out; needs K - 1 >= the method's fewest support images, so
   none with K = 1), plus, with ``--good``, every extra good image scored by the
   detector fitted on all K.
2. ``threshold = max(reference) + MARGIN * (max(reference) - median(reference))``,
   MARGIN = 1; with a single reference score the spread is taken as 10 % of its size.
   Leave-one-out scores come from K - 1 images, so they run higher than the scores of
   new good images against all K: the threshold errs towards passing good images.
3. ``normalised = clip(0.5 + 0.5 * (score - threshold) / (threshold - median(reference)), 0, 1)``:
   0.5 is the threshold, 0 the typical normal image, 1 twice as far above the threshold.
   ``label`` is ``anomalous`` when normalised > 0.5, else ``normal``.
4. Pixels: the same rule on each reference image's map maximum gives the pixel threshold
   (equal to the image one for methods whose image score is the map's maximum; SPADE and
   PatchCore score images their own way). Heat-maps colour the normalised map (blue 0,
   green 0.5 = threshold, red 1) on one scale for every image; masks are pixels > 0.5.

MARGIN was chosen on fsad-mini magnetic_tile and pcb (224 px, K = 4 drawn three times from
train/good, scored on all their test images; bottle and metal_plate kept for the check):
false-positive rate on test/good / recall on defective images, mean of the three draws,

=============  ===========  ===========  ===========  ===========
MARGIN         0            0.5          1            2
=============  ===========  ===========  ===========  ===========
padim_views    17 / 44, 7   12 / 35, 7   10 / 29, 7   8 / 22, 7
untrained      15 / 38, 8   9 / 26, 7    7 / 18, 7    4 / 14, 6
patchcore      13 / 36, 16  9 / 24, 11   4 / 17, 4    1 / 10, 1
=============  ===========  ===========  ===========  ===========

(magnetic_tile FPR / recall, then pcb FPR, %; pcb is at chance for every method, its
recall equals its FPR). With K = 4 the largest of four leave-one-out scores is a noisy
estimate, so one draw's FPR ranged 0-21 %: more good images (``--good``) steady it.

Example:
    >>> threshold = Threshold.from_reference(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    >>> threshold.image, threshold.normalise_image(np.array([2.0, 4.0]))
    (4.0, array([0. , 0.5]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MARGIN = 1.0
THRESHOLD_RULE = """\
threshold (normal images only): every support image is scored by the detector fitted on the
other K - 1 (leave one out; none with K = 1), plus the --good images by the detector fitted on
all K. threshold = max + MARGIN x (max - median) of those scores (MARGIN = 1); normalised score =
clip(0.5 + 0.5 (score - threshold) / (threshold - median), 0, 1), so 0.5 is the threshold; label
= anomalous when normalised > 0.5. The same rule on the maps' maxima sets the pixel threshold of
the heat-maps and masks. K = 1 needs --good."""


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
    def _rule(reference: np.ndarray, margin: float) -> tuple[float, float]:
        """(threshold, median) of normal reference scores by the module's rule."""
        top, median = float(np.max(reference)), float(np.median(reference))
        spread = top - median if len(reference) > 1 and top > median else 0.1 * max(abs(top), 1e-12)
        return top + margin * spread, median

    @classmethod
    def from_reference(cls, image_scores: np.ndarray, map_maxima: np.ndarray, margin: float = MARGIN) -> Threshold:
        """The thresholds of normal reference image scores and map maxima (one of each per image)."""
        image, image_normal = cls._rule(image_scores, margin)
        pixel, pixel_normal = cls._rule(map_maxima, margin)
        return cls(image, pixel, image_normal, pixel_normal)

    @staticmethod
    def _normalise(values, threshold: float, normal: float):
        scale = threshold - normal  # > 0 by the rule
        return ((values - threshold) / (2 * scale) + 0.5).clip(0, 1)

    def normalise_image(self, scores: np.ndarray) -> np.ndarray:
        return self._normalise(scores, self.image, self.image_normal)

    def normalise_map(self, maps: torch.Tensor) -> torch.Tensor:
        return self._normalise(maps, self.pixel, self.pixel_normal)


__all__ = ["MARGIN", "THRESHOLD_RULE", "Threshold"]
