"""Images as they come (issue 18 item 4): image / pixel AUROC with the images squashed square, aspect kept, or tiled.

For every category given (fsad-mini's, ELPV's), K good images drawn ``--draws`` times
(``fsad.data.support_sets.make_support_sets``, seed 0), each method is fitted the way
``fsad fit`` fits it (``fsad.product.tiling.product_sizes``: the size from the support images'
headers) in three modes:

- ``square``: ``--aspect square``, every image squashed to S x S (fsad before [H, W]);
- ``keep``: ``--aspect keep``, short side S, long side in proportion (rounded to 32);
  identical to ``square`` on square sources, so run only where a category's images are not square;
- ``tile2``: ``--tile 2``, the short side read at 2 S (at most the image's own), S x S tiles.

and scores the whole test split. The maps are brought back to each test image's own size
(what ``fsad predict``'s heat-maps are; halved, ``EVAL_REDUCTION``) and the pixel AUROC is taken there, over all pixels
of all test images, so the three modes are compared in one frame. The image AUROC is the
detector's image score (tiled: the highest tile's).

Run (one process, one thread; docs/images.md)::

    OMP_NUM_THREADS=1 nice -n 2 python benchmarks/images.py --out runs/images --shots 4 --draws 3
    python benchmarks/images.py --out runs/images --summary   # the table of docs/images.md from rows.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fsad.config import RegADConfig
from fsad.data.mvtec import image_size, list_categories, load_category, read_image, read_mask
from fsad.data.support_sets import make_support_sets, support_samples
from fsad.methods.base import Scores
from fsad.methods.registry import build_detector
from fsad.product.tiling import TiledDetector, product_sizes
from fsad.study.experiment import resolve_dataset
from fsad.study.metrics import image_auroc

TEST_CHUNK = 32
# Pixel AUROC at half each image's own size (fsad-mini: long side 160): one frame for all modes, with
# ranks of ~8 M pixels instead of 31 M (the full-size run was killed for memory on the shared machine).
EVAL_REDUCTION = 2
MODES = {"square": ("square", None), "keep": ("keep", None), "tile2": ("keep", 2)}


def _pixel_auroc(maps: list[torch.Tensor], masks: list[torch.Tensor]) -> float:
    """AUROC over every pixel of every image, each map at its mask's (the image's own) size."""
    scores = np.concatenate([m.numpy().ravel() for m in maps])
    labels = np.concatenate([m.numpy().ravel() > 0.5 for m in masks])
    return image_auroc(labels, scores)


def run_category(data: str, root: Path, name: str, methods: list[str], shots: list[int], draws: int, side: int,
                 out: Path) -> list[dict]:
    category = load_category(root, name)
    test = category.test
    own = [image_size(s.path)[::-1] for s in test]  # (H, W) of each test image as shown
    square = all(h == w for h, w in own)
    frame = [(-(-h // EVAL_REDUCTION), -(-w // EVAL_REDUCTION)) for h, w in own]  # the pixel metric's frame: own shape
    masks = [read_mask(s.mask_path, hw, image_path=s.path)[0] if s.mask_path else torch.zeros(hw)
             for s, hw in zip(test, frame)] if category.has_masks else None
    labels = np.array([s.label for s in test])
    sets = make_support_sets(category, shots, n_sets=draws, seed=0)
    saved = out / f"rows_{data.replace('/', '_')}_{name}.csv"
    rows = pd.read_csv(saved).to_dict("records") if saved.is_file() else []  # a killed run goes on where it stopped
    done = {(r["method"], r["mode"], r["k"], r["draw"]) for r in rows}
    for method in methods:
        for mode, (aspect, tile) in MODES.items():
            if mode == "keep" and square:
                continue  # equal to square on square images
            for k in shots:
                for draw, paths in enumerate(sets[k]):
                    if (method, mode, k, draw) in done:
                        continue
                    support = [s.path for s in support_samples(category, paths)]
                    regad, sizes = product_sizes(RegADConfig(image_size=side), support, aspect, tile)
                    detector = build_detector(method, regad, {})
                    size = tuple(sizes["size"])
                    if tile is not None:
                        detector = TiledDetector(detector, size)
                    tic = time.perf_counter()
                    detector.fit(torch.stack([read_image(p, size) for p in support]))
                    # TEST_CHUNK images at a time: a whole test set's tile features (GBs) never sit in memory
                    parts = [detector.predict(torch.stack([read_image(s.path, size) for s in test[i : i + TEST_CHUNK]]))
                             for i in range(0, len(test), TEST_CHUNK)]
                    scores = Scores(maps=torch.cat([p.maps for p in parts]), image=torch.cat([p.image for p in parts]))
                    seconds = time.perf_counter() - tic
                    row = {"data": data, "category": name, "method": method, "mode": mode, "k": k, "draw": draw,
                           "size": "x".join(map(str, size)), "tiles": len(detector.corners) if tile else 1,
                           "image_auroc": 100 * image_auroc(labels, scores.image.numpy()), "seconds": seconds}
                    if masks is not None:
                        maps = [F.interpolate(m[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
                                for m, hw in zip(scores.maps, frame)]  # each at its image's evaluation frame
                        row["pixel_auroc"] = 100 * _pixel_auroc(maps, masks)
                    rows.append(row)
                    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
                    pd.DataFrame(rows).to_csv(saved, index=False)
    return rows


def summary(out: Path) -> pd.DataFrame:
    rows = pd.concat([pd.read_csv(p) for p in sorted(out.glob("rows_*.csv"))])
    table = rows.groupby(["category", "method", "k", "mode"], sort=False).agg(
        size=("size", lambda s: s.mode().iloc[0]), tiles=("tiles", "first"), draws=("draw", "count"),
        image_auroc=("image_auroc", "mean"), image_std=("image_auroc", "std"),
        pixel_auroc=("pixel_auroc", "mean") if "pixel_auroc" in rows else ("image_auroc", lambda s: np.nan),
        pixel_std=("pixel_auroc", "std") if "pixel_auroc" in rows else ("image_auroc", lambda s: np.nan),
        seconds=("seconds", "mean")).reset_index()
    table.to_csv(out / "summary.csv", index=False)
    for _, r in table.iterrows():
        pixel = f"{r.pixel_auroc:.1f} ± {r.pixel_std:.1f}" if not np.isnan(r.pixel_auroc) else "–"
        print(f"| {r.category} | {r.method} | {r.k} | {r['mode']} | {r['size']} | {r.tiles} | "
              f"{r.image_auroc:.1f} ± {r.image_std:.1f} | {pixel} | {r.seconds:.0f} |")
    return table


def make_strips(source: Path, out: Path, categories: list[str], fraction: float = 0.4) -> None:
    """A non-square product from the real images held here: of every image of ``categories`` in ``source`` (MVTec
    layout), a full-height strip ``fraction`` of the width wide (2.5:1 for 0.4), centred on the image, or on the
    defect's mask for a defective one (the mask cut alike), written to ``out/<category>_strips`` in MVTec layout."""
    from PIL import Image

    for category in categories:
        for path in sorted((source / category).glob("t*/*/*")):
            split, kind = path.parts[-3], path.parts[-2]
            image = Image.open(path)
            width, height = image.size
            strip = round(fraction * width)
            x0, mask = (width - strip) // 2, None
            if kind != "good":
                mask = np.array(Image.open(source / category / "ground_truth" / kind / f"{path.stem}_mask.png").convert("L")) > 0
                columns = np.nonzero(mask.any(axis=0))[0]
                centre = int(columns.mean()) if len(columns) else width // 2
                x0 = min(max(centre - strip // 2, 0), width - strip)
            target = out / f"{category}_strips" / split / kind / f"{path.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.crop((x0, 0, x0 + strip, height)).save(target)
            if mask is not None:
                target = out / f"{category}_strips" / "ground_truth" / kind / f"{path.stem}_mask.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((mask[:, x0:x0 + strip] * 255).astype(np.uint8)).save(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/images")
    parser.add_argument("--categories", nargs="+", default=["fsad-mini:magnetic_tile", "fsad-mini:pcb", "fsad-mini:metal_plate",
                                                             "fsad-mini:bottle", "elpv:mono", "elpv:poly"],
                        help="DATA:CATEGORY, DATA one of fsad-mini, elpv or a folder")
    parser.add_argument("--methods", nargs="+", default=["padim_views", "patchcore"])
    parser.add_argument("--shots", type=int, nargs="+", default=[4])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128, help="S: the square's side, the short side, the tile")
    parser.add_argument("--summary", action="store_true", help="only print the table of the rows in --out")
    parser.add_argument("--make-strips", metavar="DIR", help="first write 2.5:1 strips of fsad-mini's metal_plate and pcb to "
                        "DIR (then pass --categories DIR:metal_plate_strips DIR:pcb_strips)")
    args = parser.parse_args()
    if args.make_strips:
        make_strips(resolve_dataset("fsad-mini"), Path(args.make_strips), ["metal_plate", "pcb"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        for item in args.categories:
            data, name = item.split(":")
            root = resolve_dataset(data)
            if name not in list_categories(root):
                sys.exit(f"benchmarks/images.py: no category {name} in {root}")
            tic = time.perf_counter()
            run_category(data, root, name, args.methods, args.shots, args.draws, args.image_size, out)
            print(f"{item}: {time.perf_counter() - tic:.0f} s", flush=True)
    summary(out)


if __name__ == "__main__":
    main()
