"""Normal and synthetic reference scores from the K support images themselves, for ``fsad fit``'s threshold.

With K support images, leave one out gives only K normal scores. The support images give
more without new images (``fsad.product.threshold`` turns them into a threshold):

- **views**: RegAD's 22 views of each support image (``fsad.components.views``: rotations by
  up to 45 degrees, shifts, a flip, grey, 90-degree turns) scored by the detector fitted on the
  other K - 1 images (leave one image out): 22 K normal scores, view 0 being the image itself;
- **synthetic**: anomalies made from each support image (``fsad.data.synthesis``: cut-paste and
  noise blobs of at most 5 % of the image, thin scratches; seeded by the image's pixels, so an
  image gives the same anomalies wherever it comes), scored the same way, so the threshold can
  be placed between normal and anomalous scores;
- **good**: the ``--good`` images, scored by the detector fitted on all K.

Every fit is one of the K leave-one-out fits, so views and synthetic anomalies add scoring
only (22 + 3 images per support image), no extra fit.

Example:
    >>> image_refs, map_refs = reference_scores(detector, support, good, kinds=("views",))
    >>> Threshold.from_rule("views_tail", image_refs, map_refs, target_fpr=0.01)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fsad.components.views import support_views
from fsad.data.loading import to_float
from fsad.data.synthesis import SCRATCH, AnomalySynthesizer
from fsad.methods.base import Detector
from fsad.product.threshold import References

SYNTHETIC_KINDS = ("cutpaste", "noise", SCRATCH)
SYNTHETIC_MAX_FRACTION = 0.05  # a defect is small: blobs of at most ~5 % of the image
SYNTHETIC_SEED = 0


def synthetic_anomalies(image: torch.Tensor, seed: int = SYNTHETIC_SEED) -> torch.Tensor:
    """One anomaly of every ``SYNTHETIC_KINDS`` made from ``image`` (3 x S x S, uint8 or [0, 1]): 3 x 3 x S x S uint8.

    The draw is seeded by ``seed`` and the image's pixels (CRC-32).
    """
    pixels = image if image.dtype == torch.uint8 else (to_float(image) * 255).round().to(torch.uint8)
    pixel_seed = zlib.crc32(pixels.contiguous().numpy().tobytes())
    synthesizer = AnomalySynthesizer(None, seed=seed + pixel_seed, kinds=SYNTHETIC_KINDS, max_fraction=SYNTHETIC_MAX_FRACTION)
    return torch.stack([synthesizer(pixels, kind)[0] for kind in SYNTHETIC_KINDS])


def _image_and_map_max(detector: Detector, images: torch.Tensor) -> tuple[list[float], list[float]]:
    with torch.no_grad():  # scoring only; the fits around it may train (regad_l) and need gradients
        scores = detector.predict(images)
    return scores.image.tolist(), scores.maps.flatten(1).amax(dim=1).tolist()


def reference_scores(detector: Detector, support: torch.Tensor, good: torch.Tensor | None = None,
                     leave_one_out: bool = True, kinds: Sequence[str] = (), progress: bool = False) -> tuple[References, References]:
    """Fit ``detector`` on all K support images; return its reference scores (image scores, map maxima).

    Args:
        detector: An unfitted or fitted detector; it ends fitted on all K.
        support: K x 3 x S x S images; with ``leave_one_out`` each is scored by the detector
            fitted on the other K - 1 first (K extra fits).
        good: G x 3 x S x S extra good images, scored by the detector fitted on all K.
        kinds: Extra reference kinds scored in the leave-one-out fits: ``views`` (22 per
            support image), ``synthetic`` (3 per support image).

    Returns:
        ``References`` of the image scores and of the maps' maxima.
    """
    unknown = sorted(set(kinds) - {"views", "synthetic"})
    if unknown:
        raise ValueError(f"fsad/product/calibration.py: unknown reference kinds {unknown}; known: views, synthetic")
    k = len(support)
    found: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ("leave_one_out", "views", "synthetic", "good")}

    def add(name: str, images: torch.Tensor) -> None:
        image, map_max = _image_and_map_max(detector, images)
        found[name][0].extend(image)
        found[name][1].extend(map_max)

    bar = tqdm(range(k if leave_one_out else 0), desc=f"{detector.name} leave-one-out", leave=False,
               disable=True if not progress or k < 4 else None)
    for held in bar:
        detector.fit(torch.cat([support[:held], support[held + 1 :]]))  # (K - 1) x 3 x S x S
        add("leave_one_out", support[held : held + 1])
        if "views" in kinds:
            add("views", support_views(to_float(support[held : held + 1]))[0])  # 22 x 3 x S x S
        if "synthetic" in kinds:
            add("synthetic", synthetic_anomalies(support[held]))  # 3 x 3 x S x S
    detector.fit(support)  # last: the detector that is saved is fitted on all K
    if good is not None and len(good):
        add("good", good)
    image, map_max = ({name: np.array(found[name][i]) for name in found} for i in (0, 1))
    return References(**image, k=k, method=detector.name), References(**map_max, k=k, method=detector.name)


__all__ = ["SYNTHETIC_KINDS", "reference_scores", "synthetic_anomalies"]
