"""Run a notebook as a pipeline stage: papermill with injected parameters, then an HTML export.

``fsad notebook 02_aggregated_training --tag mono -p category mono -p epochs 4`` executes
``notebooks/02_aggregated_training.ipynb`` into ``reports/notebooks/02_aggregated_training_mono.ipynb``
and exports ``reports/html/02_aggregated_training_mono.html``. Folders are created first
(papermill does not), the kernel is the project's ``python3``, and both are written
atomically: a failed or interrupted run leaves neither behind.

What it shows: one line per stage (``train@mono: 8/8 cells in 1 min 23 s -> ...``), redrawn
in place on a terminal with the kernel's current progress bar; a ``fsad: warning:`` only
for what a cell left on stderr that is not a progress bar (what the executed notebook
shows in red). Everything a run writes to stderr (each cell's stderr, each progress bar as
its last state, the kernel's own messages, a failing cell's traceback) goes to
``reports/logs/<notebook>[_<tag>].log``, written as it comes so that a failed run leaves it
to read. The executed notebook keeps no progress bar: its reader wants the results
(``fsad.notebook_streams``).

The project root of a stage is the folder DVC runs it in (the one holding ``dvc.yaml``):
a queued experiment (``dvc exp run --queue``) runs in a temporary copy of the project, and
its kernel must read and write that copy, with that copy's ``fsad`` code, not the checkout
an editable install points at. ``FSAD_ROOT`` and ``PYTHONPATH`` tell the kernel so.

Example:
    >>> run_notebook("01_data_prep", {"dataset": "toy"})  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fsad.io import atomic_path, write_text_atomic
from fsad.notebook_streams import StageLine, StageLog, duration, remove_progress_bars, strip_ansi
from fsad.paths import ROOT

KERNEL = "python3"
TQDM_WARNING_FILTER = "ignore::Warning:tqdm.auto"
logger = logging.getLogger(__name__)
_LITERALS = {"true": True, "True": True, "false": False, "False": False, "None": None, "null": None}


def parse_value(text: str) -> Any:
    """A parameter value from the command line: bool, None, int, float, else the string.

    DVC writes YAML's ``true`` and ``null`` as ``true`` and ``None`` in a ``cmd``; both forms
    are read here.

    Example:
        >>> [parse_value(v) for v in ("true", "None", "4", "1e-05", "mono")]
        [True, None, 4, 1e-05, 'mono']
    """
    if text in _LITERALS:
        return _LITERALS[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def stage_root(cwd: Path | None = None) -> Path:
    """The working directory when it is a project root holding ``dvc.yaml`` (where DVC runs a stage), else ``ROOT``."""
    cwd = Path(cwd or Path.cwd()).resolve()
    return cwd if (cwd / "dvc.yaml").is_file() and (cwd / "pyproject.toml").is_file() else ROOT


def point_kernel_at(root: Path) -> None:
    """Make kernels started from this process use ``root``'s files and its ``fsad`` code."""
    os.environ["FSAD_ROOT"] = str(root)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))


@dataclass(frozen=True)
class NotebookRun:
    """A finished notebook stage."""

    label: str          # the stage (train@mono) or the output stem
    executed: Path
    html: Path | None
    log: Path
    cells: str          # "8/8 cells"
    seconds: float


def output_paths(name: str, tag: str | None = None, root: Path = ROOT) -> tuple[Path, Path, Path]:
    """The executed notebook, its HTML export and its log for notebook ``name`` (and a per-category ``tag``)."""
    stem = f"{name}_{tag}" if tag else name
    reports = root / "reports"
    return reports / "notebooks" / f"{stem}.ipynb", reports / "html" / f"{stem}.html", reports / "logs" / f"{stem}.log"


@contextmanager
def stderr_to(log: TextIO) -> Iterator[TextIO]:
    """Send file descriptor 2 to ``log`` for the block: the kernel inherits it, so its own messages
    (``[IPKernelApp] WARNING | Kernel is running over TCP ...``) land in the log too, and so do
    papermill's and nbconvert's. Yields the terminal's stderr, for the stage's line."""
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", encoding="utf-8", errors="replace")
    os.dup2(log.fileno(), 2)
    try:
        yield console
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


def run_notebook(name: str, parameters: Mapping[str, Any], tag: str | None = None, html: bool = True,
                 root: Path = ROOT, label: str | None = None) -> NotebookRun:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` and export it to HTML; stderr goes to a log.

    Args:
        name: Notebook file name without ``.ipynb``.
        parameters: Values injected after the notebook's ``parameters`` cell.
        tag: Suffix of the output names (the category of a per-category stage).
        html: Also write the HTML export.
        root: The project root holding ``notebooks/`` and ``reports/``.
        label: The name on the stage's console line (default: the output stem).

    Returns:
        Where the executed notebook (without progress bars), its HTML and its log are, and
        how long it took.

    Raises:
        FileNotFoundError: no such notebook.
        RuntimeError: a cell failed or the kernel died; the message names the cell and the log.
    """
    import papermill

    notebooks = root / "notebooks"
    source = notebooks / f"{name}.ipynb"
    if not source.is_file():
        available = sorted(p.stem for p in notebooks.glob("*.ipynb"))
        raise FileNotFoundError(f"fsad/notebook_runner.py: no notebook {source}; available: {available}")
    executed, exported, log_path = output_paths(name, tag, root)
    label = label or executed.stem
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Written as it comes (not atomically): a failed or interrupted run leaves its log to read.
    with open(log_path, "w", encoding="utf-8", buffering=1) as log, stderr_to(log) as console, \
            StageLine(label, console if console.isatty() else None) as line:
        log.write(f"fsad notebook {name} ({label}), parameters {dict(parameters)}\n")
        stage_log = StageLog(log, line)
        try:
            with atomic_path(executed) as tmp:
                papermill.execute_notebook(
                    str(source), str(tmp), parameters=dict(parameters), kernel_name=KERNEL, language="python",
                    cwd=str(notebooks), stderr_file=stage_log,
                    progress_bar={"file": line, "bar_format": "{n_fmt}/{total_fmt} cells", "mininterval": 0, "miniters": 1})
                stage_log.close()
                stderr = remove_progress_bars(tmp)
            if html:
                from nbconvert import HTMLExporter

                body, _ = HTMLExporter().from_filename(str(executed))
                write_text_atomic(exported, body)
        except papermill.PapermillExecutionError as error:  # the cell's own message (e.g. a params.yaml key), not papermill's traceback
            stage_log.close()
            log.write(strip_ansi("\n".join(error.traceback)) + "\n")
            raise RuntimeError(f"notebook {name} stopped in cell In[{error.exec_count}]: {error.ename}: {error.evalue} "
                               f"(log: {_shown(log_path, root)})") from None
        except RuntimeError as error:  # nbclient's DeadKernelError, a kernel that did not start
            stage_log.close()
            log.write(f"{type(error).__name__}: {error}\n")
            raise RuntimeError(f"notebook {name}: {error} (log: {_shown(log_path, root)})") from None
        log.write(f"finished: {line.cells} in {duration(line.elapsed)}\n")
    # What a cell wrote to stderr that is not a progress bar: a warning or a message for the reader.
    for count, lines in stderr:
        more = f" (+{len(lines) - 1} lines in {_shown(log_path, root)})" if len(lines) > 1 else ""
        logger.warning("%s, cell In[%s]: %s%s", label, count, lines[0], more)
    return NotebookRun(label, executed, exported if html else None, log_path, line.cells, line.elapsed)


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the project root where it lies inside it (shorter on a console line)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def cmd_notebook(args: argparse.Namespace) -> None:
    # Without ipywidgets, tqdm.auto warns and falls back to text bars, which the log and the
    # stage's line read (and the executed notebook drops); the kernel inherits this filter.
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), TQDM_WARNING_FILTER]))
    # A stage killed with SIGTERM (a queue worker stopped, a job scheduler) must clean up
    # like one stopped with Ctrl-C: SystemExit unwinds through the atomic writers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = stage_root()
    point_kernel_at(root)
    parameters = {key: parse_value(value) for key, value in args.parameters}
    # DVC names the stage it runs (train@mono); run by hand, the line names the notebook.
    run = run_notebook(args.name, parameters, tag=args.tag, html=not args.no_html, root=root, label=os.environ.get("DVC_STAGE"))
    print(f"{run.label}: {run.cells} in {duration(run.seconds)} -> {_shown(run.html or run.executed, root)} (log: {_shown(run.log, root)})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fsad notebook`` on the CLI's subparsers."""
    p = sub.add_parser("notebook", help="run a notebook of notebooks/ with papermill (a pipeline stage) and export HTML")
    p.add_argument("name", help="notebook name without .ipynb, e.g. 01_data_prep")
    p.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", default=[],
                   metavar=("KEY", "VALUE"), help="a parameter injected by papermill (repeatable)")
    p.add_argument("--tag", help="suffix of the output names, e.g. the category")
    p.add_argument("--no-html", action="store_true", help="skip the HTML export")
    p.set_defaults(func=cmd_notebook)


__all__ = ["NotebookRun", "add_parser", "output_paths", "parse_value", "point_kernel_at", "run_notebook", "stage_root", "stderr_to"]
