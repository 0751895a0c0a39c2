"""Fixtures shared by the whole test suite: the generated toy data set, fsad-mini, a cache folder of the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsad.data.toy import make_toy_dataset
from fsad.paths import FSAD_MINI_DIR


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported feature graphs (fsad.components.runtime) go to one folder per test session, not the user's cache."""
    folder = tmp_path_factory.mktemp("fsad_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FSAD_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the default toy data set (disc, ring, stripes; 12 train, 4 + 4 test, 64 px).

    Built once per session: treat it as read-only.
    """
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def fsad_mini_root() -> Path:
    """Root of the shared fsad-mini benchmark; skips the test where it is not installed."""
    if not FSAD_MINI_DIR.is_dir():
        pytest.skip(f"fsad-mini not found at {FSAD_MINI_DIR}")
    return FSAD_MINI_DIR
