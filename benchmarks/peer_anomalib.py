"""fsad against anomalib on the same method, backbone, weights and images: time, memory, rank agreement.

Issue 21's peer benchmark. PatchCore and PaDiM are fitted on K good images of one category and
score its test images, once by fsad (test-time features in eager PyTorch and in ONNX Runtime)
and once by anomalib (its PyTorch model and, where ``openvino`` runs, its OpenVINO export).
Printed per method and path: fit and predict seconds, predict ms per image, peak resident
memory of the process, image AUROC, and the Spearman rank correlation of its image scores with
anomalib's PyTorch scores, plus the largest difference of the backbone features.

What is the same on both sides:
- the images: decoded and resized (plain resize, no crop) once by fsad's reader into one file
  that both sides read, so the pixels are identical; decoding is not timed;
- the backbone and its weights: torchvision's MobileNetV2 ImageNet file (the only ImageNet
  CNN weights installable offline here) loaded into fsad's ``mobilenet_v2`` and, key for key,
  into anomalib's timm ``mobilenetv2_100`` (the same network); the stride 4 / 8 / 16 outputs;
- the methods' settings: PatchCore on stride 8 + 16, 3 x 3 local averaging, a coreset of 10 %
  of the support patches (anomalib's default; each side draws its own, so the banks differ a
  little) and 9 neighbours in the reweighting; PaDiM on all 152 channels (no random draw to
  match), eps 0.01; both blur the maps with sigma 4;
- one thread (``--threads``): torch, ONNX Runtime and OpenVINO are all told so;
- batches of 32 test images; predict times the model on in-memory images (normalisation,
  features, scores, maps), without Lightning's ``Engine`` or data loaders.

Each (side, method, path) runs in a fresh process, so its peak memory is its own; the
processes of one round run one after the other, ``--rounds`` rounds, each process keeps the
median of ``--repeats`` predicts. On a busy machine read the ratios, not the seconds.

anomalib is never a dependency of fsad: the script installs it into a virtualenv of its own
(``--venv``, default ``$FSAD_PEER_VENV`` or /tmp/fsad-peer-anomalib) with plain pip, with the
torch and torchvision versions of fsad's requirements.txt, and without fsad or the fsad
virtualenv's site-packages (no ``--system-site-packages``). The first run downloads about
4 GB (torch with its CUDA libraries, as fsad's own install does); later runs reuse the
virtualenv. If pip cannot install it, the script stops with pip's last lines and the fix.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_anomalib.py               # bottle, K = 8, 224 px
    .venv/bin/python benchmarks/peer_anomalib.py --setup-only                     # only build the virtualenv
    .venv/bin/python benchmarks/peer_anomalib.py --methods padim --rounds 1 --no-openvino
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("peer_anomalib_worker.py")  # the anomalib half, run by the peer virtualenv
DEFAULT_VENV = Path(os.environ.get("FSAD_PEER_VENV", "/tmp/fsad-peer-anomalib"))
ANOMALIB_VERSION = "2.7.0"
BACKBONE = "mobilenet_v2"
METHODS = ("patchcore", "padim")
BATCH = 32
# fsad's settings for each method; the anomalib worker builds the same ones.
FSAD_OPTIONS = {"patchcore": {"coreset_ratio": 0.1}, "padim": {"n_channels": 152}}
USED_STAGES = {"patchcore": slice(1, None), "padim": slice(None)}  # the stage outputs each method reads


# ---- the peer virtualenv -------------------------------------------------------------------------

def pinned(package: str, requirements: Path = ROOT / "requirements.txt") -> str:
    """``package==version`` as fsad's requirements.txt pins it, so both sides run the same torch."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(rf"\s*{re.escape(package)}\s*==\s*([^\s#;]+).*", line)
        if match:
            return f"{package}=={match.group(1)}"
    raise SystemExit(f"peer_anomalib.py: {requirements} pins no {package}; fix: pin it there (package==version)")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def peer_versions(venv: Path) -> dict | None:
    """Versions of anomalib, torch and openvino in ``venv`` (None for a missing one), or None if it has no anomalib."""
    probe = ("import importlib.metadata as m, importlib.util as u, json\n"
             "v = lambda p: m.version(p) if u.find_spec(p.replace('-', '_')) else None\n"
             "print(json.dumps({p: v(p) for p in ('anomalib', 'torch', 'torchvision', 'openvino', 'onnxscript')}"
             " | {'fsad': u.find_spec('fsad') is not None}))")
    python = venv_python(venv)
    if not python.is_file():
        return None
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd="/", check=False)
    if done.returncode != 0:
        return None
    versions = json.loads(done.stdout)
    return versions if versions["anomalib"] else None


def ensure_peer_venv(venv: Path, anomalib: str, openvino: bool) -> dict:
    """A virtualenv at ``venv`` with anomalib ``anomalib``, fsad's torch pins and (optionally) openvino; built when missing.

    Raises:
        SystemExit: pip failed (its last lines and the fix are in the message), or the
            virtualenv sees fsad (the comparison must not run fsad code on anomalib's side).
    """
    # anomalib's "openvino" extra brings openvino, onnx and onnxscript, which its to_openvino needs.
    wanted = [f"anomalib{'[openvino]' if openvino else ''}=={anomalib}", pinned("torch"), pinned("torchvision")]
    versions = peer_versions(venv)
    if versions is None or versions["anomalib"] != anomalib or (openvino and versions["onnxscript"] is None):
        if not venv_python(venv).is_file():
            print(f"creating the anomalib virtualenv {venv} (its own site-packages; about 4 GB on first install)", flush=True)
            base = getattr(sys, "_base_executable", sys.executable)  # the interpreter fsad's venv was made from
            subprocess.run([base, "-m", "venv", str(venv)], check=True)
        command = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", *wanted]
        print("$", " ".join(command), flush=True)
        done = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
        if done.returncode != 0:
            tail = "\n  ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise SystemExit(f"peer_anomalib.py: could not install {' '.join(wanted)} into {venv} "
                             f"(pip exited {done.returncode}):\n  {tail}\n"
                             "fix: give pip a network or an index that has anomalib (pip config list), "
                             "or pass --venv DIR of a virtualenv where `pip install anomalib` worked")
        versions = peer_versions(venv)
        if versions is None:
            raise SystemExit(f"peer_anomalib.py: pip installed {' '.join(wanted)} into {venv} but "
                             f"`import anomalib` fails there; fix: remove {venv} and rerun")
    if versions["fsad"]:
        raise SystemExit(f"peer_anomalib.py: the anomalib virtualenv {venv} can import fsad; "
                         "fix: remove it (or pass another --venv); it must not see fsad's packages")
    return versions


# ---- the shared inputs ---------------------------------------------------------------------------

def prepare_inputs(dataset: Path, category: str, shots: int, size: int, seed: int, out: Path) -> dict:
    """Support and test images of ``category`` read once by fsad into ``out`` (.npz), and the weight file.

    Holds ``support`` (K x 3 x S x S uint8, support set ``seed`` of fsad's drawing), ``test``
    (N x 3 x S x S uint8), ``labels`` (N, 1 = defective) and ``weights`` (the ImageNet file
    both sides load).
    """
    from fsad.components.backbones import resolve_weights
    from fsad.data.loading import load_images
    from fsad.data.mvtec import load_category
    from fsad.data.support_sets import make_support_sets, support_samples

    data = load_category(dataset, category)
    support = support_samples(data, make_support_sets(data, [shots], n_sets=1, seed=seed)[shots][0])
    np.savez(out, support=load_images(support, size).numpy(), test=load_images(data.test, size).numpy(),
             labels=np.array([s.label for s in data.test]), weights=str(resolve_weights(BACKBONE)))
    return {"support": len(support), "test": len(data.test), "defective": sum(s.label for s in data.test)}


# ---- the fsad half -------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fsad(method: str, runtime: str, support, test, weights: str | None, repeats: int) -> dict:
    """Fit fsad's ``method`` on ``support`` and time ``repeats`` predicts of ``test`` (K / N x 3 x S x S uint8).

    ``weights`` is the backbone's weight file, None for random weights (the tests). One
    forward before the fit (the ONNX export and session, which a machine does once) and one
    predict of the first batch are warm-ups, untimed.

    Returns:
        ``fit_s``, ``predict_s`` (one per repeat), ``scores`` (N image scores of the last
        predict) and ``features``: the first test image's three stage outputs (1 x C_i x h_i x w_i).
    """
    import torch

    from fsad.config import RegADConfig
    from fsad.methods.registry import build_detector

    regad = RegADConfig(backbone=BACKBONE, image_size=int(test.shape[-1]), pretrained=weights is not None,
                        runtime=runtime, device="cpu")
    torch.manual_seed(0)
    detector = build_detector(method, regad, FSAD_OPTIONS[method])
    if weights is not None and Path(detector.backbone.weights_file) != Path(weights):
        raise SystemExit(f"peer_anomalib.py: fsad loaded {detector.backbone.weights_file}, anomalib gets {weights}")
    support, test = torch.from_numpy(support), torch.from_numpy(test)
    with torch.inference_mode():
        detector.backbone(test[:1].float() / 255)  # the one-off ONNX export and session, cached per machine: untimed
        tic = time.perf_counter()
        detector.fit(support)
        fit_s = time.perf_counter() - tic
        detector.predict(test[:BATCH])  # warm-up
        predict_s = []
        for _ in range(repeats):
            tic = time.perf_counter()
            scores = detector.predict(test)
            predict_s.append(time.perf_counter() - tic)
        features = detector.backbone(test[:1].float() / 255)[USED_STAGES[method]]
    return {"fit_s": fit_s, "predict_s": predict_s, "scores": scores.image.tolist(),
            "features": [f.numpy() for f in features]}


def fsad_worker(args: argparse.Namespace) -> None:
    """One fsad process: fit, predict, write the result JSON (and the features beside it)."""
    import torch

    torch.set_num_threads(args.threads)
    inputs = np.load(args.inputs)
    result = run_fsad(args.method, args.runtime, inputs["support"], inputs["test"], str(inputs["weights"]), args.repeats)
    np.savez(args.result.with_suffix(".npz"), *result.pop("features"))
    result.update(peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads())
    args.result.write_text(json.dumps(result))


# ---- the driver ----------------------------------------------------------------------------------

def auroc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def paths(openvino: bool, openvino_default: bool) -> list[tuple[str, str]]:
    """(side, path) pairs in the order they run."""
    return [("anomalib", "torch"), *([("anomalib", "openvino")] if openvino else []),
            *([("anomalib", "openvino-default")] if openvino_default else []),
            ("fsad", "torch"), ("fsad", "onnxruntime")]


def run_one(side: str, path: str, method: str, args: argparse.Namespace, inputs: Path, work: Path) -> dict:
    """One (side, path, method) in a fresh process; its result dictionary."""
    result = work / f"{side}-{path}-{method}-{time.monotonic_ns()}.json"
    if side == "fsad":
        command = [sys.executable, __file__, "--worker", "--method", method, "--runtime", path]
    else:
        command = [str(venv_python(args.venv)), str(WORKER), "--method", method, "--export", path]
    command += ["--inputs", str(inputs), "--result", str(result), "--threads", str(args.threads),
                "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               FSAD_CACHE=str(work / "fsad-cache"), TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)  # the anomalib side must not see fsad
    if side == "fsad":
        env["PYTHONPATH"] = str(ROOT)  # this checkout's fsad, whatever the virtualenv has installed
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work, check=False)
    if done.returncode != 0:
        tail = "\n  ".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"peer_anomalib.py: {side} {method} ({path}) failed (exit {done.returncode}):\n  {tail}")
    out = json.loads(result.read_text())
    out["features"] = [v for _, v in sorted(np.load(result.with_suffix(".npz")).items(), key=lambda kv: kv[0])]
    return out


def summarise(method: str, runs: dict[tuple[str, str], list[dict]], labels) -> list[dict]:
    """One row per path: median times over rounds, memory, AUROC, agreement with anomalib's PyTorch path."""
    reference = runs[("anomalib", "torch")][-1]
    rows = []
    for (side, path), results in runs.items():
        last = results[-1]
        predict = statistics.median(statistics.median(r["predict_s"]) for r in results)
        feature_diff = max(float(np.abs(a - b).max()) for a, b in zip(last["features"], reference["features"], strict=True))
        rows.append({"method": method, "side": side, "path": path,
                     "fit_s": statistics.median(r["fit_s"] for r in results), "predict_s": predict,
                     "ms_per_image": 1000 * predict / len(labels),
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                     "auroc": auroc(last["scores"], labels), "spearman": spearman(last["scores"], reference["scores"]),
                     "score_rel_diff": float(np.max(np.abs(np.subtract(last["scores"], reference["scores"])))
                                             / np.max(np.abs(reference["scores"]))),
                     "feature_diff": feature_diff, "threads": last["threads"], "note": last.get("note", "")})
    base = next(r["predict_s"] for r in rows if (r["side"], r["path"]) == ("anomalib", "torch"))
    for row in rows:
        row["speedup"] = base / row["predict_s"]
    return rows


def table(rows: list[dict]) -> str:
    head = ("| method | side | path | fit s | predict s | ms / image | vs anomalib torch | peak RSS MiB | image AUROC "
            "| Spearman vs anomalib torch | max score diff (rel.) | max feature diff | note |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['side']} | {r['path']} | {r['fit_s']:.2f} | {r['predict_s']:.2f} "
                     f"| {r['ms_per_image']:.1f} | {r['speedup']:.2f}x | {r['peak_rss_mib']:.0f} | {100 * r['auroc']:.2f} "
                     f"| {r['spearman']:.4f} | {r['score_rel_diff']:.1e} | {r['feature_diff']:.1e} | {r['note']} |")
    return "\n".join(lines)


def machine_note(threads: int) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {threads} thread(s), load average {load}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "fsad-mini")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0, help="which of fsad's support-set draws")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="predicts per process (median kept)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per path, one after the other (median kept)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="anomalib's own virtualenv (made if missing)")
    parser.add_argument("--anomalib", default=ANOMALIB_VERSION, help="anomalib version to install")
    parser.add_argument("--no-openvino", dest="openvino", action="store_false", help="skip anomalib's OpenVINO export")
    parser.add_argument("--openvino-default", action="store_true",
                        help="also run the OpenVINO export at OpenVINO's default precision (bf16 where the CPU has it)")
    parser.add_argument("--setup-only", action="store_true", help="build the virtualenv and stop")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    # The fsad half, run in a process of its own by the driver.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fsad_worker(args)
        return
    args.venv = args.venv.expanduser().resolve()
    versions = ensure_peer_venv(args.venv, args.anomalib, args.openvino)
    print(f"anomalib virtualenv {args.venv}: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "fsad"))
    if args.setup_only:
        return
    with tempfile.TemporaryDirectory(prefix="fsad-peer-") as tmp:
        work = Path(tmp)
        inputs = work / "inputs.npz"
        counts = prepare_inputs(args.dataset, args.category, args.shots, args.size, args.seed, inputs)
        labels = np.load(inputs)["labels"]
        print(f"{args.category}: {counts['support']} support, {counts['test']} test images ({counts['defective']} defective), "
              f"{args.size} px, {BACKBONE} ImageNet weights {np.load(inputs)['weights']}", flush=True)
        rows = []
        for method in args.methods:
            runs: dict[tuple[str, str], list[dict]] = {key: [] for key in paths(args.openvino, args.openvino_default)}
            for _ in range(args.rounds):
                for (side, path), results in runs.items():
                    results.append(run_one(side, path, method, args, inputs, work))
                    print(f"  {method} {side} {path}: predict {statistics.median(results[-1]['predict_s']):.2f} s", flush=True)
            rows += summarise(method, runs, labels)
    print(f"\n$ {' '.join(['OMP_NUM_THREADS=' + os.environ.get('OMP_NUM_THREADS', '?'), Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine_note(args.threads)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
