"""Start-up of ``fsad predict``: wall time of one image, and where the imports go (issue 21).

Runs ``python -m fsad.cli predict DETECTOR IMAGE`` in fresh interpreters, for one or more fsad
source trees (e.g. a ``git archive`` of an earlier commit and the working tree), interleaved
round by round so that the machine's load falls on all of them alike; reports the median wall
time and peak RSS of ``/usr/bin/time -v`` over ``--runs`` rounds, then one ``python -X
importtime`` run of each: the total import time and the cumulative time of the heavy packages
(a package absent from the list was not imported). Every run uses an empty ``$FSAD_CACHE``
and runs from a scratch folder, as a line PC would; one thread.

Example (the numbers of docs/speed.md):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/startup.py IMAGE \\
        --tree before /tmp/before /tmp/det_before --tree after . /tmp/det_after --runs 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HEAVY = ("torch", "torchvision", "torch._dynamo", "onnxruntime", "pandas", "kornia", "scipy", "fsad.config", "PIL", "numpy")


def predict_command(detector: Path, image: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, *flags, "-m", "fsad.cli", "predict", str(detector), str(image), "--out", str(out)]


def environment(tree: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "FSAD_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed_run(tree: Path, detector: Path, image: Path, scratch: Path) -> tuple[float, float]:
    """One ``fsad predict`` under ``/usr/bin/time -v``: (wall seconds, peak RSS MiB)."""
    done = subprocess.run(["/usr/bin/time", "-v", *predict_command(detector, image, scratch / "out")], cwd=scratch,
                          env=environment(tree, scratch / "cache"), capture_output=True, text=True, check=True)
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024
    return seconds, rss


def import_times(tree: Path, detector: Path, image: Path, scratch: Path) -> tuple[float, dict[str, float]]:
    """One ``-X importtime`` run: total seconds of all imports and the cumulative seconds of ``HEAVY`` found."""
    done = subprocess.run(predict_command(detector, image, scratch / "out", "-X", "importtime"), cwd=scratch,
                          env=environment(tree, scratch / "cache"), capture_output=True, text=True, check=True)
    total, heavy = 0, {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        total += int(match.group(1))
        if match.group(4) in HEAVY and match.group(4) not in heavy:  # its first import holds its cost
            heavy[match.group(4)] = int(match.group(2)) / 1e6
    return total / 1e6, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="the image to score")
    parser.add_argument("--tree", nargs=3, action="append", required=True, metavar=("NAME", "SOURCE", "DETECTOR"),
                        help="a name, an fsad source tree (put on PYTHONPATH) and the detector folder it scores")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = [(name, Path(source).resolve(), Path(detector).resolve()) for name, source, detector in args.tree]
    image = args.image.resolve()
    print(f"== {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.runs} rounds, interleaved")
    walls: dict[str, list[float]] = {name: [] for name, *_ in trees}
    rss: dict[str, list[float]] = {name: [] for name, *_ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for name, source, detector in trees:
                with tempfile.TemporaryDirectory(dir=tmp) as scratch:
                    wall, peak = timed_run(source, detector, image, Path(scratch))
                walls[name].append(wall)
                rss[name].append(peak)
        for name, source, detector in trees:
            runs = " ".join(f"{w:.2f}" for w in walls[name])
            print(f"{name:>8}: median {statistics.median(walls[name]):.2f} s wall (runs: {runs}), "
                  f"peak RSS {statistics.median(rss[name]):.0f} MiB")
        for name, source, detector in trees:
            with tempfile.TemporaryDirectory(dir=tmp) as scratch:
                total, heavy = import_times(source, detector, image, Path(scratch))
            parts = ", ".join(f"{k} {v:.2f}" for k, v in heavy.items())
            print(f"{name:>8}: imports {total:.2f} s in all; cumulative s: {parts}")
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
