"""The anomalib half of benchmarks/peer_anomalib.py: run by anomalib's own virtualenv, never by fsad's.

Builds anomalib's PatchCore or PaDiM on torchvision's MobileNetV2 (an ``nn.Module`` backbone,
which anomalib's ``TimmFeatureExtractor`` accepts with torchvision node names) loaded with the
same weight file as fsad, fits it on the support images the way anomalib's training loop does
(the model's training-mode forward on pre-processed batches, then the module's ``fit``), and
times predicts of the test images: ``--export torch`` calls the Lightning module (pre-processor:
ImageNet normalisation only, as the images are already at size; post-processor off, so the
scores are the model's raw ones), ``--export openvino`` exports it with anomalib's
``to_openvino`` and runs anomalib's ``OpenVINOInferencer`` (fp32 precision hint), and
``--export openvino-default`` the same with OpenVINO's default precision (bf16 where the CPU
has it). It imports nothing from fsad; the driver checks that this virtualenv cannot.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.transforms.v2 import Normalize

# fsad's stages of MobileNetV2 (features[0:4], [4:7], [7:14]) end at these torchvision nodes.
STAGES = ("features.3", "features.6", "features.13")
LAYERS = {"patchcore": STAGES[1:], "padim": STAGES}
BATCH = 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def backbone(weights: str) -> torch.nn.Module:
    """torchvision's MobileNetV2 with the ImageNet file fsad loads (all keys, strictly)."""
    network = torchvision.models.mobilenet_v2(weights=None)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def build(method: str, weights: str):
    """The anomalib Lightning module with fsad's settings (see benchmarks/peer_anomalib.py)."""
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor

    common = {"backbone": backbone(weights), "layers": list(LAYERS[method]), "pre_trained": False,
              "pre_processor": PreProcessor(transform=Normalize(IMAGENET_MEAN, IMAGENET_STD)),
              "post_processor": False, "evaluator": False, "visualizer": False}
    if method == "patchcore":
        # Its default ratio. At 1 (every patch kept) its greedy selection over the 6272 patches
        # fragmented the heap by ~3.5 MB per selected patch and was killed at 6.7 GB here.
        return Patchcore(coreset_sampling_ratio=0.1, num_neighbors=9, **common)
    return Padim(n_features=152, **common)  # all channels: the distance does not depend on their order


@torch.no_grad()
def fit(module, support: torch.Tensor) -> None:
    """What anomalib's training epoch does: training-mode forwards of pre-processed batches, then ``fit``.

    Without gradients, as fsad's fit runs.
    """
    module.model.train()
    for batch in support.split(BATCH):
        module.model(module.pre_processor(batch))
    module.fit()
    module.model.eval()
    module.eval()


def torch_predictor(module):
    def predict(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([module(batch).pred_score.flatten() for batch in images.split(BATCH)]).numpy()
    return predict


def openvino_predictor(module, size: int, threads: int, work: Path, precision: str | None):
    from anomalib.deploy import OpenVINOInferencer

    xml = module.to_openvino(work / "export", input_size=(size, size))
    config = {"INFERENCE_NUM_THREADS": str(threads), **({"INFERENCE_PRECISION_HINT": precision} if precision else {})}
    inferencer = OpenVINOInferencer(xml, device="CPU", config=config)
    hint = inferencer.model.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type
    hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    # The dynamo export keeps the batch dynamic for PaDiM but fixes PatchCore's to that of its probe (2):
    # a static batch is filled up with copies of the last image, whose scores are dropped.
    batch_dim = inferencer.model.input(0).get_partial_shape()[0]
    batch = batch_dim.get_length() if batch_dim.is_static else BATCH

    def predict(images: torch.Tensor) -> np.ndarray:
        scores = []
        for chunk in images.split(batch):
            filled = torch.cat([chunk, chunk[-1:].expand(batch - len(chunk), -1, -1, -1)])
            scores.append(np.ravel(inferencer.predict(filled.numpy()).pred_score)[: len(chunk)])
        return np.concatenate(scores)
    return predict, f"{hint}, batch {batch}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=sorted(LAYERS), required=True)
    parser.add_argument("--export", choices=["torch", "openvino", "openvino-default"], default="torch")
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs = np.load(args.inputs)
    support = torch.from_numpy(inputs["support"]).float() / 255  # K x 3 x S x S in [0, 1]
    test = torch.from_numpy(inputs["test"]).float() / 255  # N x 3 x S x S
    torch.manual_seed(0)
    np.random.seed(0)  # the coreset's random projection draws from numpy's global generator (sklearn)
    module = build(args.method, str(inputs["weights"]))
    tic = time.perf_counter()
    fit(module, support)
    fit_s = time.perf_counter() - tic
    note = ""
    with tempfile.TemporaryDirectory() as tmp:
        if args.export == "torch":
            predict = torch_predictor(module)
        else:
            precision = "f32" if args.export == "openvino" else None
            predict, hint = openvino_predictor(module, test.shape[-1], args.threads, Path(tmp), precision)
            note = f"OpenVINO {hint}"
        predict(test[:BATCH])  # warm-up
        predict_s = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            scores = predict(test)
            predict_s.append(time.perf_counter() - tic)
    with torch.inference_mode():
        features = module.model.feature_extractor(module.pre_processor(test[:1]))
    np.savez(args.result.with_suffix(".npz"), *[f.numpy() for f in features.values()])
    args.result.write_text(json.dumps({
        "fit_s": fit_s, "predict_s": predict_s, "scores": np.asarray(scores, dtype=float).tolist(), "note": note,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
