"""Atomic writes: an interrupted writer leaves the old file (or none), never half a file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fsad.io import atomic_dir, atomic_path, write_csv_atomic, write_json_atomic, write_rows_atomic


class Interrupted(Exception):
    pass


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out" / "table.csv"
    write_csv_atomic(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(Interrupted), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Interrupted
    assert target.read_text() == "a\n1\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_json_has_null_for_nan_and_plain_numbers(tmp_path):
    import numpy as np

    write_json_atomic(tmp_path / "m.json", {"K2": {"pixel_auroc": float("nan"), "image_auroc": np.float32(0.5)}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"K2": {"pixel_auroc": None, "image_auroc": 0.5}}


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "prepared"
    with atomic_dir(folder) as tmp:
        (tmp / "old_category.json").write_text("{}")
    with pytest.raises(Interrupted), atomic_dir(folder) as tmp:
        (tmp / "new.json").write_text("{}")
        raise Interrupted
    assert [p.name for p in folder.iterdir()] == ["old_category.json"]
    with atomic_dir(folder) as tmp:
        (tmp / "new.json").write_text("{}")
    assert [p.name for p in folder.iterdir()] == ["new.json"]  # stale files of the old run are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]



def _dead_pid() -> int:
    """The id of a process that has exited (ids are not reused this soon)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    import os

    from fsad.io import remove_stale_temporaries

    dead = _dead_pid()
    stale = tmp_path / f".results.csv.{dead}-abc123.tmp.csv"  # a writer killed mid-write
    live = tmp_path / f".results.csv.{os.getpid()}-xyz789.tmp.csv"  # a writer still running
    other = tmp_path / f".summary.csv.{dead}-abc123.tmp.csv"  # another target's leftover
    for path in (stale, live, other):
        path.write_text("half")
    write_csv_atomic(tmp_path / "results.csv", pd.DataFrame({"a": [1]}))
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "summary.csv") == [other]

    partial, old = tmp_path / f".prepared.partial-{dead}-0a1b2c", tmp_path / f".prepared.old-{dead}-0a1b2c"
    for leftover in (partial, old):
        leftover.mkdir()
        (leftover / "x.json").write_text("{}")
    with atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "new.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "prepared", "results.csv"])


def test_files_get_the_mode_of_a_plain_write_not_a_private_one(tmp_path):
    """mkstemp's 0600 must not reach results others read (heat-maps, CSVs, report.html)."""
    import os

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "new.json", {"a": 1})
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        write_json_atomic(kept, {"a": 2})
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_rows_are_written_as_pandas_writes_their_frame(tmp_path):
    """fsad predict writes predictions.csv without pandas: byte for byte what DataFrame.to_csv writes."""
    rows = [{"path": "a, b/\"c\".png", "score": 12.345678901234567, "normalised_score": 0.1, "label": "normal",
             "heatmap": "h/a.png"},
            {"path": "x.png", "label": "error", "error": "cannot read: truncated"},
            {"path": "y.png", "score": 1e-7, "normalised_score": 3.0, "label": "anomalous", "heatmap": "h/y.png",
             "error": None}]
    columns = ["path", "score", "normalised_score", "label", "heatmap", "error"]
    write_rows_atomic(tmp_path / "rows.csv", rows, columns)
    write_csv_atomic(tmp_path / "frame.csv", pd.DataFrame(rows, columns=columns))
    assert (tmp_path / "rows.csv").read_bytes() == (tmp_path / "frame.csv").read_bytes()
