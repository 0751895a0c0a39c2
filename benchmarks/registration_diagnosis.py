"""Which part of registration training changes a category's scores: the backbone, its
batch-norm statistics, or the STNs?

Takes a RegAD model trained by ``fsad run`` (leave-one-out, so the target category is
unseen) and scores the target's test set with hybrids of the trained and the untrained
(ImageNet) network, on the same support sets:

- ``untrained``: ImageNet backbone, identity STNs (registration training off);
- ``trained``: the trained network as is;
- ``trained, ImageNet BN statistics``: trained weights, but the backbone's batch-norm
  running statistics of the untrained network (training on single-category batches
  re-estimates them on the training categories);
- ``trained backbone, identity STNs`` and ``ImageNet backbone, trained STNs``.

It also prints the transforms the trained STNs apply to the test images (rotation angle,
scales, determinant of the composed transform). Example:

    .venv/bin/python benchmarks/registration_diagnosis.py --run runs/fsad_mini \\
        --config configs/fsad_mini.yaml --category magnetic_tile --shots 2 8 --sets 3
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import pandas as pd
import torch

from fsad.config import ExperimentConfig, resolve_device
from fsad.data.loading import as_float
from fsad.data.mvtec import load_category
from fsad.data.support_sets import support_sets_for
from fsad.methods.regad.checkpoint import load_model, untrained_regad
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.stn import compose_theta
from fsad.methods.regad.training import MODEL_NAME
from fsad.study.evaluation import TestSet, evaluate_detector
from fsad.study.experiment import resolve_dataset


def hybrids(trained: torch.nn.Module, untrained: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The trained / untrained combinations listed in the module docstring."""
    imagenet_bn = copy.deepcopy(trained)
    for (name, buffer), (_, original) in zip(imagenet_bn.backbone.named_buffers(), untrained.backbone.named_buffers()):
        if "running" in name:
            buffer.copy_(original)
    identity_stns = copy.deepcopy(trained)
    identity_stns.stns.load_state_dict(untrained.stns.state_dict())
    trained_stns = copy.deepcopy(untrained)
    trained_stns.stns.load_state_dict(trained.stns.state_dict())
    return {
        "untrained": untrained,
        "trained": trained,
        "trained, ImageNet BN statistics": imagenet_bn,
        "trained backbone, identity STNs": identity_stns,
        "ImageNet backbone, trained STNs": trained_stns,
    }


@torch.no_grad()
def transform_statistics(model: torch.nn.Module, images: torch.Tensor, device: str) -> pd.DataFrame:
    """Median rotation (degrees), |scale| and determinant of the composed transform per STN depth."""
    model.eval().to(device)
    _, thetas = model.transformed_features(as_float(images).to(device))
    rows, composed = [], None
    for depth, theta in enumerate(thetas, start=1):
        composed = theta if composed is None else compose_theta(composed, theta)
        a = composed[:, :, :2].cpu().double()  # B x 2 x 2
        angle = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 1, 1]))
        rows.append({"STNs composed": depth, "rotation (deg, median)": float(angle.median()),
                     "|rotation| > 45 deg (share)": float((angle.abs() > 45).double().mean()),
                     "det (median)": float(torch.linalg.det(a).median()),
                     "det < 0 (share)": float((torch.linalg.det(a) < 0).double().mean())})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="out folder of `fsad run` (models/, support_sets/)")
    parser.add_argument("--config", required=True, help="the config that run used")
    parser.add_argument("--category", required=True)
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--sets", type=int, default=3, help="first N support sets per K")
    args = parser.parse_args()

    config = ExperimentConfig.from_yaml(args.config)
    config = config.replace(shots=tuple(args.shots), n_sets=args.sets)
    device = resolve_device(config.regad.device)
    category = load_category(resolve_dataset(config.dataset), args.category)
    sets = support_sets_for(category, config.shots, config.n_sets, config.support_seed, Path(args.run) / "support_sets")
    trained, _ = load_model(Path(args.run) / "models" / args.category / MODEL_NAME, expected=config.regad)
    untrained = untrained_regad(config.regad)
    test = TestSet.load(category, config.regad.image_size)

    print(f"{args.category}: transforms of the trained STNs on its {len(test.labels)} test images")
    print(transform_statistics(trained, test.images, device).to_string(index=False, float_format="%.2f"))
    metrics = ("image_auroc", "pixel_auroc") if category.has_masks else ("image_auroc",)
    rows = []
    for name, model in hybrids(trained, untrained).items():
        tic = time.perf_counter()
        rows += evaluate_detector(RegADMethod(model, config.regad, name=name), category, sets, test, metrics, progress=False).rows
        print(f"  scored {name} ({time.perf_counter() - tic:.0f} s)")
    table = pd.DataFrame(rows).groupby(["method", "shots"], sort=False)[list(metrics)].mean().mul(100)
    print(f"\n{args.category}: mean over {args.sets} support sets (%)")
    print(table.unstack("shots").round(1).to_string())


if __name__ == "__main__":
    main()
