"""Target by target: results saved after each category; a failing category keeps the others."""

import pytest

from fsad.study.targets import TargetsFailed, for_each_target


def test_a_failing_target_keeps_the_others_and_is_reported():
    saved = []

    def work(target):
        if target == "b":
            raise RuntimeError("b.png does not decode")
        return [{"category": target}]

    with pytest.raises(TargetsFailed, match=r"(?s)1 category failed .*b: RuntimeError: b.png does not decode") as info:
        for_each_target(["a", "b", "c"], work, lambda rows: saved.append(list(rows)))
    assert saved == [[{"category": "a"}], [{"category": "a"}, {"category": "c"}]]  # after each finished target
    assert info.value.rows == [{"category": "a"}, {"category": "c"}]


def test_ctrl_c_stops_at_once():
    saved = []

    def work(target):
        if target == "b":
            raise KeyboardInterrupt
        return [{"category": target}]

    with pytest.raises(KeyboardInterrupt):
        for_each_target(["a", "b", "c"], work, lambda rows: saved.append(list(rows)))
    assert saved == [[{"category": "a"}]]
