"""Run a notebook as a pipeline stage: papermill with injected parameters, then an HTML export.

``fsad notebook 02_aggregated_training --tag mono -p category mono -p epochs 4`` executes
``notebooks/02_aggregated_training.ipynb`` into ``reports/notebooks/02_aggregated_training_mono.ipynb``
and exports ``reports/html/02_aggregated_training_mono.html``. Folders are created first
(papermill does not), the kernel is the project's ``python3``, and both files are written
atomically: a failed or interrupted run leaves neither behind. Cell outputs (tqdm bars
included) stream to the terminal while the notebook runs.

The project root of a stage is the folder DVC runs it in (the one holding ``dvc.yaml``):
a queued experiment (``dvc exp run --queue``) runs in a temporary copy of the project, and
its kernel must read and write that copy, with that copy's ``fsad`` code, not the checkout
an editable install points at. ``FSAD_ROOT`` and ``PYTHONPATH`` tell the kernel so.

Example:
    >>> run_notebook("01_data_prep", {"dataset": "toy"})  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsad.io import atomic_path, write_text_atomic
from fsad.paths import ROOT

KERNEL = "python3"
TQDM_WARNING_FILTER = "ignore::Warning:tqdm.auto"
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


def output_paths(name: str, tag: str | None = None, root: Path = ROOT) -> tuple[Path, Path]:
    """The executed notebook and its HTML export for notebook ``name`` (and a per-category ``tag``)."""
    stem = f"{name}_{tag}" if tag else name
    return root / "reports" / "notebooks" / f"{stem}.ipynb", root / "reports" / "html" / f"{stem}.html"


def run_notebook(name: str, parameters: Mapping[str, Any], tag: str | None = None, html: bool = True,
                 log_output: bool = True, root: Path = ROOT) -> tuple[Path, Path | None]:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` and export it to HTML.

    Args:
        name: Notebook file name without ``.ipynb``.
        parameters: Values injected after the notebook's ``parameters`` cell.
        tag: Suffix of the output names (the category of a per-category stage).
        html: Also write the HTML export.
        log_output: Stream cell outputs to the terminal.
        root: The project root holding ``notebooks/`` and ``reports/``.

    Returns:
        The executed notebook and the HTML file (``None`` without ``html``).

    Raises:
        FileNotFoundError: no such notebook.
        papermill.PapermillExecutionError: a cell failed (its traceback is in the message).
    """
    import papermill
    from nbconvert import HTMLExporter

    notebooks = root / "notebooks"
    source = notebooks / f"{name}.ipynb"
    if not source.is_file():
        available = sorted(p.stem for p in notebooks.glob("*.ipynb"))
        raise FileNotFoundError(f"fsad/notebook_runner.py: no notebook {source}; available: {available}")
    executed, exported = output_paths(name, tag, root)
    try:
        with atomic_path(executed) as tmp:
            papermill.execute_notebook(str(source), str(tmp), parameters=dict(parameters), kernel_name=KERNEL, language="python",
                                       cwd=str(notebooks), log_output=log_output, progress_bar=True)
    except papermill.PapermillExecutionError as error:  # the cell's own message (e.g. a params.yaml key), not papermill's traceback
        raise RuntimeError(f"notebook {name} stopped in cell {error.exec_count}: {error.ename}: {error.evalue}") from None
    if not html:
        return executed, None
    body, _ = HTMLExporter().from_filename(str(executed))
    write_text_atomic(exported, body)
    return executed, exported


def cmd_notebook(args: argparse.Namespace) -> None:
    # Without ipywidgets, tqdm.auto warns and falls back to text bars, which is what a
    # log needs; the kernel inherits this filter from the environment.
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), TQDM_WARNING_FILTER]))
    # A stage killed with SIGTERM (a queue worker stopped, a job scheduler) must clean up
    # like one stopped with Ctrl-C: SystemExit unwinds through the atomic writers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = stage_root()
    point_kernel_at(root)
    parameters = {key: parse_value(value) for key, value in args.parameters}
    executed, exported = run_notebook(args.name, parameters, tag=args.tag, html=not args.no_html, root=root)
    print(f"executed: {executed}" + (f"\nhtml: {exported}" if exported else ""))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fsad notebook`` on the CLI's subparsers."""
    p = sub.add_parser("notebook", help="run a notebook of notebooks/ with papermill (a pipeline stage) and export HTML")
    p.add_argument("name", help="notebook name without .ipynb, e.g. 01_data_prep")
    p.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", default=[],
                   metavar=("KEY", "VALUE"), help="a parameter injected by papermill (repeatable)")
    p.add_argument("--tag", help="suffix of the output names, e.g. the category")
    p.add_argument("--no-html", action="store_true", help="skip the HTML export")
    p.set_defaults(func=cmd_notebook)


__all__ = ["add_parser", "output_paths", "parse_value", "point_kernel_at", "run_notebook", "stage_root"]
