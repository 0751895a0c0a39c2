"""Where every pipeline file lives, derived from the project root (never from the cwd).

Example:
    >>> model_path("mono", seed=1).relative_to(ROOT).as_posix()
    'models/seed1/mono/regad.pt'
"""

from __future__ import annotations

from pathlib import Path

from fsad.paths import DATA_DIR, MODELS_DIR, REPORTS_DIR, ROOT

PARAMS_FILE = ROOT / "params.yaml"
# The official RegAD support-set files (a dependency of the data_prep stage, like data/datasets).
OFFICIAL_SUPPORT_DIR = DATA_DIR / "official_support"
PREPARED_DIR = DATA_DIR / "prepared"
DATASET_MANIFEST = PREPARED_DIR / "dataset.json"
SUPPORT_DIR = DATA_DIR / "support_sets"
RESULTS_DIR = ROOT / "results"
FIGURES_DIR = REPORTS_DIR / "figures"


def train_manifest(category: str) -> Path:
    """Files and checksums of a category's ``train/good`` images."""
    return PREPARED_DIR / "train" / f"{category}.json"


def training_set_manifest(target: str) -> Path:
    """The training pool of ``target`` (the other categories, ``train.train_extra``) and its
    files: what every ``train@<target>-<seed>`` reads."""
    return PREPARED_DIR / "training_sets" / f"{target}.json"


def support_file(category: str) -> Path:
    """The category's support sets (JSON, ``fsad.data.support_sets`` format)."""
    return SUPPORT_DIR / f"{category}.json"


def seed_models_dir(seed: int) -> Path:
    """The models of training seed ``seed``, one folder per target: ``<category>/regad.pt``
    (the layout ``fsad.config.ComparisonConfig.regad_models`` reads, so the baselines reuse them)."""
    return MODELS_DIR / f"seed{seed}"


def model_path(category: str, seed: int) -> Path:
    """RegAD trained with seed ``seed`` on the training pool of ``category`` (never ``category`` itself)."""
    from fsad.methods.regad.training import MODEL_NAME  # imported here: torch stays out of `fsad --help`

    return seed_models_dir(seed) / category / MODEL_NAME


def results_dir(category: str) -> Path:
    """Results of ``category`` (``registration.csv``; each seed's evaluation in ``seed_results_dir``)."""
    return RESULTS_DIR / category


def seed_results_dir(category: str, seed: int) -> Path:
    """The evaluation of the model of ``category`` trained with seed ``seed``."""
    return results_dir(category) / f"seed{seed}"


def figures_dir(category: str) -> Path:
    """Figures of ``category`` (registration; each seed's evaluation in ``seed_figures_dir``)."""
    return FIGURES_DIR / category


def seed_figures_dir(category: str, seed: int) -> Path:
    """Figures of the evaluation of the model of ``category`` trained with seed ``seed``."""
    return figures_dir(category) / f"seed{seed}"
