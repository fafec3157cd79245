"""FedSparse's gates: hard-concrete identities (Monte Carlo), thresholds, the server gradient."""

import math

import pytest
import torch

from emfl.nn import gates


def test_prob_nonzero_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    for la in (-3.0, -1.0, 0.0, 1.5, 4.0):
        log_alpha = torch.full((200_000,), la)
        z = gates.hard_concrete_sample(log_alpha, generator=g)
        mc = (z > 0).double().mean().item()
        exact = gates.hard_concrete_prob_nonzero(torch.tensor(la)).item()
        assert mc == pytest.approx(exact, abs=0.005), la  # 3.5 standard errors at most
        assert 0 <= z.min() and z.max() <= 1


def test_a_prescribed_pi_is_hit():
    pi = torch.tensor([0.01, 0.2, 0.5, 0.99])
    assert torch.allclose(gates.hard_concrete_prob_nonzero(gates.log_alpha_for(pi)), pi, atol=1e-6)
    # by hand: pi = 1/2 needs log_alpha = beta log(-gamma / zeta) = (2/3) log(1/11)
    assert gates.log_alpha_for(torch.tensor(0.5)).item() == pytest.approx(2 / 3 * math.log(1 / 11))


def test_test_gate_by_hand():
    # sigmoid(0) = 1/2 -> 0.5 * 1.2 - 0.1 = 0.5; large log_alpha -> 1; very negative -> 0
    assert gates.hard_concrete_test_gate(torch.tensor([0.0, 20.0, -20.0])).tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_threshold_initialisation_gives_theta0():
    norms = torch.tensor([0.05, 0.3, 2.0])
    v = gates.init_threshold(norms, theta0=0.99)
    assert torch.allclose(gates.gate_prob(norms, v), torch.full((3,), 0.99), atol=1e-5)
    assert torch.allclose(torch.nn.functional.softplus(gates.softplus_inverse(torch.tensor([0.1, 3.0]))), torch.tensor([0.1, 3.0]))
    with pytest.raises(ValueError, match="theta0 must be in"):
        gates.init_threshold(norms, theta0=1.0)
    with pytest.raises(ValueError, match="T must be > 0"):
        gates.gate_prob(norms, v, T=0.0)


def test_gate_prob_is_a_sharp_step_in_the_norm():
    v = gates.softplus_inverse(torch.tensor([0.5]))  # threshold tau = 0.5
    p = gates.gate_prob(torch.tensor([0.49, 0.5, 0.51]), v.expand(3))
    assert p[0] < 1e-4 and p[1] == pytest.approx(0.5) and p[2] > 1 - 1e-4  # T = 0.001
    w = torch.tensor([0.45], requires_grad=True)
    v = v.clone().requires_grad_(True)
    gates.gate_prob(w, v).sum().backward()
    assert w.grad is None  # the weights are detached inside: only the threshold learns from it
    assert v.grad is not None and v.grad.item() < 0


def test_gate_cross_entropy_by_hand():
    # pi = 1, theta = 1/2: log(1/2); pi = 0, theta = 1/4: log(3/4)
    ce = gates.gate_cross_entropy(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.25]))
    assert ce.item() == pytest.approx(math.log(0.5) + math.log(0.75))


@pytest.mark.numeric
def test_server_v_gradient_is_the_gradient_of_the_bernoulli_nll():
    # float64: the closed form against autograd's chain rule, to round-off on any CPU
    norms = torch.tensor([0.4, 0.4, 0.7, 0.7], dtype=torch.float64)
    v = torch.tensor([-1.0, -0.8, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    theta = torch.sigmoid((norms - torch.nn.functional.softplus(v)) / 0.05)
    nll = -(z * torch.log(theta) + (1 - z) * torch.log1p(-theta)).sum()
    nll.backward()
    assert torch.allclose(gates.server_v_gradient(z, theta.detach(), v.detach(), T=0.05), v.grad, rtol=1e-10, atol=1e-12)
    # kept on -> positive gradient -> a descent step lowers the threshold (theta goes up)
    assert gates.server_v_gradient(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.0)).item() > 0
