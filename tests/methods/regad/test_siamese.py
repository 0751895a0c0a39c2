import torch

from fsad.methods.regad.siamese import Encoder, Predictor, negative_cosine, symmetric_loss


def test_negative_cosine_of_equal_and_opposite_maps():
    p = torch.randn(2, 8, 3, 3)
    assert torch.isclose(negative_cosine(p, p), torch.tensor(-1.0), atol=1e-6)
    assert torch.isclose(negative_cosine(p, -p), torch.tensor(1.0), atol=1e-6)


def test_stop_gradient_on_targets():
    p = torch.randn(2, 8, 3, 3, requires_grad=True)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_symmetric_loss_is_mean_of_both_directions():
    p1, z1, p2, z2 = (torch.randn(2, 8, 4, 4) for _ in range(4))
    expected = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
    assert torch.isclose(symmetric_loss(p1, z1, p2, z2), expected)
    assert torch.isclose(symmetric_loss(p1, z1, p2, z2), symmetric_loss(p2, z2, p1, z1))


def test_heads_keep_shape_and_are_1x1():
    x = torch.randn(2, 16, 5, 5)
    assert Encoder(16)(x).shape == x.shape
    assert Predictor(16)(x).shape == x.shape
    convs = [m for m in [*Encoder(16), *Predictor(16)] if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(c.kernel_size == (1, 1) for c in convs)
