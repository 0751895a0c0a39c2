"""Every path of the project derives from one root, so code runs the same from any cwd."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository root: ``$FSAD_ROOT`` if set, else the folder holding ``pyproject.toml``.

    Notebooks executed by papermill run with an arbitrary cwd; resolving from this
    file (not from ``Path.cwd()``) keeps their paths stable.
    """
    env = os.environ.get("FSAD_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return Path.cwd().resolve()


ROOT = project_root()
DATA_DIR = ROOT / "data"
MODELS_DIR = ROOT / "models"
REPORTS_DIR = ROOT / "reports"
SHARED_DIR = ROOT.parent / "shared"
FSAD_MINI_DIR = SHARED_DIR / "datasets" / "fsad-mini"
DTD_MINI_DIR = SHARED_DIR / "datasets" / "dtd-mini"
