"""The embedded default data set: solar cells of the ELPV data set, in MVTec AD layout.

The PyPI package ``elpv-dataset`` (Deitsch et al.) ships 2,624 electroluminescence images of
solar cells, 300x300 8-bit grey, each with a defect probability in {0, 1/3, 2/3, 1} given by
experts, and the module type (``mono`` or ``poly``), which becomes the category here.

Example:
    >>> root = build_elpv_dataset(DATA_DIR / "elpv")  # doctest: +SKIP
    >>> list_categories(root)  # doctest: +SKIP
    ['mono', 'poly']
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import shutil
import zlib
from pathlib import Path

import numpy as np

from fsad.io import atomic_dir

PACKAGE = "elpv_dataset"
DISTRIBUTION = "elpv-dataset"
CATEGORIES = ("mono", "poly")
DEFECT = "defect"
BUILD_FILE = "build.json"
SOURCES_FILE = "SOURCES.csv"


def _package_data_dir() -> Path:
    """The ``data`` folder of the installed ``elpv_dataset`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"fsad/data/elpv.py: the Python package '{PACKAGE}' is not "
                                  f"installed; install it with `pip install {DISTRIBUTION}`")
    data_dir = Path(spec.origin).parent / "data"
    if not (data_dir / "labels.csv").is_file():
        raise FileNotFoundError(f"fsad/data/elpv.py: {data_dir / 'labels.csv'} is missing; "
                                "reinstall the package: "
                                f"`pip install --force-reinstall {DISTRIBUTION}`")
    return data_dir


def _read_labels(labels_file: Path) -> list[tuple[str, float, str]]:
    """Rows ``(image path relative to data/, defect probability, module type)``.

    ``labels.csv`` has no header and separates its three columns with spaces.
    """
    rows = []
    for line_number, line in enumerate(labels_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"fsad/data/elpv.py: {labels_file} line {line_number} has "
                             f"{len(fields)} fields, expected 3 (path probability type): {line!r}")
        rows.append((fields[0], float(fields[1]), fields[2]))
    return rows


def _draw(files: list[str], count: int, rng: np.random.Generator, what: str) -> list[str]:
    if count > len(files):
        raise ValueError(f"fsad/data/elpv.py: {what} asks for {count} images but only "
                         f"{len(files)} are available; lower the count")
    return [files[i] for i in rng.permutation(len(files))[:count]]


def _select(rows: list[tuple[str, float, str]], category: str, n_train: int, n_test_good: int,
            n_test_defect: int, seed: int) -> dict[tuple[str, str], list[str]]:
    """Source files of each ``(split, defect folder)`` of one category."""
    normal = sorted(path for path, probability, kind in rows
                    if kind == category and probability == 0.0)
    defective = sorted(path for path, probability, kind in rows
                       if kind == category and probability == 1.0)
    # One generator per category, so the two categories do not depend on each other.
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    normal_drawn = _draw(normal, n_train + n_test_good, rng, f"{category} train + test/good")
    return {
        ("train", "good"): sorted(normal_drawn[:n_train]),
        ("test", "good"): sorted(normal_drawn[n_train:]),
        ("test", DEFECT): sorted(_draw(defective, n_test_defect, rng, f"{category} test/{DEFECT}")),
    }


def _readme(parameters: dict, counts: dict[str, dict[tuple[str, str], int]]) -> str:
    table = "\n".join(f"| {category} | {split}/{defect} | {count} |"
                      for category, by_folder in counts.items()
                      for (split, defect), count in by_folder.items())
    return f"""# ELPV solar cells in MVTec AD layout

Built by `fsad.data.elpv.build_elpv_dataset` from the Python package `{DISTRIBUTION}`
version {parameters['package_version']} (licence, as stated in its metadata:
{parameters['package_licence']}; the images are under CC BY-NC-SA 4.0, the code under Apache-2.0:
research and non-commercial use only).

Source data set: ELPV, electroluminescence images of solar cells, by S. Deitsch,
C. Buerhop-Lutz et al. Cite:
- Buerhop-Lutz et al., "A Benchmark for Visual Identification of Defective Solar Cells in
  Electroluminescence Imagery", EU PVSEC 2018, doi:10.4229/35thEUPVSEC20182018-5CV.3.15;
- Deitsch et al., "Automatic classification of defective photovoltaic module cells in
  electroluminescence images", Solar Energy 185, 2019, doi:10.1016/j.solener.2019.02.067;
- Deitsch et al., "Segmentation of photovoltaic module cells in uncalibrated
  electroluminescence images", Machine Vision and Applications 32(4), 2021,
  doi:10.1007/s00138-021-01191-9.

Categories are the module types (`mono`, `poly`). `train/good` and `test/good` are cells of
defect probability 0; `test/{DEFECT}` are cells of probability 1 only (certain defects; the
uncertain 1/3 and 2/3 cells are left out). There is no `ground_truth`: image metrics only.
Images are the package's PNG files copied byte for byte, names kept; `{SOURCES_FILE}` maps
each to its source file (relative to the package's `{PACKAGE}/data` folder) and probability.
Selection: per category, a generator `numpy.random.default_rng([seed, crc32(category)])`
permutes the sorted file list; seed {parameters['seed']}.

| category | folder | images |
| --- | --- | ---: |
{table}
"""


def build_elpv_dataset(out_root: Path, n_train: int = 120, n_test_good: int = 30,
                       n_test_defect: int = 30, seed: int = 0) -> Path:
    """Write the ELPV solar cells as an MVTec-layout data set with categories ``mono`` and ``poly``.

    ``train/good`` and ``test/good`` are drawn from the cells of defect probability 0 and
    ``test/defect`` from the cells of probability 1.0 only, i.e. the defects the experts were
    certain of. No ``ground_truth`` is written (ELPV has no masks): image metrics only. The
    PNG files are copied unchanged. The build goes to a temporary sibling folder renamed at
    the end, so an interrupted build leaves nothing; calling again with the same arguments
    returns the finished build at once.

    Args:
        out_root: Output folder; must not exist, be empty, or hold a build with these arguments.
        n_train: ``train/good`` images per category.
        n_test_good: ``test/good`` images per category.
        n_test_defect: ``test/defect`` images per category (mono has 313 certain defects).
        seed: Seed of the selection.

    Returns:
        ``out_root``, resolved.

    Raises:
        ModuleNotFoundError: ``elpv-dataset`` is not installed.
        ValueError: a count is below 1 or above what the package holds.
        FileExistsError: ``out_root`` holds something else.
    """
    out_root = Path(out_root).expanduser().resolve()
    if min(n_train, n_test_good, n_test_defect) < 1:
        raise ValueError(f"fsad/data/elpv.py: counts must be >= 1; got n_train={n_train}, "
                         f"n_test_good={n_test_good}, n_test_defect={n_test_defect}")
    data_dir = _package_data_dir()
    metadata = importlib.metadata.metadata(DISTRIBUTION)
    parameters = {
        "source": DISTRIBUTION,
        "package_version": metadata["Version"],
        "package_licence": metadata["License-Expression"] or metadata["License"],
        "n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect,
        "seed": seed,
    }
    if out_root.is_dir() and any(out_root.iterdir()):
        build_file = out_root / BUILD_FILE
        if build_file.is_file() and json.loads(build_file.read_text()) == parameters:
            return out_root
        raise FileExistsError(f"fsad/data/elpv.py: {out_root} is not empty and holds no ELPV build "
                              "with these arguments; delete it or choose an empty folder")
    rows = _read_labels(data_dir / "labels.csv")
    probabilities = {path: probability for path, probability, _ in rows}
    selections = {category: _select(rows, category, n_train, n_test_good, n_test_defect, seed)
                  for category in CATEGORIES}

    with atomic_dir(out_root) as partial:
        sources = []
        for category, by_folder in selections.items():
            for (split, defect), files in by_folder.items():
                folder = partial / category / split / defect
                folder.mkdir(parents=True)
                for source in files:
                    target = folder / Path(source).name
                    shutil.copyfile(data_dir / source, target)  # raw bytes, never re-encoded
                    sources.append((category, split, defect,
                                    target.relative_to(partial).as_posix(), source,
                                    probabilities[source]))
        with open(partial / SOURCES_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("category", "split", "defect", "file", "source_file", "probability"))
            writer.writerows(sources)
        counts = {category: {folder: len(files) for folder, files in by_folder.items()}
                  for category, by_folder in selections.items()}
        (partial / "README.md").write_text(_readme(parameters, counts))
        (partial / BUILD_FILE).write_text(json.dumps(parameters, indent=2) + "\n")
    return out_root
