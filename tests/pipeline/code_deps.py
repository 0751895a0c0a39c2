"""Which fsad source files a notebook runs: the module-level imports of its cells, followed transitively.

Imports inside functions are not followed: they are deliberate, documented exceptions
(e.g. ``fsad.pipeline.manifest.dataset_root``), see docs/pipeline.md.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from fsad.paths import ROOT


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "fsad":
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def module_closure(sources: list[str]) -> set[Path]:
    """fsad files imported (module level, transitively) by Python ``sources`` (code strings)."""
    seen: set[Path] = set()
    todo = [n for source in sources for n in _top_level_imports(ast.parse(source))]
    while todo:
        for name in _with_parents(todo.pop()):
            path = _module_file(name)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(_top_level_imports(ast.parse(path.read_text())))
    return seen


def notebook_code(path: Path) -> list[str]:
    """Code cells of a notebook, IPython-only lines (``display``, magics) kept parseable."""
    cells = json.loads(Path(path).read_text())["cells"]
    return ["\n".join(l for l in "".join(c["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
            for c in cells if c["cell_type"] == "code"]


def notebook_closure(path: Path) -> set[Path]:
    """fsad files a notebook runs."""
    return module_closure(notebook_code(path))
