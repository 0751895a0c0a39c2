"""Small random-weight backbones and images for the method tests (no weight file needed)."""

from __future__ import annotations

import pytest
import torch

from fsad.components.backbones import build_backbone
from fsad.config import RegADConfig
from fsad.io import save_atomic
from fsad.methods.regad.checkpoint import build_model
from fsad.methods.resad import ResAD, ResADSettings


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return build_backbone("mobilenet_v2", pretrained=False)


@pytest.fixture
def images():
    """Support (4) and test (3) random uint8 images of 32 px: features are 8 x 8 at stride 4."""
    generator = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (4, 3, 32, 32), generator=generator, dtype=torch.uint8),
            torch.randint(0, 256, (3, 3, 32, 32), generator=generator, dtype=torch.uint8))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, object]:
    """Random-weight model files (32 px) for the two methods that need one (regad, resad)."""
    folder = tmp_path_factory.mktemp("models")
    settings = RegADConfig(pretrained=False, image_size=32, device="cpu")
    torch.manual_seed(0)
    save_atomic({"config": settings.to_dict(), "model": build_model(settings).state_dict()}, folder / "regad.pt")
    ResAD(build_backbone("mobilenet_v2", pretrained=False), 32).save(folder / "resad.pt", ResADSettings(), {})
    return {"regad": folder / "regad.pt", "resad": folder / "resad.pt"}
