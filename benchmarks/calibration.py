"""Calibration benchmark of ``fsad fit``'s threshold rules (issue 18): FPR and recall on unseen images.

For every real category held here (fsad-mini's four; ELPV mono and poly), K in {1, 2, 4, 8, 16}
and 10 draws of K good images, the product's own reference generator
(``fsad.product.calibration.reference_scores``: leave one out, 22 views, synthetic anomalies)
and the ``--good`` images (G = 0, 10, 30, drawn outside the support pool) give the reference
scores; every rule of ``fsad.product.threshold.RULES`` turns them into a threshold, and the
detector fitted on the K images scores the whole test split. Per (method, rule, K, G):
FPR on test/good, recall on defective images, F1, balanced accuracy, the gap to the F1 of an
oracle threshold chosen on the test labels (an oracle: never used to choose anything), the
spread across draws and the share of degenerate draws (FPR > 30 %, or recall 0 at FPR 0).

Cheap by caching: every image's features (test images, the 22 views and 3 synthetic anomalies
of each support image, the --good images) are computed once per (backbone, size, channels)
and kept per image under ``--cache``; padim_views' Gaussian is then fitted from per-image
sufficient statistics (each image's mean and centred scatter over its 22 views): the same
covariance as ``fit_gaussian``, factored in full rank (the distances equal the low-rank
Woodbury form's up to rounding). Support images are drawn from a pool of the first 20 images
of a seeded shuffle of train/good, the 30 --good images of a draw from the next 40 (metal_plate:
its other 30), so every image's features are computed once for all draws.

Run (one process, one thread; 4,057 s at 128 px on a 2-core machine shared with other jobs,
where a 224 px draw took 90-160 s; docs/calibration.md)::

    OMP_NUM_THREADS=1 python benchmarks/calibration.py --out runs/calibration --image-size 128 --shots 4 8 2 1 16
    python benchmarks/calibration.py --out runs/calibration --summary   # tables + figure from the saved scores

At 224 px (the product's size; issue 18 follow-up): ``--image-size 224 --shots 4 8 --out runs/calibration224
--cache runs/calibration224/features``; on the loaded machine a K = 4 draw took 10-60 s, a K = 8 draw 200-1,140 s,
so only K = 4 (50 pairs) and 5 bottle draws at K = 8 were done (docs/calibration.md).

``--method anomalydino`` (or patchcore, fastrecon) measures another detector: its features are cached
per image the same way (``cached_detector``), its own fit and predict run. ``--first-sorted`` adds the
draw of the first K sorted train/good images (draw -1), K consecutive parts as a user takes them.

``--summary`` writes ``summary.csv`` (one row per method, rule, K, G), prints the tables of
docs/calibration.md, the measured leave-one-out shift, the choice of each method's floor of the log
spread (``choose_floor``: ``fsad.product.threshold.MIN_LOG_SPREADS``), and the figures
``docs/figures/calibration_fsad_mini_elpv.png`` (padim_views) and ``calibration_<method>.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsad.components.gaussian import Gaussian, _cholesky  # noqa: E402
from fsad.components.views import support_views  # noqa: E402
from fsad.config import RegADConfig  # noqa: E402
from fsad.data.loading import to_float  # noqa: E402
from fsad.data.mvtec import load_category, read_image  # noqa: E402
from fsad.methods.padim import PaDiM  # noqa: E402
from fsad.paths import FSAD_MINI_DIR  # noqa: E402
from fsad.methods.registry import build_detector  # noqa: E402
from fsad.product.calibration import reference_scores  # noqa: E402
from fsad.product.threshold import RULE_NAMES, RULES, SHIFT, References, Threshold, lognormal_level, loo_shift, spread  # noqa: E402

CATEGORIES = {"fsad-mini": ("bottle", "magnetic_tile", "metal_plate", "pcb"), "elpv": ("mono", "poly")}
SHOTS = (1, 2, 4, 8, 16)
GOOD_COUNTS = (0, 10, 30)
POOL = 20
EXTRA_POOL = 40  # --good images: 30 of these per draw (metal_plate: its other 30)
DRAWS = 10
TARGET_FPRS = (0.01, 0.05)  # --target-fpr of the rules that take one
DEGENERATE_FPR = 0.3
FIGURE = ROOT / "docs" / "figures" / "calibration_fsad_mini_elpv.png"


def _key(image: torch.Tensor) -> str:
    return hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).hexdigest()


class CachedPaDiMViews(PaDiM):
    """padim_views whose features are computed once per image (memory, then ``folder``) and fitted from statistics.

    ``embed`` looks every image up by a hash of its pixels; ``fit`` builds the same Gaussian as
    ``PaDiM.fit`` (22 views per support image, unbiased covariance + eps I) from each image's
    view mean (P x C) and centred scatter (P x C x C), kept for the last images up to ``stats_bytes``
    (a scatter is 95 MB at 128 px and 290 MB at 224 px with MobileNetV2's 152 channels).
    """

    def __init__(self, *args, folder: Path, stats_bytes: int = 2**30, **kwargs):
        super().__init__(*args, augment_support=True, **kwargs)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stats_bytes = stats_bytes
        self.keep = 1

    def clear(self) -> None:
        self.stats.clear()

    def embed(self, images: torch.Tensor):
        """Features of ``images`` from the disk cache (``cached_embedding``); N x d x h x w."""
        return cached_embedding(super().embed, images, self.folder)

    def _view_stats(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = _key(image)
        if key not in self.stats:
            (features,) = self.embed(support_views(image[None])[0])  # 22 x d x h x w
            x = features.flatten(2).permute(2, 0, 1).double()  # P x 22 x d
            mean = x.mean(dim=1)  # P x d
            centred = x - mean[:, None]
            self.stats[key] = (mean, (centred.transpose(1, 2) @ centred).float())  # P x d, P x d x d
            scatter_bytes = 4 * self.stats[key][1].numel()
            while len(self.stats) > max(self.keep, self.stats_bytes // scatter_bytes):  # keep: a draw's K images
                self.stats.pop(next(iter(self.stats)))
        return self.stats[key]

    def fit(self, support: torch.Tensor) -> None:
        self.keep = max(self.keep, len(support))  # the leave-one-out fits of a draw reuse its K images' statistics
        stats = [self._view_stats(image) for image in to_float(support)]
        n = 22 * len(stats)
        means = torch.stack([m for m, _ in stats], dim=1)  # P x K x d
        mean = means.mean(dim=1)  # P x d
        between = means - mean[:, None]  # P x K x d
        p, d = mean.shape
        factor = torch.empty(p, d, d)
        eye = torch.eye(d, dtype=torch.float64)
        for start in range(0, p, 512):
            stop = min(p, start + 512)
            within = stats[0][1][start:stop].clone()
            for _, w in stats[1:]:
                within += w[start:stop]  # float32 sums of centred scatters: ~1e-7 off
            scatter = within.double() + 22 * between[start:stop].transpose(1, 2) @ between[start:stop]
            lower = _cholesky(scatter / (n - 1) + self.eps * eye, start, self.eps)
            factor[start:stop] = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).float()
        side = int(round(p**0.5))
        self.gaussian = Gaussian(mean=mean.float(), factor=factor, eps=self.eps, low_rank=False, size=(side, side))


def cached_embedding(embed, images: torch.Tensor, folder: Path):
    """``embed(images)`` with each image's part kept on disk under a hash of its pixels (the new ones in one batch).

    Kept on disk only (the page cache holds them): at 224 px a feature map is 1.9 MB, and a category's
    600-1000 images in memory beside padim_views' scatters got the process killed for memory.
    """
    images = to_float(images)
    paths = [folder / f"{_key(image)}.pt" for image in images]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        computed = embed(images[missing])  # a tuple of tensors indexed by image
        for j, i in enumerate(missing):
            torch.save(tuple(part[j].clone() for part in computed), paths[i])
    parts = [torch.load(path, weights_only=True) for path in paths]
    parts = [part if isinstance(part, tuple) else (part,) for part in parts]  # caches written before: one tensor
    return tuple(torch.stack(column) for column in zip(*parts))


def cached_detector(method: str, regad: RegADConfig, folder: Path):
    """The product's ``method`` (its backbone, channel draw, options) with its features cached per image.

    padim_views is fitted from per-image statistics (``CachedPaDiMViews``); any other method keeps its own fit and
    predict, only its ``embed`` reads the cache (AnomalyDINO's 8 rotated copies of a support image included).
    """
    reference = build_detector(method, regad)
    folder = folder / f"{method}_{regad.backbone}_{regad.image_size}"
    if method == "padim_views":
        detector = CachedPaDiMViews(reference.backbone, regad.image_size, eps=regad.eps, sigma=regad.blur_sigma, folder=folder)
        detector.channels = reference.channels
        return detector
    folder.mkdir(parents=True, exist_ok=True)
    embed = reference.embed
    reference.embed = lambda images: cached_embedding(embed, images, folder)  # an instance attribute: fit uses it too
    return reference


def _category_root(data: str, fsad_mini: Path) -> Path:
    from fsad.study.experiment import resolve_dataset

    return fsad_mini if data == "fsad-mini" else resolve_dataset(data)


SORTED_DRAW = -1  # the draw of the first K sorted train/good images: K consecutive parts, as a user often takes them


def run(out: Path, cache: Path, shots: tuple[int, ...], draws: int, categories: list[tuple[str, str]], fsad_mini: Path,
        image_size: int, method: str = "padim_views", first_sorted: bool = False) -> None:
    """Score every (category, K, draw); one JSON line each in ``out/scores.jsonl`` (resumable).

    Draws 0 .. draws - 1 take K of the pool at random; with ``first_sorted`` the draw ``SORTED_DRAW`` takes the first K
    train/good images by file name (the issue's own setting), its --good images from the extra pool.
    """
    regad = RegADConfig(image_size=image_size)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "scores.jsonl"
    done = set()
    if done_file.is_file():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            done.add((row.get("method", "padim_views"), row["data"], row["category"], row["k"], row["draw"]))
    detector = cached_detector(method, regad, cache)
    for k in shots:  # K outermost: the K = 4 and 8 of the targets come first
        for data, name in categories:
            tic = time.perf_counter()
            category = load_category(_category_root(data, fsad_mini), name)
            train = [s.path for s in category.train]
            order = np.random.default_rng(0).permutation(len(train))
            pool, extra_pool = order[:POOL], order[POOL : POOL + EXTRA_POOL]
            first = np.array(sorted(range(len(train)), key=lambda i: train[i].name)[:k])
            todo = [draw for draw in ([SORTED_DRAW] if first_sorted else []) + list(range(draws))
                    if (method, data, name, k, draw) not in done]
            if k > len(pool) or not todo:
                continue
            labels = [s.label for s in category.test]
            test_images = torch.stack([read_image(s.path, regad.image_size) for s in category.test])
            images = {i: read_image(train[i], regad.image_size) for i in {*pool, *extra_pool, *first}}
            for draw in todo:
                t0 = time.perf_counter()
                rng = np.random.default_rng(1000 * draw + k if draw >= 0 else 999 + k)  # seeds are >= 0
                if draw == SORTED_DRAW:
                    support_ids = first
                    good_ids = rng.choice(np.setdiff1d(np.r_[extra_pool, pool], first), max(GOOD_COUNTS), replace=False)
                else:
                    support_ids = rng.choice(pool, k, replace=False)
                    good_ids = rng.choice(extra_pool, max(GOOD_COUNTS), replace=False)
                support = torch.stack([images[i] for i in support_ids])
                good = torch.stack([images[i] for i in good_ids])
                image_refs, _ = reference_scores(detector, support, good, leave_one_out=k >= 2,
                                                 kinds=("views", "synthetic") if k >= 2 else ())
                scores = [score for batch in test_images.split(64) for score in detector.predict(batch).image.tolist()]
                row = {"data": data, "category": name, "k": k, "draw": draw, "method": method, "image_size": image_size,
                       "support": [str(train[i].name) for i in support_ids], "labels": labels, "test": scores,
                       **{kind: getattr(image_refs, kind).tolist() for kind in ("leave_one_out", "views", "good", "synthetic")},
                       "seconds": time.perf_counter() - t0}
                with done_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{name} K={k} draw {draw}: {row['seconds']:.1f} s", flush=True)
            if method == "padim_views":
                detector.clear()
                detector.keep = 1
            print(f"{data}/{name} K={k}: {time.perf_counter() - tic:.0f} s", flush=True)


def oracle_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    """The best F1 over every threshold on the test scores (uses the test labels: an oracle)."""
    order = np.argsort(-scores)
    hits = np.cumsum(labels[order])
    flagged = np.arange(1, len(scores) + 1)
    f1 = 2 * hits / (flagged + labels.sum())
    return float(f1.max())


BEFORE = "lognormal_22views"  # the default before the 224 px fix of issue 18: for comparison only


def before_level(refs: References, target_fpr: float) -> float:
    """The former default: ``lognormal`` on ALL 22 views of each support image (rescaled to the leave-one-out
    median, x loo_shift) + good, sigma of the logs at least 5 % of |median log| (at 224 px: 0.18 for scores near 40)."""
    views = np.asarray(refs.views, float)
    r = views * (float(np.median(refs.leave_one_out)) / float(np.median(views))) if len(views) else refs.leave_one_out
    r = np.concatenate([r * loo_shift(refs.k), refs.good])
    threshold = float(np.exp(np.median(np.log(r)) + NormalDist().inv_cdf(1 - target_fpr) * spread(np.log(r))))
    median = float(np.median(r))
    return threshold if threshold > median else median + spread(r)  # as Threshold.level


def evaluate(row: dict, rule: str, g: int, target_fpr: float) -> dict | None:
    """Threshold of ``rule`` (or ``BEFORE``) with the first ``g`` good images, scored on the test split; None where
    it cannot run."""
    refs = References(leave_one_out=np.array(row["leave_one_out"]), views=np.array(row["views"]),
                      good=np.array(row["good"][:g]), synthetic=np.array(row["synthetic"]), k=row["k"],
                      method=row["method"])
    if not len(refs.leave_one_out) and not g:
        return None
    if rule == BEFORE:
        threshold = before_level(refs, target_fpr)
    elif "synthetic" in RULES[rule].needs and not len(refs.synthetic):
        return None
    else:
        threshold, _ = Threshold.level(rule, refs, target_fpr)
    return rates(row, threshold)


def rates(row: dict, threshold: float) -> dict:
    """FPR, recall, F1, balanced accuracy, oracle F1 gap, degenerate and in-band of ``threshold`` on the row's test split."""
    scores, labels = np.array(row["test"]), np.array(row["labels"])
    flagged = scores > threshold
    fpr = float(flagged[labels == 0].mean())
    recall = float(flagged[labels == 1].mean())
    precision = float(labels[flagged].mean()) if flagged.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"fpr": fpr, "recall": recall, "f1": f1, "balanced_accuracy": (1 - fpr + recall) / 2,
            "oracle_gap": oracle_f1(scores, labels) - f1, "degenerate": fpr > DEGENERATE_FPR or (recall == 0 and fpr == 0),
            "in_target": 0.005 <= fpr <= 0.10}


def measured_shift(rows: list[dict]) -> pd.DataFrame:
    """Per (category, K): median test/good score (fit on K) / median leave-one-out score (fits on K - 1), over draws."""
    out = []
    for row in rows:
        if row["k"] < 2:
            continue
        labels = np.array(row["labels"])
        good = np.median(np.array(row["test"])[labels == 0])
        out.append({"data": row["data"], "category": row["category"], "k": row["k"], "draw": row["draw"],
                    "ratio": good / np.median(row["leave_one_out"]),
                    "view_ratio": good / np.median(row["views"])})
    return pd.DataFrame(out)


def band_ceiling(good_counts: list[int], low: float = 0.005, high: float = 0.10) -> tuple[float, float]:
    """The best share of (category, draw) pairs whose measured FPR can fall in [low, high]: a rule whose true FPR is
    exactly p on every draw flags each of a pair's n good test images with probability p, so its measured FPR is
    Binomial(n, p) / n; returns (the largest mean in-band probability over p, that p). No rule does better on
    average over these test splits, however well calibrated."""
    def in_band(p: float) -> float:
        return float(np.mean([binom.cdf(np.floor(high * n), n, p) - binom.cdf(np.ceil(low * n) - 1, n, p)
                              for n in good_counts]))
    best = max((in_band(p), p) for p in np.linspace(0.001, 0.3, 600))
    return best


def summarise(out: Path) -> tuple[pd.DataFrame, int]:
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    for k in sorted({row["k"] for row in rows}):
        counts = [int((np.array(row["labels"]) == 0).sum()) for row in rows if row["k"] == k]
        share, p = band_ceiling(counts)
        print(f"K = {k}: at best {100 * share:.1f} % of the {len(counts)} (category, draw) pairs can show an FPR in "
              f"0.5-10 % (a rule with true FPR {100 * p:.1f} % on every draw; test/good sizes {sorted(set(counts))})")
    shift = measured_shift(rows)
    if len(shift):
        by_k = shift.groupby(["data", "k"])[["ratio", "view_ratio"]].median().reset_index()
        by_k["shift"] = by_k["k"] * (1 - by_k["ratio"])
        print("median test/good score over median leave-one-out score (SHIFT = K (1 - ratio)):")
        print(by_k.round(3).to_string(index=False))
    records = []
    for row in rows:
        for rule in (*RULE_NAMES, BEFORE):
            for target in TARGET_FPRS if rule == BEFORE or RULES[rule].uses_target_fpr else (None,):
                for g in GOOD_COUNTS:
                    result = evaluate(row, rule, g, target or TARGET_FPRS[0])
                    if result is not None:
                        name = rule if target is None else f"{rule}@{target:g}"
                        records.append({"data": row["data"], "category": row["category"], "k": row["k"], "draw": row["draw"],
                                        "method": row["method"], "rule": name, "g": g, **result})
    per_draw = pd.DataFrame(records)
    per_draw.to_csv(out / "per_draw.csv", index=False)
    table = per_draw.groupby(["method", "rule", "k", "g"]).agg(
        fpr=("fpr", "mean"), fpr_sd=("fpr", "std"), fpr_p90=("fpr", lambda x: x.quantile(0.9)),
        recall=("recall", "mean"), recall_sd=("recall", "std"), f1=("f1", "mean"), balanced_accuracy=("balanced_accuracy", "mean"),
        oracle_gap=("oracle_gap", "mean"), degenerate=("degenerate", "mean"), in_target=("in_target", "mean"),
        pairs=("fpr", "size")).reset_index()
    table.to_csv(out / "summary.csv", index=False)
    pd.set_option("display.width", 200)
    for (method, g), part in table.groupby(["method", "g"]):
        part = part.drop(columns=["g", "method"])
        print(f"\n{method}, G = {g} --good images (means over categories x draws; FPR, recall, F1, gap in %)")
        shown = part.copy()
        for column in ("fpr", "fpr_sd", "fpr_p90", "recall", "recall_sd", "f1", "balanced_accuracy", "oracle_gap",
                       "degenerate", "in_target"):
            shown[column] = (100 * shown[column]).round(1)
        print(shown.to_string(index=False))
    print(f"\nSHIFT used by the rules: {SHIFT}")
    return per_draw, rows[0].get("image_size", RegADConfig().image_size)


def figure(per_draw: pd.DataFrame, image_size: int) -> None:
    """FPR (top) and recall (bottom) per rule and K, for G = 0, 10, 30: median and 10-90 % of (category, draw); one
    figure per method (``FIGURE`` for padim_views, ``calibration_<method>.png`` beside it for another)."""
    for method, part in per_draw.groupby("method"):
        path = FIGURE if method == "padim_views" else FIGURE.with_name(f"calibration_{method}.png")
        _figure(part, image_size, method, path)


def _figure(per_draw: pd.DataFrame, image_size: int, method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [rule for rule in per_draw["rule"].unique() if not rule.endswith("@0.01")]  # the default target, 0.05
    fig, axes = plt.subplots(2, len(GOOD_COUNTS), figsize=(16, 8), sharey="row", sharex=True)
    for column, g in enumerate(GOOD_COUNTS):
        part = per_draw[per_draw["g"] == g]
        ks = sorted(per_draw["k"].unique())  # the same x positions in every column
        for row, metric in enumerate(("fpr", "recall")):
            ax = axes[row, column]
            for i, rule in enumerate(rules):
                values = [100 * part[(part["rule"] == rule) & (part["k"] == k)][metric].to_numpy() for k in ks]
                x = [j + (i - (len(rules) - 1) / 2) * 0.11 for j, v in enumerate(values) if len(v)]
                values = [v for v in values if len(v)]
                if not values:
                    continue
                median = np.array([np.median(v) for v in values])
                low, high = (np.array([np.percentile(v, q) for v in values]) for q in (10, 90))
                ax.errorbar(x, median, yerr=[median - low, high - median], fmt="o", ms=4, capsize=2, color=f"C{i}",
                            label=rule)
            ax.set_xticks(range(len(ks)), [str(k) for k in ks])
            if metric == "fpr":
                ax.axhspan(0.5, 10, color="green", alpha=0.12)
                ax.set_yscale("symlog", linthresh=1)
                ax.set_ylim(0, 100)
                ax.set_title(f"G = {g} --good images")
            else:
                ax.set_ylim(0, 100)
                ax.set_xlabel("K support images")
    axes[0, 0].set_ylabel("FPR on test/good, %")
    axes[1, 0].set_ylabel("recall on defective images, %")
    axes[0, -1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"fsad fit threshold rules (target rules at 0.05), {method} {image_size} px, fsad-mini (4) + ELPV (2), "
                 "draws of K: median and 10-90 % of (category, draw); green: the 0.5-10 % FPR target")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"figure: {path}")


FLOORS = tuple(round(0.05 * i, 2) for i in range(1, 9))  # min_log_spread candidates: 0.05 - 0.40


def lognormal_at_floor(row: dict, floor: float, target_fpr: float = 0.05) -> dict:
    """``lognormal`` (G = 0) with sigma(log R) at least ``floor``, scored on the row's test split (``rates``)."""
    refs = References(leave_one_out=np.array(row["leave_one_out"]), views=np.array(row["views"]), k=row["k"])
    return rates(row, lognormal_level(refs.normal("views"), target_fpr, floor))  # the floor given, not the method's


def choose_floor(out: Path) -> None:
    """Per method: the ``MIN_LOG_SPREADS`` floor of ``lognormal`` that maximises the share of (category, K, draw)
    in the 0.5-10 % FPR band minus the share of degenerate ones; chosen on all categories (the value to use) and, to
    say what a new product can expect, leave one category out (chosen on the others, measured on it)."""
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    frame = pd.DataFrame([{"method": row["method"], "category": row["category"], "k": row["k"], "floor": floor,
                           **lognormal_at_floor(row, floor)} for row in rows if row["k"] >= 2 for floor in FLOORS])

    def best(part: pd.DataFrame) -> float:
        score = part.groupby("floor")[["in_target", "degenerate"]].mean()
        return float((score["in_target"] - score["degenerate"]).idxmax())  # ties: the smallest floor

    for method, part in frame.groupby("method"):
        table = part.groupby(["floor", "k"])[["fpr", "recall", "in_target", "degenerate"]].mean().unstack("k")
        print(f"\n{method}: lognormal@0.05 (G = 0) by min_log_spread (means over (category, draw); shares 0-1)")
        print(table.round(3).to_string())
        held = []
        for category in sorted(part["category"].unique()):
            floor = best(part[part["category"] != category])
            held.append(part[(part["category"] == category) & (part["floor"] == floor)].assign(chosen=floor))
        held = pd.concat(held)
        print(f"{method}: chosen on all categories: min_log_spread {best(part):g}; leave one category out (chosen "
              f"{ {c: float(v) for c, v in held.groupby('category')['chosen'].first().items()} }):")
        print(held.groupby("k").agg(fpr=("fpr", "mean"), recall=("recall", "mean"), in_band=("in_target", "mean"),
                                    degenerate=("degenerate", "sum"), pairs=("fpr", "size")).round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "calibration"))
    parser.add_argument("--cache", default=str(ROOT / "runs" / "calibration" / "features"), help="per-image feature cache")
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--categories", nargs="+", help="data/category, e.g. fsad-mini/pcb elpv/mono (default: all six)")
    parser.add_argument("--image-size", type=int, default=RegADConfig().image_size,
                        help="input side in px (default: fsad fit's, %(default)s)")
    parser.add_argument("--fsad-mini", default=str(FSAD_MINI_DIR), help="the fsad-mini folder (default: %(default)s)")
    parser.add_argument("--method", default="padim_views", choices=("padim_views", "anomalydino", "patchcore", "fastrecon"),
                        help="the detector whose thresholds are measured (default: %(default)s)")
    parser.add_argument("--first-sorted", action="store_true",
                        help=f"also the first K sorted train/good images (draw {SORTED_DRAW})")
    parser.add_argument("--summary", action="store_true", help="only the tables and figure of the saved scores")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.summary:
        categories = [tuple(c.split("/")) for c in args.categories] if args.categories else \
            [(data, name) for data, names in CATEGORIES.items() for name in names]
        tic = time.perf_counter()
        run(out, Path(args.cache), tuple(args.shots), args.draws, categories, Path(args.fsad_mini), args.image_size,
            args.method, args.first_sorted)
        print(f"wall time {time.perf_counter() - tic:.0f} s")
    figure(*summarise(out))
    choose_floor(out)


if __name__ == "__main__":
    main()
