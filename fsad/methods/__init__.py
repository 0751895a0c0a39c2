"""Few-shot anomaly detectors compared with RegAD under one harness (``fsad.study.comparison``).

Every method implements ``fsad.methods.base.Detector``: ``fit`` on K support images,
``score`` test images into anomaly maps and image scores.
"""

from fsad.methods.base import Detector, Scores
from fsad.methods.padim import PaDiM
from fsad.methods.patchcore import PatchCore
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad_l import RegADL
from fsad.methods.resad import ResAD
from fsad.methods.spade import SPADE

__all__ = ["SPADE", "Detector", "PaDiM", "PatchCore", "RegADL", "RegADMethod", "ResAD", "Scores"]
