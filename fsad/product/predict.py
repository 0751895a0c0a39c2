"""``fsad predict``: score new images with a saved detector folder, never refitting.

Writes ``predictions.csv`` (path, score, normalised_score, label, ...), a heat-map overlay per
image, ``report.html`` to look at them all (``fsad.product.report``) and, on request, a binary
defect mask per image, all at the image's size as viewers
show it (EXIF orientation applied); ``label`` is ``anomalous`` above the threshold
(normalised score 0.5). An image of more than ``OVERLAY_PIXELS`` pixels (16.7 M, e.g. a
14000 x 14000 line-scan image) gets its heat-map and mask downscaled by 2, 4, ... until
they fit, with the image's aspect ratio: a full-size overlay would take GBs of memory and
tens of seconds to write, and no screen shows it whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from fsad.data.mvtec import downscale_factor, read_image, resize_image
from fsad.io import atomic_dir, atomic_path, write_rows_atomic
from fsad.methods.base import to_float
from fsad.product.export import load_exported
from fsad.product.images import find_images
from fsad.product.report import thumbnail, write_report
from fsad.product.threshold import Threshold
from fsad.product.tiling import from_record

PREDICTIONS_FILE = "predictions.csv"
PREDICT_BATCH = 16
PREDICT_PIXELS = 64_000_000  # originals kept per batch, for the full-size overlays
OVERLAY_PIXELS = 2**24  # the largest heat-map and mask written (4096 x 4096); larger images get theirs downscaled
# A run of at least this many images shows a progress bar.
PROGRESS_FROM = 20
# A run of at least FLAG_CHECK_FROM images with more than FLAGGED_NOTE of them anomalous gets a note: on a line
# most parts are good, and the calibration benchmark's worst draws (the first K sorted images, no --good) flagged
# 30-93 % of good parts (docs/calibration.md).
FLAG_CHECK_FROM = 20
FLAGGED_NOTE = 0.3


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


def _batches(found: Sequence[tuple[Path, str]], size: int | tuple[int, int]):
    """Read ``found`` in batches of at most ``PREDICT_BATCH`` images and ``PREDICT_PIXELS`` original pixels.

    Yields:
        ``[(path, name, original 3 x H x W uint8, resized 3 x h x w float)]`` (h x w: ``size``) and
        ``[(path, error message)]`` of the files that could not be read. The original is
        at the image's own size, downscaled to at most ``OVERLAY_PIXELS``.
    """
    batch, failed, pixels = [], [], 0
    for path, name in found:
        try:
            original = read_image(path, None)  # 3 x H x W in [0, 1], the image's own size
        except (ValueError, FileNotFoundError) as error:
            failed.append((path, str(error)))
            continue
        resized = resize_image(original, size)  # 3 x h x w: what the detector scores
        height, width = original.shape[1:]
        factor = downscale_factor(width, height, OVERLAY_PIXELS)
        if factor > 1:
            original = resize_image(original, (-(-height // factor), -(-width // factor)))
        # uint8 originals: a batch of camera-sized images stays within a few hundred MiB.
        batch.append((path, name, (original * 255).round().to(torch.uint8), resized))
        pixels += original.shape[1] * original.shape[2]
        if len(batch) == PREDICT_BATCH or pixels >= PREDICT_PIXELS:
            yield batch, failed
            batch, failed, pixels = [], [], 0
    if batch or failed:
        yield batch, failed


def flagged_note(anomalous: int, scored: int, record: dict[str, Any]) -> str | None:
    """A note when more than ``FLAGGED_NOTE`` of at least ``FLAG_CHECK_FROM`` scored images were flagged, else None."""
    if scored < FLAG_CHECK_FROM or anomalous <= FLAGGED_NOTE * scored:
        return None
    target = record["threshold"].get("target_fpr")
    rate = f"the {100 * target:g} % false-positive rate the threshold was set for" if target else "what the threshold expects"
    more = "more --good images" if (record.get("good") or {}).get("count") else "--good DIR"
    return (f"{anomalous} of {scored} images ({100 * anomalous / scored:.0f} %) are anomalous. On parts that are mostly good "
            f"that is far above {rate}: the K = {record['support']['count']} support images likely vary less than "
            f"production (K consecutive parts often do), and refitting with {more} (good images from other batches) sets "
            "the level (docs/calibration.md). A folder of mostly defective parts (a test set) is expected to show it.")


@torch.no_grad()
def predict_product(detector_dir: Path, images: Sequence[str | Path], out: Path, masks: bool = False,
                    device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score images with a saved detector; write predictions.csv, heat-maps, (``masks``) masks and report.html to ``out``.

    An unreadable image does not stop the run: its row has label ``error`` and the message,
    and the summary counts it (the CLI then exits with an error after writing everything).

    Returns:
        ``{"csv", "heatmaps", "masks", "report", "images", "anomalous", "errors": [(path, message)], "method",
        "selection" (the ranking of ``fsad fit --method auto``, or None), "seconds", "note" (``flagged_note``)}``;
        ``seconds``: reading, scoring and writing the images.
    """
    detector, record = load_exported(Path(detector_dir), device=device)  # fsad export's graph, where the folder has one
    detector = from_record(detector, record)  # tiled as fsad fit --tile made it
    found = find_images(images)
    out = Path(out).resolve()
    for given in map(Path, images):
        if given.is_dir() and out.is_relative_to(given.resolve()):
            raise ValueError(f"fsad predict: --out {out} is inside the input folder {given}; its heat-maps "
                             "would be read as images by the next run; choose a folder outside it")
    threshold = Threshold(**{k: record["threshold"][k] for k in ("image", "pixel", "image_normal", "pixel_normal")})
    rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    thumbnails: dict[str, str] = {}  # path: the overlay, small, for report.html
    tic = time.perf_counter()
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
                    heatmap = overlay(original, pixel_norm).permute(1, 2, 0).numpy()  # H x W x 3 uint8
                    _write_png(heat_dir / name, heatmap)
                    thumbnails[str(path)] = thumbnail(heatmap)
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
    seconds = time.perf_counter() - tic
    anomalous = sum(r["label"] == "anomalous" for r in rows)
    note = flagged_note(anomalous, len(found) - len(errors), record)
    write_rows_atomic(out / PREDICTIONS_FILE, rows, columns)
    report = write_report(out, rows, record, Path(detector_dir), thumbnails, seconds, note)
    return {"csv": out / PREDICTIONS_FILE, "heatmaps": out / "heatmaps", "masks": out / "masks" if masks else None,
            "report": report, "images": len(found), "anomalous": anomalous, "errors": errors, "method": record["method"],
            "selection": record.get("selection"), "seconds": seconds, "note": note}


def predict_command(detector: str, images: Sequence[str], out: str, masks: bool, device: str | None = None) -> None:
    """``fsad predict``: score, print where things went; an unreadable image fails the run after the rest is written."""
    tic = time.perf_counter()
    summary = predict_product(Path(detector), images, Path(out), masks, device)
    scored = summary["images"] - len(summary["errors"])
    speed = scored / summary["seconds"] if summary["seconds"] > 0 else float("nan")
    print(f"{summary['method']}: {scored} images scored, {summary['anomalous']} anomalous; {time.perf_counter() - tic:.1f} s "
          f"({speed:.1f} images/s read, scored and written)")
    if summary["selection"]:
        ranking = summary["selection"]["ranking"]
        place, chosen = next((i, row) for i, row in enumerate(ranking, start=1) if row["method"] == summary["method"])
        print(f"{summary['method']} was chosen by fsad fit --method auto: held-out separation {100 * chosen['auroc']:.1f} "
              f"({place} of {len(ranking)} candidates; the ranking is in the report)")
    print(f"predictions: {summary['csv']}")
    print(f"heat-maps: {summary['heatmaps']}" + (f"\nmasks: {summary['masks']}" if summary["masks"] else ""))
    print(f"report: {summary['report']}")
    if summary["note"]:
        print(f"note: {summary['note']}")
    if summary["errors"]:
        first = summary["errors"][0][0]
        raise ValueError(f"fsad predict: {len(summary['errors'])} of {summary['images']} images could not be read "
                         f"(first: {first}); their rows in {summary['csv']} have label 'error', the others were scored")
