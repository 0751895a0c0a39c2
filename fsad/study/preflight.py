"""Check a run's inputs before any training: every problem at once, each naming its category and file.

A run that trains for an hour and then stops at a missing mask of the last category
wastes the hour; ``preflight`` reads every file header of the categories a run will use
(a few seconds for MVTec AD) and raises ONE error listing every problem it found.

Checked: the data set root; the target categories (Unicode names compared in NFC; the
message lists the available ones); at least two categories for leave-one-out training;
each category's layout (``fsad.data.mvtec.load_category``: images, test folder, masks);
K <= the ``train/good`` images of every target; every image and mask opens and passes
PIL's ``verify`` (PNG chunk CRCs: a truncated or corrupt file fails); every mask has its
image's size; normal and anomalous test images exist when an image metric is asked; the
device. A target without a ``ground_truth`` folder is not an error: its pixel metrics are
NaN, as documented (ELPV has no masks); ``Checked.notes`` says so.

Example:
    >>> checked = preflight(resolve_dataset("toy"), ["disc"], shots=(2, 4), metrics=("image_auroc",))  # doctest: +SKIP
    >>> sorted(checked.categories)  # doctest: +SKIP
    ['disc', 'ring', 'stripes']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fsad.data.mvtec import Category, check_image, list_categories, load_category, nfc
from fsad.study.evaluation import IMAGE_METRICS, PIXEL_METRICS

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """Everything wrong with a run's inputs.

    Attributes:
        problems: One line per problem, each naming its category and file.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) with the run's inputs, found before any training:\n  - "
                         + "\n  - ".join(self.problems))


@dataclass
class Checked:
    """What ``preflight`` found usable.

    Attributes:
        root: The data set root (absolute).
        targets: The target category names (NFC), in the order asked.
        categories: Every category loaded: the targets, and the others when training.
        notes: Not errors, but worth saying (e.g. pixel metrics will be NaN).
    """

    root: Path
    targets: list[str]
    categories: dict[str, Category] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _image_problem(path: Path, category: str) -> tuple[str | None, tuple[int, int] | None]:
    """``(problem or None, (width, height) as viewers show it, or None)`` of one image file, without decoding its pixels."""
    try:
        return None, check_image(path)  # the reader's own checks: verify, EXIF orientation, size limits
    except (ValueError, FileNotFoundError) as error:
        return f"category {category!r}: {str(error).removeprefix('fsad/data/mvtec.py: ')}", None


def _file_problems(category: Category) -> list[str]:
    """Every unreadable image and every mask whose size is not its image's."""
    problems: list[str] = []
    for sample in (*category.train, *category.test):
        problem, size = _image_problem(sample.path, category.name)
        if problem:
            problems.append(problem)
        if sample.mask_path is None:
            continue
        mask_problem, mask_size = _image_problem(sample.mask_path, category.name)
        if mask_problem:
            problems.append(mask_problem)
        elif size is not None and mask_size != size:
            problems.append(f"category {category.name!r}: mask {sample.mask_path} is {mask_size[0]}x{mask_size[1]} but "
                            f"its image {sample.path} is {size[0]}x{size[1]} (width x height); remake the mask at the image's size")
    return problems


def _device_problem(device: str) -> str | None:
    from fsad.config import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as error:
        return str(error)
    return None


def preflight(root: str | Path, targets: Sequence[str] | None = None, shots: Sequence[int] = (),
              metrics: Sequence[str] = (), device: str | None = None, training: bool = True) -> Checked:
    """Check everything a run will read, before it starts; raise one error listing every problem.

    Args:
        root: The data set root (``fsad.study.experiment.resolve_dataset`` of the config's
            ``dataset``).
        targets: The categories to evaluate (``None``: all).
        shots: The K values every target must serve (the largest K is checked against
            its ``train/good`` images). Pass the K that must exist everywhere, not a
            sweep that skips the categories it does not fit.
        metrics: The metrics asked; image metrics need normal and anomalous test images.
        device: ``auto``, ``cpu`` or ``cuda[:i]`` (``None``: not checked).
        training: The run trains leave-one-out: the other categories are read (and
            checked) too, and at least two categories are needed.

    Returns:
        The root, the targets, the loaded categories and notes (also logged as warnings).

    Raises:
        PreflightError: every problem found, one per line.
    """
    problems: list[str] = []
    if device is not None and (problem := _device_problem(device)):
        problems.append(problem)
    try:
        available = list_categories(root)
    except FileNotFoundError as error:
        raise PreflightError([*problems, str(error)]) from None
    root = Path(root).expanduser().resolve()
    wanted = [nfc(t) for t in (targets or available)]
    unknown = [t for t in wanted if t not in available]
    if unknown:
        problems.append(f"categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} not in {root}; "
                        f"available: {', '.join(available)}")
    if training and len(available) < 2:
        problems.append(f"{root} has only the category {available[0]!r}: leave-one-out training needs two or more")
    checked = Checked(root, [t for t in wanted if t in available])
    to_load = available if training else checked.targets
    for name in to_load:
        try:
            checked.categories[name] = load_category(root, name)
        except (FileNotFoundError, ValueError) as error:
            problems.append(str(error))
    k_max = max(shots, default=0)
    for name in checked.targets:
        category = checked.categories.get(name)
        if category is None:
            continue
        if k_max > len(category.train):
            problems.append(f"category {name!r} has {len(category.train)} images in {category.path / 'train' / 'good'}, "
                            f"fewer than K={k_max} shots; lower the largest K or drop the category")
        normal = sum(s.label == 0 for s in category.test)
        if set(metrics) & set(IMAGE_METRICS) and (normal == 0 or normal == len(category.test)):
            missing = "normal (test/good)" if normal == 0 else "anomalous (test/DEFECT)"
            problems.append(f"category {name!r} has no {missing} test image under {category.path / 'test'}; "
                            f"{'/'.join(m for m in metrics if m in IMAGE_METRICS)} need both kinds")
        if set(metrics) & set(PIXEL_METRICS) and not category.has_masks:
            checked.notes.append(f"category {name!r} has no ground_truth folder: its "
                                 f"{'/'.join(m for m in metrics if m in PIXEL_METRICS)} will be NaN")
    for category in checked.categories.values():
        problems += _file_problems(category)
    if problems:
        raise PreflightError(problems)
    for note in checked.notes:
        log.warning("%s", note)
    return checked


__all__ = ["Checked", "PreflightError", "preflight"]
