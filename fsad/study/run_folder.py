"""An output folder belongs to one config: ``run.json`` records which, and what it asked.

``fsad run / compare / ablate`` write their results under ``runs/<config file name>`` by
default, so two configs of the same file name in different folders would land in one
folder. :func:`claim` stops that before any work: a folder made by another config file
with other settings is refused (``--out`` picks another folder, ``--force`` takes it over);
the same config with changed settings goes on, and every cached artifact inside (support
sets, models) checks on its own what made it and is recomputed where that changed. The
results of the earlier settings (``results.csv``, tables, timings: everything but the
caches) are moved to ``earlier_settings/`` with their ``run.json``, so the folder never
shows them as results of the new settings (a failed or interrupted run included); the
folder of the settings before those is replaced.

Example:
    >>> changed = claim(Path("runs/fsad_mini"), Path("configs/fsad_mini.yaml"), config.to_dict())
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from fsad.io import write_json_atomic

log = logging.getLogger(__name__)

RECORD = "run.json"
EARLIER = "earlier_settings"
CACHES = ("models", "support_sets")  # each file checks what made it: kept across settings


def _set_aside(out_dir: Path, record: dict[str, Any]) -> list[str]:
    """Move the results of the run ``record`` describes (all but the caches) to ``out_dir/earlier_settings``.

    Returns:
        The names moved (empty: nothing there but the caches).
    """
    results = sorted(p for p in out_dir.iterdir() if p.name not in {RECORD, EARLIER, *CACHES} and not p.name.startswith("."))
    if not results:
        return []
    earlier = out_dir / EARLIER
    if earlier.is_dir() and not earlier.is_symlink():
        shutil.rmtree(earlier)
    else:
        earlier.unlink(missing_ok=True)
    earlier.mkdir()
    for path in results:
        path.rename(earlier / path.name)
    write_json_atomic(earlier / RECORD, record)
    return [p.name for p in results]


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        return {k: v for key, value in values.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): values}


def changed_settings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every (dotted) key whose value differs."""
    old, new = _flat(json.loads(json.dumps(before))), _flat(json.loads(json.dumps(after)))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def claim(out_dir: Path, config_path: Path, settings: dict[str, Any], command: str, force: bool = False) -> list[str]:
    """Record that ``out_dir`` holds the run of ``config_path``; refuse a folder of another config.

    Args:
        out_dir: The output folder (created).
        config_path: The config file the settings came from.
        settings: The validated settings (JSON-able).
        command: ``run``, ``compare`` or ``ablate``: a folder serves one kind of study.
        force: Take over a folder made by another config.

    Returns:
        The settings that changed since the last run in this folder (empty for a new one);
        where any did, that run's results were moved to ``out_dir/earlier_settings``.

    Raises:
        ValueError: ``out_dir`` holds the results of another config or study.
    """
    out_dir, config_path = Path(out_dir), Path(config_path).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output folder {out_dir} is a file; pass --out with a folder name")
    record = out_dir / RECORD
    new = {"command": command, "config": str(config_path), "settings": settings}
    changed: list[str] = []
    if record.is_file():
        old = json.loads(record.read_text())
        changed = changed_settings(old.get("settings", {}), settings)
        if old.get("command") != command:
            changed.insert(0, f"the study: fsad {old.get('command')} -> fsad {command}")
        other = old.get("config") != str(config_path) or old.get("command") != command
        if other and changed and not force:
            raise ValueError(
                f"{out_dir} holds the results of `fsad {old.get('command')} --config {old.get('config')}`, "
                f"not of this config ({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}); "
                "pass --out for a new folder, or --force to reuse this one")
        if changed:
            moved = _set_aside(out_dir, old)
            kept = f"; its results ({', '.join(moved)}) were moved to {out_dir / EARLIER} with its {RECORD}" if moved else ""
            log.warning("settings changed since the last run in %s: %s%s; cached support sets and models are checked "
                        "and recomputed where they differ", out_dir, "; ".join(changed), kept)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, new)
    return changed


__all__ = ["EARLIER", "RECORD", "changed_settings", "claim"]
