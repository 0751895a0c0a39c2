"""RegAD trained once per seed on its pool: the model files, their records, and the seed spread of Table 1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fsad.config import ConfigError
from fsad.data.toy import make_toy_dataset
from fsad.io import write_json_atomic
from fsad.pipeline import layout
from fsad.pipeline.data_prep import prepare_data
from fsad.pipeline.evaluate import model_record
from fsad.pipeline.params import TrainParams
from fsad.pipeline.report import collect_results, pool_text, training_gain, training_pools
from fsad.pipeline.train import train_target
from fsad.reporting.tables import summarize, table1_long, table1_wide

TINY = {"pretrained": False, "image_size": 32, "epochs": 1, "batch_size": 4, "batches_per_epoch": 2, "device": "cpu"}


def test_the_train_section_has_seeds_and_refuses_a_single_seed():
    train = TrainParams.from_dict({**TINY, "seeds": [3, 1], "train_extra": "toy"}, source="params.yaml", at="train")
    assert train.seeds == (3, 1) and train.for_seed(1).seed == 1 and train.for_seed(1).train_extra == ("toy",)
    assert train.for_seed(1).replace(seed=0) == train.for_seed(0)  # a RegADConfig: nothing of seeds left in it
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'train.seed'"):
        TrainParams.from_dict({"seed": 0, "seeds": [0]}, source="params.yaml", at="train")
    with pytest.raises(ConfigError, match=r"params.yaml: train.seeds\[1\]: 0 listed twice"):
        TrainParams.from_dict({"seeds": [0, 0]}, source="params.yaml", at="train")


def test_each_seed_trains_its_own_model_on_the_pool_and_its_record_names_the_pool(toy_root, pipeline_root, tmp_path):
    data = make_toy_dataset(tmp_path / "own", categories=("disc", "ring"), n_train=4, size=32)
    prepare_data(str(data), ["disc"], [2], 1, 0, progress=False, train_extra=[f"{toy_root}/stripes"])
    train = TrainParams.from_dict({**TINY, "seeds": [0, 1], "train_extra": [f"{toy_root}/stripes"]})
    weights = {}
    for seed in train.seeds:
        train_target("disc", train.for_seed(seed), progress=False)
        weights[seed] = torch.load(layout.model_path("disc", seed), weights_only=True)["model"]
        write_json_atomic(layout.seed_results_dir("disc", seed) / "model.json", model_record("disc", seed))
    assert layout.model_path("disc", 1).relative_to(pipeline_root).as_posix() == "models/seed1/disc/regad.pt"
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two trainings, not one copied
    record = model_record("disc", 1)
    assert record["seed"] == 1 and record["train_categories"] == ["ring", f"{toy_root.name}/stripes"]
    assert record["train_images"] == {"ring": 4, f"{toy_root.name}/stripes": 12}
    pools = training_pools(["disc"], [0, 1])
    assert pools.groupby("seed")["images"].sum().tolist() == [16, 16]
    assert pool_text(pools) == f"- `disc` (seeds 0, 1): ring (4 images), {toy_root.name}/stripes (12 images); 16 images"


def seeded_results(seeds=(0, 1, 2), n_sets=4) -> pd.DataFrame:
    """RegAD of 3 seeds (seed s adds 2 points) and the untrained network (no seed), 4 support sets (set i adds 1 point)."""
    rows = [{"method": "regad", "category": c, "shots": 2, "seed": s, "support_set": i,
             "image_auroc": 0.70 + 0.10 * (c == "b") + 0.02 * s + 0.01 * i} for c in "ab" for s in seeds for i in range(n_sets)]
    rows += [{"method": "untrained", "category": c, "shots": 2, "seed": np.nan, "support_set": i,
              "image_auroc": 0.70 + 0.10 * (c == "b") + 0.01 * i} for c in "ab" for i in range(n_sets)]
    return pd.DataFrame(rows)


def test_table1_shows_the_seed_spread_beside_the_support_set_spread():
    summary = summarize(seeded_results(), ["image_auroc"])
    wide = table1_wide(table1_long(summary, "regad", ["image_auroc"]))
    # a: the seeds' mean 73.5; over the sets std(0, 1, 2, 3) = 1.3 points (the seeds do not inflate it);
    # over the seeds std(70, 72, 74) + 1.5 = 2.0 points
    assert wide.loc["a", ("K=2", "image")] == "73.5±1.3" and wide.loc["a", ("K=2", "image seeds")] == "±2.0"
    assert wide.loc["mean", ("K=2", "image")] == "78.5±1.3" and wide.loc["mean", ("K=2", "image seeds")] == "±2.0"
    untrained = table1_wide(table1_long(summary, "untrained", ["image_auroc"]))
    assert list(untrained.columns) == [("K=2", "image")]  # no seeds: no seed column
    one_seed = summarize(seeded_results(seeds=(0,)), ["image_auroc"])
    assert table1_wide(table1_long(one_seed, "regad", ["image_auroc"])).loc["a", ("K=2", "image seeds")] == "-"  # unknown, not 0


def test_training_gain_is_paired_by_support_set_on_the_seeds_mean_and_per_seed():
    assert training_gain(seeded_results()).splitlines() == [
        "- seeds' mean: K=2: +2.0±0.0 (4/4 sets)", "- seed 0: K=2: +0.0±0.0 (0/4 sets)",
        "- seed 1: K=2: +2.0±0.0 (4/4 sets)", "- seed 2: K=2: +4.0±0.0 (4/4 sets)"]


def test_the_report_reads_every_seeds_results_and_names_a_missing_one(pipeline_root):
    results = seeded_results()
    for (category, seed), part in results[results["method"] == "regad"].groupby(["category", "seed"]):
        rows = pd.concat([part, results[(results["method"] == "untrained") & (results["category"] == category)]]) if seed == 0 else part
        path = layout.seed_results_dir(category, int(seed)) / "results.csv"
        path.parent.mkdir(parents=True)
        rows.to_csv(path, index=False)
    collected = collect_results(["a", "b"], [0, 1, 2])
    assert len(collected) == len(results) and collected["seed"].isna().sum() == 8  # the untrained rows, once
    with pytest.raises(FileNotFoundError, match=r"results/a/seed3/results\.csv does not exist; run dvc repro evaluate@a-3"):
        collect_results(["a", "b"], [0, 3])
    assert json.dumps(list(collected.columns))  # plain columns: the CSV round trip kept them
