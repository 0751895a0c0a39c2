"""Read ``params.yaml``, the single source of every pipeline parameter, through the schema.

Each stage reads its own section here, validated whole before any work: ``section("train")``
is the ``train`` section as a ``TrainParams`` (a ``fsad.config.RegADConfig`` with ``seeds``
instead of ``seed``: ``for_seed(s)`` is the model's config), ``section("evaluate")`` an
``EvalSettings``, and so on (``SECTIONS``); the ablations and baselines stages build their
study from several sections (``ablation_config``, ``comparison_config``). A wrong value
stops the stage at its first cell, naming the key:
``params.yaml: train.epochs: 'three' is not an integer``. DVC injects only what differs per
``foreach`` item (the category); a stage's ``params:`` list in dvc.yaml names every key it
reads, so changing one reruns exactly those stages (``tests/pipeline/test_dvc_yaml.py``).

Example:
    >>> section("train").epochs  # doctest: +SKIP
    5
    >>> section("support").shots  # doctest: +SKIP
    (2, 4, 8)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, create_model

from fsad.config import (
    AblationConfig,
    Categories,
    ComparisonConfig,
    ConfigError,
    Dataset,
    EvalSettings,
    KSweep,
    Methods,
    Metrics,
    Positive,
    PositiveFloat,
    RegADConfig,
    ResADSettings,
    Seed,
    Seeds,
    Settings,
    Shots,
    StnModes,
    names,
    read_yaml,
)
from fsad.paths import ROOT
from fsad.pipeline.layout import PARAMS_FILE, SUPPORT_DIR, seed_models_dir


def _support_sources() -> tuple[str, ...]:
    from fsad.pipeline.data_prep import SUPPORT_SOURCES

    return SUPPORT_SOURCES


def _paper_choices() -> tuple[str, ...]:
    from fsad.pipeline.report import PAPER_CHOICES

    return PAPER_CHOICES


# Sections only the pipeline has: every key is required, params.yaml being their one source.
class DataParams(Settings):
    """``data``: the data set and the target categories (one train/evaluate stage each)."""

    dataset: Dataset
    categories: Categories


class SupportParams(Settings):
    """``support``: the support sets made once by data_prep and read by every method."""

    shots: Shots
    n_sets: Positive
    seed: Seed
    source: Annotated[str, names("support source", _support_sources)]


class _SeededRegAD(Settings):
    """What ``TrainParams`` adds to RegAD's fields: one model config per seed."""

    def for_seed(self, seed: int) -> RegADConfig:
        """The settings of the model trained with ``seed`` (every field but ``seeds``, and ``seed``)."""
        values = {k: v for k, v in dict(self).items() if k != "seeds"}
        return RegADConfig.from_dict({**values, "seed": seed}, source="params.yaml", at="train")


# ``train``: RegADConfig's fields but ``seed``, and ``seeds``: the pipeline trains one model per
# (target, seed) (a matrix stage), so Table 1 shows the training noise beside the support sets'.
# A ``seed:`` key is refused by name (``unknown key 'train.seed'``), never silently one seed.
TrainParams = create_model(
    "TrainParams", __base__=_SeededRegAD, __module__=__name__,
    __doc__="``train``: every RegAD setting (``fsad.config.RegADConfig``) but ``seed``; ``seeds``: one model each.",
    seeds=(Seeds, ...),
    **{name: (info.annotation, info) for name, info in RegADConfig.model_fields.items() if name != "seed"},
)


class ReportParams(Settings):
    """``report``: whose published numbers Table 1 shows beside ours."""

    paper: Annotated[str, names("paper", _paper_choices)]


class AblationParams(Settings):
    """``ablations``: the ablation study, trained with the train settings except ``epochs`` and ``batches_per_epoch``."""

    epochs: Positive
    batches_per_epoch: Positive | None
    n_sets: Positive
    stn_modes: StnModes
    stn_lr_factor: PositiveFloat
    identity_penalty: PositiveFloat
    k_sweep: KSweep
    metrics: Metrics


class BaselineParams(Settings):
    """``baselines``: RegAD's peers under one harness (``fsad.study.comparison``)."""

    methods: Methods
    metrics: Metrics
    n_sets: Positive
    resad_steps: Positive
    regad_l_epochs: Positive
    coreset_ratio: Annotated[float, Field(gt=0, le=1)]
    padim_channels: Positive
    cost_images: Positive


# section of params.yaml -> its schema
SECTIONS: dict[str, type[Settings]] = {
    "data": DataParams,
    "support": SupportParams,
    "train": TrainParams,
    "evaluate": EvalSettings,
    "report": ReportParams,
    "ablations": AblationParams,
    "baselines": BaselineParams,
}


def _shown(path: Path) -> str:
    """``params.yaml`` for the project's file, the full path for any other."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """All sections of ``params.yaml``, as YAML gives them (unvalidated: use ``section``).

    Raises:
        FileNotFoundError: no ``params.yaml`` at ``path``.
        ConfigError: the file is not a YAML mapping, or has a section no stage reads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fsad/pipeline/params.py: {path} does not exist; the pipeline's parameters "
                                "live in params.yaml at the project root (restore it with `git checkout params.yaml`)")
    params = read_yaml(path) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{_shown(path)}: expected sections (data, support, train, ...), got {type(params).__name__}")
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{_shown(path)}: unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    return params


def section(name: str, path: Path = PARAMS_FILE) -> Any:
    """Section ``name`` of ``params.yaml``, validated by its schema (``SECTIONS[name]``).

    Raises:
        ConfigError: the section is missing, or a key is unknown, of the wrong type, out of
            range or not an allowed name (one line per problem, naming ``name.key``).
    """
    if name not in SECTIONS:
        raise ConfigError(f"fsad/pipeline/params.py: no section {name!r}; choose from {sorted(SECTIONS)}")
    params = load_params(path)
    if name not in params:
        raise ConfigError(f"{_shown(path)}: the {name!r} section is missing")
    return SECTIONS[name].from_dict(params[name], source=_shown(path), at=name)


def _within_support(stage: str, n_sets: int, support_n_sets: int, path: Path) -> None:
    if n_sets > support_n_sets:
        raise ConfigError(f"{_shown(path)}: {stage}.n_sets: {n_sets} exceeds support.n_sets ({support_n_sets}): "
                          "only the support sets of data_prep are used; lower it or raise support.n_sets")


def rooted_dataset(dataset: str) -> str:
    """``data.dataset`` for a study config: a relative folder of params.yaml is the project root's,
    while studies read relative paths from the current directory (papermill's is ``notebooks/``)."""
    return str(ROOT / dataset) if not Path(dataset).is_absolute() and (ROOT / dataset).is_dir() else dataset


def ablation_config(path: Path = PARAMS_FILE) -> AblationConfig:
    """The ablation study of the ``ablations`` stage: the data and support sets of data_prep,
    the ``train`` settings of the first of ``train.seeds`` (but ``ablations.epochs`` and
    ``batches_per_epoch``) with the evaluation's ``eps`` and ``blur_sigma``, every variant on
    the first ``ablations.n_sets`` sets."""
    data = section("data", path)
    support = section("support", path)
    train = section("train", path)
    evaluate = section("evaluate", path)
    ablations = section("ablations", path)
    _within_support("ablations", ablations.n_sets, support.n_sets, path)
    regad = train.for_seed(train.seeds[0]).replace(epochs=ablations.epochs, batches_per_epoch=ablations.batches_per_epoch,
                                                   eps=evaluate.eps, blur_sigma=evaluate.blur_sigma)
    return AblationConfig(dataset=rooted_dataset(data.dataset), categories=data.categories, shots=support.shots, k_sweep=ablations.k_sweep,
                          n_sets=ablations.n_sets, support_seed=support.seed, metrics=ablations.metrics,
                          stn_modes=ablations.stn_modes, stn_lr_factor=ablations.stn_lr_factor, identity_penalty=ablations.identity_penalty,
                          regad=regad, support_dir=str(SUPPORT_DIR))


def comparison_config(path: Path = PARAMS_FILE) -> ComparisonConfig:
    """The comparison of the ``baselines`` stage: the data and support sets of data_prep, the
    models of the ``train`` stage of the first of ``train.seeds`` (reused) with the
    evaluation's ``eps`` and ``blur_sigma``, and the peers' settings of ``baselines``."""
    data = section("data", path)
    support = section("support", path)
    train = section("train", path)
    evaluate = section("evaluate", path)
    baselines = section("baselines", path)
    _within_support("baselines", baselines.n_sets, support.n_sets, path)
    seed = train.seeds[0]
    return ComparisonConfig(
        dataset=rooted_dataset(data.dataset), categories=data.categories, shots=support.shots, n_sets=baselines.n_sets,
        support_seed=support.seed, metrics=baselines.metrics, methods=baselines.methods,
        regad=train.for_seed(seed).replace(eps=evaluate.eps, blur_sigma=evaluate.blur_sigma),
        regad_models=str(seed_models_dir(seed)), support_dir=str(SUPPORT_DIR),
        padim={"n_channels": baselines.padim_channels}, patchcore={"coreset_ratio": baselines.coreset_ratio},
        resad=ResADSettings(steps=baselines.resad_steps), regad_l={"epochs": baselines.regad_l_epochs},
        cost_images=baselines.cost_images,
    )


__all__ = ["SECTIONS", "AblationParams", "BaselineParams", "DataParams", "ReportParams", "SupportParams", "TrainParams",
           "ablation_config", "comparison_config", "load_params", "section"]
