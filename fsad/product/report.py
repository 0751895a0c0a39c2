"""``report.html`` of ``fsad predict``: one page to look at a run, self-contained and offline.

The page holds the histogram of the image scores with the threshold (an inline SVG), the
images sorted by score (most anomalous first), each with its heat-map overlay embedded as a
small JPEG (a ``data:`` URI) and its label, the unreadable images with their messages, and
what made the detector (``detector.json``: method, K, the threshold rule and values, the
settings, and for ``fsad fit --method auto`` the ranking of the candidates). Nothing is loaded from elsewhere (no script, font or image file), so the page
works without a network and still shows everything when moved away from its folder; only
the links to the full-size heat-maps need ``heatmaps/`` beside it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from fsad.io import write_text_atomic

REPORT_FILE = "report.html"
THUMBNAIL_SIDE = 192  # px, the longer side: about 5-10 KB of JPEG per image in the page
_NORMAL, _ANOMALOUS, _THRESHOLD, _REFERENCE = "#4c78a8", "#e45756", "#b22222", "#555555"


def thumbnail(pixels: np.ndarray) -> str:
    """An H x W x 3 uint8 image as a ``data:`` URI of a JPEG at most ``THUMBNAIL_SIDE`` px on its longer side."""
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # keeps the aspect ratio, never enlarges
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_svg(scores: np.ndarray, threshold: float, references: Sequence[float] = (), width: int = 640,
                  height: int = 240) -> str:
    """The histogram of ``scores`` as an inline SVG: bars above the threshold red, the others blue.

    Args:
        scores: The images' scores (N,).
        threshold: The image threshold, drawn as a dashed vertical line with its value.
        references: The normal reference scores the threshold came from, drawn as ticks under the axis.

    Returns:
        An ``<svg>`` element (text).
    """
    left, right, top, bottom = 48, 16, 28, 44  # margins: the y labels, the threshold label, the x labels
    values = np.concatenate([np.asarray(scores, float), [threshold], np.asarray(references, float)])
    low, high = float(values.min()), float(values.max())
    if high <= low:  # one value everywhere: a unit-wide axis around it
        low, high = low - 0.5, high + 0.5
    bins = int(np.clip(math.ceil(math.sqrt(max(len(scores), 1))) * 2, 10, 40))
    edges = np.linspace(low, high, bins + 1)
    counts = {
        "normal": np.histogram(scores[scores <= threshold], edges)[0],
        "anomalous": np.histogram(scores[scores > threshold], edges)[0],
    }
    peak = max(int((counts["normal"] + counts["anomalous"]).max()), 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    def y(count: float) -> float:
        return top + plot_h - count / peak * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of the image scores with the threshold">']
    for i in range(bins):  # stacked: normal below, anomalous on top (a bin holding the threshold has both)
        x0, bar_w = x(edges[i]) + 0.5, max(x(edges[i + 1]) - x(edges[i]) - 1, 1)
        base = 0
        for label, colour in (("normal", _NORMAL), ("anomalous", _ANOMALOUS)):
            count = int(counts[label][i])
            if count:
                parts.append(f'<rect x="{x0:.1f}" y="{y(base + count):.1f}" width="{bar_w:.1f}" '
                             f'height="{y(base) - y(base + count):.1f}" fill="{colour}"><title>{count} {label}: '
                             f'{edges[i]:.4g} to {edges[i + 1]:.4g}</title></rect>')
            base += count
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#333"/>')
    for value in np.linspace(low, high, 5):
        parts.append(f'<text x="{x(value):.1f}" y="{axis_y + 28}" font-size="11" text-anchor="middle">{value:.3g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{axis_y}" font-size="11" text-anchor="end">0</text>')
    for value in references:
        parts.append(f'<line x1="{x(value):.1f}" y1="{axis_y + 3}" x2="{x(value):.1f}" y2="{axis_y + 12}" '
                     f'stroke="{_REFERENCE}"><title>normal reference {value:.4g}</title></line>')
    parts.append(f'<line x1="{x(threshold):.1f}" y1="{top - 6}" x2="{x(threshold):.1f}" y2="{axis_y + 12}" '
                 f'stroke="{_THRESHOLD}" stroke-width="2" stroke-dasharray="5,3"/>')
    anchor = "end" if x(threshold) > left + plot_w * 0.7 else "start"
    shift = -4 if anchor == "end" else 4
    parts.append(f'<text x="{x(threshold) + shift:.1f}" y="{top - 10}" font-size="12" fill="{_THRESHOLD}" '
                 f'text-anchor="{anchor}">threshold {threshold:.4g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" font-size="11" text-anchor="middle">image score '
                 '(ticks under the axis: the normal reference scores)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: middle; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
.label { font-weight: bold; padding: 2px 8px; border-radius: 4px; color: white; }
.anomalous { background: #e45756; } .normal { background: #4c78a8; } .error { background: #777; }
td img { width: 144px; height: 144px; object-fit: contain; display: block; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
dt { font-weight: bold; } dd { margin: 0 0 6px 0; }
.note { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 8px 12px; max-width: 60em; }
"""


def _label(label: str) -> str:
    return f'<span class="label {html.escape(label)}">{html.escape(label)}</span>'


def _image_rows(rows: Sequence[dict[str, Any]], thumbnails: dict[str, str], out: Path) -> list[str]:
    lines = []
    for rank, row in enumerate(rows, start=1):
        path, heatmap = str(row["path"]), Path(str(row["heatmap"]))
        link = html.escape(heatmap.relative_to(out).as_posix() if heatmap.is_relative_to(out) else heatmap.as_uri())
        picture = f'<img src="{thumbnails[path]}" alt="heat-map of {html.escape(Path(path).name)}">' if path in thumbnails else ""
        lines.append(f'<tr data-label="{html.escape(row["label"])}"><td class="number">{rank}</td>'
                     f'<td><a href="{link}">{picture}</a></td><td>{html.escape(path)}</td>'
                     f'<td class="number">{row["score"]:.4g}</td><td class="number">{row["normalised_score"]:.3f}</td>'
                     f"<td>{_label(row['label'])}</td></tr>")
    return lines


def _selection(selection: dict[str, Any] | None) -> list[str]:
    """The ranking of ``fsad fit --method auto`` (``fsad.product.selection``) as a table; nothing for a named method."""
    if not selection:
        return []
    lines = ["<h2>Method chosen by --method auto</h2>", f"<p>{html.escape(selection['criterion'])}.</p>",
             '<table id="selection"><tr><th class="number">rank</th><th>method</th><th class="number">separation</th>'
             '<th class="number">margin</th><th class="number">seconds</th></tr>']
    for place, row in enumerate(selection["ranking"], start=1):
        chosen = " (chosen)" if row["method"] == selection["chosen"] else ""
        lines.append(f'<tr><td class="number">{place}</td><td>{html.escape(row["method"])}{chosen}</td>'
                     f'<td class="number">{100 * row["auroc"]:.1f}</td><td class="number">{row["margin"]:.2f}</td>'
                     f'<td class="number">{row["seconds"]:.1f}</td></tr>')
    lines += [f'<tr><td></td><td>{html.escape(row["method"])}</td><td colspan="3">skipped: {html.escape(row["why"])}</td></tr>'
              for row in selection["skipped"]]
    return [*lines, "</table>"]


def write_report(out: Path, rows: Sequence[dict[str, Any]], record: dict[str, Any], detector_dir: Path,
                 thumbnails: dict[str, str], seconds: float, note: str | None = None) -> Path:
    """Write ``out/report.html`` for the rows of ``predictions.csv``.

    Args:
        out: The output folder of ``fsad predict`` (holding ``heatmaps/``).
        rows: ``predictions.csv``'s rows (path, score, normalised_score, label, heatmap, error).
        record: The detector's ``detector.json``.
        detector_dir: The detector folder, named on the page.
        thumbnails: ``{path: data URI}`` of each scored image's overlay (``thumbnail``).
        seconds: Wall time of the scoring, for the images/s shown.
        note: A warning shown under the heading (``fsad.product.predict.flagged_note``).

    Returns:
        The path of the page.
    """
    scored = sorted((r for r in rows if r["label"] != "error"), key=lambda r: -r["score"])
    failed = [r for r in rows if r["label"] == "error"]
    threshold = record["threshold"]
    references = [*threshold.get("leave_one_out_scores", []), *threshold.get("good_scores", [])]
    anomalous = sum(r["label"] == "anomalous" for r in scored)
    speed = f"{len(scored) / seconds:.1f} images/s" if seconds > 0 else ""
    settings = yaml.safe_dump(record.get("settings", {}), sort_keys=False, default_flow_style=None)
    body = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fsad predict: {len(scored)} images, {anomalous} anomalous</title>", f"<style>{_STYLE}</style></head><body>",
        f"<h1>fsad predict: {len(scored)} images scored, {anomalous} anomalous"
        + (f", {len(failed)} unreadable" if failed else "") + "</h1>",
        f"<p>Detector {html.escape(str(detector_dir))}: <b>{html.escape(str(record['method']))}</b>, "
        f"K = {record['support']['count']} support images"
        + (f" + {record['good']['count']} good images for the threshold" if (record.get("good") or {}).get("count") else "")
        + f"; {seconds:.1f} s ({speed}).</p>",
        *([f'<p class="note"><b>Note:</b> {html.escape(note)}</p>'] if note else []),
        *_selection(record.get("selection")),
        "<h2>Image scores</h2>",
        histogram_svg(np.array([r["score"] for r in scored], float), float(threshold["image"]), references) if scored else "",
        f'<p>Image threshold <b>{threshold["image"]:.4g}</b> (normalised score 0.5); pixel threshold '
        f'{threshold["pixel"]:.4g}. Labels: <span class="label anomalous">anomalous</span> above the threshold, '
        '<span class="label normal">normal</span> at or below it.</p>',
    ]
    if failed:
        body += ["<h2>Images that could not be read</h2>", "<table><tr><th>image</th><th>label</th><th>error</th></tr>"]
        body += [f'<tr data-label="error"><td>{html.escape(str(r["path"]))}</td><td>{_label("error")}</td>'
                 f'<td>{html.escape(str(r["error"]))}</td></tr>' for r in failed]
        body.append("</table>")
    body += ["<h2>Images by score, most anomalous first</h2>",
             "<p>Heat-maps: blue typical, green at the threshold, red far above it; a click opens the full-size one.</p>",
             '<table><tr><th class="number">rank</th><th>heat-map</th><th>image</th><th class="number">score</th>'
             '<th class="number">normalised</th><th>label</th></tr>',
             *_image_rows(scored, thumbnails, out), "</table>",
             "<h2>How the detector was made</h2>", "<dl>",
             f"<dt>method</dt><dd>{html.escape(str(record['method']))}</dd>",
             f"<dt>K</dt><dd>{record['support']['count']} support images</dd>",
             f"<dt>threshold rule</dt><dd>{html.escape(str(threshold.get('rule', '')))}</dd>",
             f"<dt>normal reference scores</dt><dd>{', '.join(f'{s:.4g}' for s in references) or 'none'}</dd>",
             "</dl>", f"<h2>Settings</h2><pre>{html.escape(settings)}</pre>", "</body></html>"]
    path = Path(out) / REPORT_FILE
    write_text_atomic(path, "\n".join(body) + "\n")
    return path
