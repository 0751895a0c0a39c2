"""Aggregated (leave-one-category-out) training of RegAD, resumable and deterministic.

Each batch holds queries of ONE training category; every query gets K supports drawn
with replacement from its category, never the query itself, re-drawn every epoch. Three
SGD optimisers (STN + backbone, encoder, predictor) follow a cosine schedule. The
weights after the last epoch are the result: no test image ever selects a checkpoint
(the official code picks the epoch with the best TEST AUROC).

Example:
    >>> from fsad.data.mvtec import load_category
    >>> cats = [load_category(root, c) for c in ("ring", "stripes")]
    >>> model = train_regad(cats, RegADConfig(epochs=1), out_dir=Path("models/toy/disc"))
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fsad.config import RegADConfig, resolve_device
from fsad.data.loading import as_float, load_images
from fsad.data.mvtec import Category
from fsad.io import save_atomic, write_csv_atomic
from fsad.methods.regad.checkpoint import build_model, checkpoint_differences, load_checkpoint, training_fingerprints
from fsad.methods.regad.network import RegAD
from fsad.seed import epoch_rng, seed_everything

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "regad.pt"


@dataclass(frozen=True)
class Batch:
    """Indices of one training step: queries and their supports, all in ``category``."""

    category: int
    queries: np.ndarray  # B
    supports: np.ndarray  # B x K


def draw_supports(queries: np.ndarray, n_images: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """K supports per query, with replacement, never the query itself.

    Drawing from ``n_images - 1`` values and skipping over the query's index keeps the
    draw uniform over the other images.
    """
    if n_images < 2:
        raise ValueError(f"a training category needs at least 2 images to pair queries with supports, got {n_images}")
    draws = rng.integers(0, n_images - 1, size=(len(queries), k))  # B x K
    return draws + (draws >= queries[:, None])


def one_pass(sizes: Sequence[int], config: RegADConfig, rng: np.random.Generator) -> list[Batch]:
    """Every training image once: each category's images shuffled into single-category batches, batches shuffled."""
    batches = []
    for c, n in enumerate(sizes):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            queries = order[start : start + config.batch_size]
            k = int(rng.choice(config.train_shots))
            batches.append(Batch(c, queries, draw_supports(queries, n, k, rng)))
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(sizes: Sequence[int], config: RegADConfig, epoch: int) -> list[Batch]:
    """The batches of one epoch: one pass (``one_pass``), cut to ``batches_per_epoch``; with ``fill_batches``
    further passes are drawn until there are that many, so a small pool trains on as many queries as a large one."""
    rng = epoch_rng(config.seed, epoch)
    batches = one_pass(sizes, config, rng)
    if config.batches_per_epoch is None:
        return batches
    while config.fill_batches and len(batches) < config.batches_per_epoch:
        batches += one_pass(sizes, config, rng)
    return batches[: config.batches_per_epoch]


def official_lr_factor(epoch: int, epochs: int) -> float:
    """The official schedule's factor for 0-based ``epoch``: ``0.5 * (1 + cos(pi * (epoch + 1) / epochs))``,
    set before training that epoch (``train.py`` 320: epoch runs 1..E there), 0 for the last."""
    return 0.5 * (1 + math.cos(math.pi * (epoch + 1) / epochs))


def make_optimizers(model: RegAD, config: RegADConfig):
    """The official three SGD optimisers (STN + backbone, encoder, predictor) with a cosine
    schedule over the epochs (``config.lr_schedule``); with ``config.stn_lr`` the STN
    parameters are a second parameter group of the first optimiser, at that rate."""
    backbone, stns = list(model.backbone.parameters()), list(model.stns.parameters())
    groups = [
        [{"params": backbone}, {"params": stns, "lr": config.stn_lr}] if config.stn_lr is not None else backbone + stns,
        list(model.encoder.parameters()),
        list(model.predictor.parameters()),
    ]
    optimizers = [torch.optim.SGD(g, lr=config.lr, momentum=config.momentum) for g in groups]
    if config.lr_schedule == "official":
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: official_lr_factor(epoch, config.epochs)) for o in optimizers]
    else:
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=config.epochs) for o in optimizers]
    return optimizers, schedulers


def training_step(model: RegAD, optimizers: Sequence[torch.optim.Optimizer], query: torch.Tensor, support: torch.Tensor,
                  separate_forwards: bool = False, identity_penalty: float = 0.0) -> float:
    """One SGD step of the three optimisers on a batch's registration loss; returns the loss.

    ``model`` is best channels-last (``train_regad`` makes it so): the query is made channels-last here.

    Args:
        query: B x 3 x H x W.
        support: B x K x 3 x H x W.
        separate_forwards, identity_penalty: Of ``RegAD.registration_loss`` (``RegADConfig``'s
            ``separate_forwards`` and ``stn_identity_penalty``).
    """
    query = query.contiguous(memory_format=torch.channels_last)  # B x 3 x H x W, for the channels-last network
    loss = model.registration_loss(query, support, separate_forwards=separate_forwards, identity_penalty=identity_penalty)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return loss.item()


# Scores the network between epochs (``train_regad``'s ``monitor``): model, epoch (0 = before
# training) -> values for that epoch's history row. It must not change the model.
EpochMonitor = Callable[[RegAD, int], dict[str, float]]
EPOCHS_CSV = "epochs.csv"


def train_regad(
    categories: Sequence[Category],
    config: RegADConfig,
    out_dir: Path,
    resume: bool = True,
    progress: bool = True,
    monitor: EpochMonitor | None = None,
) -> RegAD:
    """Train RegAD on the train/good images of ``categories`` (the target category left out).

    A checkpoint is written atomically after every epoch to ``out_dir/checkpoint.pt``; with
    ``resume`` a run continues from it and ends with the same weights as an uninterrupted
    run. The final weights go to ``out_dir/regad.pt``.

    Args:
        categories: Training categories (every category of the dataset but the target).
        config: Settings; ``config.seed`` fixes initialisation and sampling.
        out_dir: Where the checkpoint and the final model (with its per-epoch history) go.
        resume: Continue from an existing checkpoint instead of starting over; a checkpoint of
            other training settings (architecture included), categories or training images (``checkpoint_differences``)
            is not resumed: training starts over, with a warning naming what changed.
        progress: Show tqdm bars.
        monitor: Called before the first epoch (epoch 0, the untrained network) and after
            every epoch; its values join that epoch's history row, and the history is also
            written to ``out_dir/epochs.csv``. Diagnostics only: the weights saved are always
            the last epoch's.

    Returns:
        The trained model in eval mode.
    """
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = build_model(config)
    optimizers, schedulers = make_optimizers(model, config)
    history: list[dict] = []
    start_epoch = 0
    checkpoint_path = out_dir / CHECKPOINT_NAME
    names = [c.name for c in categories]
    fingerprints = training_fingerprints(categories)
    counts = {c.name: len(c.train) for c in categories}  # recorded: what trained the model, readable without the data
    # Not checked against ``config``'s architecture on loading: any difference (image size and backbone
    # included) is a training of other settings, started over below like any other.
    state = load_checkpoint(checkpoint_path) if resume and checkpoint_path.is_file() else None
    if state is not None:
        changed = checkpoint_differences(state, config, categories, checkpoint_path)
        if changed:
            log.warning("%s was made with other training settings or data (%s): training from scratch",
                        checkpoint_path, "; ".join(changed))
            state = None
    if state is not None:
        model.load_state_dict(state["model"])
        for opt, s in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        for sched, s in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        start_epoch, history = state["epoch"], state["history"]
        log.info("resuming %s after epoch %d", checkpoint_path, start_epoch)
    # channels-last: oneDNN's convolutions and their backward run 1.6x faster on CPU (MobileNetV2, 128 px)
    model.to(device, memory_format=torch.channels_last)
    for opt in optimizers:  # optimizer state loaded on CPU must follow the model
        for s in opt.state.values():
            for key, value in s.items():
                if torch.is_tensor(value):
                    s[key] = value.to(device)

    # Nothing left to train (a finished run resumed): skip decoding the training images.
    images = [load_images(c.train, config.image_size, desc=f"load {c.name}") for c in categories] if start_epoch < config.epochs else []
    if monitor is not None and start_epoch == 0:
        history = [{"epoch": 0, "loss": float("nan"), **monitor(model, 0)}]
    for epoch in range(start_epoch, config.epochs):
        model.train(freeze_backbone_bn=config.freeze_backbone_bn)
        batches = epoch_batches([len(x) for x in images], config, epoch)
        losses, seen, tic = [], 0, time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for batch in bar:
            pool = images[batch.category]
            query = as_float(pool[batch.queries].to(device))  # B x 3 x H x W, uint8 moved, float on the device
            support = as_float(pool[batch.supports].to(device))  # B x K x 3 x H x W
            losses.append(training_step(model, optimizers, query, support, config.separate_forwards, config.stn_identity_penalty))
            seen += len(batch.queries) * (1 + batch.supports.shape[1])
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        lr = optimizers[0].param_groups[0]["lr"]  # the rate this epoch ran at
        for sched in schedulers:
            sched.step()
        seconds = time.perf_counter() - tic
        queries = sum(len(b.queries) for b in batches)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": seconds, "images_per_second": seen / seconds,
                        "queries": queries, "lr": lr, **(monitor(model, epoch + 1) if monitor is not None else {})})
        log.info("epoch %d/%d loss %.4f (%.1f s)", epoch + 1, config.epochs, history[-1]["loss"], seconds)
        save_atomic(
            {
                "config": config.to_dict(),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers],
                "schedulers": [s.state_dict() for s in schedulers],
                "history": history,
                "train_categories": names,
                "train_fingerprints": fingerprints,
                "train_images": counts,
            },
            checkpoint_path,
        )
    save_atomic({"config": config.to_dict(), "model": model.state_dict(), "history": history, "train_categories": names,
                 "train_fingerprints": fingerprints, "train_images": counts}, out_dir / MODEL_NAME)
    if monitor is not None:
        import pandas as pd  # here: the methods package is imported by fsad predict, which needs no pandas

        write_csv_atomic(out_dir / EPOCHS_CSV, pd.DataFrame(history))
    return model.eval()
