"""Small random-weight backbones and images for the method tests (no weight file needed)."""

from __future__ import annotations

import pytest
import torch

from fsad.components.backbones import build_backbone


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
