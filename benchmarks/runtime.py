"""Milliseconds per image of the test-time backbone in each runtime, and how far each is from eager fp32.

For each network and image size: eager PyTorch fp32 (the reference; contiguous and
channels-last input), eager bf16 autocast (``runtime: torch, precision: bf16``), ONNX Runtime
fp32 (``fsad.components.runtime``, the path ``runtime: auto`` takes) and, where ``openvino`` is
installed, OpenVINO fp32 and bf16 (``runtime: openvino``, ``precision: fp32 | bf16``; bf16 is
the path ``runtime: auto, precision: bf16`` takes). The variants are timed round-robin (``--rounds`` rounds of
``--repeats`` batches each, the median round kept) so a busy machine slows them alike: read
the ratios, not the absolute times. ``max |diff|`` is the largest absolute difference from
eager fp32 over the three stages, beside the largest feature magnitude.

Weights: ImageNet where installed (mobilenet_v2, efficientnet_lite0), else random
(``--random``; speed does not depend on the values, the difference hardly does).

Example:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/runtime.py                      # 1 thread, 128 and 224 px
    .venv/bin/python benchmarks/runtime.py --networks mobilenet_v2 --sizes 224 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from fsad.components.backbones import EagerStages, build_backbone
from fsad.components.runtime import OnnxFeatures, OpenVinoFeatures, openvino_available


def variants(network) -> dict:
    """name -> function of a B x 3 x H x W batch returning the three stage outputs."""
    onnx = OnnxFeatures(EagerStages(network))

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return [f.float() for f in network.eager(x)]

    runs = {"torch fp32": network.eager,
            "torch fp32 channels-last": lambda x: network.eager(x.contiguous(memory_format=torch.channels_last)),
            "torch bf16 autocast": bf16,
            "onnxruntime fp32": onnx}
    if openvino_available():
        for precision in ("fp32", "bf16"):
            runs[f"openvino {precision}"] = OpenVinoFeatures(EagerStages(network), precision=precision)
    return runs


@torch.no_grad()
def measure(name: str, size: int, batch: int, repeats: int, rounds: int, pretrained: bool) -> list[dict]:
    torch.manual_seed(0)
    network = build_backbone(name, pretrained=pretrained).eval()
    images = torch.rand(batch, 3, size, size)
    runs = variants(network)
    reference = network.eager(images)
    rows = {}
    for label, run in runs.items():
        out = run(images)  # warm-up: the ONNX export and session happen here, untimed
        diff = max(float((o - r).abs().max()) for o, r in zip(out, reference, strict=True))
        rows[label] = {"network": name, "size": size, "runtime": label, "max_diff": diff, "times": []}
    for _ in range(rounds):
        for label, run in runs.items():
            tic = time.perf_counter()
            for _ in range(repeats):
                run(images)
            rows[label]["times"].append((time.perf_counter() - tic) / (repeats * batch) * 1000)
    scale = max(float(r.abs().max()) for r in reference)
    eager = statistics.median(rows["torch fp32"]["times"])
    for row in rows.values():
        row["ms"] = statistics.median(row.pop("times"))
        row["speedup"] = eager / row["ms"]
        row["scale"] = scale
    return list(rows.values())


def cpu_name() -> str:
    """The CPU's model name and whether it has bf16 instructions (avx512_bf16 / amx_bf16)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if f" {flag}" in info]
    return f"{name} ({', '.join(bf16) or 'no bf16 instructions'})"


def versions() -> str:
    import importlib.metadata

    found = []
    for package in ("onnxruntime", "openvino"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"no {package}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["mobilenet_v2", "efficientnet_lite0", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random", action="store_true", help="random weights for every network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"{cpu_name()}; torch {torch.__version__}, {versions()}; {args.threads} thread(s), batch {args.batch}, "
          f"median of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f} at the start")
    print("| network | size | runtime | ms/image | x eager fp32 | max abs diff (feature scale) |")
    print("|---|---|---|---|---|---|")
    for name in args.networks:
        pretrained = not args.random and name in ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1",
                                                  "efficientnet_lite2")
        for size in args.sizes:
            for row in measure(name, size, args.batch, args.repeats, args.rounds, pretrained):
                weights = "" if pretrained else " (random)"
                print(f"| {row['network']}{weights} | {row['size']} | {row['runtime']} | {row['ms']:.2f} | "
                      f"{row['speedup']:.2f} | {row['max_diff']:.1e} ({row['scale']:.1f}) |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
