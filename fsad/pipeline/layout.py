"""Where every pipeline file lives, derived from the project root (never from the cwd).

Example:
    >>> model_path("mono").relative_to(ROOT).as_posix()
    'models/mono/regad.pt'
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
    """The train files of every category but ``target``: what ``train@<target>`` reads."""
    return PREPARED_DIR / "training_sets" / f"{target}.json"


def support_file(category: str) -> Path:
    """The category's support sets (JSON, ``fsad.data.support_sets`` format)."""
    return SUPPORT_DIR / f"{category}.json"


def model_path(category: str) -> Path:
    """RegAD trained on every category but ``category`` (leave-one-out)."""
    from fsad.methods.regad.training import MODEL_NAME  # imported here: torch stays out of `fsad --help`

    return MODELS_DIR / category / MODEL_NAME


def results_dir(category: str) -> Path:
    """Evaluation results of ``category``."""
    return RESULTS_DIR / category


def figures_dir(category: str) -> Path:
    """Figures of ``category``."""
    return FIGURES_DIR / category
