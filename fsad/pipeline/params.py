"""Read ``params.yaml``, the single source of every pipeline parameter.

Papermill injects scalar parameters into the notebooks; lists (``support.shots``,
``train.train_shots``, ...) cannot go through a DVC ``cmd`` line, so notebooks read them
here. Run by hand, a notebook takes all its values from here.

Example:
    >>> params = load_params()  # doctest: +SKIP
    >>> params["train"]["epochs"]  # doctest: +SKIP
    4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fsad.config import RegADConfig
from fsad.pipeline.layout import PARAMS_FILE


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """All sections of ``params.yaml``.

    Raises:
        FileNotFoundError: no ``params.yaml`` at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fsad/pipeline/params.py: {path} does not exist; the pipeline's parameters "
                                "live in params.yaml at the project root (restore it with `git checkout params.yaml`)")
    return yaml.safe_load(path.read_text()) or {}


def regad_config(**settings: Any) -> RegADConfig:
    """A RegADConfig from notebook parameters named like its fields (unknown names are an error)."""
    return RegADConfig.from_dict(settings, source="notebook parameters")
