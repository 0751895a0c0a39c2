"""RegAD settings in one dataclass, built from a ``params.yaml`` section or a YAML file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def settings_of(cls: type, values: dict[str, Any], source: str, what: str, tuples: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` checked against the dataclass ``cls``'s fields, ready for ``cls(**...)``.

    An unknown key is an error naming ``source``, the key and the known ones; the keys in
    ``tuples`` become tuples (YAML gives lists); a ``regad`` section becomes a ``RegADConfig``.
    """
    values = dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {what} setting(s) {unknown}; known: {sorted(known)}")
    if "regad" in known:
        values["regad"] = RegADConfig.from_dict(values.get("regad", {}), source=f"{source}: regad")
    for key in tuples:
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return values


@dataclass(frozen=True)
class RegADConfig:
    """Every setting of one RegAD run. Defaults are the CPU-sized run on MobileNetV2.

    The paper's settings are in ``configs/regad_paper.yaml`` (ResNet-18, 224 px, 50 epochs,
    batch 32, lr 1e-4, no input normalisation).

    Attributes:
        backbone: Name in ``fsad.components.backbones.BACKBONES``.
        pretrained: Load ImageNet weights (``False`` only for tests).
        normalize: Apply the backbone's ImageNet mean/std (the official code does not).
        stn_mode: Transform family of the STNs (``fsad.methods.regad.stn.STN_MODES``), or ``"none"``
            for no STN at all (the ablation "backbone + Siamese only").
        image_size: Square input size (plain resize, no crop).
        epochs: Training epochs; the LAST epoch's weights are used (no test-set selection).
        batch_size: Queries per batch, all of one category.
        lr: SGD learning rate of the three optimisers.
        momentum: SGD momentum.
        freeze_backbone_bn: Keep the backbone's ImageNet batch-norm running statistics
            during training (its BN layers stay in eval mode; their affine weights still
            learn). ``False`` is the official code: training on single-category batches
            re-estimates them, which cost 16 image-AUROC points on magnetic_tile in
            ``benchmarks/registration_diagnosis.py``.
        train_shots: K values a batch draws its number of supports from; with one value
            per evaluated K this trains one model for every K (the default).
        batches_per_epoch: Cap on batches per epoch (``None``: every training image once).
        eps: Added to the covariance diagonal.
        blur_sigma: Gaussian blur of the anomaly map, in pixels.
        augment_support: Use the 22 support views (``False`` for the ablation).
        seed: Fixes model initialisation and every sampled batch.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    normalize: bool = True
    stn_mode: str = "rotation_scale"
    image_size: int = 224
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    momentum: float = 0.9
    freeze_backbone_bn: bool = False
    train_shots: tuple[int, ...] = (2, 4, 8)
    batches_per_epoch: int | None = None
    eps: float = 0.01
    blur_sigma: float = 4.0
    augment_support: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "train_shots", tuple(int(k) for k in self.train_shots))
        if not self.train_shots or min(self.train_shots) < 1:
            raise ValueError(f"train_shots must list K >= 1, got {self.train_shots}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RegADConfig:
        """Build from a mapping; an unknown key is an error naming it and the known ones."""
        return cls(**settings_of(cls, values, source, "RegAD"))

    @classmethod
    def from_yaml(cls, path: str | Path, section: str | None = None) -> RegADConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if section is not None:
            data = data[section]
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train_shots"] = list(self.train_shots)
        return d

    def replace(self, **changes: Any) -> RegADConfig:
        return dataclasses.replace(self, **changes)


# Settings read only at test time (and where to run): changing them needs no retraining.
TEST_TIME_KEYS = ("eps", "blur_sigma", "augment_support", "device")


def training_settings(config: RegADConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings that determine a trained model (everything but ``TEST_TIME_KEYS``)."""
    values = config.to_dict() if isinstance(config, RegADConfig) else dict(config)
    values["train_shots"] = list(values.get("train_shots", ()))
    return {k: v for k, v in values.items() if k not in TEST_TIME_KEYS}


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but no CUDA device is visible; use device: cpu or auto")
    return name


__all__ = ["RegADConfig", "resolve_device"]
