"""The image files a user names on the command line of ``fsad fit`` and ``fsad predict``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fsad.data.mvtec import IMAGE_SUFFIXES


def find_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Image files named by ``inputs`` (files, or folders searched recursively), with output names.

    Skips hidden files and folders (``.DS_Store``, macOS AppleDouble ``._*``, ``.git``) and
    files whose suffix is not an image's. An image's output name (of its heat-map and mask)
    is its path relative to the folder given, prefixed by that folder's name, with the
    suffix ``.png``; a name met again gets ``-2``, ``-3``, ... (``a.png`` and ``a.tif``).

    Returns:
        ``(path, output name)`` pairs in the order given, each folder's files sorted.

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    found: list[tuple[Path, str]] = []
    for given in map(Path, inputs):
        if given.is_file():
            found.append((given, given.name))
            continue
        if not given.is_dir():
            raise FileNotFoundError(f"fsad: {given} does not exist; pass image files or folders")
        files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(given).parts))
        if not files:
            raise FileNotFoundError(f"fsad: no image in {given} (searched recursively for "
                                    f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        name = given.resolve().name or "images"
        found += [(p, f"{name}/{p.relative_to(given).as_posix()}") for p in files]
    seen: dict[str, int] = {}
    unique = []
    for path, name in found:  # one output name twice (a.png and a.tif, or one name in two folders): number the later ones
        stem = Path(name).with_suffix("").as_posix()
        count = seen[stem] = seen.get(stem, 0) + 1
        unique.append((path, f"{stem}.png" if count == 1 else f"{stem}-{count}.png"))
    return unique
