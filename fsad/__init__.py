"""fsad: few-shot anomaly detection, RegAD (ECCV 2022) and its peers, reproducibly."""

__version__ = "0.1.0"
