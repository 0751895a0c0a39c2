"""RegAD's training pool: the target data set's other categories, plus categories of other data sets (issue 20).

The paper trains on 14 MVTec categories; a data set of 2-4 categories leaves 1-3. A pool adds
the normal images of other data sets, each of their categories a training category of its own,
never the target (``RegADConfig.train_extra``, ``train_own``). An entry is
- ``elpv`` / ``toy`` (embedded), ``fsad-mini``, or a folder in MVTec layout: all its categories;
- ``dtd-mini`` (``../shared/datasets/dtd-mini``), or a folder of class folders of images (no
  ``train/good``): each class folder a category of normal images;
- ``SOURCE/CATEGORY`` (``elpv/mono``, ``dtd-mini/banded``): that category only.
Extra categories are named ``SOURCE/CATEGORY`` in the model's record (``train_categories``,
with a fingerprint of their images), so the checkpoint says what trained it.

A class folder of plain images keeps its last sixth as ``test/good``-like spare images that
training never reads (the honest epoch choice scores them, ``fsad.study.models.PoolValidation``).

Example:
    >>> extra = load_extra(["elpv", "dtd-mini"])  # 2 + 10 categories  # doctest: +SKIP
    >>> pool = training_pool(target, others, extra, train_own=None)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fsad.data.fingerprint import file_digests
from fsad.data.mvtec import IMAGE_SUFFIXES, NORMAL, Category, Sample, list_categories, load_category, nfc
from fsad.paths import DTD_MINI_DIR

SPARE_FRACTION = 6  # a class folder of plain images keeps 1/6 of its images (its last, sorted) out of training
NAMED = {"dtd-mini": lambda: DTD_MINI_DIR}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def image_folder_category(root: Path, folder: str, name: str) -> Category:
    """A class folder of normal images as a category: all but its last sixth train, the rest are spare good images.

    Raises:
        ValueError: fewer than 2 training images (training pairs a query with other images).
    """
    files = _images(root / folder)
    spare = len(files) // SPARE_FRACTION
    train, test = files[: len(files) - spare], files[len(files) - spare :]
    if len(train) < 2:
        raise ValueError(f"train_extra: {root / folder} holds {len(files)} image(s); a training category needs at least 2")
    return Category(root, name, tuple(Sample(p, 0, NORMAL, None) for p in train), tuple(Sample(p, 0, NORMAL, None) for p in test),
                    has_masks=False, folder=folder)


KNOWN = ("elpv", "toy", "fsad-mini", "dtd-mini")  # data sets named by name (fsad.study.experiment.resolve_dataset + NAMED)


def _source_root(source: str, base: Path | None) -> Path:
    from fsad.study.experiment import resolve_dataset  # the one resolver of data set names (its module imports this one)

    if source in NAMED:
        root = NAMED[source]()
        if not root.is_dir():
            raise FileNotFoundError(f"train_extra: {source} not found at {root}; it ships in ../shared/datasets beside "
                                    "the repository, or drop it from train_extra")
        return root
    try:
        return resolve_dataset(source, base)
    except FileNotFoundError:
        raise FileNotFoundError(f"train_extra: {source!r} is neither a data set ({', '.join(KNOWN)}) nor a folder "
                                f"(relative paths are read from {base or 'the current directory'})") from None


def _categories_of(source: str, root: Path) -> dict[str, Category]:
    """``{category name: category}`` of one source: MVTec-layout categories, else class folders of images."""
    try:
        return {name: load_category(root, name) for name in list_categories(root)}
    except FileNotFoundError:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _images(p))
        if not folders:
            raise FileNotFoundError(f"train_extra: {source} ({root}) holds neither categories in MVTec layout "
                                    "(CATEGORY/train/good/) nor class folders of images") from None
        return {nfc(f): image_folder_category(root, f, nfc(f)) for f in folders}


def _entry(entry: str, base: Path | None) -> tuple[str, dict[str, Category]]:
    """One ``train_extra`` entry -> (the label its categories are named by, ``{name: category}``)."""
    source, _, wanted = entry.partition("/")
    if source not in KNOWN:  # a folder: a data set, one category of one, or one class folder of images
        folder = _source_root(entry, base)
        if (folder / "train" / NORMAL).is_dir() or (_images(folder) and not _categories_in(folder)):
            source, wanted, root = folder.parent.name, folder.name, folder.parent
            found = {nfc(wanted): load_category(root, wanted) if (folder / "train" / NORMAL).is_dir()
                     else image_folder_category(root, wanted, nfc(wanted))}
            return source, found
        return folder.name, _categories_of(entry, folder)
    found = _categories_of(source, _source_root(source, base))
    if wanted:
        if nfc(wanted) not in found:
            raise FileNotFoundError(f"train_extra: {entry!r}: {source} has no category {wanted!r}; available: {', '.join(found)}")
        found = {nfc(wanted): found[nfc(wanted)]}
    return source, found


def _categories_in(folder: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def load_extra(entries: Sequence[str], base: Path | None = None) -> list[Category]:
    """The categories ``train_extra`` names, each named ``SOURCE/CATEGORY``, read and checked before any training.

    Args:
        entries: ``RegADConfig.train_extra``.
        base: Relative folders are read from here (``None``: the current directory).

    Raises:
        FileNotFoundError, ValueError: an entry that names no data set, folder or category
            (the message names the entry and what is available).
    """
    pool: dict[str, Category] = {}
    for entry in entries:
        label, found = _entry(entry, base)
        for name, category in found.items():
            pool[f"{label}/{name}"] = Category(category.root, f"{label}/{name}", category.train, category.test,
                                               category.has_masks, category.folder or name)
    return list(pool.values())


def training_pool(target: Category, others: Sequence[Category], extra: Sequence[Category], train_own: int | None = None) -> list[Category]:
    """The categories that train the model of ``target``: ``train_own`` of ``others`` (sorted by name), then ``extra``.

    The target itself is never in it, even when an extra source holds it (``train_extra:
    [fsad-mini]`` for a fsad-mini target) or a copy of it elsewhere (the same train/good bytes), and a
    category reached twice (by path or by content) counts once. Images are compared by their bytes.

    Args:
        target: The held-out category.
        others: The target data set's other categories.
        extra: ``load_extra``'s categories.
        train_own: How many of ``others`` (``None``: all; ``0``: none).

    Raises:
        ValueError: the pool is empty, or a category holds some of the target's images (train or test) without
            being a copy of the target.
    """
    own = sorted(others, key=lambda c: c.name)[: train_own]
    target_images = file_digests(s.path for s in (*target.train, *target.test))
    seen = {frozenset(file_digests(s.path for s in target.train))}  # a folder reached twice has the same content
    pool = []
    for category in [*own, *extra]:
        content = frozenset(file_digests(s.path for s in category.train))
        if content in seen:  # the target or a repeat
            continue
        shared = len(content & target_images)
        if shared:
            raise ValueError(f"the training pool of {target.name!r}: {category.name!r} ({category.path}) holds {shared} of "
                             f"the target's images; training must not see them: remove them from that folder, or "
                             f"drop it from train_extra")
        seen.add(content)
        pool.append(category)
    if not pool:
        raise ValueError(f"the training pool of {target.name!r} is empty (train_own: {train_own}, train_extra adds "
                         f"{len(extra)} categories, the target excluded); raise train_own or add to train_extra")
    return pool


__all__ = ["image_folder_category", "load_extra", "training_pool"]
