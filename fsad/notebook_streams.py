"""What a notebook stage shows: one console line, a log file, and notebooks without progress bars.

A progress bar (tqdm and the like) redraws one line in place: it writes ``\\r`` and its new
state, and a newline only when it ends (``leave=True``; ``leave=False`` blanks the line
instead). A kernel sends each redraw as stream output, so a saved notebook keeps every
state of every bar, and an HTML export shows them as a block of lines, one per redraw.
``ProgressFilter`` tells a stream's lines from its progress displays as the text arrives;
``StageLog`` writes a notebook's stderr to its log, each bar as its last state on one line;
``StageLine`` is the stage's one line on the terminal (cells done, wall time, the kernel's
current bar); ``remove_progress_bars`` takes them out of an executed notebook.

Example:
    >>> f = ProgressFilter()
    >>> f.feed("\\rload:  50%\\rload: 100%\\r          \\r/x.py:3: UserWarning: no masks\\n")
    [('load: 100%', True), ('/x.py:3: UserWarning: no masks', False)]
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class ProgressFilter:
    """Splits a terminal stream into finished lines, each flagged True when it was a progress display.

    A segment ended by ``\\r`` is drawn over by the next; a blank one erases the bar, whose
    last state is then reported once, and frees the line. A line ended by ``\\n`` after a
    ``\\r`` is a bar closed with ``leave=True`` (its final state); any other line is ordinary output.
    """

    def __init__(self) -> None:
        self.pending = ""        # the unfinished last segment (a bar's current state, or a partial line)
        self.bar = ""            # the last state of the bar being redrawn
        self.redrawn = False     # the current line has seen a \r

    @property
    def current(self) -> str:
        """What the line shows now: the bar's state being drawn (or a partial line)."""
        return self.pending.strip() or self.bar.strip()

    def feed(self, text: str) -> list[tuple[str, bool]]:
        """Consume ``text``; return the lines it finished as ``(line, is_progress)``."""
        finished = []
        parts = re.split(r"(\r\n|\r|\n)", self.pending + text)
        self.pending = parts.pop()
        for segment, end in zip(parts[::2], parts[1::2]):
            if end == "\r":
                if segment.strip():
                    self.bar, self.redrawn = segment, True
                elif self.bar:  # blanked: the bar is gone and its line free again
                    finished.append((self.bar.rstrip(), True))
                    self.bar, self.redrawn = "", False
                else:  # a \r at the start of a line: a display begins
                    self.redrawn = True
            elif self.redrawn:
                state = segment if segment.strip() else self.bar
                if state.strip():
                    finished.append((state.rstrip(), True))
                self.bar, self.redrawn = "", False
            else:
                finished.append((segment, False))
        return finished

    def close(self) -> list[tuple[str, bool]]:
        """The lines still open at the end of the stream."""
        finished = self.feed("\n") if self.pending or self.bar else []
        self.pending, self.bar, self.redrawn = "", "", False
        return finished


def remove_progress_bars(path: str | Path) -> list[tuple[int | None, list[str]]]:
    """Rewrite the executed notebook at ``path`` with its stream outputs free of progress bars.

    A kernel sends a stream in pieces (one per flush), interleaved with the other stream, so
    each stream of a cell is read as one text across its pieces; each piece keeps the lines
    that end in it. Consecutive pieces of one stream are then joined, and a stream left empty
    is dropped, so no empty stderr box shows.

    Returns:
        What stays on stderr, as the reader sees it: ``(execution count, non-blank lines)``
        of each cell that has some (a warning, a message).
    """
    import nbformat  # here, not at the top: compiling its validator costs every fsad command ~2.5 s at start-up

    nb = nbformat.read(str(path), as_version=4)
    stderr = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        filters: dict[str, ProgressFilter] = {}
        last: dict[str, Any] = {}
        for output in cell.outputs:
            if output.output_type == "stream":
                lines = filters.setdefault(output.name, ProgressFilter()).feed(output.text)
                output.text = "".join(f"{line}\n" for line, progress in lines if not progress)
                last[output.name] = output
        for name, output in last.items():
            output.text += "".join(f"{line}\n" for line, progress in filters[name].close() if not progress)
        joined = []
        for output in cell.outputs:
            if output.output_type == "stream" and joined and joined[-1].output_type == "stream" \
                    and joined[-1].name == output.name:
                joined[-1].text += output.text
            elif output.output_type != "stream" or output.text.strip():
                joined.append(output)
        cell.outputs = joined
        lines = [line for o in joined if o.output_type == "stream" and o.name == "stderr"
                 for line in o.text.splitlines() if line.strip()]
        if lines:
            stderr.append((cell.execution_count, lines))
    nbformat.write(nb, str(path))
    return stderr


def duration(seconds: float) -> str:
    """``'42.3 s'``, ``'2 min 05 s'``: a wall time as a person reads it."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class StageLine:
    """The stage's one line on the terminal: ``train@mono: 3/8 cells 1 min 02 s  epoch 2/5: 40%|…``.

    papermill's bar over the cells writes here (``progress_bar={"file": line, ...}``) and
    ``StageLog`` reports the kernel's current bar. Used as a context manager on a terminal,
    the line is redrawn in place (every second, so that a silent cell's time still runs, and
    at most 5 times a second on news) and erased at the end, for the caller's final line;
    without a terminal (``console=None``) nothing is drawn.
    """

    def __init__(self, label: str, console: TextIO | None):
        self.label = label
        self.console = console
        self.start = time.monotonic()
        self.cells = ""          # "3/8 cells", from papermill's bar (bar_format "{n_fmt}/{total_fmt} cells")
        self.bar = ""
        self._drawn = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __enter__(self) -> StageLine:
        if self.console is not None:
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.console is not None:
            with self._lock:
                self.console.write("\r\x1b[K")
                self.console.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def write(self, text: str) -> None:
        states = [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]
        if states:
            self.cells = states[-1]
            self.draw(force=True)

    def flush(self) -> None:
        pass

    def show_bar(self, bar: str) -> None:
        self.bar = bar
        self.draw()

    def draw(self, force: bool = False) -> None:
        if self.console is None or self._stop.is_set() or (not force and time.monotonic() - self._drawn < 0.2):
            return
        with self._lock:
            self._drawn = time.monotonic()
            text = f"{self.label}: {self.cells} {duration(self.elapsed)}  {self.bar}".rstrip()
            width = shutil.get_terminal_size().columns - 1
            self.console.write("\r" + text[:width] + "\x1b[K")
            self.console.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.draw(force=True)


class StageLog:
    """papermill's ``stderr_file``: the cells' stderr into the stage's log, each progress bar as its last state.

    The kernel process's own stderr (``[IPKernelApp] WARNING | ...``) reaches the same file
    through the inherited file descriptor (``fsad.notebook_runner.stderr_to``).
    """

    def __init__(self, file: TextIO, line: StageLine):
        self.file = file
        self.line = line
        self.filter = ProgressFilter()

    def write(self, text: str) -> None:
        self._log(self.filter.feed(text))
        self.line.show_bar(self.filter.current)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self._log(self.filter.close())

    def _log(self, lines: list[tuple[str, bool]]) -> None:
        self.file.writelines(f"{strip_ansi(text)}\n" for text, _ in lines)
        self.file.flush()


__all__ = ["ProgressFilter", "StageLine", "StageLog", "duration", "remove_progress_bars", "strip_ansi"]
