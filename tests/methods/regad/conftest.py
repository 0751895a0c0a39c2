"""Shared fixtures of the RegAD network tests."""

import pytest
import torch


class PoolingBackbone(torch.nn.Module):
    """Stages that only average-pool: features are the image itself, so warps can be checked exactly."""

    channels = (3, 3, 3)
    strides = (4, 8, 16)

    def __init__(self):
        super().__init__()
        self.stages = torch.nn.ModuleList([torch.nn.AvgPool2d(4), torch.nn.AvgPool2d(2), torch.nn.AvgPool2d(2)])

    def normalize(self, images):
        return images


@pytest.fixture
def pooling_backbone() -> PoolingBackbone:
    return PoolingBackbone()
