"""Read any data set laid out like MVTec AD: MVTec AD itself, MPDD, fsad-mini or a user's folder.

Layout (``DEFECT`` is any folder name other than ``good``)::

    ROOT/CATEGORY/train/good/*.png
    ROOT/CATEGORY/test/good/*.png
    ROOT/CATEGORY/test/DEFECT/*.png
    ROOT/CATEGORY/ground_truth/DEFECT/NAME_mask.png   (optional: without it, image metrics only)

Images may be png, jpg, jpeg, bmp, tif or tiff (any letter case). Hidden files and folders
(``.DS_Store``, macOS's AppleDouble ``._NAME.png``) are skipped. Names are compared in
Unicode NFC form, so a category copied from macOS (which writes decomposed names) is
found under the name a user types.

Example:
    >>> category = load_category("/work/shared/datasets/fsad-mini", "pcb")  # doctest: +SKIP
    >>> batch["image"].shape, batch["mask"].shape  # doctest: +SKIP
    (torch.Size([3, 224, 224]), torch.Size([1, 224, 224]))
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NORMAL = "good"
MASK_SUFFIX = "_mask"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


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


def _mask_path_for(category_path: Path, defect: str, image: Path) -> Path | None:
    """The mask of ``image`` (``None``: none); MVTec names it ``NAME_mask.png``, other suffixes are accepted too."""
    folder = category_path / "ground_truth" / defect
    others = sorted(IMAGE_SUFFIXES - {".png"})
    for suffix in (".png", *others, *(s.upper() for s in (".png", *others))):
        candidate = folder / f"{image.stem}{MASK_SUFFIX}{suffix}"
        if candidate.is_file():
            return candidate
    return None


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
    has_masks = (category_path / "ground_truth").is_dir()
    test: list[Sample] = []
    unmasked: list[Path] = []
    for defect_folder in sorted(p for p in test_path.iterdir() if _visible(p) and p.is_dir()):
        defect = nfc(defect_folder.name)
        for image in _images_in(defect_folder):
            if defect == NORMAL:
                test.append(Sample(image, 0, defect, None))
            else:
                mask = _mask_path_for(category_path, defect_folder.name, image) if has_masks else None
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


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"fsad/data/mvtec.py: size must be a positive int or (height, width), "
                         f"got {size!r}")
    return height, width


def _decode(path: Path) -> np.ndarray:
    """Pixels of ``path`` as float32 ``H x W x C`` in [0, 1]; C is 1 (grey) or 3 (colour).

    16-bit images are divided by 65535 (not clipped to 255, which would turn them white).
    Alpha is dropped, palettes expanded.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in _SIXTEEN_BIT_MODES:
                pixels = np.asarray(image).astype(np.float32)
                if pixels.min() < 0 or pixels.max() > 65535:
                    raise ValueError(f"fsad/data/mvtec.py: {path} is a 32-bit integer image with "
                                     "values outside the 16-bit range; save it as 8 or 16 bit")
                return (pixels / 65535.0)[..., None]
            if mode == "F":
                raise ValueError(f"fsad/data/mvtec.py: {path} is a floating-point image, whose "
                                 "range is unknown; save it as 8 or 16 bit")
            image = image.convert("L" if mode in ("1", "L", "LA") else "RGB")
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except FileNotFoundError as error:
        raise FileNotFoundError(f"fsad/data/mvtec.py: image file {path} does not exist") from error
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"fsad/data/mvtec.py: cannot read image {path} ({error}); "
                         "replace or remove the file") from error
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"fsad/data/mvtec.py: cannot read image {path} ({error})") from error


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
    height, width = _as_hw(tuple(size) if not isinstance(size, int) else size)
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
    height, width = _as_hw(size)
    pixels = _decode(path)
    if image_path is not None:
        image_size = _image_size(Path(image_path))
        mask_size = (pixels.shape[1], pixels.shape[0])
        if mask_size != image_size:
            raise ValueError(f"fsad/data/mvtec.py: mask {path} is {mask_size[0]}x{mask_size[1]} "
                             f"but its image {image_path} is {image_size[0]}x{image_size[1]} "
                             "(width x height); remake the mask at the image's size")
    mask = torch.from_numpy((pixels.max(axis=2) > 0.5).astype(np.float32))[None]  # 1 x h x w
    if mask.shape[1:] != (height, width):
        # nearest-exact samples pixel centres like PIL; plain "nearest" shifts by half a pixel.
        mask = F.interpolate(mask[None], size=(height, width), mode="nearest-exact")[0]  # 1 x H x W
    return mask
