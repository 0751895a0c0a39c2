"""RegAD and its peers side by side, under one harness.

Every method (``fsad.methods.registry.DETECTORS``) sees the same data reader, the same support sets (the JSON
files of ``fsad.data.support_sets.support_sets_for``), the same backbone and image size, and
is scored with the same metrics. Methods that learn from other categories (RegAD, ResAD)
train leave-one-category-out; RegAD-L trains on each support set's K images only.
For each target category the test set is embedded once per method (when the embedding
does not depend on the support set) and scored against every support set.

Costs are measured in the same run: for the first target category, every method is fitted
on its largest-K first support set and scores ``cost_images`` test images from raw pixels
(embedding included), in a fresh process per method (``measure_cost``); ``run_costs``
does only that, to time every method back to back on an idle machine.

Outputs in ``out_dir``: ``results.csv`` (method, category, shots, support_set, metrics; no
timings, so identical runs write identical files), ``costs.csv``, ``training.csv`` (training
seconds, fitting and scoring seconds summed over the support sets, and for ResAD where its
anomalies came from) and ``examples.pt`` (every method's map of one defective test image of
the first target with masks, for the figure).

Example:
    >>> config = ComparisonConfig(dataset="toy", shots=(2,), n_sets=2, regad=RegADConfig(image_size=64, epochs=1))
    >>> results = run_comparison(config, Path("runs/compare-toy"))  # trained models: runs/compare-toy/models
    >>> print(comparison_table(results, ("image_auroc", "pixel_auroc")))
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from fsad.config import ComparisonConfig, StudyConfig, resolve_device
from fsad.data.loading import load_images
from fsad.data.mvtec import Category
from fsad.data.support_sets import support_samples, support_sets_for
from fsad.io import save_atomic, save_figure_atomic, write_csv_atomic, write_text_atomic
from fsad.methods import Detector, ResAD
from fsad.methods.regad.training import MODEL_NAME
from fsad.methods.registry import DETECTORS, build_detector, method_backbone
from fsad.reporting.tables import pivot_text, summarize, to_markdown
from fsad.study.evaluation import TestSet, clock, evaluate_detector, warm_up
from fsad.study.experiment import resolve_dataset
from fsad.study.models import leave_one_out_regad
from fsad.study.pools import load_extra, training_pool
from fsad.study.preflight import Checked, preflight
from fsad.study.targets import for_each_target

log = logging.getLogger(__name__)

# Every method of the registry, in its order, that runs on the configured backbone's ImageNet weights;
# anomalydino_dinov2 needs its own weight file (dinov2_vits14_pretrain.pth) and is run by naming it.
DEFAULT_METHODS = tuple(name for name in DETECTORS if name != "anomalydino_dinov2")


@dataclass
class Context:
    """What building a method for one target may use: the settings, the target and the training categories."""

    config: ComparisonConfig
    target: Category
    others: list[Category]
    extra: list[Category]  # regad.train_extra, read once per run (fsad.study.pools.load_extra)
    models_dir: Path  # where models trained here go: <models_dir>/<category>/
    progress: bool
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in training.csv

    @property
    def device(self) -> str:
        return resolve_device(self.config.regad.device)


def _regad_model(ctx: Context) -> Path:
    """The RegAD model of ``fsad run`` (trained on the target's pool, ``fsad.study.pools``): reused from
    ``regad_models``, else trained (resumable) in ``models_dir``."""
    reuse = Path(ctx.config.regad_models) / ctx.target.name / MODEL_NAME if ctx.config.regad_models else None
    settings = ctx.config.regad
    pool = training_pool(ctx.target, ctx.others, ctx.extra, settings.train_own)
    # A missing model is trained into models_dir, never into the folder of another run.
    _, path = leave_one_out_regad(pool, settings, ctx.models_dir / ctx.target.name, reuse, ctx.progress)
    return path


def _resad_model(ctx: Context) -> Path:
    """ResAD's head trained on the other categories: ``<models_dir>/<target>/resad.pt``, reused when made with these settings and data."""
    settings, path = ctx.config.resad, ctx.models_dir / ctx.target.name / "resad.pt"
    changed = ResAD.saved_differences(path, settings, ctx.others) if path.is_file() else None
    if changed == []:
        sources = torch.load(path, map_location="cpu", weights_only=True)["sources"]
    else:
        if changed:
            log.warning("%s was made with other settings or data (%s): training again", path, "; ".join(changed))
        method = DETECTORS["resad"].build(ctx.config.regad, {}, None, method_backbone)  # a head to train here (build_detector wants a trained one)
        sources = method.train(ctx.others, settings, progress=ctx.progress)
        method.save(path, settings, sources, ctx.others)
        ctx.notes["trained"] = True
    ctx.notes["anomalies"] = ", ".join(f"{k}: {v}" for k, v in sorted(sources.items()))
    return path


def build_method(ctx: Context, name: str) -> Detector:
    """Method ``name`` for ``ctx.target``: its leave-one-out model trained or reused first, then built by the registry.

    The shared settings (``config.regad``: backbone, image size, device, eps, blur sigma)
    reach every method through ``fsad.methods.registry.build_detector``.
    """
    config = ctx.config
    model_path = {"regad": _regad_model, "resad": _resad_model}.get(name, lambda _: None)(ctx)
    if model_path is not None:
        ctx.notes["model"] = str(model_path)
    options = {"spade": config.spade, "padim": config.padim, "padim_views": config.padim, "patchcore": config.patchcore,
               "regad_l": config.regad_l, "fastrecon": config.fastrecon, "anomalydino": config.anomalydino,
               "anomalydino_dinov2": config.anomalydino_dinov2}.get(name, {})
    return build_detector(name, config.regad, options, model_path)


class MemoryMonitor:
    """Peak memory added while the ``with`` block runs (``peak_mib``), and the peak total (``process_peak_mib``).

    On CUDA: ``torch.cuda.max_memory_allocated`` of ``device`` (``cuda:N`` measures GPU N) above
    the allocation at entry. On the
    CPU: the process's resident set size, sampled every 2 ms by a thread (torch releases
    the GIL in its kernels), above its value at entry; ``ru_maxrss`` cannot be used as it
    never goes down across methods. NaN where /proc is missing (not Linux). It counts what the
    process takes from the system: memory the allocator holds from earlier frees (glibc keeps
    freed heap blocks resident) is reused without growing the resident size, so a peak made in
    it reads low.

    Example:
        >>> with MemoryMonitor("cpu") as monitor:  # doctest: +SKIP
        ...     scores = detector.predict(images)
        >>> monitor.peak_mib  # MiB taken from the system while the block ran  # doctest: +SKIP
    """

    def __init__(self, device: str, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak_mib = self.process_peak_mib = float("nan")

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss() or 0)
            time.sleep(self.interval)

    def __enter__(self) -> MemoryMonitor:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._rss()
        self._peak = self._start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            self.process_peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.peak_mib = self.process_peak_mib - self._start / 2**20
            return
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self.process_peak_mib = max(self._peak, self._rss() or 0) / 2**20
            self.peak_mib = self.process_peak_mib - self._start / 2**20


def _example_index(test: TestSet) -> int:
    """The defective test image with the largest mask (the first defective one without masks)."""
    defective = np.flatnonzero(test.labels == 1)
    if not len(defective):
        return 0
    areas = test.masks[torch.from_numpy(defective)].sum(dim=(1, 2))
    return int(defective[int(areas.argmax())])


def _cost_worker(job: Path) -> None:
    """In a fresh process: build the method (trained models load from disk), fit, score raw images.

    ``job`` is a pickle of (Context, method name, support, images, threads); the result is
    pickled to ``job`` + ``.out``.
    """
    ctx, name, support, images, threads = pickle.loads(Path(job).read_bytes())
    torch.set_num_threads(threads)
    method = build_method(ctx, name)
    warm_up(ctx.device)  # a fresh process: CUDA's start-up is not the method's cost
    with MemoryMonitor(ctx.device) as monitor:
        tic = clock(ctx.device)
        method.fit(support)
        fitted = clock(ctx.device)
        method.predict(images)
        done = clock(ctx.device)
    result = {"fit_seconds": fitted - tic, "ms_per_image": 1000 * (done - fitted) / len(images), "peak_mib": monitor.peak_mib,
              "process_peak_mib": monitor.process_peak_mib}
    Path(f"{job}.out").write_bytes(pickle.dumps(result))


def measure_cost(ctx: Context, name: str, support: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    """Fit seconds, inference ms per image and memory of one method, in its own process.

    A fresh Python process per method makes the numbers independent of what ran before:
    the allocator of a long-lived process keeps freed memory, which hides later peaks.
    ``peak_mib`` is the memory that fit + scoring add to the loaded method,
    ``process_peak_mib`` the process's whole peak resident set meanwhile (Python, torch,
    model, data; on CUDA the peak allocated GPU memory). ``ru_maxrss`` is not used: Linux
    carries it over ``exec`` from the parent, which would report the parent's size.
    """
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.pkl"
        job.write_bytes(pickle.dumps((ctx, name, support, images, torch.get_num_threads())))
        code = f"from fsad.study.comparison import _cost_worker; _cost_worker({str(job)!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"fsad/study/comparison.py: the cost measurement of {name!r} failed:\n{done.stderr[-2000:]}")
        return pickle.loads(Path(f"{job}.out").read_bytes())


def _cost_row(ctx: Context, name: str, shots: tuple[int, int], support: torch.Tensor, test_images: torch.Tensor) -> dict[str, Any]:
    """One row of ``costs.csv``: ``measure_cost`` on the first ``cost_images`` test images, with what was measured."""
    images = test_images[: ctx.config.cost_images]
    return {"method": name, "category": ctx.target.name, "shots": shots[0], "images": len(images), "image_size": ctx.config.regad.image_size,
            "device": ctx.device, "threads": torch.get_num_threads(), **measure_cost(ctx, name, support, images)}


def _load_target(config: ComparisonConfig, checked: Checked, target: str, support_dir: Path):
    """The target category, its support sets (made once, then read from ``support_dir``), the training categories and the test set.

    The categories are those preflight loaded: all of them when a method trains (then the
    others are its training categories), else only the targets (no method reads the others).
    """
    category = checked.categories[target]
    # A given support_dir is another run's or the pipeline's: only read.
    sets = support_sets_for(category, config.shots, config.n_sets, config.support_seed, support_dir,
                            read_only=config.support_dir is not None)
    others = [c for name, c in checked.categories.items() if name != target]
    return category, sets, others, TestSet.load(category, config.regad.image_size)


def _folders(config: ComparisonConfig, out_dir: Path, models_dir: Path | None) -> tuple[Path, Path, Checked, Path, list[Category]]:
    """Output folder, models folder, the checked data set (preflight, before any training), support-set folder and
    regad's train_extra categories (read here, so their errors come before any work)."""
    out_dir = Path(out_dir)
    checked = preflight(resolve_dataset(config.dataset), config.categories, config.shots, config.metrics, config.regad.device,
                        training=bool({"regad", "resad"} & set(config.methods)))
    extra = load_extra(config.regad.train_extra) if "regad" in config.methods else []
    support_dir = Path(config.support_dir) if config.support_dir else out_dir / "support_sets"
    return out_dir, Path(models_dir) if models_dir else out_dir / "models", checked, support_dir, extra


def run_costs(config: ComparisonConfig, out_dir: Path, models_dir: Path | None = None) -> pd.DataFrame:
    """Only the cost measurement of ``run_comparison``, for every method; writes ``out_dir/costs.csv``.

    For timing every method back to back on an otherwise idle machine, apart from the long
    accuracy runs. Methods that train are built first (trained where ``models_dir`` or
    ``regad_models`` has no model), so the measured process only loads them.
    """
    out_dir, models_dir, checked, support_dir, extra = _folders(config, out_dir, models_dir)
    category, sets, others, test = _load_target(config, checked, checked.targets[0], support_dir)
    largest = (max(sets), 0)
    support = load_images(support_samples(category, sets[largest[0]][0]), config.regad.image_size)
    rows = []
    for name in config.methods:
        ctx = Context(config, category, others, extra, models_dir, False)
        build_method(ctx, name)  # trains here if needed, so the measured process only loads
        rows.append(_cost_row(ctx, name, largest, support, test.images))
        log.info("%s cost measured", name)
    costs = pd.DataFrame(rows)
    write_csv_atomic(out_dir / "costs.csv", costs)
    return costs


def run_comparison(config: ComparisonConfig, out_dir: Path, models_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every method on every target category and support set; write the CSV files.

    Args:
        config: What to run.
        out_dir: Where the CSV files and ``examples.pt`` go.
        models_dir: Where models trained here go (ResAD; RegAD when ``regad_models`` has
            none); ``None``: ``out_dir/models``.
        progress: Show tqdm bars.

    Returns:
        One row per (method, category, K, support set): the metrics.
    """
    out_dir, models_dir, checked, support_dir, extra = _folders(config, out_dir, models_dir)
    targets = checked.targets
    costs, training = [], []
    examples: dict[str, Any] = {}
    # The figure's example comes from the first target with masks (the costs from the first target).
    shown = next((t for t in targets if checked.categories[t].has_masks), targets[0])

    def score(target: str) -> list[dict]:
        nonlocal examples
        category, sets, others, test = _load_target(config, checked, target, support_dir)
        largest = (max(sets), 0)
        example = _example_index(test)
        if target == shown:
            examples = {"category": target, "shots": largest[0], "image": test.images[example], "mask": test.masks[example], "maps": {}}
        rows = []
        timed = target == targets[0] and config.measure_costs
        # the costs time every method on the same support set: its images are read once
        cost_support = load_images(support_samples(category, sets[largest[0]][0]), config.regad.image_size) if timed else None
        for name in config.methods:
            ctx = Context(config, category, others, extra, models_dir, progress)
            tic = time.perf_counter()
            method = build_method(ctx, name)
            train_seconds = time.perf_counter() - tic
            run = evaluate_detector(method, category, sets, test, config.metrics, keep=[largest] if target == shown else [],
                                    progress=progress)
            training.append({"method": name, "category": target, "train_seconds": train_seconds, **run.seconds, **ctx.notes})
            rows += run.rows
            if largest in run.kept:
                examples["maps"][name] = run.kept[largest].maps[example]
            if timed:
                costs.append(_cost_row(Context(config, category, others, extra, models_dir, False), name, largest, cost_support, test.images))
            log.info("%s %s done", target, name)
        return rows

    def save(rows: list[dict]) -> None:
        write_csv_atomic(out_dir / "results.csv", pd.DataFrame(rows))
        if costs:
            write_csv_atomic(out_dir / "costs.csv", pd.DataFrame(costs))
        write_csv_atomic(out_dir / "training.csv", pd.DataFrame(training))
        if examples.get("maps"):
            save_atomic(examples, out_dir / "examples.pt")

    return pd.DataFrame(for_each_target(targets, score, save))


def comparison_table(results: pd.DataFrame, metrics: Sequence[str], categories: bool = False) -> pd.DataFrame:
    """Methods as row groups, K as columns; cells ``"m +- s / ..."`` in % over support sets.

    Args:
        results: ``run_comparison`` rows.
        metrics: Metrics shown in every cell, in order.
        categories: One row per category under each method (else only the category mean: for a
            single category, its own row).
    """
    summary = summarize(results, metrics)
    parts = []
    for method in dict.fromkeys(results["method"]):
        table = pivot_text(summary, metrics, method)
        parts.append(table if categories else table.iloc[[-1]])  # the mean comes last
    table = pd.concat(parts, keys=list(dict.fromkeys(results["method"])), names=["method", "category"])
    return table[sorted(table.columns, key=lambda c: int(c.removeprefix("K=")))]  # methods may differ in K


def table_markdown(table: pd.DataFrame) -> str:
    """A ``comparison_table`` as Markdown, its (method, category) rows written ``method · category``."""
    return to_markdown(table.set_axis([" · ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in table.index]))


def result_sections(table: Callable[[bool], pd.DataFrame], categories: Sequence[str]) -> list[str]:
    """A report's Markdown sections of results: the category mean and each category, or one section for one category.

    Args:
        table: ``categories -> table`` (``comparison_table`` of the results, or ``ablation_table``).
        categories: The categories in the results.
    """
    if len(set(categories)) == 1:
        return [f"## {categories[0]}\n" + table_markdown(table(False))]
    return ["## category mean\n" + table_markdown(table(False)), "## per category\n" + table_markdown(table(True))]


def settings_section(config: StudyConfig) -> str:
    """The settings of a report, as the YAML of a config file (last: the tables come first)."""
    return "## settings\n```yaml\n" + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None) + "```"


def cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    """One row per method: inference ms per image, fit seconds, peak memory (MiB) added and of the process."""
    columns = ["method", "shots", "images", "image_size", "device", "threads", "ms_per_image", "fit_seconds", "peak_mib", "process_peak_mib"]
    return costs[columns].set_index("method").round(1)


def load_examples(out_dir: Path) -> dict[str, Any]:
    """The ``examples.pt`` that ``run_comparison`` wrote to ``out_dir`` (image, mask, every method's map)."""
    return torch.load(Path(out_dir) / "examples.pt", weights_only=False)


def plot_example_maps(examples: dict[str, Any], path: Path | None = None):
    """The example test image, its mask and every method's anomaly map side by side.

    Each map is scaled to its own [min, max] (methods' scores live on different scales).
    Returns the matplotlib figure; saves it as PNG when ``path`` is given.
    """
    import matplotlib.pyplot as plt

    maps = examples["maps"]
    fig, axes = plt.subplots(1, 2 + len(maps), figsize=(2.2 * (2 + len(maps)), 2.6))
    axes[0].imshow(examples["image"].permute(1, 2, 0).numpy())
    axes[0].set_title(f"{examples['category']}")
    axes[1].imshow(examples["mask"].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("mask")
    for ax, (name, m) in zip(axes[2:], maps.items()):
        ax.imshow(m.numpy(), cmap="jet")
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"K = {examples['shots']}, support set 0", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure_atomic(fig, path)
    return fig



def read_runs(folders: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Results, costs, training records and example maps of runs on the same support sets, methods in registry order."""
    order = {name: i for i, name in enumerate(DETECTORS)}
    folders = [Path(f) for f in folders]

    def every(name: str) -> pd.DataFrame:
        parts = [pd.read_csv(f / name) for f in folders if (f / name).is_file()]
        return pd.concat(parts) if parts else pd.DataFrame(columns=["method"])

    results = every("results.csv").sort_values("method", key=lambda m: m.map(order), kind="stable")
    costs, training = every("costs.csv"), every("training.csv")
    examples: dict[str, Any] = {}
    for folder in (f for f in folders if (f / "examples.pt").is_file()):
        found = load_examples(folder)
        examples = {**found, "maps": {**examples.get("maps", {}), **found["maps"]}} if examples else found
    if examples:
        examples["maps"] = dict(sorted(examples["maps"].items(), key=lambda item: order.get(item[0], len(order))))
    return results, costs.sort_values("method", key=lambda m: m.map(order), kind="stable"), training, examples


def write_report(config: ComparisonConfig, out_dir: Path, include: Sequence[Path] = ()) -> str:
    """``out_dir/table.md`` (category mean, per category, costs, training, wall time, settings) and ``example_maps.png``.

    Runs in ``include`` (other methods on the same support sets) are merged into the tables.
    Returns the Markdown text.
    """
    folders = [Path(out_dir), *map(Path, include)]
    results, costs, training, examples = read_runs(folders)
    if examples:
        plot_example_maps(examples, Path(out_dir) / "example_maps.png")
    parts = [f"metrics per cell: {' / '.join(config.metrics)} (%), mean ± std over support sets"]
    if len(results):
        parts += result_sections(lambda categories: comparison_table(results, config.metrics, categories), list(results["category"]))
    if len(costs):
        parts.append("## costs (first category, largest K)\n" + to_markdown(cost_table(costs)))
    if len(training):
        parts.append("## training\n" + to_markdown(training.set_index("method").round(2)))
    walls = [f"- {f}: {(f / 'wall_time.txt').read_text().strip()}" for f in folders if (f / "wall_time.txt").is_file()]
    if walls:
        parts.append("## wall time\n" + "\n".join(walls))
    parts.append(settings_section(config))
    text = "\n\n".join(parts)
    write_text_atomic(Path(out_dir) / "table.md", text + "\n")
    return text

__all__ = ["DEFAULT_METHODS", "build_method", "MemoryMonitor", "comparison_table", "cost_table", "load_examples", "read_runs",
           "result_sections", "settings_section", "write_report", "plot_example_maps", "run_comparison", "run_costs",
           "table_markdown"]
