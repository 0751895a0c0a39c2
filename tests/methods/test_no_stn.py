import torch
import torch.nn.functional as F

from fsad.components.backbones import build_backbone
from fsad.config import RegADConfig
from fsad.methods.regad.checkpoint import build_model
from fsad.methods.regad.network import RegAD


def test_no_stn_model_is_backbone_plus_siamese():
    torch.manual_seed(0)
    model = RegAD(build_backbone("mobilenet_v2", pretrained=False), (64, 64), stn_mode="none").eval()
    assert len(model.stns) == 0
    assert not any(k.startswith("stns.") for k in model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone(x)
        expected = torch.cat([F.interpolate(m, size=maps[0].shape[-2:], mode="nearest") for m in maps], dim=1)
        assert torch.equal(model.registered_features(x), expected)
        _, thetas = model.transformed_features(x)
    assert all(torch.equal(t, torch.eye(2, 3).expand(2, 2, 3)) for t in thetas)


def test_no_stn_trains_backbone_and_head():
    model = build_model(RegADConfig(pretrained=False, stn_mode="none", image_size=32)).train()
    loss = model.registration_loss(torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32))
    loss.backward()
    assert model.backbone.stages[0][0][0].weight.grad.abs().sum() > 0
    assert next(model.encoder.parameters()).grad is not None
