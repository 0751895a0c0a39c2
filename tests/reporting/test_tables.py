"""Side-by-side variant tables and the trained-minus-untrained difference, paired by support set."""

import pandas as pd
import pytest

from fsad.reporting.tables import difference_text, paired_difference, side_by_side, summarize, table1_long, table1_wide


@pytest.fixture
def summary() -> pd.DataFrame:
    rows = []
    for variant, offset in (("regad", 0.1), ("untrained", 0.0)):
        for category, base in (("a", 0.5), ("b", 0.7)):
            for shots in (2, 4):
                for support_set, noise in enumerate((-0.02, 0.02)):
                    rows.append({"method": variant, "category": category, "shots": shots, "support_set": support_set,
                                 "image_auroc": base + offset + noise + shots / 100})
    return summarize(pd.DataFrame(rows), ["image_auroc"])


def test_side_by_side_puts_each_k_of_every_variant_next_to_each_other(summary):
    table = side_by_side(summary, ["image_auroc"], ["regad", "untrained"])
    assert list(table.columns) == ["K=2 regad", "K=2 untrained", "K=4 regad", "K=4 untrained"]
    assert list(table.index) == ["a", "b", "mean"]
    # a, K=2: regad 0.5 + 0.1 + 0.02 = 62 %, std of (-0.02, +0.02) = 2.8 %
    assert table.loc["a", "K=2 regad"] == "62.0±2.8" and table.loc["a", "K=2 untrained"] == "52.0±2.8"


def test_a_single_category_is_its_own_mean_and_shown_once():
    single = summarize(pd.DataFrame([{"method": "regad", "category": "a", "shots": 2, "support_set": 0, "image_auroc": 0.6}]),
                       ["image_auroc"])
    assert list(side_by_side(single, ["image_auroc"], ["regad"]).index) == ["a"]
    assert list(table1_wide(table1_long(single, "regad", ["image_auroc"])).index) == ["a"]


def test_paired_difference_per_k():
    # regad - untrained per support set (category mean first): K=2 sets +0.1, +0.3, -0.1; K=4 +0.2 only
    rows = []
    for support_set, gains in enumerate(((0.1, 0.2), (0.3, None), (-0.1, None))):
        for shots, gain in zip((2, 4), gains):
            if gain is None:
                continue
            for category, base in (("a", 0.5), ("b", 0.7)):
                rows += [{"method": "untrained", "category": category, "shots": shots, "support_set": support_set, "image_auroc": base},
                         {"method": "regad", "category": category, "shots": shots, "support_set": support_set, "image_auroc": base + gain}]
    diff = paired_difference(pd.DataFrame(rows), "image_auroc", "regad", "untrained")
    assert list(diff.index) == [2, 4]
    assert diff["mean"].tolist() == pytest.approx([0.1, 0.2])
    assert diff.loc[2, "std"] == pytest.approx(0.2) and diff.loc[4, "std"] == 0.0  # one set: no spread
    assert diff["above"].tolist() == [2, 1] and diff["sets"].tolist() == [3, 1]
    assert difference_text(diff) == "K=2: +10.0±20.0 (2/3 sets), K=4: +20.0±0.0 (1/1 sets)"


def test_markdown_writes_missing_values_as_a_dash():
    import numpy as np
    import pandas as pd

    from fsad.reporting.tables import to_markdown

    text = to_markdown(pd.DataFrame({"K=1": [np.nan, "70.0±1.0"], "note": [None, "x"]}, index=["a", "b"]))
    assert text.splitlines()[2:] == ["| a | - | - |", "| b | 70.0±1.0 | x |"]
