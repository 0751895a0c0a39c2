"""What ``fsad fit --method auto`` ranks and by what criterion: names and help text only.

Kept apart from ``fsad.product.selection`` (which ranks, with torch and the methods) because the
command line builds ``fsad fit``'s help from it at start-up, and ``fsad predict`` on a line PC
should not import what only ``fit`` runs (it cost 1.4 s of a one-image predict: torch's methods
and scipy.stats through the metrics).
"""

from __future__ import annotations

AUTO = "auto"
# Training-free methods, the default first (the last tie-break). Not candidates: regad / resad
# (a trained model file), regad_l (trains on the support set), untrained (padim_views' Gaussian
# on RegAD's untrained network: the same model at several times the cost), spade (the lowest test
# AUROC of all in every draw of bottle and magnetic_tile, and the slowest to rank: docs/method_choice.md).
CANDIDATES = ("padim_views", "patchcore", "anomalydino", "fastrecon", "padim", "anomalydino_dinov2")
SYNTHETIC_DRAWS = 3  # x 3 kinds: 9 synthetic anomalies per held-out image
# What the ranking measures, in the record and the report.
CRITERION = ("AUROC of the K held-out good images' scores (each scored by the method fitted on the other K - 1) "
             f"against {3 * SYNTHETIC_DRAWS} synthetic anomalies made from each (cut-paste, noise, scratch); "
             "ties: the margin, lowest synthetic score / highest held-out score")

# The fsad fit --help text on --method auto (measured in docs/method_choice.md).
AUTO_HELP = """\
--method auto: ranks the training-free methods whose weights are here
(""" + ", ".join(CANDIDATES) + """; a candidate without its weight file
is skipped with a note, never run on random weights) by how well
each, fitted on K - 1 good images, separates the held-out image from 9 synthetic anomalies made from it
(cut-paste, noise, scratch): AUROC over the K held-out images, ties to the margin (lowest synthetic
score / highest good score). The best is fitted as --method would fit it; the ranking is printed and kept in
detector.json and report.html. Needs K >= 2. Measured (benchmarks/method_choice.py, fsad-mini + ELPV,
128 px, K = 2 / 4 / 8, 2 draws): auto within 1 image-AUROC point of the oracle-best method in 9 of 18
(category, K) = 50 %, below the target of 75 %; --method anomalydino on every product: 17 of 18
(docs/method_choice.md). The threshold rules are calibrated on padim_views: on fsad-mini metal_plate
(K = 4) auto chose patchcore, which flagged 53 % of the good test parts (padim_views: 3 %)."""


__all__ = ["AUTO", "AUTO_HELP", "CANDIDATES", "CRITERION", "SYNTHETIC_DRAWS"]
