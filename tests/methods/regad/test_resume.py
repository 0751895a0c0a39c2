"""A training cut short resumes where it stopped: through ``fsad train`` and ``fsad run``, counted in SGD steps.

The seed makes a restart from scratch end with the same weights as a resumed run, so the
weights cannot tell the two apart; the number of optimisation steps run after the
interruption can (a spy on ``training_step``), and so can the history of the epoch that
ran before it (its wall time is the first run's, not a new one).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from fsad.cli import main
from fsad.config import RegADConfig
from fsad.methods.regad import training
from fsad.methods.regad.training import CHECKPOINT_NAME, MODEL_NAME, epoch_batches

EPOCHS = 3
TINY = RegADConfig(pretrained=False, image_size=32, epochs=EPOCHS, batch_size=4, train_shots=(2,), lr=0.005, device="cpu")
SIZES = [12, 12]  # train/good of ring and stripes: the training categories of the target disc


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    """Counts ``training_step`` calls (one per SGD step) while still running them."""
    calls: list[int] = []
    real = training.training_step

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "training_step", counted)
    return calls


def kill_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C right after the checkpoint of ``epoch`` is written (the next ``save_atomic`` of a checkpoint)."""
    real = training.save_atomic

    def save_then_interrupt(obj, path):
        real(obj, path)
        if obj.get("epoch") == epoch:
            monkeypatch.setattr(training, "save_atomic", real)
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_atomic", save_then_interrupt)


def steps_of(epochs: range) -> int:
    """SGD steps of these (0-based) epochs."""
    return sum(len(epoch_batches(SIZES, TINY, e)) for e in epochs)


def interrupted(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def epoch_rows(path):
    return torch.load(path, map_location="cpu", weights_only=True)["history"]


@pytest.fixture
def data(toy_root, tmp_path, monkeypatch):
    shutil.copytree(toy_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"regad": TINY.to_dict()}))
    return tmp_path / "data"


def test_fsad_train_resumes_after_ctrl_c_and_runs_only_the_remaining_epochs(data, steps, monkeypatch, capsys):
    argv = ["train", "--data", "data", "--target", "disc", "--config", "train.yaml", "--out", "model"]
    kill_after_epoch(monkeypatch, 1)
    assert interrupted(argv) == 130
    first_epoch = epoch_rows(data.parent / "model" / CHECKPOINT_NAME)
    assert len(steps) == steps_of(range(1))
    steps.clear()

    main(argv)
    assert len(steps) == steps_of(range(1, EPOCHS)), "the resumed training did not start at epoch 2"
    history = epoch_rows(data.parent / "model" / MODEL_NAME)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[0] == first_epoch[0]  # epoch 1 is the interrupted run's, not a rerun

    steps.clear()
    main([*argv, "--restart"])  # --restart ignores the checkpoint: every epoch again
    assert len(steps) == steps_of(range(EPOCHS))


def test_fsad_run_resumes_an_interrupted_training(data, steps, monkeypatch):
    study = {"dataset": "data", "categories": ["disc"], "shots": [2], "n_sets": 1, "untrained_baseline": False, "regad": TINY.to_dict()}
    (data.parent / "study.yaml").write_text(yaml.safe_dump(study))
    argv = ["run", "--config", "study.yaml", "--out", "out"]
    kill_after_epoch(monkeypatch, 2)
    assert interrupted(argv) == 130
    assert not (data.parent / "out" / "results.csv").exists()
    steps.clear()
    main(argv)
    assert len(steps) == steps_of(range(2, EPOCHS)), "fsad run retrained the epochs its checkpoint held"
    assert (data.parent / "out" / "results.csv").is_file()
