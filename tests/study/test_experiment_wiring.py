"""What ``run_experiment``'s rows are made of: the model of the OTHER categories, the saved support sets.

The smoke test (test_experiment.py) checks that files exist and metrics lie in [0, 1], which
any model on any support set satisfies; here each row is recomputed from what the run saved.
"""

from __future__ import annotations

import pandas as pd
import torch

from fsad.config import ExperimentConfig, RegADConfig
from fsad.data.mvtec import load_category
from fsad.data.support_sets import load_support_sets
from fsad.methods.regad.checkpoint import load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.training import MODEL_NAME
from fsad.study.evaluation import TestSet, evaluate_detector
from fsad.study.experiment import run_experiment

METRICS = ("image_auroc", "pixel_auroc", "aupro")
# One epoch moves the maps off the untrained network's (checked below, or the test could not tell them apart);
# a larger lr collapses the random-weight features at 32 px (a covariance that is not positive definite).
TRAINED = RegADConfig(pretrained=False, image_size=32, epochs=1, batch_size=4, train_shots=(2,), lr=0.001, device="cpu")


def test_each_target_is_scored_by_the_model_of_the_other_categories_on_the_saved_support_sets(toy_root, tmp_path):
    config = ExperimentConfig(dataset=str(toy_root), categories=("disc", "ring"), shots=(2,), n_sets=2, metrics=METRICS, regad=TRAINED)
    results = run_experiment(config, tmp_path, progress=False).set_index(["method", "category", "shots", "support_set"])
    for target, others in (("disc", ["ring", "stripes"]), ("ring", ["disc", "stripes"])):
        path = tmp_path / "models" / target / MODEL_NAME
        trained_on = torch.load(path, weights_only=True)["train_categories"]
        assert trained_on == others, f"{target}'s model was not trained on exactly the other categories"
        category = load_category(toy_root, target)
        sets = load_support_sets(tmp_path / "support_sets" / f"{target}.json", category)
        test = TestSet.load(category, TRAINED.image_size)
        for detector in (RegADMethod(load_model(path, expected=TRAINED)[0], TRAINED, name="regad"),
                         RegADMethod(untrained_regad(TRAINED), TRAINED, name="untrained")):
            expected = pd.DataFrame(evaluate_detector(detector, category, sets, test, METRICS, progress=False).rows)
            expected = expected.set_index(["method", "category", "shots", "support_set"])[list(METRICS)]
            pd.testing.assert_frame_equal(results.loc[expected.index, list(METRICS)], expected, check_exact=False, rtol=1e-5)
        trained, untrained = (results.xs((m, target), level=("method", "category"))[list(METRICS)] for m in ("regad", "untrained"))
        assert not trained.equals(untrained), "the trained and untrained rows agree: this test could not tell them apart"
