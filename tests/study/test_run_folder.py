"""An output folder belongs to one config: another one of the same file name is refused."""

import json

import pytest

from fsad.study.run_folder import RECORD, claim


def test_a_new_folder_is_claimed_and_the_same_config_reruns(tmp_path):
    out, config = tmp_path / "runs" / "x", tmp_path / "a" / "x.yaml"
    assert claim(out, config, {"shots": [2], "regad": {"lr": 0.001}}, "run") == []
    assert json.loads((out / RECORD).read_text())["config"] == str(config.resolve())
    changed = claim(out, config, {"shots": [2], "regad": {"lr": 0.01}}, "run")  # same file, edited: goes on
    assert changed == ["regad.lr: 0.001 -> 0.01"]


def test_another_config_of_the_same_name_is_refused_unless_forced(tmp_path):
    out = tmp_path / "runs" / "x"
    claim(out, tmp_path / "a" / "x.yaml", {"shots": [2]}, "run")
    with pytest.raises(ValueError, match=r"holds the results of `fsad run --config .*a/x.yaml`.*shots: \[2\] -> \[4\].*--force"):
        claim(out, tmp_path / "b" / "x.yaml", {"shots": [4]}, "run")
    assert claim(out, tmp_path / "b" / "x.yaml", {"shots": [4]}, "run", force=True) == ["shots: [2] -> [4]"]
    assert json.loads((out / RECORD).read_text())["config"].endswith("b/x.yaml")


def test_another_study_in_the_same_folder_is_refused(tmp_path):
    out, config = tmp_path / "runs" / "x", tmp_path / "x.yaml"
    claim(out, config, {"shots": [2]}, "run")
    with pytest.raises(ValueError, match="fsad run"):
        claim(out, config, {"shots": [2]}, "compare")


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile is a file; pass --out with a folder name"):
        claim(tmp_path / "afile", tmp_path / "x.yaml", {}, "run")
