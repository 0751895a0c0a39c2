"""Content fingerprints of data files, so a saved artifact can tell whether its data changed.

A fingerprint is a short sha256 over the files' relative names and bytes: renaming, adding,
removing or editing any file changes it; moving the whole data set elsewhere, copying it
or touching a file's mtime does not. Support-set files and checkpoints record the
fingerprint of the images they were made from, and are remade when it changes.

Hashing MVTec AD (~5 GB) reads every byte once (a few seconds per GB); each file's
digest is then cached for the rest of the process under ``(path, size, mtime_ns)``, so a
run that fingerprints the same category for several artifacts reads it once.

Example:
    >>> category = load_category("/work/shared/datasets/fsad-mini", "pcb")  # doctest: +SKIP
    >>> category_fingerprint(category, ("train",))  # doctest: +SKIP
    '3f0c9a1be27d4c55'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fsad.data.mvtec import Category, nfc

DIGEST_CHARS = 16
"""Hex characters kept (64 bits): collisions are out of reach for data-set sized inputs."""

PARTS = ("train", "test", "masks")
"""What :func:`category_fingerprint` can cover: ``train/good`` images, test images, masks."""

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (absolute path, size, mtime_ns) -> sha256


def _file_digest(path: Path) -> str:
    """sha256 of one file's bytes, cached while its size and mtime stay the same."""
    try:
        stat = path.stat()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"fsad/data/fingerprint.py: cannot fingerprint {path}: the file "
                                "does not exist") from error
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        _FILE_DIGESTS[key] = digest
    return digest


def file_digests(paths: Iterable[Path]) -> set[str]:
    """The sha256 of each file's bytes alone (no names): the same image under any name or folder is one digest."""
    return {_file_digest(Path(os.path.abspath(p))) for p in paths}


def _name(path: Path, root: Path) -> str:
    # NFC: macOS writes decomposed names, Linux keeps what it is given; the same data set
    # must fingerprint the same on both.
    return nfc(path.relative_to(root).as_posix())


def fingerprint(paths: Sequence[Path], root: Path | None = None) -> str:
    """A short content hash of ``paths``: their names relative to ``root`` and their bytes.

    The order of ``paths`` does not matter (they are sorted by relative name).

    Args:
        paths: The files.
        root: Names are taken relative to it (every path must lie under it); ``None``
            uses the folder the paths have in common (a single file: its folder).

    Returns:
        ``DIGEST_CHARS`` lowercase hex characters.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a path is not under ``root``.
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if root is None:
        root = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path("/")
    root = Path(os.path.abspath(root))
    named = []
    for path in absolute:
        try:
            named.append((_name(path, root), path))
        except ValueError as error:
            raise ValueError(f"fsad/data/fingerprint.py: {path} is not under {root}; "
                             "fingerprint files of one folder tree") from error
    total = hashlib.sha256()
    for name, path in sorted(named):
        # Length-prefixed name, then the file digest: no two file lists hash alike.
        encoded = name.encode("utf-8")
        total.update(len(encoded).to_bytes(4, "big") + encoded + bytes.fromhex(_file_digest(path)))
    return total.hexdigest()[:DIGEST_CHARS]


def category_files(category: Category, parts: Iterable[str] = PARTS) -> list[Path]:
    """The files of ``category`` that ``parts`` names (see :data:`PARTS`)."""
    parts = tuple(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"fsad/data/fingerprint.py: unknown part(s) {unknown}; choose from {PARTS}")
    files: list[Path] = []
    if "train" in parts:
        files += [s.path for s in category.train]
    if "test" in parts:
        files += [s.path for s in category.test]
    if "masks" in parts:
        files += [s.mask_path for s in category.test if s.mask_path is not None]
    return files


def category_fingerprint(category: Category, parts: Iterable[str] = ("train",)) -> str:
    """Fingerprint of the files of ``category`` that an artifact depends on.

    Names are taken relative to the data set root, so they include the category name.
    What depends on what:

    * support sets and trained models (RegAD, ResAD): ``("train",)``, the default:
      they only ever read ``train/good``;
    * evaluation results: ``("test", "masks")``; a whole-category record: :data:`PARTS`.

    Args:
        category: The category.
        parts: Any of ``"train"``, ``"test"``, ``"masks"``.

    Returns:
        ``DIGEST_CHARS`` lowercase hex characters.
    """
    return fingerprint(category_files(category, parts), root=category.root)


__all__ = ["DIGEST_CHARS", "PARTS", "category_files", "category_fingerprint", "file_digests", "fingerprint"]
