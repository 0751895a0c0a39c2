"""The command line's error contract: one ``fsad: error:`` message and exit 2, Ctrl-C exits 130, no traceback."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
import torch
import yaml

from fsad import cli
from fsad.cli import main
from fsad.config import ComparisonConfig
from fsad.methods.regad import training
from fsad.study import models


def run(capsys, *argv) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``fsad *argv``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def data(toy_root, tmp_path, monkeypatch):
    """A copy of the toy data set at ``./data``, relative to the current directory (tmp_path)."""
    shutil.copytree(toy_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


def test_train_refuses_an_unknown_target_naming_the_categories(data, capsys, monkeypatch):
    monkeypatch.setattr(training, "train_regad", lambda *a, **k: pytest.fail("trained despite a wrong target"))
    code, lines = run(capsys, "train", "--data", "data", "--target", "gadget", "--out", "model")
    assert code == 2 and lines[0].startswith("fsad: error: 1 problem(s)")
    assert "'gadget' not in" in lines[1] and "available: disc, ring, stripes" in lines[1]
    assert not any("Traceback" in line for line in lines)


def test_train_reads_a_relative_data_folder_from_the_current_directory(data, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(training, "train_regad", lambda categories, *a, **k: trained.append([c.name for c in categories]))
    main(["train", "--data", "data", "--target", "disc", "--out", "model"])
    assert trained == [["ring", "stripes"]]
    assert "model/regad.pt" in capsys.readouterr().out


def test_train_checks_the_images_before_training(data, capsys, monkeypatch):
    monkeypatch.setattr(training, "train_regad", lambda *a, **k: pytest.fail("trained on a broken data set"))
    broken = data / "ring" / "train" / "good" / "000.png"
    broken.write_bytes(b"not a png")
    code, lines = run(capsys, "train", "--data", "data", "--target", "disc", "--out", "model")
    assert code == 2 and f"cannot read image {broken.resolve()}" in "\n".join(lines)


@pytest.mark.parametrize("error", [PermissionError("model: permission denied"), RuntimeError("device 'cuda' asked for"),
                                   OSError("image file is truncated")])
def test_expected_errors_exit_2_with_one_message(data, capsys, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(training, "train_regad", fail)
    code, lines = run(capsys, "train", "--data", "data", "--target", "disc", "--out", "model")
    assert (code, lines) == (2, [f"fsad: error: {error}"])


def test_ctrl_c_exits_130_with_one_line_naming_the_results(data, capsys, monkeypatch):
    def interrupted(categories, config, out_dir, **kwargs):
        out_dir.mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_regad", interrupted)
    code, lines = run(capsys, "train", "--data", "data", "--target", "disc", "--out", "model")
    assert (code, lines) == (130, ["fsad: interrupted; finished results are kept in model"])


@pytest.mark.parametrize("command", ["run", "compare", "ablate"])
def test_check_validates_config_and_data_and_runs_nothing(data, capsys, monkeypatch, command):
    (data.parent / "study.yaml").write_text("dataset: data\nshots: 2\nn_sets: 1\nregad: {lr: 1e-3, pretrained: false}\n")
    capsys.readouterr()
    main([command, "--config", "study.yaml", "--check"])
    assert "config and data OK" in capsys.readouterr().out
    assert not (data.parent / "runs").exists() and not (data.parent / "study").exists()


def test_check_names_the_category_whose_images_are_too_few(data, capsys):
    (data.parent / "big.yaml").write_text("dataset: data\nshots: [2, 64]\n")
    code, err = run(capsys, "run", "--config", "big.yaml", "--check")
    assert code == 2 and err[0].startswith("fsad: error:") and "'disc' has 12 images" in "\n".join(err)


def test_compare_with_a_malformed_config_is_one_line_naming_the_file(data, capsys):
    (data.parent / "bad.yaml").write_text("dataset: data\nshots: [2, 4\n")
    code, err = run(capsys, "compare", "--config", "bad.yaml", "--methods", "padim", "--check")
    assert code == 2 and err == ["fsad: error: bad.yaml: not valid YAML (line 3): expected ',' or ']', but got '<stream end>'"]


# ---- fsad run / compare on tiny settings: what a rerun, a default folder and a single category give

TINY = {"pretrained": False, "image_size": 32, "epochs": 1, "batch_size": 4, "batches_per_epoch": 1, "train_shots": [2],
        "lr": 0.001, "device": "cpu"}


def study(path, regad=None, command="run", **values):
    """Write a tiny config of ``fsad <command>`` (target disc of ./data, one support set; run: RegAD alone) to ``path``."""
    settings = {"dataset": "data", "categories": ["disc"], "shots": [2], "n_sets": 1, "metrics": ["image_auroc", "pixel_auroc"],
                **({"untrained_baseline": False} if command == "run" else {}), "regad": {**TINY, **(regad or {})}, **values}
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("change", [{"image_size": 64}, {"backbone": "resnet18"}])
def test_a_rerun_after_an_architecture_change_retrains_saying_what_changed(data, capsys, caplog, change):
    config, out = study(data.parent / "study.yaml"), data.parent / "runs" / "study"
    main(["run", "--config", str(config)])
    study(config, regad=change)
    with caplog.at_level(logging.WARNING):
        main(["run", "--config", str(config)])  # no SystemExit: every category retrained and scored
    (key, value), = change.items()
    assert f"{key}: {TINY.get(key, 'mobilenet_v2')!r} -> {value!r}" in caplog.text and "training from scratch" in caplog.text
    assert torch.load(out / "models" / "disc" / "regad.pt", weights_only=True)["config"][key] == value
    assert json.loads((out / "run.json").read_text())["settings"]["regad"][key] == value
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_results_of_earlier_settings_are_never_shown_as_the_new_ones(data, capsys, monkeypatch):
    config, out = study(data.parent / "study.yaml"), data.parent / "runs" / "study"
    main(["run", "--config", str(config)])
    first = (out / "results.csv").read_text()
    study(config, regad={"lr": 0.01})

    def fail(*args, **kwargs):
        raise RuntimeError("no space left on device")

    monkeypatch.setattr(models, "train_regad", fail)
    code, err = run(capsys, "run", "--config", config)
    assert code == 2 and "1 category failed (no category finished: no results were saved)" in err[0]
    # run.json names the new settings, so the folder holds no results (the old ones are set aside, whole)
    assert json.loads((out / "run.json").read_text())["settings"]["regad"]["lr"] == 0.01
    assert not (out / "results.csv").exists() and not (out / "summary.csv").exists()
    assert (out / "earlier_settings" / "results.csv").read_text() == first
    assert json.loads((out / "earlier_settings" / "run.json").read_text())["settings"]["regad"]["lr"] == 0.001


def test_the_default_output_folder_is_in_the_current_directory(data, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "ROOT", tmp_path / "checkout")  # where an installed fsad's package lives: not the user's folder
    main(["run", "--config", str(study(data.parent / "mine.yaml"))])
    assert (tmp_path / "runs" / "mine" / "results.csv").is_file()
    assert "results in runs/mine" in capsys.readouterr().out
    assert not (tmp_path / "checkout").exists()


def test_two_identical_runs_write_byte_identical_results(data, capsys):
    config = study(data.parent / "same.yaml", untrained_baseline=True)
    for out in ("a", "b"):
        main(["run", "--config", str(config), "--out", out])
    assert (data.parent / "a" / "results.csv").read_bytes() == (data.parent / "b" / "results.csv").read_bytes()
    timings = pd.read_csv(data.parent / "a" / "timings.csv")  # the wall-clock times are kept, apart
    assert {"train_seconds", "fit_seconds", "predict_seconds"} <= set(timings.columns)


def test_a_category_listed_twice_is_refused_before_any_work(data, capsys):
    config = study(data.parent / "twice.yaml", categories=["disc", "ring", "disc"])
    code, err = run(capsys, "run", "--config", config)
    assert (code, err) == (2, [f"fsad: error: {config}: categories[2]: 'disc' listed twice; list each once"])
    assert not (data.parent / "runs").exists()


def test_run_with_shots_without_2_scores_every_category(data, capsys):
    main(["run", "--config", str(study(data.parent / "four.yaml", shots=[4])), "--out", "four"])
    results = pd.read_csv(data.parent / "four" / "results.csv")
    assert results[["category", "shots"]].values.tolist() == [["disc", 4]]


def test_check_counts_the_diagnostic_shots_among_the_k_to_draw(data, capsys):
    config = study(data.parent / "diag.yaml", shots=[2], epoch_diagnostics=True, diagnostic_shots=64)
    code, err = run(capsys, "run", "--config", config, "--check")
    assert code == 2 and "fewer than K=64 shots" in "\n".join(err)


def test_a_single_category_comparison_has_no_mean_row_and_yaml_settings(data, capsys):
    config = study(data.parent / "one.yaml", command="compare", methods=["padim", "spade"], measure_costs=False)
    main(["compare", "--config", str(config)])
    text = (data.parent / "runs" / "one" / "table.md").read_text()
    assert "mean" not in text.replace("mean ± std", "") and "## disc\n" in text
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "·" in line] == ["| spade · disc",
                                                                                                          "| padim · disc"]
    assert max(len(line) for line in text.splitlines()) < 200
    settings = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    assert ComparisonConfig.from_dict(settings) == ComparisonConfig.from_yaml(config)


def _check_run(data, capsys) -> None:
    """``fsad run --check`` on ``data``'s disc: it must find the data OK."""
    (data.parent / "disc.yaml").write_text("dataset: data\ncategories: [disc]\nshots: 2\nn_sets: 1\nregad: {pretrained: false}\n")
    capsys.readouterr()
    main(["run", "--config", "disc.yaml", "--check"])
    assert "config and data OK" in capsys.readouterr().out


def test_run_finds_a_mask_named_in_another_unicode_form_than_its_image(data, capsys):
    import unicodedata

    defect = data / "disc" / "test" / "colour"
    (defect / "000.png").rename(defect / "caf\u00e9.png")  # NFC, as typed
    masks = data / "disc" / "ground_truth" / "colour"
    (masks / "000_mask.png").rename(masks / unicodedata.normalize("NFD", "caf\u00e9_mask.png"))  # NFD, as macOS writes
    _check_run(data, capsys)


def test_run_accepts_a_line_scan_image_and_a_turned_photo_with_its_mask(data, capsys):
    import numpy as np
    from PIL import Image

    Image.new("L", (14000, 14000), 90).save(data / "disc" / "test" / "good" / "line_scan.png", compress_level=1)
    defect = data / "disc" / "test" / "colour"
    shown = np.asarray(Image.open(defect / "000.png").convert("RGB"))[:, :48]  # 64 high, 48 wide as viewers show it
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; viewers turn it back clockwise
    Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90).save(defect / "000.png", exif=exif)
    mask = data / "disc" / "ground_truth" / "colour" / "000_mask.png"
    Image.fromarray(np.asarray(Image.open(mask))[:, :48]).save(mask)  # drawn on the shown image: 48 x 64
    _check_run(data, capsys)


def test_the_command_line_starts_without_the_notebook_machinery():
    """Building the parser (every command does) must not import nbformat or papermill: compiling nbformat's
    validator alone cost fsad predict of one image 2.5 s of its 6 s (issue 21, start-up)."""
    import subprocess
    import sys

    code = ("import sys\nfrom fsad.cli import main\ntry:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('nbformat', 'papermill', 'nbconvert') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
