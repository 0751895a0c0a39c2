"""Bad inputs, reruns and interruptions through the real command line: a reproducible probe.

Every case runs ``python -m fsad.cli ...`` (the ``fsad`` of this checkout, ``OMP_NUM_THREADS=1``)
as a subprocess in a scratch folder that holds a copy of the toy data set (``fsad data toy``)
and tiny configs (32-64 px, 1 epoch of 1 batch, 1 support set, K = 2; the interruption cases
train 3 epochs of 4 batches so that a signal lands inside training). The backbones used
(``mobilenet_v2``, ``efficientnet_lite0``) have their ImageNet weights installed offline, so
``pretrained`` keeps its default (true); nothing here depends on the weights being good.

Each case states what it expects (the CHECK column): an exit code and a message naming the
key, file or category, or the files and rows that must be there afterwards. Every case also
expects no Python traceback (``Traceback (most recent call last)`` anywhere in its output)
and no timeout. A case marked ``item N`` pins issue 19's item N: it asserts the FIXED
behaviour, so it fails until that fix is merged.

The cases of a group (the id's first word) run in order, each may build on the ones before it
(a rerun needs the first run); groups are independent, and ``--jobs N`` runs N at once.
``--only PATTERN`` runs the cases whose id matches the regular expression, with the cases
before them in their group. Each case costs about 5 CPU seconds, mostly the new process
importing torch (the 26 config cases took 143 s of user time); on a busy shared machine the
wall time is many times that.

Example:
    .venv/bin/python benchmarks/bad_inputs.py --jobs 2              # all cases -> docs/bad_inputs.md
    .venv/bin/python benchmarks/bad_inputs.py --only rerun --out /tmp/rerun.md --keep   # logs/<case>.txt in the scratch folder

Exit status: 0 when every case passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"
HUGE = 14000  # pixels a side: over Pillow's decompression-bomb limit (2 x 89.5 Mpx), as line-scan cameras make
ISSUE = 19
HUGE_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- one run of the CLI
@dataclass
class Outcome:
    """What one command did: its exit code (negative: killed by that signal; None: timed out) and output."""

    code: int | None
    stdout: str
    stderr: str
    scratch: Path
    signalled: bool = False  # an interruption case's signal was sent while the command ran

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class Expect:
    """One expectation of a case: ``what`` is printed in the table, ``holds`` decides it."""

    what: str
    holds: Callable[[Outcome], bool]


@dataclass
class Case:
    """One command and what it must do.

    Attributes:
        id: Short name, ``group-what``; ``--only`` matches it.
        title: What a reader should know about the case.
        argv: The arguments after ``fsad``.
        expect: What must hold afterwards (no traceback and no timeout are always expected too).
        setup: Prepares files in the scratch folder before the command.
        cwd: Where the command runs, relative to the scratch folder.
        kept: What the folder held afterwards, in words (default: the listing of ``out``).
        out: The output folder the case writes, listed in the "kept" column.
        item: The issue-19 item the case pins (it fails until that fix is merged).
        interrupt: ``(signal, file)``: send the signal once ``file`` (scratch-relative) exists.
        after: Cleans up what the case left outside the scratch folder.
        timeout: Seconds before the command is killed.
    """

    id: str
    title: str
    argv: list[str]
    expect: list[Expect]
    setup: Callable[[Path], None] | None = None
    cwd: str = "."
    kept: Callable[[Path], str] | None = None
    out: str | None = None
    item: int | None = None
    interrupt: tuple[signal.Signals, str] | None = None
    after: Callable[[Path], None] | None = None
    timeout: float = 300

    @property
    def group(self) -> str:
        return self.id.split("-")[0]


def fsad(argv: list[str], cwd: Path, timeout: float, interrupt: tuple[signal.Signals, Path] | None = None) -> tuple:
    """Run ``python -m fsad.cli argv`` in ``cwd``; returns ``(code, stdout, stderr, signalled)``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fsad.cli", *argv], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    signalled = False
    if interrupt is not None:
        sig, trigger = interrupt
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if trigger.exists():
                process.send_signal(sig)
                signalled = True
                break
            time.sleep(0.02)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout, stderr, signalled
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        return None, stdout, stderr, signalled


# ----------------------------------------------------------------------------- expectations
def exits(code: int) -> Expect:
    return Expect(f"exit {code}", lambda o: o.code == code)


def says(*parts: str) -> Expect:
    """Every part appears in the output (stdout or stderr)."""
    return Expect("says " + " + ".join(repr(p) for p in parts), lambda o: all(p in o.text for p in parts))


def warns(*parts: str) -> Expect:
    """Every part appears on stderr (a warning or an error, not the results printed on stdout)."""
    return Expect("stderr names " + " + ".join(repr(p) for p in parts), lambda o: all(p in o.stderr for p in parts))


def quiet_about(part: str) -> Expect:
    return Expect(f"does not say {part!r}", lambda o: part not in o.text)


def has(path: str) -> Expect:
    return Expect(f"{path} exists", lambda o: (o.scratch / path).exists())


def lacks(path: str) -> Expect:
    return Expect(f"no {path}", lambda o: not (o.scratch / path).exists())


def holds(what: str, check: Callable[[Path], bool]) -> Expect:
    """A condition on the scratch folder; an exception while checking counts as not holding."""

    def safe(outcome: Outcome) -> bool:
        try:
            return bool(check(outcome.scratch))
        except Exception:  # a missing or malformed file: the expectation fails, the probe goes on
            return False

    return Expect(what, safe)


def either(first: list[Expect], second: list[Expect]) -> Expect:
    """One of two acceptable outcomes, each a list of expectations that must all hold."""
    text = " and ".join(e.what for e in first), " and ".join(e.what for e in second)
    return Expect(f"({text[0]}) or ({text[1]})",
                  lambda o: all(e.holds(o) for e in first) or all(e.holds(o) for e in second))


def rows(path: str | Path, scratch: Path) -> list[dict[str, str]]:
    with open(scratch / path, newline="") as handle:
        return list(csv.DictReader(handle))


def has_rows(path: str, count: int, **where: str) -> Expect:
    """``path`` (a CSV) has ``count`` rows whose columns equal ``where``."""
    condition = f" with {', '.join(f'{k}={v}' for k, v in where.items())}" if where else ""
    return holds(f"{path}: {count} row(s){condition}",
                 lambda s: sum(all(r.get(k) == v for k, v in where.items()) for r in rows(path, s)) == count)


def run_json_says(out: str, key: str, value: object) -> Expect:
    """run.json of ``out`` records ``settings[key]`` (dotted) == value."""

    def check(s: Path) -> bool:
        settings = json.loads((s / out / "run.json").read_text())["settings"]
        for part in key.split("."):
            settings = settings[part]
        return settings == value

    return holds(f"{out}/run.json: {key} = {value}", check)


def no_temporaries(folder: str) -> Expect:
    return holds(f"no temp file left in {folder}",
                 lambda s: not [p for p in (s / folder).rglob(".*") if ".tmp" in p.name or ".partial-" in p.name])


def heatmap_size(csv_path: str, image: str, size: tuple[int, int]) -> Expect:
    """The heat-map of ``image`` in ``csv_path`` is ``size`` (width, height): the image as a viewer shows it."""

    def check(s: Path) -> bool:
        row = next(r for r in rows(csv_path, s) if r["path"].endswith(image))
        with Image.open(row["heatmap"]) as heat:
            return heat.size == size

    return holds(f"heat-map of {image} is {size[0]}x{size[1]} (as displayed)", check)


# ----------------------------------------------------------------------------- the scratch data
TINY_REGAD = {"backbone": "mobilenet_v2", "image_size": 32, "epochs": 1, "batch_size": 2, "batches_per_epoch": 1,
              "lr": 0.001, "train_shots": [2], "device": "cpu"}
TINY = {"dataset": "./toy", "categories": ["disc"], "shots": [2], "n_sets": 1, "support_seed": 0,
        "metrics": ["image_auroc", "pixel_auroc"], "untrained_baseline": False, "regad": TINY_REGAD}
# Long enough (3 epochs of 4 batches, 64 px) that a signal sent after the first epoch lands in training.
LONG_REGAD = {**TINY_REGAD, "image_size": 64, "epochs": 3, "batch_size": 4, "batches_per_epoch": 4}


def tiny(regad: dict | None = None, **changes) -> str:
    """The tiny run's YAML with ``changes`` (top-level keys) and ``regad`` changes."""
    return yaml.safe_dump({**TINY, **changes, "regad": {**TINY_REGAD, **(regad or {})}}, sort_keys=False)


def write(path: str, text: str | bytes) -> Callable[[Path], None]:
    """A setup step: write ``text`` to scratch/``path``."""

    def step(scratch: Path) -> None:
        target = scratch / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return step


def steps(*functions: Callable[[Path], None]) -> Callable[[Path], None]:
    def step(scratch: Path) -> None:
        for function in functions:
            function(scratch)

    return step


def copy_toy(name: str, change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A setup step: scratch/``name`` = a copy of the toy data, then ``change(copy)``."""

    def step(scratch: Path) -> None:
        shutil.rmtree(scratch / name, ignore_errors=True)
        shutil.copytree(scratch / "toy", scratch / name)
        if change is not None:
            change(scratch / name)

    return step


def edit_image(path: str) -> Callable[[Path], None]:
    """A setup step: change one pixel block of an image (its content, so its fingerprint)."""

    def step(scratch: Path) -> None:
        with Image.open(scratch / path) as image:
            pixels = np.array(image)
        pixels[:8, :8] = 255 - pixels[:8, :8]
        Image.fromarray(pixels).save(scratch / path)

    return step


def huge_png(path: Path) -> None:
    """A 14000 x 14000 grey PNG, constant but for a bright square: ~200 kB on disk, 196 Mpx decoded."""
    pixels = np.full((HUGE, HUGE), 90, np.uint8)
    pixels[6000:6400, 6000:6400] = 230
    Image.fromarray(pixels).save(path, compress_level=1)


def huge_jpeg(path: Path) -> None:
    pixels = np.full((HUGE, HUGE), 90, np.uint8)
    pixels[6000:6400, 6000:6400] = 230
    Image.fromarray(pixels).save(path, quality=80)


def huge_image(name: str) -> Callable[[Path], None]:
    """A setup step: scratch/huge/<name> (made once), the huge PNG or JPEG."""

    def step(scratch: Path) -> None:
        target = scratch / "huge" / name
        with HUGE_LOCK:  # two groups may ask for it at once (--jobs)
            if not target.exists():
                target.parent.mkdir(exist_ok=True)
                (huge_png if name.endswith(".png") else huge_jpeg)(target)

    return step


def place(source: str, target: str, move: bool = False) -> Callable[[Path], None]:
    def step(scratch: Path) -> None:
        (scratch / target).parent.mkdir(parents=True, exist_ok=True)
        (shutil.move if move else shutil.copy)(scratch / source, scratch / target)

    return step


def exif_rotated(image_path: Path, mask_path: Path | None, displayed: Path) -> None:
    """A JPEG stored 64 x 48 (width x height) with EXIF orientation 6, so every viewer shows it 48 x 64;
    its mask (when asked) drawn on the displayed image, 48 x 64. ``displayed``: an image to take pixels from."""
    with Image.open(displayed) as image:
        shown = image.convert("RGB").resize((48, 64))  # what a viewer shows
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # 64 x 48; orientation 6 rotates it back for display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(image_path, quality=95, exif=exif)
    if mask_path is not None:
        mask = np.zeros((64, 48), np.uint8)
        mask[10:30, 8:24] = 255  # drawn on the displayed (portrait) image
        Image.fromarray(mask).save(mask_path)


def mixed_images(folder: Path, sources: list[Path], corrupt: bool) -> None:
    """Grey, RGBA, 16-bit grey, an odd-sized JPEG (and a corrupt PNG) made from ``sources``."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(sources[0]) as a, Image.open(sources[1]) as b, Image.open(sources[2]) as c, Image.open(sources[3]) as d:
        a.convert("L").save(folder / "grey.png")
        b.convert("RGBA").save(folder / "rgba.png")
        grey16 = (np.asarray(c.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(grey16).save(folder / "grey16.png")  # mode I;16
        d.convert("RGB").resize((67, 45)).save(folder / "odd_size.jpg")
    if corrupt:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def prepare(scratch: Path) -> None:
    """The toy data (through the CLI) and the product folders every group starts from."""
    code, out, err, _ = fsad(["data", "toy", "--out", "toy"], scratch, 300)
    if code != 0:
        sys.exit(f"bad_inputs.py: fsad data toy failed ({code}):\n{out}\n{err}")
    toy = scratch / "toy"
    train = sorted((toy / "disc" / "train" / "good").glob("*.png"))
    product = scratch / "product"
    for name, files in {"good": train[:4], "two": train[:2], "one": train[:1], "extra_good": train[4:6],
                        "bad": train[:4], "apple": train[:4]}.items():
        (product / name).mkdir(parents=True)
        for i, path in enumerate(files):
            shutil.copy(path, product / name / f"{i}.png")
    (product / "empty").mkdir()
    (product / "bad" / "9.png").write_bytes(b"not an image at all")
    (product / "apple" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (product / "apple" / "._0.png").write_bytes(b"\0\5\26\7AppleDouble")
    (product / "small.yaml").write_text(yaml.safe_dump({"regad": {"image_size": 64, "device": "cpu"}}))
    (product / "opt.yaml").write_text(yaml.safe_dump({"regad": {"image_size": 64, "device": "cpu"},
                                                      "options": {"n_neighbours": 3}}))
    (product / "sections.yaml").write_text(yaml.safe_dump({"regad": {"image_size": 64}, "optoins": {}}))
    mixed_images(product / "mixed_good", train[6:10], corrupt=False)
    tests = sorted((toy / "disc" / "test").glob("*/*.png"))
    mixed_images(scratch / "mixed", tests[:4], corrupt=True)
    (scratch / "afile").write_text("a file where a folder belongs\n")
    exif_rotated(scratch / "exif.jpg", None, tests[0])


# ----------------------------------------------------------------------------- "kept" columns
def listing(folder: Path) -> str:
    return ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "(no folder)"


def kept_rows(csv_path: str, *columns: str) -> Callable[[Path], str]:
    """The kept column: the rows of a CSV, ``columns`` joined (``category/shots``)."""

    def describe(scratch: Path) -> str:
        if not (scratch / csv_path).is_file():
            return f"no {csv_path}"
        found = rows(csv_path, scratch)
        return f"{csv_path}: {len(found)} row(s): " + ", ".join("/".join(r.get(c, "") for c in columns) for r in found)

    return describe


def kept_labels(csv_path: str) -> Callable[[Path], str]:
    def describe(scratch: Path) -> str:
        if not (scratch / csv_path).is_file():
            return f"no {csv_path}"
        return " / ".join(f"{Path(r['path']).name}: {r['label']}" for r in rows(csv_path, scratch))

    return describe


def kept_text(describe: Callable[[Path], str]) -> Callable[[Path], str]:
    def safe(scratch: Path) -> str:
        try:
            return describe(scratch)
        except Exception as error:  # the column is informative; the CHECK decides
            return f"({type(error).__name__})"

    return safe


# ----------------------------------------------------------------------------- the cases
NO_GPU = not Path("/dev/nvidia0").exists()
ERROR = 2
STAMPS: dict[str, int] = {}  # file modification times a case records for a later one


def stamp(*paths: str) -> Callable[[Path], None]:
    def step(scratch: Path) -> None:
        for path in paths:
            STAMPS[path] = (scratch / path).stat().st_mtime_ns

    return step


def unchanged(path: str) -> Expect:
    return holds(f"{path} not rewritten (not retrained)", lambda s: (s / path).stat().st_mtime_ns == STAMPS[path])


def minimal(text: str) -> str:
    """A small config for ``--check`` cases: the toy copy, K = 2, one support set, and ``text``."""
    return f"dataset: ./toy\nshots: [2]\nn_sets: 1\n{text}"


CHECK_OK = "config and data OK"


def before_training(*parts: str) -> list[Expect]:
    return [exits(ERROR), says("found before any training", *parts)]


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _nfd_category(root: Path) -> None:
    (root / "disc").rename(root / nfd("disqué"))


def _nfd_mask(root: Path) -> None:
    (root / "disc/test/colour/000.png").rename(root / "disc/test/colour/café.png")  # NFC, as typed on Linux
    (root / "disc/ground_truth/colour/000_mask.png").rename(root / "disc/ground_truth/colour" / nfd("café_mask.png"))


def _exif_in_data(root: Path) -> None:
    colour = root / "disc/test/colour"
    exif_rotated(colour / "000.jpg", root / "disc/ground_truth/colour/000_mask.png", colour / "000.png")
    (colour / "000.png").unlink()


def _apple_files(root: Path) -> None:
    for folder in (root / "disc/train/good", root / "disc/test/good", root / "ring/test/colour"):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "._000.png").write_bytes(b"\0\5\26\7AppleDouble")


def _remove_checkout_runs(name: str) -> Callable[[Path], None]:
    """Removes runs/<name> of the checkout when this probe made it (fsad run without --out wrote there)."""

    def step(scratch: Path) -> None:
        target = ROOT / "runs" / name
        if target.is_dir() and (target / "run.json").is_file() and str(scratch) in (target / "run.json").read_text():
            shutil.rmtree(target)

    return step


def _table_md_readable(scratch: Path) -> bool:
    lines = (scratch / "runs/cmp1/table.md").read_text().splitlines()
    return len(lines[0]) <= 200 and "{'" not in lines[0]


def _table_md_no_mean(scratch: Path) -> bool:
    lines = (scratch / "runs/cmp1/table.md").read_text().splitlines()
    return not any(re.match(r"\|[^|]*\bmean\s*\|", line) for line in lines)  # rows are "method · category"


def _disc_once(scratch: Path) -> bool:
    return sum(r["category"] == "disc" for r in rows("runs/dup/results.csv", scratch)) == 1


def _same_bytes(a: str, b: str) -> Callable[[Path], bool]:
    return lambda s: (s / a).read_bytes() == (s / b).read_bytes()


def _huge_handled(tool: str, csv_path: str | None = None) -> list[Expect]:
    """The fixed behaviour for a 14000 x 14000 image: read (exit 0), or refused by name, clearly."""
    refused = [exits(ERROR), says("huge.")]
    if csv_path:  # predict: refusing one image still scores the others and writes their rows
        refused.append(holds(f"{csv_path}: every other image scored",
                             lambda s: all(r["label"] in ("normal", "anomalous") for r in rows(csv_path, s)
                                           if "huge." not in r["path"])))
    return [either([exits(0)], refused), quiet_about("DecompressionBomb")]


CASES: list[Case] = [
    # --- bad configs (--check: validated before any work)
    Case("config-missing", "config file missing", ["run", "--config", "nope.yaml", "--check"],
         [exits(ERROR), says("nope.yaml: no such settings file")]),
    Case("config-syntax", "YAML syntax error", ["run", "--config", "syntax.yaml", "--check"],
         [exits(ERROR), says("syntax.yaml: not valid YAML (line")], setup=write("syntax.yaml", "dataset: ./toy\nshots: [2, 4\n")),
    Case("config-list", "config is a list, not a mapping", ["run", "--config", "list.yaml", "--check"],
         [exits(ERROR), says("list.yaml", "is not a mapping of settings")], setup=write("list.yaml", "- dataset\n- toy\n")),
    Case("config-lr-string", "lr: 1e-3 (a string to YAML 1.1) is read as 0.001", ["run", "--config", "lr.yaml", "--check"],
         [exits(0), says(CHECK_OK)], setup=write("lr.yaml", minimal("regad:\n  lr: 1e-3\n  device: cpu\n"))),
    Case("config-epochs-word", 'epochs: "three"', ["run", "--config", "three.yaml", "--check"],
         [exits(ERROR), says("three.yaml: regad.epochs: 'three' is not an integer")],
         setup=write("three.yaml", minimal("regad:\n  epochs: three\n"))),
    Case("config-shots-scalar", "shots: 2 (a scalar where a list belongs)", ["run", "--config", "scalar.yaml", "--check"],
         [exits(0), says(CHECK_OK, "K = 2;")], setup=write("scalar.yaml", "dataset: ./toy\nshots: 2\nn_sets: 1\nregad: {device: cpu}\n")),
    Case("config-category-scalar", "categories: disc (a scalar)", ["run", "--config", "cat.yaml", "--check"],
         [exits(0), says(CHECK_OK, "targets disc;")], setup=write("cat.yaml", minimal("categories: disc\nregad: {device: cpu}\n"))),
    Case("config-metric", "unknown metric", ["run", "--config", "metric.yaml", "--check"],
         [exits(ERROR), says("metric.yaml: metrics[1]: unknown metric 'auroc'; choose from")],
         setup=write("metric.yaml", minimal("metrics: [image_auroc, auroc]\n"))),
    Case("config-typo", "unknown key (typo) in the regad section", ["run", "--config", "typo.yaml", "--check"],
         [exits(ERROR), says("unknown key 'regad.lerning_rate'; known:", "'lr'")],
         setup=write("typo.yaml", minimal("regad:\n  lerning_rate: 0.01\n"))),
    Case("config-stn", "unknown STN mode", ["run", "--config", "stn.yaml", "--check"],
         [exits(ERROR), says("regad.stn_mode: unknown STN mode 'spiral'; choose from")],
         setup=write("stn.yaml", minimal("regad:\n  stn_mode: spiral\n"))),
    Case("config-backbone", "unknown backbone", ["run", "--config", "bb.yaml", "--check"],
         [exits(ERROR), says("regad.backbone: unknown backbone 'resnet99'; choose from")],
         setup=write("bb.yaml", minimal("regad:\n  backbone: resnet99\n"))),
    Case("config-many", "several problems at once", ["run", "--config", "many.yaml", "--check"],
         [exits(ERROR), says("shots[0]: 0 must be >= 1", "regad.epochs: 'three' is not an integer", "regad.eps: -1 must be > 0")],
         setup=write("many.yaml", "dataset: ./toy\nshots: [0]\nregad:\n  epochs: three\n  eps: -1\n")),
    Case("config-cuda", "device: cuda" + (" on a machine without a GPU" if NO_GPU else " (a GPU is visible)"),
         ["run", "--config", "cuda.yaml", "--check"],
         [exits(ERROR), says("device 'cuda' asked for but no CUDA device is visible")] if NO_GPU else [exits(0), says(CHECK_OK)],
         setup=write("cuda.yaml", minimal("regad:\n  device: cuda\n"))),
    Case("config-no-dataset", "dataset folder does not exist", ["run", "--config", "nodata.yaml", "--check"],
         [exits(ERROR), says("no/such/folder does not exist", "give an MVTec-layout folder")],
         setup=write("nodata.yaml", "dataset: ./no/such/folder\nshots: [2]\n")),
    Case("config-relative", "relative dataset: read from the current directory (config one folder up)",
         ["run", "--config", "../rel.yaml", "--check"],
         [exits(ERROR), says("sub/toy does not exist (relative paths are read from the current directory)")],
         setup=steps(write("rel.yaml", minimal("regad: {device: cpu}\n")), write("sub/.keep", "")), cwd="sub"),
    Case("config-relative-ok", "the same config from the folder that holds ./toy", ["run", "--config", "rel.yaml", "--check"],
         [exits(0), says(CHECK_OK)]),
    Case("config-unknown-category", "unknown category (typo)", ["run", "--config", "dsic.yaml", "--check"],
         before_training("category 'dsic' not in", "available: disc, ring, stripes"),
         setup=write("dsic.yaml", minimal("categories: [dsic]\nregad: {device: cpu}\n"))),
    Case("config-big-k", "K larger than the train/good images", ["run", "--config", "bigk.yaml", "--check"],
         before_training("fewer than K=64 shots", "lower the largest K"),
         setup=write("bigk.yaml", "dataset: ./toy\nshots: [64]\nn_sets: 1\nregad: {device: cpu}\n")),
    Case("config-compare-method", "compare: unknown method and a key of another study",
         ["compare", "--config", "cmp.yaml", "--check"],
         [exits(ERROR), says("methods[1]: unknown method 'magic'", "unknown key 'untrained_baseline'")],
         setup=write("cmp.yaml", minimal("methods: [padim, magic]\nuntrained_baseline: true\n"))),
    Case("config-ablate-stn", "ablate: unknown STN mode", ["ablate", "--config", "abl.yaml", "--check"],
         [exits(ERROR), says("stn_modes[1]: unknown STN mode 'spiral'")],
         setup=write("abl.yaml", minimal("stn_modes: [affine, spiral]\n"))),
    Case("config-train-target", "fsad train --target that is not a category",
         ["train", "--data", "./toy", "--target", "dsic", "--out", "m"], before_training("category 'dsic' not in")),
    Case("config-support-sets", "fsad support-sets on a missing folder", ["support-sets", "--data", "missing", "--out", "s"],
         [exits(ERROR), says("missing does not exist")]),
    Case("config-weights", "backbone without offline weights (resnet18)", ["weights", "resnet18"],
         [either([exits(ERROR), says("resnet18-", "not found; looked in")], [exits(0), says("resnet18: ")])], timeout=120),
    Case("config-out-file", "--out is a file", ["run", "--config", "lr.yaml", "--out", "afile"],
         [exits(ERROR), says("the output folder afile is a file")]),
    # --- bad data (--check reads every file before any training)
    Case("data-corrupt-train", "a corrupt training image", ["run", "--config", "corrupt.yaml", "--check"],
         before_training("category 'ring': cannot read image", "ring/train/good/003.png", "replace or remove the file"),
         setup=steps(copy_toy("corrupt", lambda r: (r / "ring/train/good/003.png").write_bytes(b"garbage")),
                     write("corrupt.yaml", minimal("dataset: ./corrupt\nregad: {device: cpu}\n")))),
    Case("data-no-mask", "a defect image without its mask", ["run", "--config", "nomask.yaml", "--check"],
         before_training("have no mask", "disc/ground_truth/colour/000_mask.png"),
         setup=steps(copy_toy("nomask", lambda r: (r / "disc/ground_truth/colour/000_mask.png").unlink()),
                     write("nomask.yaml", minimal("dataset: ./nomask\nregad: {device: cpu}\n")))),
    Case("data-mask-size", "a mask of another size than its image", ["run", "--config", "badmask.yaml", "--check"],
         before_training("000_mask.png is 50x40 but its image", "remake the mask at the image's size"),
         setup=steps(copy_toy("badmask", lambda r: Image.new("L", (50, 40)).save(r / "disc/ground_truth/colour/000_mask.png")),
                     write("badmask.yaml", minimal("dataset: ./badmask\nregad: {device: cpu}\n")))),
    Case("data-no-good", "no test/good while image AUROC is asked", ["run", "--config", "nogood.yaml", "--check"],
         before_training("category 'disc' has no normal (test/good) test image", "image_auroc"),
         setup=steps(copy_toy("nogood", lambda r: shutil.rmtree(r / "disc/test/good")),
                     write("nogood.yaml", minimal("dataset: ./nogood\nregad: {device: cpu}\n")))),
    Case("data-apple-files", "AppleDouble ._* and .DS_Store files in the data", ["run", "--config", "apple.yaml", "--check"],
         [exits(0), says(CHECK_OK)],
         setup=steps(copy_toy("apple", _apple_files), write("apple.yaml", minimal("dataset: ./apple\nregad: {device: cpu}\n")))),
    Case("data-nfd-category", "category named in NFC, its folder in NFD (macOS)", ["run", "--config", "nfc.yaml", "--check"],
         [exits(0), says(CHECK_OK, "targets disqué")],
         setup=steps(copy_toy("unicode", _nfd_category),
                     write("nfc.yaml", minimal("dataset: ./unicode\ncategories: [disqué]\nregad: {device: cpu}\n")))),
    Case("data-nfd-mask", "a mask whose name is the NFD form of its image's NFC name (macOS)",
         ["run", "--config", "nfdmask.yaml", "--check"], [exits(0), says(CHECK_OK)], item=5,
         setup=steps(copy_toy("nfdmask", _nfd_mask), write("nfdmask.yaml", minimal("dataset: ./nfdmask\nregad: {device: cpu}\n")))),
    Case("data-exif-mask", "an EXIF-rotated test image (stored 64x48, shown 48x64), its mask drawn on the shown image",
         ["run", "--config", "exif.yaml", "--check"], [exits(0), says(CHECK_OK)], item=6,
         setup=steps(copy_toy("exif", _exif_in_data), write("exif.yaml", minimal("dataset: ./exif\nregad: {device: cpu}\n")))),
    Case("data-huge-png", "a 14000x14000 PNG among the test images (fsad run)", ["run", "--config", "hugepng.yaml", "--out", "runs/hugepng"],
         _huge_handled("run"), item=3, kept=kept_rows("runs/hugepng/results.csv", "category", "shots"),
         setup=steps(huge_image("huge.png"), copy_toy("hugepng_data"), place("huge/huge.png", "hugepng_data/disc/test/good/huge.png"),
                     write("hugepng.yaml", tiny(dataset="./hugepng_data"))), timeout=600),
    Case("data-huge-jpeg", "a 14000x14000 JPEG among the test images (fsad run)", ["run", "--config", "hugejpg.yaml", "--out", "runs/hugejpg"],
         _huge_handled("run"), item=3, kept=kept_rows("runs/hugejpg/results.csv", "category", "shots"),
         setup=steps(huge_image("huge.jpg"), copy_toy("hugejpg_data"), place("huge/huge.jpg", "hugejpg_data/disc/test/good/huge.jpg"),
                     write("hugejpg.yaml", tiny(dataset="./hugejpg_data"))), timeout=600),
    # --- reruns into one --out after each kind of change (one config file, edited as a user would)
    Case("same-first", "first run (tiny: 1 step, 1 support set, disc)", ["run", "--config", "a/same.yaml", "--out", "runs/same"],
         [exits(0), says("results in runs/same"), has_rows("runs/same/results.csv", 1, method="regad", category="disc")],
         setup=steps(write("a/same.yaml", tiny()), write("b/same.yaml", tiny(regad={"lr": 0.01}))), out="runs/same"),
    Case("same-other-config", "another config with the same file name into the same folder",
         ["run", "--config", "b/same.yaml", "--out", "runs/same"],
         [exits(ERROR), says("holds the results of", "a/same.yaml", "regad.lr: 0.001 -> 0.01", "--force"),
          holds("run.json still names a/same.yaml", lambda s: "a/same.yaml" in (s / "runs/same/run.json").read_text())]),
    Case("same-force", "the same, with --force", ["run", "--config", "b/same.yaml", "--out", "runs/same", "--force"],
         [exits(0), says("lr: 0.001 -> 0.01", "training from scratch"), run_json_says("runs/same", "regad.lr", 0.01),
          has_rows("runs/same/results.csv", 1, category="disc")],
         kept=kept_text(lambda s: f"run.json names b/same.yaml: {'b/same.yaml' in (s / 'runs/same/run.json').read_text()}")),
    Case("rerun-first", "first run into runs/rerun", ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), has_rows("runs/rerun/results.csv", 1, method="regad", category="disc")],
         setup=steps(copy_toy("rerun_data"), write("rerun.yaml", tiny(dataset="./rerun_data"))), out="runs/rerun"),
    Case("rerun-same", "the same command again: everything reused",
         ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), quiet_about("warning"), unchanged("runs/rerun/models/disc/regad.pt"),
          has_rows("runs/rerun/results.csv", 1, category="disc")],
         setup=stamp("runs/rerun/models/disc/regad.pt"), out="runs/rerun"),
    Case("rerun-train-data", "a training image of another category (ring) changed",
         ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("train images of", "ring/train/good changed", "training from scratch"),
          has_rows("runs/rerun/results.csv", 1, category="disc")],
         setup=edit_image("rerun_data/ring/train/good/000.png"), kept=kept_rows("runs/rerun/results.csv", "category", "image_auroc")),
    Case("rerun-support-data", "a train image of the target (disc) changed: its support sets are drawn again",
         ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("support_sets/disc.json", "disc/train/good changed", "making the support sets again"),
          has_rows("runs/rerun/results.csv", 1, category="disc")],
         setup=edit_image("rerun_data/disc/train/good/000.png")),
    Case("rerun-seed", "support_seed 0 -> 7 in the same config", ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("support_seed: 0 -> 7", "drawn with seed 0, not 7"),
          holds("support_sets/disc.json drawn with seed 7", lambda s: json.loads((s / "runs/rerun/support_sets/disc.json").read_text())["seed"] == 7),
          has_rows("runs/rerun/results.csv", 1, category="disc")],
         setup=write("rerun.yaml", tiny(dataset="./rerun_data", support_seed=7)), out="runs/rerun"),
    Case("rerun-eps", "regad.eps 0.01 -> 0.02 (test time only): the model is reused",
         ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("eps: 0.01 -> 0.02"), quiet_about("training from scratch"), unchanged("runs/rerun/models/disc/regad.pt")],
         setup=steps(stamp("runs/rerun/models/disc/regad.pt"),
                     write("rerun.yaml", tiny(dataset="./rerun_data", support_seed=7, regad={"eps": 0.02}))), out="runs/rerun"),
    Case("rerun-lr", "regad.lr 0.001 -> 0.01", ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("lr: 0.001 -> 0.01", "training from scratch"), run_json_says("runs/rerun", "regad.lr", 0.01),
          has_rows("runs/rerun/results.csv", 1, category="disc")],
         setup=write("rerun.yaml", tiny(dataset="./rerun_data", support_seed=7, regad={"eps": 0.02, "lr": 0.01})), out="runs/rerun"),
    Case("rerun-stale-temp", "a killed write left a temp file; the next run", ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), no_temporaries("runs/rerun")],
         setup=write("runs/rerun/.results.csv.999999-probe.tmp.csv", "half a file"), out="runs/rerun"),
    Case("rerun-image-size", "regad.image_size 32 -> 64: retrains, saying what changed",
         ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("image_size"), quiet_about("delete it"), has_rows("runs/rerun/results.csv", 1, category="disc"),
          run_json_says("runs/rerun", "regad.image_size", 64)], item=2,
         setup=write("rerun.yaml", tiny(dataset="./rerun_data", support_seed=7, regad={"eps": 0.02, "lr": 0.01, "image_size": 64})),
         kept=kept_rows("runs/rerun/results.csv", "category", "image_auroc")),
    Case("rerun-image-size-again", "the same command once more", ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), quiet_about("delete it"), has_rows("runs/rerun/results.csv", 1, category="disc")], item=2,
         kept=kept_rows("runs/rerun/results.csv", "category", "image_auroc")),
    Case("rerun-backbone", "regad.backbone mobilenet_v2 -> efficientnet_lite0: retrains, saying what changed",
         ["run", "--config", "rerun.yaml", "--out", "runs/rerun"],
         [exits(0), says("backbone"), quiet_about("delete it"), has_rows("runs/rerun/results.csv", 1, category="disc"),
          run_json_says("runs/rerun", "regad.backbone", "efficientnet_lite0")], item=2,
         setup=write("rerun.yaml", tiny(dataset="./rerun_data", support_seed=7,
                                        regad={"eps": 0.02, "lr": 0.01, "image_size": 64, "backbone": "efficientnet_lite0"})),
         kept=kept_rows("runs/rerun/results.csv", "category", "image_auroc")),
    # --- whole runs a careful user makes: they must just work (issue 19's items 1, 4, 7, 8, 9)
    Case("study-duplicate-category", "categories: [disc, ring, disc]: refused, or disc evaluated once",
         ["run", "--config", "dup.yaml", "--out", "runs/dup"],
         [either([exits(ERROR), warns("disc"), lacks("runs/dup/results.csv")],
                 [exits(0), warns("disc"), holds("runs/dup/results.csv: disc once", _disc_once)])],
         setup=write("dup.yaml", tiny(categories=["disc", "ring", "disc"])), item=4,
         kept=kept_rows("runs/dup/results.csv", "category", "shots")),
    Case("study-shots-4", "shots: [4] (no K = 2 anywhere)", ["run", "--config", "k4.yaml", "--out", "runs/k4"],
         [exits(0), has_rows("runs/k4/results.csv", 1, method="regad", category="disc", shots="4")],
         setup=write("k4.yaml", tiny(shots=[4], regad={"train_shots": [4]})), item=1,
         kept=kept_rows("runs/k4/results.csv", "category", "shots")),
    Case("study-no-out", "fsad run without --out, from another folder: results under that folder's runs/",
         ["run", "--config", "../noout/probe_noout.yaml"],
         [exits(0), has("elsewhere/runs/probe_noout/results.csv"),
          holds("nothing written to the checkout's runs/probe_noout", lambda s: not (ROOT / "runs/probe_noout/run.json").is_file()
                or str(s) not in (ROOT / "runs/probe_noout/run.json").read_text())],
         setup=steps(write("noout/probe_noout.yaml", tiny(dataset="../toy")), write("elsewhere/.keep", "")),
         cwd="elsewhere", item=7, after=_remove_checkout_runs("probe_noout"),
         kept=kept_text(lambda s: "elsewhere/runs/probe_noout: " + listing(s / "elsewhere/runs/probe_noout")
                        + f"; checkout runs/probe_noout exists: {(ROOT / 'runs/probe_noout').exists()}")),
    Case("study-identical-a", "a fresh run (for the byte compare)", ["run", "--config", "det.yaml", "--out", "runs/det_a"],
         [exits(0), has_rows("runs/det_a/results.csv", 1, category="disc")], setup=write("det.yaml", tiny())),
    Case("study-identical-b", "the identical run into another folder: results.csv byte-identical",
         ["run", "--config", "det.yaml", "--out", "runs/det_b"],
         [exits(0), holds("runs/det_a/results.csv == runs/det_b/results.csv, byte for byte",
                          _same_bytes("runs/det_a/results.csv", "runs/det_b/results.csv"))], item=8,
         kept=kept_text(lambda s: "results.csv columns: " + (s / "runs/det_b/results.csv").read_text().splitlines()[0])),
    Case("compare-one-category", "fsad compare on a single category (padim): its table", ["compare", "--config", "cmp1.yaml", "--out", "runs/cmp1"],
         [exits(0), holds("table.md: first line short, no Python dict", _table_md_readable),
          holds("table.md: no 'mean' row for one category", _table_md_no_mean)], item=9,
         setup=write("cmp1.yaml", yaml.safe_dump({"dataset": "./toy", "categories": ["disc"], "shots": [2], "n_sets": 1,
                                                  "metrics": ["image_auroc"], "methods": ["padim"], "measure_costs": False,
                                                  "regad": {"image_size": 32, "device": "cpu"}})),
         kept=kept_text(lambda s: f"table.md first line: {len((s / 'runs/cmp1/table.md').read_text().splitlines()[0])} chars")),
    # --- interruptions: the signal is sent once the first epoch's checkpoint exists
    Case("interrupt-sigint", "Ctrl-C (SIGINT) during training", ["run", "--config", "long.yaml", "--out", "runs/ctrlc"],
         [Expect("SIGINT sent during the run", lambda o: o.signalled), exits(130),
          says("fsad: interrupted; finished results are kept in runs/ctrlc"), has("runs/ctrlc/models/disc/checkpoint.pt")],
         setup=write("long.yaml", tiny(regad=LONG_REGAD, categories=["disc", "ring"])),
         interrupt=(signal.SIGINT, "runs/ctrlc/models/disc/checkpoint.pt"), out="runs/ctrlc"),
    Case("interrupt-sigint-rerun", "the same command again (-v): resumes, finishes",
         ["-v", "run", "--config", "long.yaml", "--out", "runs/ctrlc"],
         [exits(0), says("resuming", "models/disc/checkpoint.pt after epoch"), quiet_about("training from scratch"),
          has_rows("runs/ctrlc/results.csv", 1, category="disc"), has_rows("runs/ctrlc/results.csv", 1, category="ring")],
         kept=kept_rows("runs/ctrlc/results.csv", "category", "shots")),
    Case("interrupt-sigkill", "SIGKILL while the second category trains (disc finished)",
         ["run", "--config", "long.yaml", "--out", "runs/kill"],
         [Expect("SIGKILL sent during the run", lambda o: o.signalled), exits(-9),
          has_rows("runs/kill/results.csv", 1, category="disc"), has("runs/kill/models/ring/checkpoint.pt")],
         interrupt=(signal.SIGKILL, "runs/kill/models/ring/checkpoint.pt"), kept=kept_rows("runs/kill/results.csv", "category", "shots")),
    Case("interrupt-sigkill-rerun", "the same command again (-v): disc kept as it was, ring resumes",
         ["-v", "run", "--config", "long.yaml", "--out", "runs/kill"],
         [exits(0), says("resuming", "models/ring/checkpoint.pt after epoch"), quiet_about("training from scratch"),
          unchanged("runs/kill/models/disc/regad.pt"), has_rows("runs/kill/results.csv", 1, category="disc"),
          has_rows("runs/kill/results.csv", 1, category="ring"), no_temporaries("runs/kill")],
         setup=stamp("runs/kill/models/disc/regad.pt"), kept=kept_rows("runs/kill/results.csv", "category", "shots")),
    # --- a new product: fsad fit / fsad predict
    Case("product-fit-empty", "fit: a folder with no images", ["fit", "product/empty", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("no image in product/empty", "searched recursively")]),
    Case("product-fit-missing", "fit: an image path that does not exist",
         ["fit", "product/nope.png", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("product/nope.png does not exist")]),
    Case("product-fit-regad-no-model", "fit: regad without its trained model",
         ["fit", "product/good", "--method", "regad", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("method 'regad' needs a RegAD model", "--model FILE")]),
    Case("product-fit-model-unused", "fit: --model given to a method that takes none",
         ["fit", "product/good", "--method", "patchcore", "--model", "x.pt", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("patchcore uses no trained model file; drop --model x.pt")]),
    Case("product-fit-unknown-method", "fit: unknown --method",
         ["fit", "product/good", "--method", "padim2", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("padim2")]),
    Case("product-fit-padim-k2", "fit: padim (no views) on K = 2: leave-one-out has K = 1",
         ["fit", "product/two", "--method", "padim", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("with K = 2 padim has no leave-one-out score", "--good")]),
    Case("product-fit-k1", "fit: K = 1 without --good", ["fit", "product/one", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("with K = 1 padim_views has no leave-one-out score", "--good")]),
    Case("product-fit-option", "fit: unknown method option",
         ["fit", "product/good", "--method", "patchcore", "--config", "product/opt.yaml", "--out", "det0"],
         [exits(ERROR), says("method 'patchcore' has no option(s) n_neighbours; its options:")]),
    Case("product-fit-section", "fit: unknown section in the settings file",
         ["fit", "product/good", "--config", "product/sections.yaml", "--out", "det0"],
         [exits(ERROR), says("unknown section(s) ['optoins']")]),
    Case("product-fit-corrupt", "fit: a corrupt support image", ["fit", "product/bad", "--config", "product/small.yaml", "--out", "det0"],
         [exits(ERROR), says("cannot read image product/bad/9.png", "replace or remove the file"), lacks("det0/detector.pt")]),
    Case("product-fit-out-file", "fit: --out is a file", ["fit", "product/good", "--config", "product/small.yaml", "--out", "afile"],
         [exits(ERROR), says("--out afile is a file")]),
    Case("product-fit-out-other", "fit: --out holds other files", ["fit", "product/good", "--config", "product/small.yaml", "--out", "toy"],
         [exits(ERROR), says("--out toy holds files that are not a detector")]),
    Case("product-fit", "fit: K = 4 good images -> detector", ["fit", "product/good", "--config", "product/small.yaml", "--out", "det"],
         [exits(0), says("fitted on K = 4 images"), has("det/detector.json"), has("det/detector.pt")], out="det"),
    Case("product-fit-again", "fit the same images into det again", ["fit", "product/good", "--config", "product/small.yaml", "--out", "det"],
         [exits(0), says("fitted on K = 4 images")], out="det"),
    Case("product-fit-other", "fit other images into det without --force",
         ["fit", "product/two", "--method", "patchcore", "--config", "product/small.yaml", "--out", "det"],
         [exits(ERROR), says("--out det holds a detector made from other method, support", "--force"),
          holds("det still holds padim_views", lambda s: json.loads((s / "det/detector.json").read_text())["method"] == "padim_views")],
         kept=kept_text(lambda s: "det holds: " + json.loads((s / "det/detector.json").read_text())["method"])),
    Case("product-fit-force", "the same with --force (into a copy, det2)",
         ["fit", "product/two", "--method", "patchcore", "--config", "product/small.yaml", "--out", "det2", "--force"],
         [exits(0), holds("det2 holds patchcore", lambda s: json.loads((s / "det2/detector.json").read_text())["method"] == "patchcore")],
         setup=lambda s: shutil.copytree(s / "det", s / "det2"),
         kept=kept_text(lambda s: "det2 holds: " + json.loads((s / "det2/detector.json").read_text())["method"])),
    Case("product-fit-apple", "fit: .DS_Store and ._* files beside the images are skipped",
         ["fit", "product/apple", "--config", "product/small.yaml", "--out", "det_apple"],
         [exits(0), says("fitted on K = 4 images")]),
    Case("product-fit-good", "fit: K = 2 with --good images for the threshold",
         ["fit", "product/two", "--good", "product/extra_good", "--config", "product/small.yaml", "--out", "det_good"],
         [exits(0), says("+ 2 good reference scores"),
          holds("detector.json: 2 good images", lambda s: json.loads((s / "det_good/detector.json").read_text())["good"]["count"] == 2)]),
    Case("product-fit-mixed", "fit: grey, RGBA, 16-bit and odd-sized support images",
         ["fit", "product/mixed_good", "--config", "product/small.yaml", "--out", "det_mixed"],
         [exits(0), says("fitted on K = 4 images")]),
    Case("product-fit-huge-png", "fit: a 14000x14000 PNG among the support images",
         ["fit", "product/good", "huge/huge.png", "--config", "product/small.yaml", "--out", "det_hugepng"],
         [*_huge_handled("fit"), holds("K = 5 fitted, or nothing written",
                                       lambda s: not (s / "det_hugepng/detector.json").exists()
                                       or json.loads((s / "det_hugepng/detector.json").read_text())["support"]["count"] == 5)],
         setup=huge_image("huge.png"), item=3, timeout=600),
    Case("product-fit-huge-jpeg", "fit: a 14000x14000 JPEG among the support images",
         ["fit", "product/good", "huge/huge.jpg", "--config", "product/small.yaml", "--out", "det_hugejpg"],
         [*_huge_handled("fit"), holds("K = 5 fitted, or nothing written",
                                       lambda s: not (s / "det_hugejpg/detector.json").exists()
                                       or json.loads((s / "det_hugejpg/detector.json").read_text())["support"]["count"] == 5)],
         setup=huge_image("huge.jpg"), item=3, timeout=600),
    Case("predict-detector", "fit: the detector the predict cases use (K = 4, padim_views, 64 px)",
         ["fit", "product/good", "--config", "product/small.yaml", "--out", "det_predict"],
         [exits(0), says("fitted on K = 4 images"), has("det_predict/detector.pt")], out="det_predict"),
    Case("predict-not-detector", "predict: a folder that is not a detector", ["predict", "toy", "toy/disc/test", "--out", "pred0"],
         [exits(ERROR), says("toy is not a detector folder", "fsad fit")]),
    Case("predict-missing", "predict: an image path that does not exist", ["predict", "det_predict", "nope.png", "--out", "pred0"],
         [exits(ERROR), says("nope.png does not exist")]),
    Case("predict-test", "predict: the toy test images (good and defective) with --masks",
         ["predict", "det_predict", "toy/disc/test", "--out", "pred_test", "--masks"],
         [exits(0), has_rows("pred_test/predictions.csv", 8), holds("a heat-map and a mask per image",
                                                                   lambda s: len(list((s / "pred_test/heatmaps").rglob("*.png"))) == 8
                                                                   and len(list((s / "pred_test/masks").rglob("*.png"))) == 8)],
         kept=kept_labels("pred_test/predictions.csv")),
    Case("predict-mixed", "predict: grey, RGBA, 16-bit, odd size, and one corrupt file",
         ["predict", "det_predict", "mixed", "--out", "pred", "--masks"],
         [exits(ERROR), says("1 of 5 images could not be read (first: mixed/broken.png)", "the others were scored"),
          has_rows("pred/predictions.csv", 1, label="error"),
          holds("4 images scored", lambda s: sum(r["label"] in ("normal", "anomalous") for r in rows("pred/predictions.csv", s)) == 4),
          holds("heat-map of odd_size.jpg is 67x45", lambda s: Image.open(s / "pred/heatmaps/mixed/odd_size.png").size == (67, 45))],
         kept=kept_labels("pred/predictions.csv")),
    Case("predict-out-inside", "predict: --out inside an input folder", ["predict", "det_predict", "mixed", "--out", "mixed/out"],
         [exits(ERROR), says("is inside the input folder mixed", "choose a folder outside it"), lacks("mixed/out/predictions.csv")]),
    Case("predict-exif", "predict: an EXIF-rotated JPEG (stored 64x48, shown 48x64): heat-map as shown",
         ["predict", "det_predict", "exif.jpg", "--out", "pred_exif"],
         [exits(0), heatmap_size("pred_exif/predictions.csv", "exif.jpg", (48, 64))], item=6,
         kept=kept_text(lambda s: "heat-map " + "x".join(map(str, Image.open(s / "pred_exif/heatmaps/exif.png").size)))),
    Case("predict-huge-png", "predict: a 14000x14000 PNG among other images",
         ["predict", "det_predict", "mixed/grey.png", "mixed/rgba.png", "huge/huge.png", "--out", "pred_hugepng"],
         [*_huge_handled("predict", "pred_hugepng/predictions.csv"), has_rows("pred_hugepng/predictions.csv", 3)],
         setup=huge_image("huge.png"), item=3, timeout=600, kept=kept_labels("pred_hugepng/predictions.csv")),
    Case("predict-huge-jpeg", "predict: a 14000x14000 JPEG among other images",
         ["predict", "det_predict", "mixed/grey.png", "mixed/rgba.png", "huge/huge.jpg", "--out", "pred_hugejpg"],
         [*_huge_handled("predict", "pred_hugejpg/predictions.csv"), has_rows("pred_hugejpg/predictions.csv", 3)],
         setup=huge_image("huge.jpg"), item=3, timeout=600, kept=kept_labels("pred_hugejpg/predictions.csv")),
]


# ----------------------------------------------------------------------------- the runner and the table
PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[|it/s|s/it")
VERBOSE_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def one_line(outcome: Outcome, limit: int = 400) -> str:
    """The message a user reads: stderr without progress bars, else stdout's last line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", outcome.stderr) if line.strip() and not PROGRESS.search(line)]
    # -v adds a timestamped log line per step: of those, only the one that says training resumed
    lines = [line for line in lines if not VERBOSE_LOG.match(line) or "resuming" in line]
    if TRACEBACK in outcome.stderr:  # what a user sees last: the exception
        lines = [line for line in lines[: lines.index(TRACEBACK + ":")] if line.startswith("fsad:")] + [f"(traceback) {lines[-1]}"]
    lines = lines or [line.strip() for line in outcome.stdout.splitlines() if line.strip()][-1:] or ["(nothing printed)"]
    # scratch and checkout paths written short, so the table reads the same on any machine
    text = " / ".join(lines).replace(f"{outcome.scratch}/", "./").replace(str(ROOT), "<checkout>")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    case: Case
    outcome: Outcome
    failed: list[str] = field(default_factory=list)
    kept: str = ""
    seconds: float = 0.0

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.outcome.text


def run_case(case: Case, scratch: Path) -> Report:
    if case.setup is not None:
        case.setup(scratch)
    cwd = scratch / case.cwd
    interrupt = (case.interrupt[0], scratch / case.interrupt[1]) if case.interrupt else None
    tic = time.perf_counter()
    code, stdout, stderr, signalled = fsad(case.argv, cwd, case.timeout, interrupt)
    outcome = Outcome(code, stdout, stderr, scratch, signalled)
    log = scratch / "logs" / f"{case.id}.txt"  # the whole output, for a look with --keep
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"$ {command_text(case)}\nexit {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    always = [Expect("no traceback", lambda o: TRACEBACK not in o.text), Expect("finished in time", lambda o: o.code is not None)]
    failed = [e.what for e in (*always, *case.expect) if not e.holds(outcome)]
    kept = case.kept(scratch) if case.kept else (listing(scratch / case.out) if case.out else "")
    if case.after is not None:
        case.after(scratch)
    return Report(case, outcome, failed, kept, time.perf_counter() - tic)


def command_text(case: Case) -> str:
    text = "fsad " + " ".join(case.argv)
    if case.cwd != ".":
        text = f"(in {case.cwd}/) {text}"
    if case.interrupt:
        text += f" (+ {case.interrupt[0].name} once {case.interrupt[1]} exists)"
    return text


def selected(pattern: str | None) -> list[Case]:
    """The cases matching ``pattern`` and, for each, the cases before it in its group (what it builds on)."""
    if not pattern:
        return CASES
    wanted = re.compile(pattern)
    keep = set()
    for i, case in enumerate(CASES):
        if wanted.search(case.id):
            keep |= {j for j in range(i + 1) if CASES[j].group == case.group}
    return [case for i, case in enumerate(CASES) if i in keep]


def markdown(reports: list[Report], seconds: float, commit: str, total: int) -> str:
    passed = sum(not r.failed for r in reports)
    tracebacks = sum(r.traceback for r in reports)
    lines = [
        "# Bad inputs and reruns: what fsad says",
        "",
        "Made by `benchmarks/bad_inputs.py` (run it again to check; `--only PATTERN` for a subset): every row ran "
        "through the real command line (`python -m fsad.cli`, this checkout's fsad, `OMP_NUM_THREADS=1`) in a scratch "
        "folder holding a copy of the toy data set (`fsad data toy`) and tiny configs (32-64 px, 1 epoch of 1 batch, "
        "1 support set, K = 2; the interruption cases 3 epochs of 4 batches). The backbones used (mobilenet_v2, "
        "efficientnet_lite0) have offline ImageNet weights, so `pretrained` stays true; no case depends on them being good.",
        "",
        f"Commit {commit}, {time.strftime('%Y-%m-%d', time.gmtime())}, {seconds / 60:.1f} min. "
        f"**{passed} of {len(reports)} cases pass; {tracebacks} printed a traceback.**"
        + (f" Partial: {len(reports)} of the {total} cases selected have run." if len(reports) < total else ""),
        "",
        "Columns: the message is stderr without progress bars (and, for `-v` runs, only the timestamped log line that "
        "says training resumed), lines joined with ` / `, else stdout's last line (the whole output of each case: `--keep`, then `logs/<case>.txt` in the "
        "scratch folder); exit -9 is a process killed by SIGKILL; \"kept\" is what the "
        "folder held afterwards where it matters; traceback is found automatically (`Traceback (most recent call last)` "
        "in the output). CHECK is what the script asserts besides no traceback and no timeout. "
        f"A case marked *item N* pins issue {ISSUE}'s item N: it asserts the fixed behaviour.",
        "",
        "| # | case | command | message | exit | kept | traceback | CHECK | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(reports, 1):
        item = f" *(item {r.case.item})*" if r.case.item else ""
        result = "PASS" if not r.failed else "**FAIL**: " + "; ".join(r.failed)
        exit_code = "timeout" if r.outcome.code is None else r.outcome.code
        lines.append(f"| {i} | `{r.case.id}`: {cell(r.case.title)}{item} | `{cell(command_text(r.case))}` | {cell(one_line(r.outcome))} "
                     f"| {exit_code} | {cell(r.kept)} | {'yes' if r.traceback else 'no'} | "
                     f"{cell('; '.join(e.what for e in r.case.expect))} | {cell(result)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="regular expression on case ids (the cases before a match in its group run too)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bad_inputs.md"), help="the Markdown table to write")
    parser.add_argument("--scratch", help="the scratch folder (default: a new temporary folder, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    parser.add_argument("--jobs", type=int, default=1, help="groups of cases run at once (each group in order)")
    args = parser.parse_args()
    # A shell starts a background job (`... &`) with SIGINT ignored, and the children would inherit
    # that: the Ctrl-C case would test nothing. A handled signal is reset to its default at exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cases = selected(args.only)
    if args.list:
        print("\n".join(f"{c.id}{f' (item {c.item})' if c.item else ''}: {c.title}" for c in cases))
        return
    if not cases:
        sys.exit(f"bad_inputs.py: no case id matches {args.only!r} (--list shows them)")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="fsad-bad-inputs-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    tic = time.perf_counter()
    reports: dict[int, Report] = {}

    written = threading.Lock()

    def write_table() -> None:
        """The table of the cases finished so far: a run stopped half-way still leaves one."""
        with written:
            done = [reports[i] for i in sorted(reports)]
            Path(args.out).write_text(markdown(done, time.perf_counter() - tic, commit, len(cases)))

    def run_group(group: list[tuple[int, Case]]) -> None:
        for i, case in group:
            report = reports[i] = run_case(case, scratch)
            write_table()
            verdict = "PASS" if not report.failed else "FAIL: " + "; ".join(report.failed)
            item = f" [item {case.item}]" if case.item else ""
            print(f"{i + 1:3d}/{len(cases)} {case.id}{item} ({report.seconds:.0f} s, exit {report.outcome.code}): {verdict}", flush=True)

    groups: dict[str, list[tuple[int, Case]]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(case.group, []).append((i, case))
    try:
        prepare(scratch)
        # A group's cases run in order (they build on each other); groups are independent.
        with ThreadPoolExecutor(args.jobs) as pool:
            for done in [pool.submit(run_group, group) for group in groups.values()]:
                done.result()
    finally:
        if reports:
            write_table()
            print(f"table: {args.out}")
        reports = [reports[i] for i in sorted(reports)]
        if args.keep or args.scratch:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = [r for r in reports if r.failed]
    print(f"{len(reports) - len(failed)} of {len(reports)} cases pass"
          + (f"; failing: {', '.join(r.case.id for r in failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
