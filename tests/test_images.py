"""Images as they come: non-square products keep their aspect, large images are tiled (``fsad fit`` / ``predict``,
``fsad.product.tiling``), and the study harness takes ``image_size: [H, W]``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import fails, fsad
from PIL import Image

from fsad.config import RegADConfig
from fsad.data.mvtec import load_category
from fsad.data.support_sets import make_support_sets
from fsad.methods.base import Scores
from fsad.methods.registry import build_detector, load_detector
from fsad.product.tiling import TiledDetector, tile_starts
from fsad.study.evaluation import TestSet, evaluate_detector

CONFIG = "regad:\n  pretrained: false\n  device: cpu\n"


def product(root: Path, height: int, width: int, defect: bool = False) -> Path:
    """4 good grey images of ``height`` x ``width`` (flat grey + noise) in root/good, 2 good ones in root/test and,
    with ``defect``, one with a 6 x 6 px checkerboard patch (mean grey: downscaling averages it away)."""
    rng = np.random.default_rng(0)

    def texture() -> np.ndarray:
        return np.clip(128 + rng.normal(0, 4, (height, width)), 0, 255)

    for folder, count in (("good", 4), ("test", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(texture().astype(np.uint8)).save(root / folder / f"{folder}{i}.png")
    if defect:
        image = texture()
        y, x = np.mgrid[0:6, 0:6]
        image[height // 2 : height // 2 + 6, width // 3 : width // 3 + 6] = np.where((x + y) % 2 == 0, 28, 228)
        Image.fromarray(image.astype(np.uint8)).save(root / "test" / "defect.png")
    (root / "config.yaml").write_text(CONFIG)
    return root


def test_a_non_square_product_keeps_its_aspect_from_fit_to_heat_map(tmp_path, capsys):
    root = product(tmp_path, 40, 120)  # 3x wider than tall
    fsad("fit", root / "good", "--config", root / "config.yaml", "--image-size", 32, "--out", root / "det")
    assert "(32 x 96 px," in capsys.readouterr().out
    detector, record = load_detector(root / "det", device="cpu")
    assert record["settings"]["regad"]["image_size"] == [32, 96] and record["image"]["aspect"] == "keep"
    height, width = detector.embed(torch.zeros(1, 3, 32, 96))[0].shape[-2:]  # feature cells: 3x as many across as down
    assert width == 3 * height
    fsad("predict", root / "det", root / "test", "--out", root / "out", "--masks")
    rows = pd.read_csv(root / "out" / "predictions.csv")
    for column in ("heatmap", "mask"):
        assert all(Image.open(path).size == (120, 40) for path in rows[column])  # (width, height): the image's own


def test_synthetic_anomalies_of_a_non_square_product_set_its_threshold(tmp_path, capsys):
    root = product(tmp_path, 40, 120)
    fsad("fit", root / "good", "--config", root / "config.yaml", "--image-size", 32, "--method", "padim",
         "--threshold", "synthetic", "--out", root / "det")
    assert "12 synthetic" in capsys.readouterr().out  # 3 per support image, drawn at 32 x 96


def test_a_non_square_detector_exports_its_graph_at_h_by_w(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    root = product(tmp_path, 40, 120)
    (root / "config.yaml").write_text(CONFIG + "  runtime: onnxruntime\n")
    fsad("fit", root / "good", "--config", root / "config.yaml", "--image-size", 32, 96, "--out", root / "det")
    fsad("export", root / "det")
    assert "features for 32 x 96 images" in capsys.readouterr().out
    assert json.loads((root / "det" / "detector.json").read_text())["export"]["size"] == [32, 96]
    fsad("predict", root / "det", root / "test", "--out", root / "out")
    assert len(pd.read_csv(root / "out" / "predictions.csv")) == 2


def test_squashing_stays_available_and_keeps_the_old_square(tmp_path, capsys):
    root = product(tmp_path, 40, 120)
    fsad("fit", root / "good", "--config", root / "config.yaml", "--image-size", 32, "--aspect", "square", "--out", root / "det")
    detector, record = load_detector(root / "det", device="cpu")
    assert record["settings"]["regad"]["image_size"] == 32
    height, width = detector.embed(torch.zeros(1, 3, 32, 32))[0].shape[-2:]
    assert height == width  # squashed into the square again


def test_tiling_finds_a_small_defect_that_the_squashed_detector_misses(tmp_path, capsys):
    root = product(tmp_path, 64, 64, defect=True)
    fit = ("fit", root / "good", "--config", root / "config.yaml", "--image-size", 32, "--method", "padim",
           "--threshold", "max_margin")
    labels = {}
    for name, how in (("square", ("--aspect", "square")), ("tiled", ("--tile", "2"))):
        fsad(*fit, *how, "--out", root / name)
        fsad("predict", root / name, root / "test", "--out", root / f"{name}_out", "--masks")
        rows = pd.read_csv(root / f"{name}_out" / "predictions.csv").set_index("path")
        labels[name] = rows["label"].rename(index=lambda p: Path(p).stem).to_dict()
    assert labels["square"]["defect"] == "normal"  # 6 px of checkerboard squashed to 3: averaged to grey
    assert labels["tiled"] == {"defect": "anomalous", "test0": "normal", "test1": "normal"}
    record = json.loads((root / "tiled" / "detector.json").read_text())
    assert record["tiling"]["tiles"] == 9 and record["tiling"]["tile"] == [32, 32]  # 3 x 3 overlapping tiles
    mask = np.asarray(Image.open(root / "tiled_out" / "masks" / "test" / "defect.png")) > 0
    assert mask.shape == (64, 64) and mask[32:38, 21:27].any() and not mask[:16].any()  # on the defect, nowhere else


@pytest.mark.parametrize(("argv", "says"), [
    (("--image-size", "32", "10"), "fsad fit --image-size: image_size: [32, 10]: each side must be >= 32"),
    (("--image-size", "32", "64", "96"), "image_size: [32, 64, 96] is not a side (224) or [height, width]"),
    (("--tile", "0"), "fsad fit: --tile must be >= 1"),
])
def test_a_wrong_size_is_one_line_naming_the_key(tmp_path, capsys, argv, says):
    root = product(tmp_path, 40, 40)
    assert says in fails(capsys, "fit", root / "good", "--config", root / "config.yaml", *argv, "--out", root / "det")


def test_a_wrong_size_in_the_config_names_file_and_key(tmp_path, capsys):
    root = product(tmp_path, 40, 40)
    (root / "config.yaml").write_text(CONFIG + "  image_size: [64, 0]\n")
    line = fails(capsys, "fit", root / "good", "--config", root / "config.yaml", "--out", root / "det")
    assert f"{root / 'config.yaml'}: regad.image_size: [64, 0]: each side must be >= 32" in line


def test_a_square_pair_is_the_old_int_setting():
    assert RegADConfig(image_size=[64, 64]).to_dict() == RegADConfig(image_size=64).to_dict()
    assert RegADConfig.from_dict({"image_size": [48, 80]}).to_dict()["image_size"] == [48, 80]


def test_tiles_cover_the_image_and_stitch_back_to_its_size():
    assert tile_starts(64, 32) == [0, 16, 32] and tile_starts(32, 32) == [0] and tile_starts(100, 32)[-1] == 68
    tiled = TiledDetector(build_detector("padim", RegADConfig(image_size=32, pretrained=False, device="cpu")), (48, 100))
    tiled.fit(torch.rand(3, 3, 48, 100))
    scores = tiled.predict(torch.rand(2, 3, 48, 100))
    assert scores.maps.shape == (2, 48, 100) and scores.image.shape == (2,)
    tiles = len(tiled.corners)  # 2 x 4, overlapping: a constant map stays constant (mean over overlaps)
    stitched = tiled.stitch(Scores(maps=torch.full((2 * tiles, 32, 32), 3.0), image=torch.arange(2.0 * tiles)), 2)
    assert torch.allclose(stitched.maps, torch.full((2, 48, 100), 3.0))
    assert stitched.image.tolist() == [tiles - 1, 2 * tiles - 1]  # the highest tile of each image


def test_the_evaluation_loop_takes_h_by_w(toy_root):
    category = load_category(toy_root, "disc")
    detector = build_detector("padim", RegADConfig(image_size=[32, 48], pretrained=False, device="cpu"))
    test = TestSet.load(category, (32, 48))
    evaluated = evaluate_detector(detector, category, make_support_sets(category, [2], n_sets=1), test,
                                  ["image_auroc", "pixel_auroc"], progress=False)
    assert evaluated.rows[0]["pixel_auroc"] > 0 and test.masks.shape[1:] == (32, 48)


def test_method_auto_ranks_a_non_square_product_at_its_shape_and_refuses_tiles(tmp_path, capsys):
    root = product(tmp_path, 40, 120)
    says = fails(capsys, "fit", root / "good", "--config", root / "config.yaml", "--method", "auto", "--tile", 2,
                 "--out", root / "tiled")
    assert "--method auto ranks the methods on whole images and cannot rank tiled ones" in says
    assert not (root / "tiled").exists()  # refused before any work
    fsad("fit", root / "good", "--config", root / "config.yaml", "--image-size", 32, "--method", "auto",
         "--out", root / "det")
    _, record = load_detector(root / "det", device="cpu")
    assert record["selection"]["chosen"] == record["method"]
    assert record["settings"]["regad"]["image_size"] == [32, 96]  # the chosen method fitted at the product's shape
