import pytest
import torch

from fsad.config import RegADConfig
from fsad.methods.regad_l import RegADL

CONFIG = RegADConfig(pretrained=False, image_size=32, lr=0.01, device="cpu", seed=3)


def weights(method: RegADL) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in method.model.parameters()])


def test_each_support_set_trains_its_own_network_reproducibly(images):
    support, test = images
    method = RegADL(CONFIG, epochs=2)
    start = weights(method)
    method.fit(support[:2])
    first, maps = weights(method), method.predict(test).maps
    assert not torch.equal(first, start)  # training moved the weights
    method.fit(support[2:])
    assert not torch.equal(weights(method), first)  # another support set, another network
    method.fit(support[:2])
    assert torch.equal(weights(method), first) and torch.allclose(method.predict(test).maps, maps)


def test_regad_l_needs_two_images(images):
    with pytest.raises(ValueError, match="K >= 2"):
        RegADL(CONFIG, epochs=1).fit(images[0][:1])
