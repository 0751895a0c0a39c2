import math

import torch

from fsad.components.flow import Flow


def randomised_flow(dim: int) -> Flow:
    torch.manual_seed(0)
    flow = Flow(dim, blocks=3, hidden=8)
    for coupling in flow.couplings:  # leave the identity start: make every layer non-trivial
        torch.nn.init.normal_(coupling.net[-1].weight, std=0.5)
        torch.nn.init.normal_(coupling.net[-1].bias, std=0.5)
    return flow.double()


def test_flow_is_invertible():
    flow = randomised_flow(5)
    x = torch.randn(7, 5, dtype=torch.float64)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)


def test_log_prob_is_the_change_of_variables():
    flow = randomised_flow(4)
    for x in torch.randn(3, 4, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x)  # 4 x 4
        z = flow(x[None])[0][0]
        expected = -0.5 * (z @ z) - 2 * math.log(2 * math.pi) + torch.linalg.slogdet(jacobian).logabsdet
        assert torch.allclose(flow.log_prob(x[None])[0], expected, atol=1e-9)


def test_untrained_flow_is_standard_normal():
    x = torch.randn(10, 6)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=1)
    assert torch.allclose(Flow(6).log_prob(x), expected, atol=1e-5)
