"""Atomic file writes: a reader (or an interrupted DVC stage) never sees a half-written file.

Every writer goes to a hidden temporary file in the target's folder and renames it over
the target with ``os.replace``, which is atomic on one file system. A writer killed
outright (SIGKILL, power loss) cannot remove its temporary file; the temporary names hold
the writer's process id, and the next write to the same target removes those whose
process is gone (a live writer's file is left alone).

Example:
    >>> write_json_atomic(tmp_path / "metrics.json", {"image_auroc": 0.91})  # doctest: +SKIP
    >>> with atomic_path(tmp_path / "figure.png") as tmp:  # doctest: +SKIP
    ...     figure.savefig(tmp)
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a type here: importing pandas costs every command 0.25 s of start-up
    import pandas as pd


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files and folders that killed writers of ``path`` left beside it.

    Only leftovers of ``atomic_path``/``atomic_dir`` for this very target are touched, and
    only when the process that made them no longer runs.

    Returns:
        What was removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # .NAME.PID-RANDOM.tmpSUFFIX (atomic_path), .NAME.partial-PID-HEX / .NAME.old-PID-HEX (atomic_dir)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-[^/]*\.tmp{re.escape(path.suffix)}|(?:partial|old)-(\d+)-[0-9a-f]+)")
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match is None or _process_alive(int(match.group(1) or match.group(2))):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps ``path``'s suffix, so writers that choose a format from the
    suffix (``savefig``, papermill) behave as for ``path`` itself. On an error the
    temporary file is removed and ``path`` is left as it was; what killed writers of
    ``path`` left is removed first (``remove_stale_temporaries``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp's file is private (0600); the result gets the mode a plain open() would give it.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` if the block succeeds.

    The old folder is first renamed aside and deleted only after the new one is in place,
    so at every moment ``path`` is either the complete old or the complete new folder
    (or, for an instant between the two renames, absent). Files left over from an
    earlier run (e.g. another data set's categories) disappear with the old folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    partial = path.parent / f".{path.name}.partial-{tag}"
    partial.mkdir()
    try:
        yield partial
        old = path.parent / f".{path.name}.old-{tag}"
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, NaN written as ``null`` so every JSON reader accepts it."""
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def write_csv_atomic(path: str | Path, frame: pd.DataFrame, index: bool = False) -> None:
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def write_rows_atomic(path: str | Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write ``rows`` (dicts of str / float / None) as CSV with ``columns`` atomically: what
    ``write_csv_atomic`` writes of ``pd.DataFrame(rows, columns=columns)`` (a missing or None value
    is an empty field), without importing pandas (``fsad predict``'s start-up)."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if row.get(c) is None else row[c] for c in columns] for row in rows])


def save_figure_atomic(figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure (format from the suffix of ``path``) atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return Path(path)


__all__ = ["atomic_dir", "atomic_path", "remove_stale_temporaries", "save_atomic", "save_figure_atomic", "write_csv_atomic", "write_json_atomic", "write_rows_atomic", "write_text_atomic"]
