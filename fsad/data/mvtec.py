"""Read any data set laid out like MVTec AD: MVTec AD itself, MPDD, fsad-mini or a user's folder.

Layout (``DEFECT`` is any folder name other than ``good``)::

    ROOT/CATEGORY/train/good/*.png
    ROOT/CATEGORY/test/good/*.png
    ROOT/CATEGORY/test/DEFECT/*.png
    ROOT/CATEGORY/ground_truth/DEFECT/NAME_mask.png   (optional: without it, image metrics only)

Images may be png, jpg, jpeg, bmp, tif or tiff (any letter case). Hidden files and folders
(``.DS_Store``, macOS's AppleDouble ``._NAME.png``) are skipped. Names are compared in
Unicode NFC form, so a category copied from macOS (which writes decomposed names) is
found under the name a user types, and a mask is found whichever form either name is in.

Every image is read as viewers show it: its EXIF orientation applied (a photo taken with
the camera turned is upright, and so are its heat-map and mask). An image of more than
``DECODE_PIXELS`` pixels (line-scan cameras make 14000 x 14000 ones, above Pillow's
decompression-bomb limit) is decoded downscaled by 2, 4, 8, ... until it fits (a JPEG in
the decoder itself, cheaply); one of more than ``READ_LIMIT_PIXELS`` is refused, naming it.

Example:
    >>> category = load_category("/work/shared/datasets/fsad-mini", "pcb")  # doctest: +SKIP
    >>> batch["image"].shape, batch["mask"].shape  # doctest: +SKIP
    (torch.Size([3, 224, 224]), torch.Size([1, 224, 224]))
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NORMAL = "good"
MASK_SUFFIX = "_mask"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Larger images are decoded downscaled by a power of two: 8192 x 8192 is 0.8 GB as float RGB,
# and a detector sees 224 px anyway. Pillow refuses (as a possible decompression bomb) 179 M.
DECODE_PIXELS = 2**26
# Beyond this even the one full decode a PNG or TIFF needs (JPEG decodes at 1/8 scale) is
# several GB: refused. 2**29 = 23170 x 23170, 1.6 GB as 8-bit RGB.
READ_LIMIT_PIXELS = 2**29
# EXIF orientation (tag 274) -> the transpose that shows the pixels as a viewer does.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Sample:
    """One image of a category.

    Attributes:
        path: Absolute image path.
        label: 0 for a normal image, 1 for an anomalous one.
        defect: ``"good"`` or the name of the defect folder.
        mask_path: The ground-truth mask; ``None`` for normal images and for categories
            without a ``ground_truth`` folder.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None


@dataclass(frozen=True)
class Category:
    """One category of an MVTec-layout data set, its files listed and validated.

    Attributes:
        root: The data set root (absolute).
        name: The category folder name.
        train: ``train/good`` images, sorted by path.
        test: ``test/*`` images, sorted by ``(defect, path)``.
        has_masks: True iff the category has a ``ground_truth`` folder, i.e. pixel metrics
            can be computed.
        folder: The folder's name on disk when it differs from ``name`` (another Unicode
            normal form); empty otherwise.
    """

    root: Path
    name: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    has_masks: bool
    folder: str = ""

    @property
    def path(self) -> Path:
        """The category folder, ``root / name`` (as named on disk)."""
        return self.root / (self.folder or self.name)


def nfc(name: str) -> str:
    """``name`` in Unicode normal form C: the form names are compared and recorded in."""
    return unicodedata.normalize("NFC", name)


def _visible(path: Path) -> bool:
    # Hidden entries are the file system's or the OS's (.DS_Store, AppleDouble ._x.png), not data.
    return not path.name.startswith(".")


def _is_image(path: Path) -> bool:
    return _visible(path) and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _images_in(folder: Path) -> list[Path]:
    # Non-image files (notes, ...) are skipped so user folders need no cleaning.
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _category_folders(root: Path) -> dict[str, str]:
    """``{NFC name: name on disk}`` of the folders under ``root`` that hold ``train/good``."""
    return {nfc(p.name): p.name for p in root.iterdir() if _visible(p) and (p / "train" / NORMAL).is_dir()}


def list_categories(root: str | Path) -> list[str]:
    """The sorted names of the folders under ``root`` that hold ``train/good`` (the categories).

    Args:
        root: The data set root.

    Returns:
        Category names (NFC), sorted.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no category.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"fsad/data/mvtec.py: data set root {root} does not exist; "
                                "pass the folder that holds the category folders")
    names = sorted(_category_folders(root))
    if not names:
        raise FileNotFoundError(f"fsad/data/mvtec.py: no category under {root}: a category is a "
                                f"folder holding train/{NORMAL}/ (MVTec AD layout)")
    return names


def _masks_in(folder: Path) -> dict[str, list[Path]]:
    """``{NFC stem: mask files}`` of a ``ground_truth/DEFECT`` folder (empty if there is none)."""
    masks: dict[str, list[Path]] = {}
    for path in _images_in(folder) if folder.is_dir() else []:
        masks.setdefault(nfc(path.stem), []).append(path)
    return masks


def _mask_path_for(masks: dict[str, list[Path]], image: Path) -> Path | None:
    """The mask of ``image`` in ``masks`` (``None``: none); MVTec names it ``NAME_mask.png``, other suffixes are accepted too.

    Names are compared in NFC, so a mask named in another Unicode form than its image (macOS
    writes decomposed names) is found.
    """
    found = masks.get(nfc(f"{image.stem}{MASK_SUFFIX}"), [])
    return min(found, key=lambda p: (p.suffix.lower() != ".png", p.suffix)) if found else None


def load_category(root: str | Path, name: str) -> Category:
    """List and validate the files of one category.

    Args:
        root: The data set root.
        name: The category folder name.

    Returns:
        The category, with every image and mask path resolved.

    Raises:
        FileNotFoundError: unknown root or category (the message lists the available
            categories), a missing ``train/good`` or ``test`` folder, or missing masks (the
            message lists every anomalous image without one).
        ValueError: ``train/good`` or ``test`` holds no image.
    """
    list_categories(root)  # the root's own errors first
    root = Path(root).expanduser().resolve()
    folders = _category_folders(root)
    name = nfc(name)
    if name not in folders:
        raise FileNotFoundError(f"fsad/data/mvtec.py: category {root / name} not found (no "
                                f"train/{NORMAL} folder); available: {', '.join(sorted(folders))}")
    category_path = root / folders[name]
    train_images = _images_in(category_path / "train" / NORMAL)
    if not train_images:
        raise ValueError(f"fsad/data/mvtec.py: {category_path / 'train' / NORMAL} holds no image "
                         f"(accepted suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    test_path = category_path / "test"
    if not test_path.is_dir():
        raise FileNotFoundError(f"fsad/data/mvtec.py: category {category_path} has no test folder; "
                                f"expected {test_path}/{NORMAL}/ and {test_path}/DEFECT/")
    ground_truth = category_path / "ground_truth"
    has_masks = ground_truth.is_dir()
    mask_folders = {nfc(p.name): p for p in ground_truth.iterdir() if _visible(p)} if has_masks else {}
    test: list[Sample] = []
    unmasked: list[Path] = []
    for defect_folder in sorted(p for p in test_path.iterdir() if _visible(p) and p.is_dir()):
        defect = nfc(defect_folder.name)
        masks = _masks_in(mask_folders[defect]) if defect in mask_folders else {}
        for image in _images_in(defect_folder):
            if defect == NORMAL:
                test.append(Sample(image, 0, defect, None))
            else:
                mask = _mask_path_for(masks, image) if has_masks else None
                if has_masks and mask is None:
                    unmasked.append(image)
                test.append(Sample(image, 1, defect, mask))
    if unmasked:
        shown = "; ".join(f"{image} (expected {_expected_mask(category_path, image)})" for image in unmasked[:5])
        more = f"; and {len(unmasked) - 5} more" if len(unmasked) > 5 else ""
        raise FileNotFoundError(f"fsad/data/mvtec.py: category {name!r}: {len(unmasked)} anomalous test "
                                f"image(s) have no mask: {shown}{more}. Add the masks, or remove the "
                                "ground_truth folder of the category to evaluate at image level only")
    if not test:
        raise ValueError(f"fsad/data/mvtec.py: {test_path} holds no image in any sub-folder")
    return Category(
        root=root,
        name=name,
        train=tuple(Sample(p, 0, NORMAL, None) for p in train_images),
        test=tuple(sorted(test, key=lambda s: (s.defect, s.path))),
        has_masks=has_masks,
        folder=folders[name] if folders[name] != name else "",
    )


def _expected_mask(category_path: Path, image: Path) -> Path:
    return category_path / "ground_truth" / image.parent.name / f"{image.stem}{MASK_SUFFIX}.png"


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """A size as ``(height, width)``: a side ``S`` is ``(S, S)`` (``image_size`` of ``fsad.config.RegADConfig``)."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"fsad/data/mvtec.py: size must be a positive int or (height, width), "
                         f"got {size!r}")
    return height, width


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` with fsad's limits (``READ_LIMIT_PIXELS``) in place of Pillow's decompression-bomb check.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image Pillow can read.
    """
    # Restored below (not thread-safe; fsad reads images from one thread); _check_readable applies fsad's limit.
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError as error:
        raise FileNotFoundError(f"fsad/data/mvtec.py: image file {path} does not exist") from error
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"fsad/data/mvtec.py: cannot read image {path} ({error}); "
                         "replace or remove the file") from error
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` (1: as stored; 5-8: a quarter turn), 1 where it has none or a bad one."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: show the pixels as stored
        return 1
    return orientation if orientation in _UPRIGHT else 1


def downscale_factor(width: int, height: int, max_pixels: int) -> int:
    """The least power of two f with ceil(width / f) x ceil(height / f) <= ``max_pixels``: the factor an image is downscaled by."""
    factor = 1
    while math.ceil(width / factor) * math.ceil(height / factor) > max_pixels:
        factor *= 2
    return factor


def _check_readable(image: Image.Image, path: Path) -> None:
    """Refuse what ``_decode`` cannot read, from the header alone; a JPEG's decoder is set to decode at the scale ``_decode`` uses.

    Raises:
        ValueError: a floating-point image, or more than ``READ_LIMIT_PIXELS`` pixels to decode.
    """
    if image.mode == "F":
        raise ValueError(f"fsad/data/mvtec.py: {path} is a floating-point image, whose "
                         "range is unknown; save it as 8 or 16 bit")
    width, height = image.size
    factor = downscale_factor(width, height, DECODE_PIXELS)
    image.draft(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))  # JPEG only: decode smaller
    if image.size[0] * image.size[1] > READ_LIMIT_PIXELS:
        raise ValueError(f"fsad/data/mvtec.py: image {path} is {width}x{height} ({width * height / 1e6:.0f} megapixels), "
                         f"more than fsad reads ({READ_LIMIT_PIXELS / 1e6:.0f} megapixels); split it into tiles or save it smaller")


def _decode(path: Path) -> np.ndarray:
    """Pixels of ``path`` as float32 ``H x W x C`` in [0, 1], as viewers show it; C is 1 (grey) or 3 (colour).

    16-bit images are divided by 65535 (not clipped to 255, which would turn them white).
    Alpha is dropped, palettes expanded, the EXIF orientation applied. An image of more than
    ``DECODE_PIXELS`` pixels comes out downscaled by the power of two that makes it fit
    (box average; a JPEG is decoded at 1/2, 1/4 or 1/8 scale by the decoder first). The
    result depends on the file alone, so every caller sees the same pixels.

    Raises:
        ValueError: unreadable file, a floating-point or out-of-range 32-bit image, or more
            than ``READ_LIMIT_PIXELS`` pixels.
    """
    path = Path(path)
    with _opened(path) as image:
        _check_readable(image, path)  # JPEG: also sets the decoder to its reduced scale
        orientation = _orientation(image)
        image.load()  # a truncated or corrupt file fails here (a ValueError naming it, from _opened)
        mode = image.mode
        sixteen_bit = mode in _SIXTEEN_BIT_MODES
        target = "I" if sixteen_bit else "L" if mode in ("1", "L", "LA") else "RGB"
        if mode != target:
            image = image.convert(target)
        reduce = downscale_factor(*image.size, DECODE_PIXELS)  # what the JPEG decoder did not do already
        if reduce > 1:
            image = image.reduce(reduce)
        if orientation != 1:
            image = image.transpose(_UPRIGHT[orientation])
        if sixteen_bit:
            pixels = np.asarray(image).astype(np.float32)
            if pixels.min() < 0 or pixels.max() > 65535:
                raise ValueError(f"fsad/data/mvtec.py: {path} is a 32-bit integer image with "
                                 "values outside the 16-bit range; save it as 8 or 16 bit")
            pixels /= 65535.0
        else:
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[..., None] if pixels.ndim == 2 else pixels


def check_image(path: str | Path) -> tuple[int, int]:
    """Check, without decoding its pixels, that ``read_image`` can read ``path``; its ``(width, height)`` as viewers show it.

    Reads the whole file (Pillow's ``verify``: a truncated PNG or a bad chunk CRC fails) and
    applies ``read_image``'s refusals (floating point, more than ``READ_LIMIT_PIXELS``), so
    a run can list every unreadable file before any training.

    Raises:
        FileNotFoundError, ValueError: naming the file and the fix.
    """
    with _opened(Path(path)) as image:
        image.verify()  # only directly after opening: reading the EXIF block first breaks a PNG's verify
    with _opened(Path(path)) as image:
        _check_readable(image, Path(path))
        return _shown_size(image)


def _shown_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as viewers show it (EXIF orientation applied), from the file header alone.

    This is the size a mask of the image must have; a quarter-turn orientation swaps the
    stored width and height.

    Raises:
        FileNotFoundError, ValueError: no such file, or not a readable image.
    """
    with _opened(Path(path)) as image:
        return _shown_size(image)


def read_image(path: str | Path, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Read an image as RGB and resize it (whole image, no crop).

    Args:
        path: Image file; grey, palette, RGBA (alpha dropped) and 16-bit (grey or RGB, PNG
            or TIFF) images are accepted.
        size: Output side, or ``(height, width)``; ``None`` keeps the image's own size.

    Returns:
        ``3 x H x W`` float32 in [0, 1].

    Raises:
        ValueError: the file cannot be decoded.
    """
    pixels = torch.from_numpy(_decode(Path(path))).permute(2, 0, 1)  # C x h x w
    return resize_image(pixels, pixels.shape[1:] if size is None else size)


def resize_image(pixels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``read_image``'s resize: C x h x w pixels (C = 1 or 3) -> ``3 x H x W``, antialiased bilinear.

    ``resize_image(read_image(path, None), size)`` equals ``read_image(path, size)``.
    """
    height, width = as_hw(size)
    if pixels.shape[1:] != (height, width):
        # antialias: without it, downscaling 900 px MVTec images aliases fine textures.
        pixels = F.interpolate(pixels[None], size=(height, width), mode="bilinear",
                               align_corners=False, antialias=True)[0]  # C x H x W
    return pixels.expand(3, -1, -1).contiguous()  # 3 x H x W


def read_mask(path: str | Path, size: int | tuple[int, int],
              image_path: str | Path | None = None) -> torch.Tensor:
    """Read a ground-truth mask, binarise it and resize it with nearest neighbour.

    A pixel is anomalous when its brightest channel is above half range (> 127 of 255), so
    JPEG-compressed and coloured annotation masks binarise correctly.

    Args:
        path: Mask file.
        size: Output side, or ``(height, width)``.
        image_path: The image the mask belongs to; when given, their original sizes must
            match (a resized mask would silently misplace every defect pixel).

    Returns:
        ``1 x H x W`` float32 with values in {0, 1}.

    Raises:
        ValueError: unreadable file, or mask and image sizes differ.
    """
    path = Path(path)
    height, width = as_hw(size)
    pixels = _decode(path)
    if image_path is not None:
        expected, mask_size = image_size(image_path), image_size(path)
        if mask_size != expected:
            raise ValueError(f"fsad/data/mvtec.py: mask {path} is {mask_size[0]}x{mask_size[1]} "
                             f"but its image {image_path} is {expected[0]}x{expected[1]} "
                             "(width x height); remake the mask at the image's size")
    mask = torch.from_numpy((pixels.max(axis=2) > 0.5).astype(np.float32))[None]  # 1 x h x w
    if mask.shape[1:] != (height, width):
        # nearest-exact samples pixel centres like PIL; plain "nearest" shifts by half a pixel.
        mask = F.interpolate(mask[None], size=(height, width), mode="nearest-exact")[0]  # 1 x H x W
    return mask
