"""``fsad fit`` / ``fsad predict`` end to end on tiny generated images (random-weight backbone), and the threshold rule."""

from __future__ import annotations

import copy
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import fails, fsad
from PIL import Image

from fsad.methods.registry import load_detector
from fsad.product.calibration import reference_scores, synthetic_anomalies
from fsad.product.fit import DEFAULT_METHOD
from fsad.product.threshold import References, Threshold

CONFIG = "regad:\n  pretrained: false\n  image_size: 32\n  device: cpu\n"


def png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    """Write an H x W x 3 uint16 array as a 48-bit PNG (PIL writes no 16-bit colour PNG)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def png_giant(path: Path) -> Path:
    """A PNG whose header claims 30000 x 30000 grey pixels (900 M), with no pixel data: refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def product(toy_root, tmp_path) -> dict[str, Path]:
    """A new product: 4 good images in nested folders with macOS litter, a config, the test images."""
    good = tmp_path / "good"
    (good / "day2").mkdir(parents=True)
    train = sorted((toy_root / "disc" / "train" / "good").glob("*.png"))
    for i, path in enumerate(train[:4]):
        shutil.copy(path, good / ("day2" if i % 2 else "") / path.name)
    (good / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (good / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    return {"good": good, "config": config, "test": toy_root / "disc" / "test", "extra": train[4:8], "tmp": tmp_path}


def test_fit_then_predict_writes_scores_heatmaps_and_masks_at_each_image_size(product, capsys):
    tmp = product["tmp"]
    fsad("fit", product["good"], "--config", product["config"], "--out", tmp / "detector")
    detector, record = load_detector(tmp / "detector")
    assert record["support"]["count"] == 4 and len(record["threshold"]["leave_one_out_scores"]) == 4
    assert record["method"] == DEFAULT_METHOD and record["settings"]["regad"]["image_size"] == 32

    odd = tmp / "odd"
    odd.mkdir()
    colour = np.asarray(Image.open(next((product["test"] / "good").glob("*.png"))).convert("RGB"))
    Image.fromarray(colour[:, :50].mean(axis=2).astype(np.uint8)).save(odd / "grey.png")  # 64 x 50 grey
    Image.fromarray(np.dstack([colour, np.full(colour.shape[:2], 7, np.uint8)])).save(odd / "rgba.png")
    deep = (colour[:40, :48, 0].astype(np.uint16) * 257)
    Image.fromarray(deep).save(odd / "deep.tif")  # 16-bit grey TIFF
    Image.fromarray(deep).save(odd / "deep.png")  # 16-bit grey PNG
    png16_rgb(odd / "deep_rgb.png", colour[:30].astype(np.uint16) * 257)  # 48-bit colour PNG
    fsad("predict", tmp / "detector", product["test"], odd, "--out", tmp / "results", "--masks")
    printed = capsys.readouterr().out
    assert f"predictions: {tmp / 'results' / 'predictions.csv'}" in printed

    table = pd.read_csv(tmp / "results" / "predictions.csv")
    assert list(table.columns) == ["path", "score", "normalised_score", "label", "heatmap", "mask", "error"]
    assert len(table) == 8 + 5 and table["error"].isna().all()
    threshold = record["threshold"]
    expected = np.clip(0.5 + (table["score"] - threshold["image"]) / (2 * (threshold["image"] - threshold["image_normal"])), 0, 1)
    assert np.allclose(table["normalised_score"], expected)
    assert ((table["normalised_score"] > 0.5) == (table["label"] == "anomalous")).all()
    for row in table.itertuples():
        with Image.open(row.path) as image:
            size = image.size
        heatmap, mask = Image.open(row.heatmap), Image.open(row.mask)
        assert heatmap.size == size and heatmap.mode == "RGB" and mask.size == size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert (tmp / "results" / "heatmaps" / "odd" / "deep.png").is_file() and (tmp / "results" / "heatmaps" / "odd" / "deep-2.png").is_file()

    # The CSV's scores are the saved detector's: the same images through the loaded detector.
    from fsad.data.mvtec import read_image

    paths = list(table["path"][:8])
    scores = detector.predict(torch.stack([read_image(p, 32) for p in paths])).image
    assert np.allclose(scores.numpy(), table["score"][:8].to_numpy(), rtol=1e-5)


def test_predict_skips_an_unreadable_image_then_fails_naming_it(product, capsys):
    tmp = product["tmp"]
    fsad("fit", product["good"], "--config", product["config"], "--out", tmp / "detector")
    images = tmp / "incoming"
    shutil.copytree(product["test"] / "good", images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = fails(capsys, "predict", tmp / "detector", images, "--out", tmp / "results")
    assert "1 of 5 images could not be read" in line and "broken.png" in line
    table = pd.read_csv(tmp / "results" / "predictions.csv")
    assert table["label"].tolist().count("error") == 1 and table["score"].notna().sum() == 4
    assert "broken.png" in table.loc[table["label"] == "error", "error"].iloc[0]


def test_threshold_from_good_images_alone_with_one_support_image(product, capsys):
    tmp = product["tmp"]
    one = next(product["good"].glob("*.png"))
    extra = tmp / "extra"
    extra.mkdir()
    for path in product["extra"]:
        shutil.copy(path, extra / path.name)
    fsad("fit", one, "--good", extra, "--config", product["config"], "--out", tmp / "detector")
    assert "note: no --good images" not in capsys.readouterr().out
    _, record = load_detector(tmp / "detector")
    threshold = record["threshold"]
    assert threshold["leave_one_out_scores"] == [] and len(threshold["good_scores"]) == 4
    expected, _ = Threshold.level(threshold["rule"], References(good=np.array(threshold["good_scores"]), k=1, method=record["method"]))
    assert threshold["image"] == pytest.approx(expected)
    assert record["good"]["count"] == 4 and record["good"]["fingerprint"]
    line = fails(capsys, "fit", one, "--good", extra, "--threshold", "synthetic", "--config", product["config"],
                 "--out", tmp / "other")
    assert "--threshold synthetic" in line and "K = 1" in line and not (tmp / "other").exists()


def test_the_default_rule_is_tail_with_ten_good_images_and_lognormal_with_fewer(product, toy_root):
    tmp = product["tmp"]
    extra = [*product["extra"], *sorted((toy_root / "disc" / "train" / "good").glob("*.png"))[8:],
             *sorted((toy_root / "disc" / "test" / "good").glob("*.png"))]  # 12 good images the support does not hold
    fsad("fit", product["good"], "--good", *extra[:9], "--config", product["config"], "--out", tmp / "nine")
    fsad("fit", product["good"], "--good", *extra[:10], "--config", product["config"], "--out", tmp / "ten")
    fsad("fit", product["good"], "--good", *extra[:10], "--threshold", "mad", "--config", product["config"], "--out", tmp / "named")
    rules = [load_detector(tmp / name)[1]["threshold"]["rule"] for name in ("nine", "ten", "named")]
    assert rules == ["lognormal", "tail", "mad"]


@pytest.mark.parametrize("rule", ["views_tail", "synthetic"])
def test_fit_records_the_rule_and_its_references(product, rule):
    tmp = product["tmp"]
    fsad("fit", product["good"], "--method", "padim_views", "--threshold", rule, "--target-fpr", "0.05",
         "--config", product["config"], "--out", tmp / "detector")
    _, record = load_detector(tmp / "detector")
    threshold = record["threshold"]
    assert threshold["rule"] == rule and threshold["description"].startswith(f"{rule}: ")
    assert threshold["target_fpr"] == (0.05 if rule == "views_tail" else None)
    loo = threshold["leave_one_out_scores"]
    assert len(threshold["views_scores"]) == (88 if rule == "views_tail" else 0)
    assert len(threshold["synthetic_scores"]) == (12 if rule == "synthetic" else 0)
    if rule == "views_tail":  # view 0 of every support image is the image itself
        assert np.allclose(threshold["views_scores"][::22], loo, rtol=1e-5)
    refs = References(**{kind: np.array(threshold[f"{kind}_scores"]) for kind in ("leave_one_out", "views", "good", "synthetic")}, k=4,
                      method=record["method"])
    assert (threshold["image"], threshold["image_normal"]) == pytest.approx(Threshold.level(rule, refs, 0.05))
    assert threshold["pixel"] == pytest.approx(threshold["image"])  # padim_views: the image score is the map's maximum


def test_bad_threshold_options_are_one_line_errors(product, capsys):
    tmp = product["tmp"]
    line = fails(capsys, "fit", product["good"], "--threshold", "oracle", "--config", product["config"], "--out", tmp / "d")
    assert "unknown --threshold 'oracle'" in line and "max_margin" in line
    line = fails(capsys, "fit", product["good"], "--threshold", "tail", "--target-fpr", "1", "--config", product["config"],
                 "--out", tmp / "d")
    assert "--target-fpr must be between 0 and 0.5" in line and not (tmp / "d").exists()


def test_reference_scores_score_views_and_synthetic_anomalies_leave_one_out(product):
    from fsad.config import RegADConfig
    from fsad.data.mvtec import read_image
    from fsad.methods.registry import build_detector

    regad = RegADConfig(pretrained=False, image_size=32)
    support = torch.stack([read_image(p, 32) for p in product["extra"][:3]])
    detector = build_detector("padim_views", regad)
    image_refs, map_refs = reference_scores(detector, support, support[:1], kinds=("views", "synthetic"))
    assert (len(image_refs.leave_one_out), len(image_refs.views), len(image_refs.synthetic), len(image_refs.good)) == (3, 66, 9, 1)
    held_out = copy.deepcopy(detector)  # the same (random) backbone
    held_out.fit(support[1:])  # the fit that scores image 0
    assert image_refs.leave_one_out[0] == pytest.approx(float(held_out.predict(support[:1]).image[0]), rel=1e-5)
    assert image_refs.synthetic[:3] == pytest.approx(held_out.predict(synthetic_anomalies(support[0])).image.numpy(), rel=1e-5)
    assert image_refs.good[0] == pytest.approx(float(detector.predict(support[:1]).image[0]), rel=1e-5)  # fitted on all K
    assert np.allclose(map_refs.views, image_refs.views)
    assert torch.equal(synthetic_anomalies(support[1]), synthetic_anomalies(support[1].clone()))  # seeded by the pixels


def test_refitting_into_an_out_folder_of_another_detector_needs_force(product, capsys):
    tmp = product["tmp"]
    out = tmp / "detector"
    fsad("fit", product["good"], "--config", product["config"], "--out", out)
    fsad("fit", product["good"], "--config", product["config"], "--out", out)  # the same detector again: fine
    printed = capsys.readouterr().out
    assert "note: the threshold rules were measured" not in printed  # the default method is measured
    assert "note: no --good images" in printed and "pass --good DIR" in printed
    line = fails(capsys, "fit", product["good"], "--method", "patchcore", "--config", product["config"], "--out", out)
    assert "holds a detector made from other method;" in line and "--force" in line
    fewer = sorted(product["good"].rglob("0*.png"))[:3]
    assert "other support" in fails(capsys, "fit", *fewer, "--config", product["config"], "--out", out)
    fsad("fit", product["good"], "--method", "patchcore", "--config", product["config"], "--out", out, "--force")
    assert load_detector(out)[1]["method"] == "patchcore"
    assert "note: the threshold rules were measured" not in capsys.readouterr().out  # patchcore's floor is measured
    fsad("fit", product["good"], "--method", "spade", "--config", product["config"], "--out", out, "--force")
    assert "spade's false-positive rate on new good parts is not known" in capsys.readouterr().out
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("mine")
    assert "not a detector" in fails(capsys, "fit", product["good"], "--config", product["config"], "--out", tmp / "notes")
    assert (tmp / "notes" / "todo.txt").read_text() == "mine"


def test_user_errors_exit_2_with_one_line(product, capsys, tmp_path):
    good, config = product["good"], product["config"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "._a.png").write_bytes(b"AppleDouble")
    assert f"no image in {empty}" in fails(capsys, "fit", empty, "--config", config, "--out", tmp_path / "d")
    assert "does not exist" in fails(capsys, "fit", tmp_path / "nowhere", "--config", config, "--out", tmp_path / "d")
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "zz.png").write_bytes(b"not an image")
    assert "zz.png" in fails(capsys, "fit", broken, "--config", config, "--out", tmp_path / "d")
    one = next(good.glob("*.png"))
    assert "padim needs K >= 2" in fails(capsys, "fit", one, "--method", "padim", "--config", config, "--out", tmp_path / "d")
    two = sorted(good.rglob("*.png"))[:2]
    assert "--good" in fails(capsys, "fit", *two, "--method", "padim", "--config", config, "--out", tmp_path / "d")
    for method in ("regad", "resad"):
        assert "--model" in fails(capsys, "fit", good, "--method", method, "--config", config, "--out", tmp_path / "d")
    assert "drop --model" in fails(capsys, "fit", good, "--model", config, "--config", config, "--out", tmp_path / "d")
    options = tmp_path / "options.yaml"
    options.write_text(CONFIG + "options:\n  coreset: 0.1\n")
    line = fails(capsys, "fit", good, "--method", "patchcore", "--config", options, "--out", tmp_path / "d")
    assert "'patchcore' has no option(s) coreset" in line and "coreset_ratio" in line
    assert "not a detector folder" in fails(capsys, "predict", good, good, "--out", tmp_path / "r")
    assert not (tmp_path / "d").exists()  # nothing was written by a failed fit
    fsad("fit", good, "--config", config, "--out", tmp_path / "d")
    assert "inside the input folder" in fails(capsys, "predict", tmp_path / "d", good, "--out", good / "results")


def test_reader_scales_48_bit_colour_png(tmp_path):
    from fsad.data.mvtec import read_image

    pixels = np.zeros((3, 4, 3), dtype=np.uint16)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 65535, 32896, 0  # 32896 = 128 * 257
    image = read_image(png16_rgb(tmp_path / "deep.png", pixels), None)
    assert image.shape == (3, 3, 4)
    assert torch.allclose(image[:, 1, 1], torch.tensor([1.0, 128 / 255, 0.0]))


def test_a_malformed_config_is_one_line_naming_the_file(product, capsys):
    bad = product["tmp"] / "bad.yaml"
    bad.write_text("regad:\n  image_size: [32\n")
    assert "bad.yaml: not valid YAML (line 3)" in fails(capsys, "fit", product["good"], "--config", bad, "--out", product["tmp"] / "d")


def test_fit_and_predict_read_a_line_scan_image_and_refuse_only_one_beyond_the_limit(product, capsys, monkeypatch):
    from fsad.data import mvtec
    from fsad.product import predict

    monkeypatch.setattr(mvtec, "DECODE_PIXELS", 2**20)  # the defaults' code paths at a test's cost
    monkeypatch.setattr(predict, "OVERLAY_PIXELS", 2**16)
    tmp = product["tmp"]
    line_scan = Image.new("L", (14001, 12800), 120)  # 179.2 M pixels: over Pillow's decompression-bomb limit
    line_scan.save(product["good"] / "line_scan.jpg")
    fsad("fit", product["good"], "--config", product["config"], "--out", tmp / "detector")
    assert load_detector(tmp / "detector")[1]["support"]["count"] == 5

    incoming = tmp / "incoming"
    incoming.mkdir()
    for path in sorted((product["test"] / "good").glob("*.png"))[:2]:
        shutil.copy(path, incoming / path.name)
    line_scan.save(incoming / "line_scan.jpg")
    png_giant(incoming / "giant.png")
    line = fails(capsys, "predict", tmp / "detector", incoming, "--out", tmp / "results", "--masks")
    assert "1 of 4 images could not be read (first: " in line and "giant.png" in line
    table = pd.read_csv(tmp / "results" / "predictions.csv")
    table.index = [Path(p).name for p in table["path"]]
    assert table["score"].notna().sum() == 3 and table.loc["giant.png", "label"] == "error"
    assert "30000x30000 (900 megapixels), more than fsad reads" in table.loc["giant.png", "error"]
    # decoded at 1/8 then halved (876 x 800), the heat-map and mask a quarter of that: 219 x 200
    assert Image.open(table.loc["line_scan.jpg", "heatmap"]).size == Image.open(table.loc["line_scan.jpg", "mask"]).size == (219, 200)
    assert Image.open(table.loc["000.png", "heatmap"]).size == (64, 64)


def _turned(upright: np.ndarray, path: Path) -> Path:
    """Save ``upright`` as a camera held turned writes it: pixels stored a quarter turn off, EXIF orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn the stored pixels a quarter clockwise
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    return path


def test_fit_and_predict_see_images_as_viewers_show_them(product, capsys):
    tmp = product["tmp"]
    upright, turned = tmp / "upright", tmp / "turned"
    upright.mkdir()
    turned.mkdir()
    for path in sorted(p for p in product["good"].rglob("*.png") if not p.name.startswith(".")):
        pixels = np.asarray(Image.open(path).convert("RGB"))[:, :48]  # 64 high, 48 wide: a quarter turn shows
        Image.fromarray(pixels).save(upright / path.name)
        _turned(pixels, turned / path.name)
    for folder in (upright, turned):
        torch.manual_seed(0)  # the same random-weight backbone for both
        fsad("fit", folder, "--config", product["config"], "--out", tmp / f"from_{folder.name}")
    thresholds = [load_detector(tmp / name)[1]["threshold"] for name in ("from_upright", "from_turned")]
    assert thresholds[0]["leave_one_out_scores"] == pytest.approx(thresholds[1]["leave_one_out_scores"], rel=1e-5)

    incoming = tmp / "incoming"
    incoming.mkdir()
    shown = np.asarray(Image.open(next((product["test"] / "good").glob("*.png"))).convert("RGB"))[:, :48]
    Image.fromarray(shown).save(incoming / "a_upright.png")
    _turned(shown, incoming / "b_turned.png")
    fsad("predict", tmp / "from_upright", incoming, "--out", tmp / "results")
    table = pd.read_csv(tmp / "results" / "predictions.csv")
    assert table["score"][0] == pytest.approx(table["score"][1], rel=1e-5)
    heatmaps = [np.asarray(Image.open(path)) for path in table["heatmap"]]
    assert heatmaps[0].shape == heatmaps[1].shape == (64, 48, 3) and np.abs(heatmaps[0].astype(int) - heatmaps[1]).max() <= 1


def _report_rows(page: str) -> list[tuple[str, str, float]]:
    """``(label, image path, score)`` of each image row of report.html, in page order."""
    import html
    import re

    rows = re.findall(r'<tr data-label="(\w+)"><td class="number">\d+</td><td><a href="[^"]*"><img src="data:image/jpeg;base64,'
                      r'[A-Za-z0-9+/=]+" alt="[^"]*"></a></td><td>([^<]+)</td><td class="number">([^<]+)</td>', page)
    return [(label, html.unescape(path), float(score)) for label, path, score in rows]


def test_predict_writes_a_self_contained_report_of_every_image(product, capsys):
    tmp = product["tmp"]
    fsad("fit", product["good"], "--config", product["config"], "--out", tmp / "detector")
    incoming = tmp / "incoming & more"  # a name HTML must escape
    shutil.copytree(product["test"], incoming)
    (incoming / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the broken image fails the run, after the report is written
        fsad("predict", tmp / "detector", incoming, "--out", tmp / "results")
    printed = capsys.readouterr()
    table = pd.read_csv(tmp / "results" / "predictions.csv")
    page = (tmp / "results" / "report.html").read_text()
    _, record = load_detector(tmp / "detector")

    scored = table[table["label"] != "error"].sort_values("score", ascending=False)
    rows = _report_rows(page)
    assert [path for _, path, _ in rows] == scored["path"].tolist()  # every image, most anomalous first
    assert [label for label, _, _ in rows] == scored["label"].tolist()
    assert np.allclose([score for *_, score in rows], scored["score"], rtol=1e-3)
    assert f'<tr data-label="error"><td>{incoming / "broken.png"}</td>'.replace("&", "&amp;") in page
    threshold = record["threshold"]
    assert f"threshold {threshold['image']:.4g}</text>" in page  # on the histogram
    assert f"Image threshold <b>{threshold['image']:.4g}</b>" in page
    assert f"<b>{DEFAULT_METHOD}</b>, K = 4 support images" in page and "image_size: 32" in page
    assert threshold["rule"][:60] in page
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # offline
    assert f"report: {tmp / 'results' / 'report.html'}" in printed.out and " images/s " in printed.out
    assert '<p class="note">' not in page  # 8 images: too few for the note on a mostly flagged run


def test_flagged_note_only_when_a_large_run_is_mostly_flagged():
    from fsad.product.predict import FLAG_CHECK_FROM, flagged_note

    record = {"threshold": {"target_fpr": 0.05}, "support": {"count": 4}, "good": {"count": 0}}
    assert flagged_note(9, 30, record) is None  # 30 %: not more than FLAGGED_NOTE
    note = flagged_note(10, 30, record)
    assert note.startswith("10 of 30 images (33 %) are anomalous") and "5 % false-positive rate" in note
    assert "K = 4 support images" in note and "refitting with --good DIR" in note
    assert flagged_note(FLAG_CHECK_FROM - 1, FLAG_CHECK_FROM - 1, record) is None  # too few images to tell
    with_good = {**record, "threshold": {"target_fpr": None}, "good": {"count": 30}}
    note = flagged_note(20, 20, with_good)
    assert "what the threshold expects" in note and "refitting with more --good images" in note


def test_predict_notes_a_mostly_flagged_run_in_the_output_and_the_report(product, capsys, monkeypatch):
    from fsad.product import predict

    tmp = product["tmp"]
    fsad("fit", product["good"], "--config", product["config"], "--out", tmp / "detector")
    monkeypatch.setattr(predict, "FLAG_CHECK_FROM", 1)  # the toy test split has 8 images
    monkeypatch.setattr(predict, "FLAGGED_NOTE", 0.0)  # any flagged image: the note
    capsys.readouterr()
    fsad("predict", tmp / "detector", product["test"], "--out", tmp / "results")
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp / "results" / "predictions.csv")
    anomalous = int((table["label"] == "anomalous").sum())
    assert anomalous > 0  # the toy's defects are flagged
    line = f"{anomalous} of {len(table)} images ({100 * anomalous / len(table):.0f} %) are anomalous"
    assert f"note: {line}" in printed
    assert f'<p class="note"><b>Note:</b> {line}' in (tmp / "results" / "report.html").read_text()


@pytest.mark.slow
def test_report_shows_in_a_real_browser_when_moved_away(product, capsys, tmp_path):
    """Chromium (Debian's ``chromium``) renders report.html from another folder: every heat-map decodes, the text shows."""
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); the report's browser test needs it")
    fsad("fit", product["good"], "--config", product["config"], "--out", tmp_path / "detector")
    fsad("predict", tmp_path / "detector", product["test"], "--out", tmp_path / "results")
    threshold = load_detector(tmp_path / "detector")[1]["threshold"]["image"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    page = (tmp_path / "results" / "report.html").read_text()
    (moved / "report.html").write_text(page)
    # A copy that, once loaded, counts the images the browser decoded.
    counting = '<script>addEventListener("load", () => { document.body.dataset.decoded = [...document.images]' \
               '.filter(image => image.complete && image.naturalWidth > 0).length; });</script></body>'
    (moved / "counting.html").write_text(page.replace("</body>", counting))

    def browse(*args: str) -> str:
        result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                 f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", *args],
                                capture_output=True, text=True, timeout=120, check=True)
        return result.stdout

    dom = browse("--dump-dom", (moved / "counting.html").as_uri())
    assert 'data-decoded="8"' in dom  # the 8 test images' heat-maps, from the page alone
    assert f"threshold {threshold:.4g}" in dom and DEFAULT_METHOD in dom
    shot = tmp_path / "report.png"
    browse("--window-size=1100,1400", f"--screenshot={shot}", (moved / "report.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (1400, 1100, 3)
    red_bars = (np.abs(pixels - [0xE4, 0x57, 0x56]).sum(axis=2) < 30).sum()  # anomalous bars and labels
    blue_bars = (np.abs(pixels - [0x4C, 0x78, 0xA8]).sum(axis=2) < 30).sum()  # normal bars and labels
    assert red_bars > 500 and blue_bars > 500


# ----------------------------------------------------------------------------- devices (issue 22)
def _as_if_fitted_on(folder: Path, device: str) -> None:
    """Rewrite a detector folder's settings as a GPU machine would have written them."""
    saved = torch.load(folder / "detector.pt", map_location="cpu", weights_only=True)
    saved["settings"]["regad"]["device"] = device
    torch.save(saved, folder / "detector.pt")
    record = json.loads((folder / "detector.json").read_text())
    record["settings"]["regad"]["device"] = device
    (folder / "detector.json").write_text(json.dumps(record))


def test_fit_regad_l_trains_on_each_support_set(product, capsys):
    """RegAD-L trains inside fit; fsad fit used to run it without gradients (issue 22, item 1)."""
    config = product["tmp"] / "regad_l.yaml"
    config.write_text(CONFIG + "options:\n  epochs: 1\n")
    out = product["tmp"] / "regad_l"
    fsad("fit", product["good"], "--method", "regad_l", "--config", config, "--out", out)
    assert "regad_l fitted on K = 4 images" in capsys.readouterr().out
    fsad("predict", out, product["test"], "--out", product["tmp"] / "results")
    assert len(pd.read_csv(product["tmp"] / "results" / "predictions.csv")) == 8


def test_fit_and_predict_run_on_the_device_asked_and_folders_move(product, capsys):
    good, tmp = product["good"], product["tmp"]
    cuda = tmp / "cuda.yaml"
    cuda.write_text(CONFIG.replace("device: cpu", "device: cuda"))
    if not torch.cuda.is_available():
        assert "no CUDA device is visible" in fails(capsys, "fit", good, "--config", cuda, "--out", tmp / "d")
    fsad("fit", good, "--config", cuda, "--device", "cpu", "--out", tmp / "d")  # --device overrides the config
    assert load_detector(tmp / "d", device="cpu")[1]["settings"]["regad"]["device"] == "cpu"
    fsad("predict", tmp / "d", product["test"], "--device", "cpu", "--out", tmp / "on_cpu")
    _as_if_fitted_on(tmp / "d", "cuda")  # a folder fitted on a GPU machine, brought here
    fsad("predict", tmp / "d", product["test"], "--out", tmp / "auto")  # default: auto
    on_cpu, auto = (pd.read_csv(tmp / f / "predictions.csv") for f in ("on_cpu", "auto"))
    assert np.allclose(on_cpu["score"], auto["score"])
    fsad("fit", good, "--config", product["config"], "--device", "cpu", "--out", tmp / "d")  # same images: no --force
    for command in (["fit", good, "--out", tmp / "e"], ["predict", tmp / "d", good, "--out", tmp / "r"]):
        with pytest.raises(SystemExit) as exit_info:
            fsad(*command, "--device", "gpu")
        assert exit_info.value.code == 2 and "unknown device 'gpu'" in capsys.readouterr().err


def test_a_cuda_index_beyond_the_machine_fails_before_any_work(product, capsys, monkeypatch):
    """cuda:3 on a one-GPU machine fails naming the GPUs, before images are read (issue 22, item 3)."""
    fsad("fit", product["good"], "--config", product["config"], "--out", product["tmp"] / "d")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = fails(capsys, "fit", product["good"], "--config", product["config"], "--device", "cuda:3", "--out", product["tmp"] / "e")
    assert "'cuda:3'" in line and "1 CUDA device(s): cuda:0" in line
    line = fails(capsys, "predict", product["tmp"] / "d", product["test"], "--device", "cuda:3", "--out", product["tmp"] / "r")
    assert "1 CUDA device(s)" in line
    assert not (product["tmp"] / "e").exists() and not (product["tmp"] / "r").exists()
