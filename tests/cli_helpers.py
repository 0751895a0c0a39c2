"""What the command-line tests share: run ``fsad`` in-process, and expect one line of error."""

from __future__ import annotations

import pytest

from fsad.cli import main


def fsad(*argv: object) -> None:
    """Run ``fsad argv`` in this process (paths and numbers given as they are)."""
    main([str(a) for a in argv])


def fails(capsys, *argv: object) -> str:
    """Run ``fsad argv``: it must exit with code 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        fsad(*argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsad: error: "), lines
    return lines[0]
