"""Run a study target by target: results written as each category finishes, a failure keeps the others.

Example:
    >>> rows = for_each_target(["bottle", "pcb"], score_one, lambda rows: write_csv_atomic(out / "results.csv", pd.DataFrame(rows)))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


class TargetsFailed(RuntimeError):
    """Some categories failed; the rows of the others were written.

    Attributes:
        failures: ``category -> the error``.
        rows: The rows of the categories that finished.
    """

    def __init__(self, failures: dict[str, BaseException], rows: list[dict]):
        self.failures, self.rows = failures, rows
        lines = [f"{name}: {type(error).__name__}: {error}" for name, error in failures.items()]
        saved = f"the {len(rows)} result rows of the others were saved" if rows else "no category finished: no results were saved"
        super().__init__(f"{len(failures)} categor{'y' if len(failures) == 1 else 'ies'} failed ({saved}):\n  "
                         + "\n  ".join(lines))


def for_each_target(targets: Sequence[str], work: Callable[[str], list[dict]], save: Callable[[list[dict]], None]) -> list[dict]:
    """``work(target)`` for each target; ``save(all rows so far)`` after each one that finished.

    A target that raises is logged and skipped; the others still run and are saved, and
    ``TargetsFailed`` is raised at the end. Ctrl-C (``KeyboardInterrupt``) stops at once;
    what was saved stays.

    Returns:
        The rows of every target, in order.
    """
    rows: list[dict] = []
    failures: dict[str, BaseException] = {}
    for target in targets:
        try:
            new = work(target)
        except Exception as error:  # one category's failure must not lose the others' results
            log.error("%s failed: %s", target, error)
            failures[target] = error
            continue
        rows += new
        save(rows)
    if failures:
        raise TargetsFailed(failures, rows)
    return rows


__all__ = ["TargetsFailed", "for_each_target"]
