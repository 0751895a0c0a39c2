"""``fsad fit`` / ``fsad predict`` end to end on tiny generated images (random-weight backbone), and the threshold rule."""

from __future__ import annotations

import copy
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fsad.cli import main
from fsad.methods.registry import load_detector
from fsad.product.calibration import reference_scores, synthetic_anomalies
from fsad.product.threshold import References, Threshold

CONFIG = "regad:\n  pretrained: false\n  image_size: 32\n  device: cpu\n"


def fsad(*argv: str) -> None:
    main([str(a) for a in argv])


def fails(capsys, *argv: str) -> str:
    """Run ``fsad argv``: it must exit with code 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        fsad(*argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsad: error: "), lines
    return lines[0]


def png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    """Write an H x W x 3 uint16 array as a 48-bit PNG (PIL writes no 16-bit colour PNG)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
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
    assert record["method"] == "padim_views" and record["settings"]["regad"]["image_size"] == 32

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
    _, record = load_detector(tmp / "detector")
    threshold = record["threshold"]
    assert threshold["leave_one_out_scores"] == [] and len(threshold["good_scores"]) == 4
    expected, _ = Threshold.level(threshold["rule"], References(good=np.array(threshold["good_scores"]), k=1))
    assert threshold["image"] == pytest.approx(expected)
    assert record["good"]["count"] == 4 and record["good"]["fingerprint"]
    line = fails(capsys, "fit", one, "--good", extra, "--threshold", "synthetic", "--config", product["config"],
                 "--out", tmp / "other")
    assert "--threshold synthetic" in line and "K = 1" in line and not (tmp / "other").exists()


@pytest.mark.parametrize("rule", ["views_tail", "synthetic"])
def test_fit_records_the_rule_and_its_references(product, rule):
    tmp = product["tmp"]
    fsad("fit", product["good"], "--threshold", rule, "--target-fpr", "0.05", "--config", product["config"],
         "--out", tmp / "detector")
    _, record = load_detector(tmp / "detector")
    threshold = record["threshold"]
    assert threshold["rule"] == rule and threshold["description"].startswith(f"{rule}: ")
    assert threshold["target_fpr"] == (0.05 if rule == "views_tail" else None)
    loo = threshold["leave_one_out_scores"]
    assert len(threshold["views_scores"]) == (88 if rule == "views_tail" else 0)
    assert len(threshold["synthetic_scores"]) == (12 if rule == "synthetic" else 0)
    if rule == "views_tail":  # view 0 of every support image is the image itself
        assert np.allclose(threshold["views_scores"][::22], loo, rtol=1e-5)
    refs = References(**{kind: np.array(threshold[f"{kind}_scores"]) for kind in ("leave_one_out", "views", "good", "synthetic")}, k=4)
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
    line = fails(capsys, "fit", product["good"], "--method", "patchcore", "--config", product["config"], "--out", out)
    assert "holds a detector made from other method;" in line and "--force" in line
    fewer = sorted(product["good"].rglob("0*.png"))[:3]
    assert "other support" in fails(capsys, "fit", *fewer, "--config", product["config"], "--out", out)
    fsad("fit", product["good"], "--method", "patchcore", "--config", product["config"], "--out", out, "--force")
    assert load_detector(out)[1]["method"] == "patchcore"
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
