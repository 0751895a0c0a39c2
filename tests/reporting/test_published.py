"""The published few-shot means beside RegAD: the numbers of REGAD_REFERENCE.md's "Newer few-shot anchors"."""

import math

from fsad.reporting.paper import paper_numbers, published_numbers


def test_published_means_are_the_reference_numbers():
    table = published_numbers().set_index(["benchmark", "method", "shots"])
    assert tuple(table.loc[("mvtec_ad", "fastrecon", 2)]) == (90.97, 95.86)
    assert tuple(table.loc[("mpdd", "fastrecon", 8)]) == (82.50, 97.92)
    assert table.loc[("mpdd", "regad", 8), "image_auroc"] == 71.9
    assert table.loc[("mvtec_ad", "anomalydino_dinov2", 1), "image_auroc"] == 96.6
    assert math.isnan(table.loc[("mvtec_ad", "anomalydino_dinov2", 1), "pixel_auroc"])


def test_regad_row_is_the_paper_mean():
    paper = paper_numbers("mvtec_ad").query("category == 'mean'").set_index("shots")
    ours = published_numbers().query("benchmark == 'mvtec_ad' and method == 'regad'").set_index("shots")
    assert (paper.loc[[2, 4, 8], ["image_auroc", "pixel_auroc"]] == ours[["image_auroc", "pixel_auroc"]]).all().all()
