"""Table 1: layout, the paper's numbers beside ours, Markdown and LaTeX."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fsad.reporting.paper import benchmark_of, paper_numbers
from fsad.reporting.tables import flatten_columns, summarize, table1_long, table1_wide, to_latex, to_markdown


def results_of(categories, shots=(2, 4), n_sets=3, pixel=True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"method": "regad", "category": c, "shots": k, "support_set": s, "image_auroc": 0.8 + 0.01 * s,
             "pixel_auroc": 0.9 + 0.01 * rng.random() if pixel else np.nan}
            for c in categories for k in shots for s in range(n_sets)]
    return pd.DataFrame(rows)


def test_paper_numbers_are_the_reference_table():
    mvtec = paper_numbers("mvtec_ad").set_index(["category", "shots"])
    assert mvtec.loc[("bottle", 2)].tolist() == [99.4, 98.0]
    assert mvtec.loc[("mean", 8)].tolist() == [91.2, 96.8]
    assert mvtec.loc[("screw", 4), "image_auroc"] == 56.6 and len(mvtec) == 16 * 3
    assert paper_numbers("mpdd").set_index(["category", "shots"]).loc[("mean", 4)].tolist() == [68.8, 93.9]
    assert benchmark_of(["bottle", "zipper"]) == "mvtec_ad" and benchmark_of(["tubes"]) == "mpdd"
    assert benchmark_of(["bottle", "pcb"]) is None and benchmark_of(["mono", "poly"]) is None


def test_mean_std_and_difference_to_the_paper():
    summary = summarize(results_of(["bottle", "cable"]), ["image_auroc", "pixel_auroc"])
    long = table1_long(summary, "regad", paper=paper_numbers("mvtec_ad"))
    row = long.set_index(["category", "shots", "metric"]).loc[("bottle", 2, "image_auroc")]
    assert row["mean"] == pytest.approx(81.0) and row["std"] == pytest.approx(1.0)
    assert row["paper"] == 99.4 and row["diff"] == pytest.approx(81.0 - 99.4)
    assert long.set_index(["category", "shots", "metric"]).loc[("mean", 4, "image_auroc"), "paper"] == 88.2


def test_wide_layout_and_markdown():
    summary = summarize(results_of(["bottle", "cable"]), ["image_auroc", "pixel_auroc"])
    wide = table1_wide(table1_long(summary, "regad", paper=paper_numbers("mvtec_ad")))
    assert list(wide.index) == ["bottle", "cable", "mean"]
    assert list(wide.columns[:3]) == [("K=2", "image"), ("K=2", "image paper"), ("K=2", "image Δ")]
    assert wide.loc["bottle", ("K=2", "image")] == "81.0±1.0"
    assert wide.loc["bottle", ("K=2", "image Δ")] == "-18.4"
    markdown = to_markdown(flatten_columns(wide))
    assert markdown.splitlines()[0].startswith("| category | K=2 image | K=2 image paper | K=2 image Δ | K=2 pixel |")
    assert "| mean | 81.0±1.0 | 85.7 | -4.7 |" in markdown


def test_a_metric_without_masks_is_left_out():
    summary = summarize(results_of(["mono", "poly"], pixel=False), ["image_auroc", "pixel_auroc"])
    wide = table1_wide(table1_long(summary, "regad"))
    assert [c[1] for c in wide.columns] == ["image", "image"]


def test_latex_is_escaped_and_grouped_by_k():
    summary = summarize(results_of(["metal_nut", "bottle"]), ["image_auroc", "pixel_auroc"])
    latex = to_latex(table1_wide(table1_long(summary, "regad", paper=paper_numbers("mvtec_ad"))), caption="RegAD 50% K", label="tab:x")
    assert r"\multicolumn{6}{c}{K=2} & \multicolumn{6}{c}{K=4} \\" in latex
    assert r"\cmidrule(lr){2-7} \cmidrule(lr){8-13}" in latex
    assert r"metal\_nut & 81.0$\pm$1.0 & 91.4 & -10.4" in latex
    assert r"image $\Delta$" in latex and r"\caption{RegAD 50\% K}" in latex
    body = latex.split(r"\midrule")
    assert len(body) == 3 and body[2].lstrip().startswith("mean &")
    rows = [line for line in latex.splitlines() if line.endswith(r"\\") and "multicolumn" not in line]
    assert len(rows) == 4 and all(line.count("&") == 12 for line in rows)  # field header + 3 rows, 13 columns
