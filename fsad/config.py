"""Every setting of fsad in one vocabulary: typed models, validated when read.

- ``RegADConfig``: one RegAD run (the ``train`` section of ``params.yaml``, with ``seeds`` for
  ``seed``: ``fsad.pipeline.params.TrainParams``; the ``regad:``
  section of ``configs/*.yaml``);
- ``ResADSettings``: ResAD's training; ``EvalSettings``: the test-time settings of the
  pipeline's ``evaluate`` stage;
- the studies, which share ``StudyConfig``'s data fields (dataset, categories, shots,
  n_sets, support_seed, metrics) and a ``regad`` section: ``ExperimentConfig`` (``fsad run``),
  ``ComparisonConfig`` (RegAD and its peers), ``AblationConfig``.

The models are pydantic v2 models (frozen, unknown keys refused), so one declaration per
field gives its type, default, range and documentation, and a YAML file is checked whole
before any work starts. What YAML gives loosely is read as meant: ``lr: 1e-3`` (a string
for YAML 1.1) is the number 0.001, ``shots: 2`` is ``(2,)``. Every problem is one line of a
``ConfigError`` naming the file and the dotted key, with the allowed values.

Example:
    >>> RegADConfig.from_dict({"lr": "1e-3", "train_shots": 4}).train_shots
    (4,)
    >>> ExperimentConfig.from_dict({"regad": {"epochs": "three"}}, source="configs/x.yaml")
    Traceback (most recent call last):
    fsad.config.ConfigError: configs/x.yaml: regad.epochs: 'three' is not an integer
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from fsad.paths import DTD_MINI_DIR

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class ConfigError(ValueError):
    """Settings a user wrote wrong: one line per problem, ``<file>: <dotted.key>: <what is wrong>``."""


# ----------------------------------------------------------------------------- field types
def _listed(value: Any) -> Any:
    """A scalar where a list belongs is a one-element list (``shots: 2`` means ``[2]``)."""
    return [value] if isinstance(value, (str, int, float, bool)) else value


def _problem_at(text: str, *at: str | int) -> PydanticCustomError:
    """A problem found by a validator; ``at`` extends its key path (``2`` under ``categories`` -> ``categories[2]``)."""
    return PydanticCustomError("setting", "{text}", {"text": text, "at": at})


def _once_each(values: tuple) -> tuple:
    """Refuse a repeated entry: each is run once, and a repeat would count twice in the means."""
    seen: set = set()
    for index, value in enumerate(values):
        key = unicodedata.normalize("NFC", value) if isinstance(value, str) else value  # category names compare in NFC
        if key in seen:
            raise _problem_at(f"{value!r} listed twice; list each once", index)
        seen.add(key)
    return values


def names(what: str, known: Callable[[], Iterable[str]]) -> AfterValidator:
    """A name checked against ``known()``, looked up when validating: the registries live in
    modules that import this one (``fsad.methods``, ``fsad.study``), which must not be imported here."""

    def check(value: str) -> str:
        choices = list(known())
        if value not in choices:
            text = f"unknown {what} {value!r}; choose from {choices}"
            raise PydanticCustomError("choice", "{text}", {"text": text})
        return value

    return AfterValidator(check)


def _metric_names() -> tuple[str, ...]:
    from fsad.study.evaluation import IMAGE_METRICS, PIXEL_METRICS

    return IMAGE_METRICS + PIXEL_METRICS


def _method_names() -> tuple[str, ...]:
    from fsad.methods.registry import DETECTORS

    return tuple(DETECTORS)


def _stn_modes() -> tuple[str, ...]:
    from fsad.methods.regad.stn import STN_MODES

    return tuple(STN_MODES)


def _stn_modes_or_none() -> tuple[str, ...]:
    from fsad.methods.regad.stn import NO_STN

    return (*_stn_modes(), NO_STN)


def _backbone_names() -> tuple[str, ...]:
    from fsad.components.backbones import BACKBONES

    return tuple(BACKBONES)


DEVICE_FORM = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(value: str) -> str:
    # Only the form: whether a GPU is there is checked when a run starts (``resolve_device``).
    if not DEVICE_FORM.fullmatch(value):
        raise PydanticCustomError("choice", "{text}", {"text": f"unknown device {value!r}; choose from auto, cpu, cuda, cuda:N"})
    return value


MIN_IMAGE_SIDE = 32


def _image_size(value: Any) -> int | tuple[int, int]:
    """``224`` (a square) or ``[H, W]``; a square pair is stored as its side, so ``[224, 224]`` and
    ``224`` are one setting with one fingerprint (configs written before ``[H, W]`` keep theirs)."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    sides = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in sides]  # YAML 1.1 / a command line
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
        raise _problem_at(f"{value!r} is not a side (224) or [height, width] ([256, 640]) in pixels")
    if min(sides) < MIN_IMAGE_SIDE:
        raise _problem_at(f"{value!r} must be >= {MIN_IMAGE_SIDE}" if len(sides) == 1 else f"{value!r}: each side must be >= {MIN_IMAGE_SIDE}")
    return sides[0] if len(set(sides)) == 1 else (sides[0], sides[1])


Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Eps = Annotated[float, Field(gt=0)]  # ridge on the covariance diagonal
BlurSigma = Annotated[float, Field(ge=0)]  # Gaussian blur of the anomaly maps, in pixels
Name = Annotated[str, Field(min_length=1)]
Dataset = Name  # elpv | toy | fsad-mini | an MVTec-layout folder (fsad.study.experiment.resolve_dataset)
Backbone = Annotated[str, names("backbone", _backbone_names)]
StnMode = Annotated[str, names("STN mode", _stn_modes_or_none)]
Device = Annotated[str, AfterValidator(_device)]
ImageSize = Annotated[int | tuple[int, int], BeforeValidator(_image_size)]  # side, or (H, W) when not square
Metric = Annotated[str, names("metric", _metric_names)]
Method = Annotated[str, names("method", _method_names)]
Shots = Annotated[tuple[Positive, ...], BeforeValidator(_listed), Field(min_length=1)]
Categories = Annotated[tuple[Name, ...], BeforeValidator(_listed), Field(min_length=1), AfterValidator(_once_each)]
Pool = Annotated[tuple[Name, ...], BeforeValidator(_listed), AfterValidator(_once_each)]  # fsad.study.pools entries
Seeds = Annotated[tuple[Seed, ...], BeforeValidator(_listed), Field(min_length=1), AfterValidator(_once_each)]
Metrics = Annotated[tuple[Metric, ...], BeforeValidator(_listed), Field(min_length=1), AfterValidator(_once_each)]
Methods = Annotated[tuple[Method, ...], BeforeValidator(_listed), Field(min_length=1), AfterValidator(_once_each)]
# The ablations always train ``no_stn``: "none" is not one of their STN-mode variants.
StnModes = Annotated[tuple[Annotated[str, names("STN mode", _stn_modes)], ...], BeforeValidator(_listed)]
KSweep = Annotated[tuple[Positive, ...], BeforeValidator(_listed)]


# ----------------------------------------------------------------------------- messages
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string", "tuple": "a list",
          "list": "a list", "dict": "a mapping", "model": "a mapping of settings"}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def _dotted(at: str, loc: tuple[str | int, ...]) -> str:
    """``("shots", 1)`` under ``"support"`` -> ``"support.shots[1]"``."""
    key = at
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel]:
    """The model class the key path ``loc`` leads into (``("regad",)`` -> ``RegADConfig``)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return model


def _problem(error: dict[str, Any]) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    if kind in ("choice", "setting"):
        return error["msg"]
    if kind == "int_from_float":
        return f"{value!r} is not an integer"
    if kind.endswith(("_parsing", "_type")) and kind.split("_")[0] in _KINDS:
        return f"{value!r} is not {_KINDS[kind.split('_')[0]]}"
    if kind in _BOUNDS:
        sign, name = _BOUNDS[kind]
        bound = ctx[name]
        return f"{value!r} must be {sign} {bound:g}" if isinstance(bound, float) else f"{value!r} must be {sign} {bound}"
    if kind == "too_short":
        return "must list at least one value" if ctx.get("min_length") == 1 else f"must list at least {ctx['min_length']} values"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "missing":
        return "missing; this file must set it"
    if kind == "finite_number":
        return f"{value!r} is not a finite number"
    return f"{value!r}: {error['msg']}"


def describe(error: ValidationError, model: type[BaseModel], source: str, at: str = "") -> str:
    """One line per problem of ``error``: ``<source>: <dotted key>: <problem>``; unknown keys list the known ones."""
    lines = []
    for item in error.errors(include_url=False):
        key = _dotted(at, (*item["loc"], *item.get("ctx", {}).get("at", ())))
        if item["type"] == "extra_forbidden":
            known = sorted(_model_at(model, item["loc"][:-1]).model_fields)
            lines.append(f"{source}: unknown key {key!r}; known: {known}")
        else:
            lines.append(f"{source}: {key}: {_problem(item)}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such settings file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(error, 'problem', None) or error}") from None


# ----------------------------------------------------------------------------- the base
class Settings(BaseModel):
    """Frozen settings with one reading path: ``from_dict`` / ``from_yaml`` validate, and every
    problem is a ``ConfigError`` line naming the source and the dotted key (never a traceback
    of the validator). Building one in code (``RegADConfig(epochs=0)``) is validated the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def __init__(self, /, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError(describe(error, type(self), type(self).__name__)) from None

    # Marks this __init__ as pydantic's own: nested models are then validated inside the
    # outer one (every problem reported at once, with its full key path), not through it.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "config", at: str = "") -> Self:
        """Validate a mapping read from ``source`` (a file name); ``at`` is its key path in that file (``"train"``)."""
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            where = f"{at}: " if at else ""
            raise ConfigError(f"{source}: {where}{values!r} is not a mapping of settings")
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            raise ConfigError(describe(error, cls, source, at)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, section: str | None = None) -> Self:
        """Validate a YAML file, or one top-level ``section`` of it."""
        data = read_yaml(path)
        if section is not None:
            if not isinstance(data, Mapping) or section not in data:
                found = sorted(data) if isinstance(data, Mapping) else []
                raise ConfigError(f"{path}: no {section!r} section; found: {found}")
            data = data[section]
        return cls.from_dict(data, source=str(path), at=section or "")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), as YAML or a checkpoint stores them."""

        def plain(value: Any) -> Any:
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return plain(self.model_dump())

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated like the original."""
        return type(self).from_dict({**dict(self), **changes}, source=f"{type(self).__name__}.replace")


# ----------------------------------------------------------------------------- RegAD, ResAD, evaluation
class RegADConfig(Settings):
    """Every setting of one RegAD run. Defaults are the CPU-sized run on MobileNetV2.

    The defaults are fsad's recipe, not the official code's: ImageNet-normalised inputs, the
    cosine schedule stepped after each epoch, one forward of queries and supports, a
    predictor bias, one composed inverse warp. ``configs/regad_official_fsad_mini.yaml`` and
    ``configs/regad_official_gpu.yaml`` set the official recipe switch by switch
    (``normalize``, ``lr``, ``batch_size``, ``lr_schedule``, ``separate_forwards``,
    ``predictor_bias``, ``inverse_warp``, a fixed ``train_shots``; docs/regad_recipe.md).

    The paper's settings are in ``configs/regad_paper.yaml`` (ResNet-18, 224 px, 50 epochs,
    batch 32, lr 1e-4, no input normalisation).

    Attributes:
        backbone: Name in ``fsad.components.backbones.BACKBONES``.
        pretrained: Load ImageNet weights (``False`` only for tests).
        normalize: Apply the backbone's ImageNet mean/std (the official code does not).
        stn_mode: Transform family of the STNs (``fsad.methods.regad.stn.STN_MODES``), or ``"none"``
            for no STN at all (the ablation "backbone + Siamese only").
        image_size: Input size, plain resize (no crop): a side (a square, ``224``) or ``[H, W]``
            (``[256, 640]``: a product 2.5x wider than tall keeps its shape); every side >= 32.
            ``fsad fit --keep-aspect`` derives ``[H, W]`` from the support images (docs/images.md).
        epochs: Training epochs; the LAST epoch's weights are used (no test-set selection).
        batch_size: Queries per batch, all of one category.
        lr: SGD learning rate of the three optimisers.
        momentum: SGD momentum, in [0, 1).
        freeze_backbone_bn: Keep the backbone's ImageNet batch-norm running statistics
            during training (its BN layers stay in eval mode; their affine weights still
            learn). ``False`` is the official code: training on single-category batches
            re-estimates them, which cost 16 image-AUROC points on magnetic_tile in
            ``benchmarks/registration_diagnosis.py``.
        train_shots: K values a batch draws its number of supports from; with one value
            per evaluated K this trains one model for every K (the default).
        batches_per_epoch: Cap on batches per epoch (``None``: every training image once).
        fill_batches: With ``batches_per_epoch``, a pool whose one pass over its images gives fewer
            batches draws further passes until it has that many: every pool then trains on the same
            number of queries (the breadth study, docs/breadth.md). ``False``: a cap only.
        eps: Added to the covariance diagonal.
        blur_sigma: Gaussian blur of the anomaly map, in pixels.
        augment_support: Use the 22 support views (``False`` for the ablation).
        seed: Fixes model initialisation and every sampled batch.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        lr_schedule: ``"stepped"`` (fsad's default): a cosine annealing stepped AFTER each epoch,
            epoch e = 1..E runs at ``lr * 0.5 * (1 + cos(pi * (e - 1) / E))`` (starts at ``lr``,
            never reaches 0). ``"official"``: the official code sets
            ``lr * 0.5 * (1 + cos(pi * e / E))`` BEFORE epoch e (``train.py`` 320), so the last
            epoch runs at lr 0 (E = 3: x[0.75, 0.25, 0] against x[1, 0.75, 0.25]).
        separate_forwards: ``True`` is the official code: queries and supports go through the
            network in two forwards (``train.py`` 169, 174), so batch norm normalises each with
            its own batch statistics. ``False`` (fsad's default): one forward of both.
        predictor_bias: The predictor's last 1x1 conv has a bias (fsad's default); the official
            ``models/siamese.py`` (24, 66) has ``bias=False``.
        inverse_warp: How stage i's features go back to the input frame. ``"composed"`` (fsad's
            default): one warp by the inverse of the composed transform of STNs 1..i.
            ``"per_stage"``: the official ``models/stn.py`` (255-271) warps by the inverse of
            STN i, then of STN i-1, ... 1, reflecting at the borders every time: the same map
            inside the image, other values at the borders. Read at test time, but it is kept
            with the training settings so a model file has one meaning.
        stn_lr: Learning rate of the STN parameters (``None``: ``lr``, as the official code, whose
            STNs share the backbone's optimiser). A smaller one keeps the registration from
            moving the features faster than the backbone learns (an fsad option).
        stn_identity_penalty: Weight of a penalty on each STN's deviation from the identity,
            ``sum_i mean_b ||theta_i - I||_F^2``, added to the loss (0: none, the official code).
        runtime: Where the frozen backbone computes test-time features (support views, test
            images; training stays in PyTorch): ``"auto"`` (ONNX Runtime where installed and on
            the CPU, else PyTorch; OpenVINO for bf16), ``"onnxruntime"``, ``"openvino"`` or
            ``"torch"`` (``fsad.components.runtime``).
        precision: Those test-time features in ``"fp32"`` (eager PyTorch's numbers to ~1e-5) or
            ``"bf16"`` (OpenVINO's bf16, or ``torch.autocast``; faster on CPUs with bf16 units,
            its AUROC effect in docs/speed.md); not for ``runtime: onnxruntime``. RegAD's own
            features (regad, untrained, regad_l) stay fp32.
        train_extra: Categories of other data sets added to the training pool, each a training
            category of its own, never the target (``fsad.study.pools``: ``elpv``, ``toy``,
            ``fsad-mini``, ``dtd-mini``, a folder, or ``SOURCE/CATEGORY``). The model's record
            names them and fingerprints their images, so they are not part of ``training_settings``.
        train_own: How many of the target data set's other categories train the model, the
            first in name order (``None``: all of them, leave one out; ``0``: only ``train_extra``).
    """

    backbone: Backbone = "mobilenet_v2"
    pretrained: bool = True
    normalize: bool = True
    stn_mode: StnMode = "rotation_scale"
    image_size: ImageSize = 224
    epochs: Positive = 50
    batch_size: Positive = 32
    lr: PositiveFloat = 1e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    freeze_backbone_bn: bool = False
    train_shots: Shots = (2, 4, 8)
    batches_per_epoch: Positive | None = None
    fill_batches: bool = False
    eps: Eps = 0.01
    blur_sigma: BlurSigma = 4.0
    augment_support: bool = True
    seed: Seed = 0
    device: Device = "auto"
    lr_schedule: Literal["stepped", "official"] = "stepped"
    separate_forwards: bool = False
    predictor_bias: bool = True
    inverse_warp: Literal["composed", "per_stage"] = "composed"
    stn_lr: PositiveFloat | None = None
    stn_identity_penalty: Annotated[float, Field(ge=0)] = 0.0
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    train_extra: Pool = ()
    train_own: Count | None = None

    @model_validator(mode="after")
    def _precision_runs_in_the_runtime(self) -> Self:
        if self.precision == "bf16" and self.runtime == "onnxruntime":
            raise _problem_at("bf16 cannot run in runtime onnxruntime (no bf16 CPU kernels); set runtime: openvino, "
                              "torch or auto, or precision: fp32", "precision")
        return self


# The training pool: the model's record holds its categories and their fingerprints instead.
POOL_KEYS = ("train_extra", "train_own")

# Settings read only at test time (and where to run): changing them needs no retraining.
TEST_TIME_KEYS = ("eps", "blur_sigma", "augment_support", "device", "runtime", "precision")


def training_settings(config: RegADConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings that determine a trained model (everything but ``TEST_TIME_KEYS`` and ``POOL_KEYS``)."""
    values = config.to_dict() if isinstance(config, RegADConfig) else dict(config)
    values["train_shots"] = list(values.get("train_shots", ()))
    return {k: v for k, v in values.items() if k not in TEST_TIME_KEYS + POOL_KEYS}


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; a CUDA device is checked to exist
    and gets full float32 (no TF32, ``fsad.seed.exact_float32``).

    Raises:
        RuntimeError: ``cuda`` without a visible GPU, or ``cuda:N`` beyond the visible ones (checked
            here, before any data is read, instead of at the first ``.to()``).
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but no CUDA device is visible; use device: cpu or auto")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= (count := torch.cuda.device_count()):
        raise RuntimeError(f"device {name!r} asked for but this machine has {count} CUDA device(s): "
                           f"cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}; use one of them, cuda or auto")
    if name.startswith("cuda"):
        from fsad.seed import exact_float32

        exact_float32()  # no TF32: GPU features stay comparable with the CPU's
    return name


class ResADSettings(Settings):
    """Training settings of ResAD (``fsad.methods.resad``; CPU-sized defaults).

    Attributes:
        steps: Optimiser steps.
        normal_per_step: Normal query images per step.
        abnormal_per_step: Anomalous images per step.
        train_shots: K of the reference pool, drawn per step.
        lr: Adam learning rate.
        margin: Boundary margin of the flow loss, nats per channel.
        flow_blocks: Coupling layers per flow.
        max_images: Cap on normal and on anomalous images per training category.
        synthetic_per_category: Anomalies synthesised per category without masks.
        textures: Folder of texture images for synthesis ("" for none: cut-and-paste and noise only).
        seed: Seeds initialisation, sampling and synthesis.
    """

    steps: Positive = 300
    normal_per_step: Positive = 4
    abnormal_per_step: Positive = 4
    train_shots: Shots = (2, 4, 8)
    lr: PositiveFloat = 1e-3
    margin: Annotated[float, Field(ge=0)] = 1.0
    flow_blocks: Positive = 4
    max_images: Positive = 120
    synthetic_per_category: Count = 60
    textures: str = str(DTD_MINI_DIR)
    seed: Seed = 0


class EvalSettings(Settings):
    """The test-time settings of the ``evaluate`` section of params.yaml.

    Attributes:
        metrics: Metrics per support set (pixel metrics are NaN without masks).
        eps: Ridge on the covariance diagonal.
        blur_sigma: Gaussian blur of the anomaly maps, in pixels.
        augment_support: Use the 22 views of each support image.
        untrained_baseline: Also score the network with untrained STNs and backbone (the
            reference that shows what registration training adds).
        device: Where to evaluate, whatever device the model was trained on.
    """

    metrics: Metrics = ("image_auroc", "pixel_auroc", "aupro")
    eps: Eps = 0.01
    blur_sigma: BlurSigma = 4.0
    augment_support: bool = True
    untrained_baseline: bool = True
    device: Device = "auto"

    def apply(self, config: RegADConfig) -> RegADConfig:
        """``config`` (from the checkpoint, with the device it was trained on) with these test-time settings."""
        return config.replace(eps=self.eps, blur_sigma=self.blur_sigma, augment_support=self.augment_support, device=self.device)


# ----------------------------------------------------------------------------- the studies
class StudyConfig(Settings):
    """What every study shares: which data, which K, which support sets and metrics, which RegAD.

    Attributes:
        dataset: ``elpv`` (embedded), ``toy``, ``fsad-mini`` or a folder
            (``fsad.study.experiment.resolve_dataset``).
        categories: Target categories (``None``: all); training always uses all the others.
        shots: The K values evaluated.
        n_sets: Support sets per (category, K) (the paper: 10).
        support_seed: Seed of the support-set draw.
        metrics: Metrics per support set: ``image_auroc``, ``f1_max``, ``pixel_auroc``, ``aupro``.
        regad: RegAD settings (in the comparison also the backbone, image size and device of every method).
    """

    dataset: Dataset = "toy"
    categories: Categories | None = None
    shots: Shots = (2, 4, 8)
    n_sets: Positive = 10
    support_seed: Seed = 0
    metrics: Metrics = ("image_auroc", "pixel_auroc", "aupro")
    regad: RegADConfig = Field(default_factory=RegADConfig)

    @property
    def required_shots(self) -> tuple[int, ...]:
        """The K every target must serve (``fsad.study.preflight``)."""
        return self.shots


class ExperimentConfig(StudyConfig):
    """One RegAD benchmark (``fsad run``, ``fsad.study.experiment``): the ``StudyConfig`` fields and these.

    Attributes:
        untrained_baseline: Also score the untrained network (registration off).
        model_per_shot: Train one model per evaluated K (supports drawn with that K only),
            as the official code does. The default ``False`` trains one model per held-out
            category that serves every K: training draws K per batch from
            ``regad.train_shots``, the test-time Gaussian is what depends on K, and it costs
            1/len(shots) of the training time.
        epoch_diagnostics: Score the network on the target's test set before training (epoch
            0, the untrained network) and after every epoch, and write ``epochs.csv`` beside the
            model: loss, image / pixel AUROC, the STNs' median |rotation| and determinant per
            stage. Nothing is selected: the last epoch's weights are the model. Costs one
            evaluation of ``diagnostic_sets`` support sets per epoch.
        diagnostic_shots: K of the per-epoch support sets; drawn like the study's sets, and the
            same sets when it is one of ``shots``.
        diagnostic_sets: How many support sets of that K (the first ones of the draw).
        test_selected: Also keep the weights of the epoch with the best per-epoch image + pixel
            AUROC (the official protocol's TEST-SET selection, ``train.py`` 94-142) and score
            them as method ``regad_test_selected``, to measure what that selection adds. Needs
            ``epoch_diagnostics``; never the model of any other result.
        pool_selected: Also keep the weights of the epoch that scores best on the TRAINING
            pool's spare normal images and synthetic anomalies made from them
            (``fsad.study.models.PoolValidation``; epoch 0 included), and score them as method
            ``regad_pool_selected``: an epoch choice that never reads the target's data.
        validation_images: Spare normal images per pool category that ``pool_selected`` scores
            (each also gets one synthetic anomaly).
    """

    dataset: Dataset = "elpv"  # the embedded real data set; the method studies default to toy
    metrics: Metrics = ("image_auroc", "pixel_auroc")
    untrained_baseline: bool = True
    model_per_shot: bool = False
    epoch_diagnostics: bool = False
    diagnostic_shots: Positive = 2
    diagnostic_sets: Positive = 2
    test_selected: bool = False
    pool_selected: bool = False
    validation_images: Positive = 12

    @model_validator(mode="after")
    def _selection_reads_the_diagnostics(self) -> Self:
        if self.test_selected and not self.epoch_diagnostics:
            raise _problem_at("true needs epoch_diagnostics: true (the selection reads the per-epoch scores)", "test_selected")
        return self

    @property
    def required_shots(self) -> tuple[int, ...]:
        """``shots``, and ``diagnostic_shots`` when the diagnostics run."""
        return tuple(sorted({*self.shots, *([self.diagnostic_shots] if self.epoch_diagnostics else [])}))


def _default_methods() -> tuple[str, ...]:
    from fsad.study.comparison import DEFAULT_METHODS

    return DEFAULT_METHODS


class ComparisonConfig(StudyConfig):
    """RegAD and its peers under one harness (``fsad.study.comparison``): the ``StudyConfig`` fields and these.

    Attributes:
        methods: Names in ``fsad.methods.registry.DETECTORS``.
        regad_models: Folder holding ``<category>/regad.pt`` made by ``fsad.study.experiment``
            (reused, not retrained); ``None``: ``out_dir/models``.
        support_dir: Folder of the support-set JSON files; ``None``: ``out_dir/support_sets``.
        spade, padim, patchcore: Keyword arguments of the method's class.
        resad: ResAD's training settings.
        regad_l: Keyword arguments of ``RegADL`` (``epochs``, ``pair_shots``).
        fastrecon, anomalydino, anomalydino_dinov2: Keyword options of those methods
            (``fsad.methods.registry.DETECTORS[name].options``).
        cost_images: Test images scored in the cost measurement.
        measure_costs: Measure costs (one fresh process per method, seconds each to start).
    """

    methods: Methods = Field(default_factory=_default_methods)
    regad_models: str | None = None
    support_dir: str | None = None
    spade: dict[str, Any] = Field(default_factory=dict)
    padim: dict[str, Any] = Field(default_factory=dict)
    patchcore: dict[str, Any] = Field(default_factory=dict)
    resad: ResADSettings = Field(default_factory=ResADSettings)
    regad_l: dict[str, Any] = Field(default_factory=dict)
    fastrecon: dict[str, Any] = Field(default_factory=dict)
    anomalydino: dict[str, Any] = Field(default_factory=dict)
    anomalydino_dinov2: dict[str, Any] = Field(default_factory=dict)
    cost_images: Positive = 32
    measure_costs: bool = True


class AblationConfig(StudyConfig):
    """The RegAD paper's ablations (``fsad.study.ablations``): the ``StudyConfig`` fields and these.

    Attributes:
        k_sweep: K values of the ``k_sweep`` variant.
        stn_modes: STN modes trained for the ``stn_<mode>`` variants (default: all nine;
            ``no_stn`` is always trained).
        stn_lr_factor: The ``stn_lr_x<f>`` variant trains the STNs at this factor x ``regad.lr``.
        identity_penalty: Weight of the ``identity_penalty_<w>`` variant's STN identity penalty.
        regad: The default RegAD settings; every variant changes one thing.
        regad_models: Folder holding ``<category>/regad.pt`` of the default STN mode, reused.
        support_dir: Folder of shared support-set JSON files, only read (the pipeline's
            data_prep output); K values it lacks (the K sweep's) are drawn the same way into
            ``out_dir/support_sets``. ``None``: everything goes to ``out_dir/support_sets``.
    """

    k_sweep: KSweep = (1, 2, 4, 8, 16)
    stn_modes: StnModes = Field(default_factory=_stn_modes)
    stn_lr_factor: PositiveFloat = 0.1
    identity_penalty: PositiveFloat = 1.0
    regad_models: str | None = None
    support_dir: str | None = None


__all__ = ["TEST_TIME_KEYS", "AblationConfig", "ComparisonConfig", "ConfigError", "EvalSettings", "ExperimentConfig", "RegADConfig",
           "ResADSettings", "Settings", "StudyConfig", "describe", "names", "read_yaml", "resolve_device", "training_settings"]
