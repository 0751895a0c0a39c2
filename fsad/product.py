"""A detector for a new product from K good images: ``fsad fit`` and ``fsad predict``.

``fit_product`` fits a detector (any of ``fsad.methods.registry.DETECTORS``) on the K
support images, sets a decision threshold from normal images only, and saves the whole
as a detector folder. ``predict_product`` loads it (never refitting) and writes, for new
images of any size, ``predictions.csv`` (path, score, normalised_score, label, ...), a
heat-map overlay per image and, on request, a binary defect mask per image, all at the
image's original size.

The threshold comes from normal images only, by the rule of ``fsad.threshold`` (leave-one-out
scores of the support images, plus the optional ``--good`` images); normalised score 0.5 is
the threshold and ``label`` is ``anomalous`` above it.

Example:
    >>> record = fit_product([Path("product/good")], "padim_views", RegADConfig(), out=Path("detector"))
    >>> summary = predict_product(Path("detector"), [Path("incoming")], out=Path("results"), masks=True)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from fsad.config import RegADConfig, read_yaml
from fsad.data.fingerprint import fingerprint
from fsad.data.mvtec import IMAGE_SUFFIXES, read_image, resize_image
from fsad.io import atomic_dir, atomic_path, write_csv_atomic
from fsad.methods.base import Detector, to_float
from fsad.methods.registry import DETECTORS, RECORD_FILE, build_detector, is_detector_folder, load_detector, save_detector
from fsad.threshold import MARGIN, THRESHOLD_RULE, Threshold

DEFAULT_METHOD = "padim_views"
PREDICTIONS_FILE = "predictions.csv"
PREDICT_BATCH = 16
PREDICT_PIXELS = 64_000_000  # originals kept per batch, for the full-size overlays
# A run of at least this many images shows a progress bar.
PROGRESS_FROM = 20


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
            raise FileNotFoundError(f"fsad/product.py: {given} does not exist; pass image files or folders")
        files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(given).parts))
        if not files:
            raise FileNotFoundError(f"fsad/product.py: no image in {given} (searched recursively for "
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


def read_settings(path: str | Path | None) -> tuple[RegADConfig, dict[str, Any]]:
    """RegAD settings and method options from a YAML file.

    The file is either a ``regad:`` section (plus an optional ``options:`` section of
    method options) or a mapping of RegAD settings alone; ``None`` gives the defaults.
    """
    if path is None:
        return RegADConfig(), {}
    path = Path(path)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        # ValueError, not TypeError: the CLI reports ValueErrors as one-line user errors.
        raise ValueError(f"fsad/product.py: {path} must hold a mapping (a regad: section or RegAD settings)")  # noqa: TRY004
    if "regad" not in data and "options" not in data:
        return RegADConfig.from_dict(data, source=str(path)), {}
    unknown = sorted(set(data) - {"regad", "options"})
    if unknown:
        raise ValueError(f"fsad/product.py: {path} has unknown section(s) {unknown}; known: regad, options")
    return RegADConfig.from_dict(data.get("regad") or {}, source=f"{path}: regad"), dict(data.get("options") or {})


def _read(paths: Sequence[Path], size: int) -> torch.Tensor:
    """N x 3 x size x size float images; an unreadable file is an error naming it."""
    return torch.stack([read_image(p, size) for p in paths])


def _fingerprint(paths: Sequence[Path]) -> str:
    return fingerprint([Path(os.path.abspath(p)) for p in paths])


def _recipe(record: dict[str, Any]) -> dict[str, Any]:
    """What makes a detector folder what it is: method, settings, and the files it was fitted from."""
    return {"method": record.get("method"), "settings": record.get("settings"),
            **{k: (record.get(k) or {}).get("fingerprint") for k in ("support", "good", "model")}}


def _check_out(out: Path, recipe: dict[str, Any], force: bool) -> None:
    """Refuse an --out that holds something else than this detector (another one only without --force)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"fsad/product.py: --out {out} is a file; choose a folder")
    if not any(out.iterdir()):
        return
    if not is_detector_folder(out):
        raise ValueError(f"fsad/product.py: --out {out} holds files that are not a detector (no detector.pt); "
                         "choose an empty or new folder (fit replaces the whole folder)")
    try:
        saved = _recipe(json.loads((out / RECORD_FILE).read_text()))
    except (OSError, ValueError):
        saved = {}
    changed = [k for k in recipe if saved.get(k) != recipe[k]]
    if changed and not force:
        raise ValueError(f"fsad/product.py: --out {out} holds a detector made from other {', '.join(changed)}; "
                         "pass --force to replace it, or choose another --out")


@torch.no_grad()
def fit_with_reference(detector: Detector, support: torch.Tensor, good: torch.Tensor | None = None,
                       leave_one_out: bool = True, progress: bool = False) -> dict[str, Any]:
    """Fit ``detector`` on all K support images and return the normal reference scores of the threshold rule.

    Args:
        support: K x 3 x S x S images; with ``leave_one_out`` each is scored by the detector
            fitted on the other K - 1 first (K extra fits).
        good: G x 3 x S x S extra good images, scored by the detector fitted on all K.

    Returns:
        ``leave_one_out`` (K image scores or none), ``good`` (G image scores), and over
        both: ``image`` (image scores) and ``map_max`` (each map's maximum), as arrays.
    """
    k = len(support)
    image, map_max, loo = [], [], []
    bar = tqdm(range(k if leave_one_out else 0), desc=f"{detector.name} leave-one-out", leave=False,
               disable=True if not progress or k < 4 else None)
    for held in bar:
        detector.fit(torch.cat([support[:held], support[held + 1 :]]))  # (K - 1) x 3 x S x S
        scores = detector.predict(support[held : held + 1])
        loo.append(float(scores.image[0]))
        map_max.append(float(scores.maps[0].max()))
    image += loo
    detector.fit(support)  # last: the detector that is saved is fitted on all K
    good_scores = []
    if good is not None and len(good):
        scores = detector.predict(good)
        good_scores = scores.image.tolist()
        image += good_scores
        map_max += scores.maps.flatten(1).amax(dim=1).tolist()
    return {"leave_one_out": loo, "good": good_scores, "image": np.array(image), "map_max": np.array(map_max)}


@torch.no_grad()
def fit_product(images: Sequence[str | Path], method: str, regad: RegADConfig, options: dict[str, Any] | None = None,
                model_path: Path | None = None, good: Sequence[str | Path] = (), out: Path = Path("detector"),
                force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fit ``method`` on the K images of ``images``, set the threshold, save the detector folder ``out``.

    Args:
        images: Support image files or folders (K = the number of images found).
        method, regad, options, model_path: As ``fsad.methods.registry.build_detector``.
        good: Extra good images (files or folders) for the threshold only.
        out: The detector folder to write (replaced as a whole).
        force: Replace a detector of other images or settings in ``out``.

    Returns:
        The record written to ``out/detector.json``.

    Raises:
        FileNotFoundError, ValueError: every check below runs before any fitting.
    """
    out, options = Path(out), dict(options or {})
    support = find_images(images)
    extra = find_images(good) if good else []
    k = len(support)
    if model_path is not None and method in DETECTORS and DETECTORS[method].model_file is None:
        raise ValueError(f"fsad/product.py: {method} uses no trained model file; drop --model {model_path}")
    detector = build_detector(method, regad, options, model_path)
    if k < detector.min_support:
        raise ValueError(f"fsad/product.py: {method} needs K >= {detector.min_support} support images, got {k}"
                         + ("; use padim_views (22 views per image) for K = 1" if method == "padim" else ""))
    leave_one_out = k - 1 >= detector.min_support
    if not leave_one_out and not extra:
        raise ValueError(f"fsad/product.py: with K = {k} {method} has no leave-one-out score to set the threshold "
                         f"(it needs K >= {detector.min_support + 1}); add good images with --good DIR")
    record: dict[str, Any] = {
        "support": {"count": k, "images": [str(p) for p, _ in support], "fingerprint": _fingerprint([p for p, _ in support])},
        "good": {"count": len(extra), "images": [str(p) for p, _ in extra],
                 "fingerprint": _fingerprint([p for p, _ in extra]) if extra else None},
        "model": {"path": str(model_path), "fingerprint": _fingerprint([Path(model_path)])} if model_path else None,
    }
    _check_out(out, _recipe({"method": method, "settings": {"regad": regad.to_dict(), "options": options}, **record}), force)

    size = regad.image_size
    support_images = _read([p for p, _ in support], size)  # K x 3 x S x S
    extra_images = _read([p for p, _ in extra], size) if extra else None  # G x 3 x S x S
    reference = fit_with_reference(detector, support_images, extra_images, leave_one_out, progress)
    threshold = Threshold.from_reference(reference["image"], reference["map_max"])
    record["threshold"] = {"rule": THRESHOLD_RULE.replace("\n", " "), "margin": MARGIN, **asdict(threshold),
                           "leave_one_out_scores": reference["leave_one_out"], "good_scores": reference["good"]}
    save_detector(out, detector, regad, options, record)
    return record


def _jet(values: torch.Tensor) -> torch.Tensor:
    """H x W values in [0, 1] -> 3 x H x W colours of the jet map (blue, cyan, green, yellow, red)."""
    x = 4 * values  # H x W
    return torch.stack([(1.5 - (x - 3).abs()), (1.5 - (x - 2).abs()), (1.5 - (x - 1).abs())]).clamp(0, 1)


def overlay(image: torch.Tensor, normalised_map: torch.Tensor) -> torch.Tensor:
    """The image with the normalised map blended in, more opaque where it is higher.

    Opacity is 0.7 x the normalised value: clear where the image is typical (0), 0.35 at
    the threshold (0.5), so only what is near or above the threshold catches the eye.

    Args:
        image: 3 x H x W, uint8 or float in [0, 1].
        normalised_map: H x W in [0, 1] (0.5 = threshold).

    Returns:
        3 x H x W uint8.
    """
    alpha = 0.7 * normalised_map  # H x W: the image stays visible everywhere
    blended = (1 - alpha) * to_float(image) + alpha * _jet(normalised_map)  # 3 x H x W
    return (blended * 255).round().clamp(0, 255).to(torch.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _batches(found: Sequence[tuple[Path, str]], size: int):
    """Read ``found`` in batches of at most ``PREDICT_BATCH`` images and ``PREDICT_PIXELS`` original pixels.

    Yields:
        ``[(path, name, original 3 x H x W uint8, resized 3 x size x size float)]`` and
        ``[(path, error message)]`` of the files that could not be read.
    """
    batch, failed, pixels = [], [], 0
    for path, name in found:
        try:
            original = read_image(path, None)  # 3 x H x W in [0, 1], the image's own size
        except (ValueError, FileNotFoundError) as error:
            failed.append((path, str(error)))
            continue
        # uint8 originals: a batch of camera-sized images stays within a few hundred MiB.
        batch.append((path, name, (original * 255).round().to(torch.uint8), resize_image(original, size)))
        pixels += original.shape[1] * original.shape[2]
        if len(batch) == PREDICT_BATCH or pixels >= PREDICT_PIXELS:
            yield batch, failed
            batch, failed, pixels = [], [], 0
    if batch or failed:
        yield batch, failed


@torch.no_grad()
def predict_product(detector_dir: Path, images: Sequence[str | Path], out: Path, masks: bool = False,
                    device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score images with a saved detector; write predictions.csv, heat-maps and (``masks``) masks to ``out``.

    An unreadable image does not stop the run: its row has label ``error`` and the message,
    and the summary counts it (the CLI then exits with an error after writing everything).

    Returns:
        ``{"csv", "heatmaps", "masks", "images", "anomalous", "errors": [(path, message)], "method"}``.
    """
    detector, record = load_detector(Path(detector_dir), device=device)
    found = find_images(images)
    out = Path(out).resolve()
    for given in map(Path, images):
        if given.is_dir() and out.is_relative_to(given.resolve()):
            raise ValueError(f"fsad/product.py: --out {out} is inside the input folder {given}; its heat-maps "
                             "would be read as images by the next run; choose a folder outside it")
    threshold = Threshold(**{k: record["threshold"][k] for k in ("image", "pixel", "image_normal", "pixel_normal")})
    rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    with atomic_dir(out / "heatmaps") as heat_dir, atomic_dir(out / "masks") as mask_dir:
        bar = tqdm(total=len(found), desc="predict", unit="image",
                   disable=True if not progress or len(found) < PROGRESS_FROM else None)  # None: off without a terminal
        for batch, failed in _batches(found, detector.image_size):
            for path, error in failed:  # keep scoring the others; the run reports them at the end
                errors.append((str(path), error))
                rows.append({"path": str(path), "label": "error", "error": error})
            if batch:
                scores = detector.predict(torch.stack([resized for *_, resized in batch]))
                normalised = threshold.normalise_image(scores.image.numpy())
                for (path, name, original, _), score_map, score, norm in zip(batch, scores.maps, scores.image, normalised):
                    full = F.interpolate(score_map[None, None], size=original.shape[1:], mode="bilinear",
                                         align_corners=False)[0, 0]  # H x W, the image's own size
                    pixel_norm = threshold.normalise_map(full)
                    _write_png(heat_dir / name, overlay(original, pixel_norm).permute(1, 2, 0).numpy())
                    row = {"path": str(path), "score": float(score), "normalised_score": float(norm),
                           "label": "anomalous" if norm > 0.5 else "normal", "heatmap": str(out / "heatmaps" / name)}
                    if masks:
                        _write_png(mask_dir / name, ((pixel_norm > 0.5).numpy() * 255).astype(np.uint8))
                        row["mask"] = str(out / "masks" / name)
                    rows.append(row)
            bar.update(len(batch) + len(failed))
        bar.close()
    if not masks:
        (out / "masks").rmdir()  # atomic_dir made it; nothing was asked of it
    columns = ["path", "score", "normalised_score", "label", "heatmap"] + (["mask"] if masks else []) + ["error"]
    write_csv_atomic(out / PREDICTIONS_FILE, pd.DataFrame(rows, columns=columns))
    return {"csv": out / PREDICTIONS_FILE, "heatmaps": out / "heatmaps", "masks": out / "masks" if masks else None,
            "images": len(found), "anomalous": sum(r["label"] == "anomalous" for r in rows), "errors": errors,
            "method": record["method"]}


def fit_command(images: Sequence[str], method: str | None, model: str | None, config: str | None, good: Sequence[str],
                out: str, force: bool) -> None:
    """``fsad fit``: fit, then print where the detector went and its threshold."""
    regad, options = read_settings(config)
    method = method or DEFAULT_METHOD
    tic = time.perf_counter()
    record = fit_product(images, method, regad, options, Path(model) if model else None, good or (), Path(out), force)
    threshold = record["threshold"]
    print(f"{method} fitted on K = {record['support']['count']} images ({regad.image_size} px, "
          f"{len(threshold['leave_one_out_scores'])} leave-one-out + {len(threshold['good_scores'])} good reference scores): "
          f"image threshold {threshold['image']:.4g}, pixel threshold {threshold['pixel']:.4g}")
    print(f"detector: {Path(out)} ({RECORD_FILE} says what made it); {time.perf_counter() - tic:.1f} s")


def predict_command(detector: str, images: Sequence[str], out: str, masks: bool) -> None:
    """``fsad predict``: score, print where things went; an unreadable image fails the run after the rest is written."""
    tic = time.perf_counter()
    summary = predict_product(Path(detector), images, Path(out), masks)
    scored = summary["images"] - len(summary["errors"])
    print(f"{summary['method']}: {scored} images scored, {summary['anomalous']} anomalous; {time.perf_counter() - tic:.1f} s")
    print(f"predictions: {summary['csv']}")
    print(f"heat-maps: {summary['heatmaps']}" + (f"\nmasks: {summary['masks']}" if summary["masks"] else ""))
    if summary["errors"]:
        first = summary["errors"][0][0]
        raise ValueError(f"fsad/product.py: {len(summary['errors'])} of {summary['images']} images could not be read "
                         f"(first: {first}); their rows in {summary['csv']} have label 'error', the others were scored")


__all__ = ["DEFAULT_METHOD", "find_images", "fit_command", "fit_product", "fit_with_reference", "predict_command", "predict_product", "read_settings"]
