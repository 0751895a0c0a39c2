"""What the DVC remote tests share: git and dvc as subprocesses, file checksums, a free local port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fsad.pipeline.data_prep import file_md5

GIT_ENV = {"GIT_AUTHOR_NAME": "fsad test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "fsad test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def run(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``git ...`` or ``dvc ...`` (this interpreter's dvc) in ``cwd``; raises with both outputs when ``check`` and it fails."""
    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV, **(env or {})},
                            timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result


def checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (all bound at once, so none is given twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
