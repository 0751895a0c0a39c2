"""The MVTec-layout reader: listing, validation, image and mask decoding, the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsad.data.loading import load_images, load_masks
from fsad.data.mvtec import check_image, image_size, list_categories, load_category, read_image, read_mask, resize_image

FSAD_MINI_COUNTS = {  # category: (train/good, test/good, test defective, has masks), its README
    "bottle": (209, 20, 63, False),
    "magnetic_tile": (300, 100, 387, True),
    "metal_plate": (50, 30, 71, True),
    "pcb": (300, 100, 200, True),
}


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _grey(value: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("L", size, value)


def _tiny_category(root: Path, with_masks: bool = True) -> Path:
    """root/widget: 2 train, 1 test/good, 2 test/scratch (8x6 images) with masks if asked."""
    category = root / "widget"
    for name in ("a.png", "b.PNG"):
        _save(category / "train" / "good" / name, _grey(100))
    _save(category / "test" / "good" / "c.png", _grey(100))
    for name in ("d.png", "e.jpg"):
        _save(category / "test" / "scratch" / name, Image.new("RGB", (8, 6), (250, 0, 0)))
        if with_masks:
            _save(category / "ground_truth" / "scratch" / f"{Path(name).stem}_mask.png", _grey(255))
    return category


def test_fsad_mini_categories_and_counts(fsad_mini_root):
    assert list_categories(fsad_mini_root) == sorted(FSAD_MINI_COUNTS)
    for name, (n_train, n_good, n_defective, has_masks) in FSAD_MINI_COUNTS.items():
        category = load_category(fsad_mini_root, name)
        labels = [s.label for s in category.test]
        assert (len(category.train), labels.count(0), labels.count(1)) == (n_train, n_good, n_defective)
        assert category.has_masks is has_masks
        anomalous = [s for s in category.test if s.label == 1]
        assert all((s.mask_path is not None) is has_masks for s in anomalous)
        assert all(s.mask_path is None for s in category.test if s.label == 0)
        assert category.path == fsad_mini_root.resolve() / name
        assert all(s.path.is_absolute() and s.path.is_file() for s in category.train)


def test_fsad_mini_bottle_defects_and_order(fsad_mini_root):
    bottle = load_category(fsad_mini_root, "bottle")
    defects = [s.defect for s in bottle.test]
    assert sorted(set(defects)) == ["broken_large", "broken_small", "contamination", "good"]
    assert [(s.defect, s.path) for s in bottle.test] == sorted((s.defect, s.path) for s in bottle.test)
    assert list(bottle.train) == sorted(bottle.train, key=lambda s: s.path)


def test_fsad_mini_non_square_grey_image_and_its_mask(fsad_mini_root):
    tile = load_category(fsad_mini_root, "magnetic_tile")
    sample = next(s for s in tile.test if s.label == 1)
    image, mask = read_image(sample.path, (40, 56)), read_mask(sample.mask_path, (40, 56), image_path=sample.path)
    assert image.shape == (3, 40, 56)
    # A grey source gives three equal channels.
    assert torch.equal(image[0], image[2])
    assert mask.shape == (1, 40, 56) and mask.sum() > 0


def test_toy_category_read(toy_root):
    disc = load_category(toy_root, "disc")
    assert len(disc.train) == 12
    assert [s.defect for s in disc.test] == ["colour"] * 2 + ["good"] * 4 + ["texture"] * 2
    assert [s.label for s in disc.test] == [1, 1, 0, 0, 0, 0, 1, 1]
    first_defect = disc.test[0]
    assert first_defect.mask_path == disc.path / "ground_truth" / "colour" / "000_mask.png"


def test_grey_rgba_palette_and_16_bit_images_are_converted(tmp_path):
    grey = read_image(_save(tmp_path / "grey.png", _grey(51)), 4)
    assert grey.shape == (3, 4, 4) and grey.dtype == torch.float32
    assert torch.allclose(grey, torch.full((3, 4, 4), 51 / 255))

    rgba = read_image(_save(tmp_path / "rgba.png", Image.new("RGBA", (4, 4), (255, 0, 102, 0))), 4)
    # Fully transparent, yet the colour is kept: alpha is dropped, not composited.
    assert torch.allclose(rgba[:, 0, 0], torch.tensor([1.0, 0.0, 0.4]))

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert torch.allclose(read_image(_save(tmp_path / "p.png", palette), 4)[:, 2, 2],
                          torch.tensor([0.0, 1.0, 0.0]))

    sixteen = np.array([[0, 65535], [32768, 13107]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(sixteen))
    assert Image.open(path).mode == "I;16"
    deep = read_image(path, 2)
    assert torch.allclose(deep[1], torch.tensor([[0.0, 1.0], [32768 / 65535, 0.2]]), atol=1e-6)


def test_resize_takes_height_then_width_and_does_not_crop(tmp_path):
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, 10:] = 255  # right half white
    image = read_image(_save(tmp_path / "half.bmp", Image.fromarray(pixels)), (5, 4))
    assert image.shape == (3, 5, 4)
    assert torch.allclose(image[0, :, 0], torch.zeros(5)) and torch.allclose(image[0, :, 3], torch.ones(5))
    # A crop would change the black/white balance; the whole image keeps it at one half.
    assert image.mean().item() == pytest.approx(0.5, abs=1e-6)


def test_mask_threshold_and_nearest_resize(tmp_path):
    values = np.array([[0, 127], [128, 255]], dtype=np.uint8)
    mask = read_mask(_save(tmp_path / "m.png", Image.fromarray(values)), 4)
    assert mask.shape == (1, 4, 4)
    expected = torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(mask[0], expected)


def test_mask_of_other_size_than_its_image_is_refused(tmp_path):
    image = _save(tmp_path / "img.png", _grey(0, (8, 6)))
    mask = _save(tmp_path / "img_mask.png", _grey(255, (8, 8)))
    with pytest.raises(ValueError, match=r"img_mask\.png is 8x8.*img\.png is 8x6"):
        read_mask(mask, 4, image_path=image)
    assert read_mask(mask, 4).sum() == 16  # without its image, no check


def test_unreadable_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(broken, 8)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(tmp_path / "absent.png", 8)


def test_suffixes_any_case_and_other_files_ignored(tmp_path):
    category = _tiny_category(tmp_path)
    _save(category / "train" / "good" / "c.TIFF", _grey(100))
    (category / "train" / "good" / "notes.txt").write_text("not an image")
    loaded = load_category(tmp_path, "widget")
    assert [s.path.name for s in loaded.train] == ["a.png", "b.PNG", "c.TIFF"]
    assert [s.path.name for s in loaded.test] == ["c.png", "d.png", "e.jpg"]


def test_missing_mask_names_image_and_expected_mask(tmp_path):
    category = _tiny_category(tmp_path)
    (category / "ground_truth" / "scratch" / "e_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"e\.jpg.*ground_truth/scratch/e_mask\.png"):
        load_category(tmp_path, "widget")


def test_category_without_ground_truth_is_image_level(tmp_path):
    _tiny_category(tmp_path, with_masks=False)
    loaded = load_category(tmp_path, "widget")
    assert loaded.has_masks is False
    assert all(s.mask_path is None for s in loaded.test)


def test_broken_layouts_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_categories(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no category under .*empty"):
        list_categories(tmp_path / "empty")

    category = _tiny_category(tmp_path)
    with pytest.raises(FileNotFoundError, match="gadget.*available: widget"):
        load_category(tmp_path, "gadget")
    (category / "test" / "good" / "c.png").rename(category / "c.png")
    for image in (category / "test" / "scratch").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="widget/test holds no image"):
        load_category(tmp_path, "widget")
    for image in (category / "test").iterdir():
        image.rmdir()
    (category / "test").rmdir()
    with pytest.raises(FileNotFoundError, match="widget has no test folder"):
        load_category(tmp_path, "widget")
    for image in (category / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="train/good holds no image"):
        load_category(tmp_path, "widget")


def test_loaded_test_images_and_masks(toy_root):
    disc = load_category(toy_root, "disc")
    images, masks = load_images(disc.test, 32), load_masks(disc.test, 32)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    assert [s.label for s in disc.test][:3] == [1, 1, 0]
    # The toy masks are squares of 8 to 12 px at 64 px, i.e. 4 to 6 px at 32 px.
    assert 16 <= masks[0].sum() <= 36 and masks[2].sum() == 0
    assert set(masks[0].unique().tolist()) == {0.0, 1.0} and masks.shape == (8, 32, 32)


def test_dataset_without_masks(tmp_path):
    _tiny_category(tmp_path, with_masks=False)
    test = load_category(tmp_path, "widget").test
    assert [s.label for s in test] == [0, 1, 1] and all(s.mask_path is None for s in test)
    assert load_masks(test, 4).sum() == 0 and load_images(test, 4).shape == (3, 3, 4, 4)


def test_hidden_and_appledouble_files_are_skipped(tmp_path):
    category = _tiny_category(tmp_path)
    (category / "train" / "good" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (category / "test" / "scratch" / ".DS_Store").write_bytes(b"\x00")
    (category / "test" / ".hidden_defect").mkdir()
    _save(category / "test" / ".hidden_defect" / "x.png", _grey(1))
    _save(tmp_path / ".Trashes" / "train" / "good" / "a.png", _grey(1))  # a hidden "category"
    loaded = load_category(tmp_path, "widget")
    assert [s.path.name for s in loaded.train] == ["a.png", "b.PNG"]
    assert {s.defect for s in loaded.test} == {"good", "scratch"}
    assert list_categories(tmp_path) == ["widget"]


def test_decomposed_unicode_names_are_found_by_their_composed_name(tmp_path):
    import unicodedata

    composed = "caf\u00e9"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    _tiny_category(tmp_path).rename(tmp_path / decomposed)  # as macOS writes it
    assert list_categories(tmp_path) == [composed]
    category = load_category(tmp_path, decomposed)  # either form finds it
    assert category.name == composed and category.path == tmp_path.resolve() / decomposed
    assert category.path.is_dir() and len(category.train) == 2
    assert load_category(tmp_path, composed).path == category.path


def test_every_missing_mask_is_listed_with_the_category(tmp_path):
    category = _tiny_category(tmp_path)
    for mask in (category / "ground_truth" / "scratch").iterdir():
        mask.unlink()
    with pytest.raises(FileNotFoundError, match=r"category 'widget': 2 anomalous test image\(s\) have no mask: .*d\.png.*e\.jpg"):
        load_category(tmp_path, "widget")


def test_read_image_at_its_own_size_then_resized_equals_read_image_resized(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    path = _save(tmp_path / "a.png", Image.fromarray(pixels))
    original = read_image(path, None)
    assert original.shape == (3, 30, 20)
    assert torch.allclose(original, torch.from_numpy(pixels).permute(2, 0, 1) / 255.0)
    assert torch.equal(resize_image(original, (12, 8)), read_image(path, (12, 8)))


def test_sixteen_bit_tiff_is_divided_by_65535(tmp_path):
    deep = np.array([[0, 65535], [257, 32768]], dtype=np.uint16)
    path = _save(tmp_path / "deep.tif", Image.fromarray(deep))
    assert Image.open(path).mode.startswith("I;16")
    assert torch.allclose(read_image(path, None)[2], torch.from_numpy(deep / 65535.0).float(), atol=1e-6)


def test_a_mask_named_in_another_unicode_form_than_its_image_is_found(tmp_path):
    import unicodedata

    category = _tiny_category(tmp_path)
    composed = "caf\u00e9"
    decomposed = unicodedata.normalize("NFD", composed)
    _save(category / "test" / "scratch" / f"{composed}.png", Image.new("RGB", (8, 6), (250, 0, 0)))
    mask = _save(category / "ground_truth" / "scratch" / f"{decomposed}_mask.png", _grey(255))  # as macOS writes it
    scratch = unicodedata.normalize("NFD", "\u00e9raflure")  # the defect folder too, in the other form in ground_truth
    (category / "test" / "scratch").rename(category / "test" / "\u00e9raflure")
    (category / "ground_truth" / "scratch").rename(category / "ground_truth" / scratch)
    loaded = load_category(tmp_path, "widget")
    masks = {s.path.name: s.mask_path for s in loaded.test if s.label == 1}
    assert masks[f"{composed}.png"] == category / "ground_truth" / scratch / mask.name
    assert masks["d.png"].name == "d_mask.png" and masks["e.jpg"].name == "e_mask.png"


def _exif_rotated(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    """Save ``pixels`` (stored as given) with an EXIF orientation tag, as a camera held turned writes it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_to_images_and_their_masks(tmp_path, suffix):
    from PIL import ImageOps

    stored = np.zeros((48, 64, 3), dtype=np.uint8)  # 64 wide, 48 high as stored
    stored[:, :16] = 255  # a white band on the stored left edge
    image = _exif_rotated(tmp_path / f"photo{suffix}", stored, 6)  # 6: viewers turn it a quarter clockwise
    shown = np.array(ImageOps.exif_transpose(Image.open(image)))  # 64 high, 48 wide: the band on top
    assert shown.shape == (64, 48, 3) and shown[:16].mean() > 200 and shown[16:].mean() < 50
    pixels = read_image(image, None)
    assert pixels.shape == (3, 64, 48) and check_image(image) == image_size(image) == (48, 64)
    assert torch.allclose(pixels, torch.from_numpy(shown).permute(2, 0, 1) / 255.0, atol=1 / 255)
    mask = _save(tmp_path / "photo_mask.png", Image.fromarray((shown[..., 0] > 127).astype(np.uint8) * 255))  # drawn on the shown image
    assert torch.equal(read_mask(mask, (64, 48), image_path=image)[0], torch.from_numpy(shown[..., 0] > 127).float())
    with pytest.raises(ValueError, match=r"is 64x48 but its image .* is 48x64"):
        read_mask(_save(tmp_path / "stored_mask.png", Image.fromarray(stored)), 8, image_path=image)


def test_an_image_over_pillows_decompression_bomb_limit_is_read_downscaled(tmp_path, monkeypatch):
    from fsad.data import mvtec

    assert mvtec.downscale_factor(14000, 14000, mvtec.DECODE_PIXELS) == 2 and mvtec.downscale_factor(8192, 8192, mvtec.DECODE_PIXELS) == 1
    monkeypatch.setattr(mvtec, "DECODE_PIXELS", 2**20)  # 1024 x 1024: the same code path, smaller arrays
    line_scan = tmp_path / "line_scan.png"
    Image.new("L", (14000, 14000), 90).save(line_scan, compress_level=1)  # 196 M pixels, > Pillow's 179 M
    pixels = read_image(line_scan, None)
    assert check_image(line_scan) == (14000, 14000) and pixels.shape == (3, 875, 875) and torch.allclose(pixels, torch.tensor(90 / 255))
    assert read_mask(line_scan, 4, image_path=line_scan).sum() == 0
    jpeg = tmp_path / "line_scan.jpg"
    Image.new("L", (14001, 12800), 200).save(jpeg)  # decoded at 1/8 (1751 x 1600), then halved; odd width rounded up
    assert read_image(jpeg, None).shape == (3, 800, 876)
    assert torch.equal(read_image(jpeg, (16, 8)), resize_image(read_image(jpeg, None), (16, 8)))


def test_an_image_beyond_what_fsad_reads_is_refused_naming_it(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))  # 900 M pixels claimed, no data
    giant = tmp_path / "giant.png"
    giant.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    for read in (lambda path: read_image(path, 8), check_image):
        with pytest.raises(ValueError, match=r"giant\.png is 30000x30000 \(900 megapixels\), more than fsad reads"):
            read(giant)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_reads_as_pillows_exif_transpose_shows_it(tmp_path, orientation):
    from PIL import ImageOps

    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = _exif_rotated(tmp_path / "photo.png", stored, orientation)
    shown = np.array(ImageOps.exif_transpose(Image.open(image)))
    assert torch.equal(read_image(image, None), torch.from_numpy(shown).permute(2, 0, 1) / 255.0)
    assert image_size(image) == (shown.shape[1], shown.shape[0])
