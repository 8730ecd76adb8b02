"""ODE solvers (enff.integrate), divergence and flow log-density of enff.amortized against analytic answers."""

import math

import pytest
import torch

from enff.amortized.divergence import divergence_exact, divergence_hutchinson, flow_log_prob
from enff.amortized.flow_matching import coupling_path, ot_path, sample_time
from enff.integrate import RK4, Dopri5, SolverConfig

A = torch.tensor([[-0.3, 1.0], [-1.0, -0.3]], dtype=torch.float64)


def linear(z, t):
    return z @ A.T


def exact_linear(z0, t):
    return z0 @ torch.linalg.matrix_exp(A * t).T


@pytest.fixture
def z0():
    return torch.randn((5, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_rk4_is_fourth_order(z0):
    errors = [float((RK4(n).solve(linear, z0, 0.0, 2.0).state - exact_linear(z0, 2.0)).abs().max()) for n in (10, 20)]
    assert 12 < errors[0] / errors[1] < 20
    assert RK4(10).solve(linear, z0, 0.0, 2.0).n_evals == 40


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_dopri5_meets_tolerance_forwards_and_backwards(z0, tol):
    forward = Dopri5(rtol=tol, atol=tol).solve(linear, z0, 0.0, 2.0)
    assert float((forward.state - exact_linear(z0, 2.0)).abs().max()) < 50 * tol
    back = SolverConfig(method="dopri5", rtol=tol, atol=tol).solve(linear, forward.state, 2.0, 0.0)
    assert float((back.state - z0).abs().max()) < 100 * tol


def test_dopri5_spends_fewer_evaluations_at_loose_tolerance(z0):
    loose = Dopri5(rtol=1e-3, atol=1e-3).solve(linear, z0, 0.0, 2.0).n_evals
    tight = Dopri5(rtol=1e-9, atol=1e-9).solve(linear, z0, 0.0, 2.0).n_evals
    assert loose < tight


def test_solver_config_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        SolverConfig(method="euler")


def test_divergence_exact_and_hutchinson_match_trace(z0):
    z = z0.clone().requires_grad_(True)
    v = torch.tanh(z) @ A.T
    jac_trace = ((1 - torch.tanh(z0) ** 2) * torch.diagonal(A)).sum(dim=1)
    assert torch.allclose(divergence_exact(v, z), jac_trace, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    estimates = []
    for _ in range(2000):
        probe = torch.randint(0, 2, z.shape, generator=gen).double() * 2 - 1
        estimates.append(divergence_hutchinson(torch.tanh(z) @ A.T, z, probe))
    assert torch.allclose(torch.stack(estimates).mean(dim=0), jac_trace, atol=0.05)


def gaussian_ot_field(mean, scale):
    """Exact marginal velocity of the OT path (sigma_min = 0) from N(0, I) to N(mean, scale^2 I)."""

    def field(z, t):
        var = (1 - t) ** 2 + (t * scale) ** 2
        return mean + (z - t * mean) * (-(1 - t) + t * scale**2) / var

    return field


@pytest.mark.parametrize("hutchinson", [False, True])
def test_flow_log_prob_of_analytic_gaussian_flow(hutchinson):
    mean, scale = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 0.4
    gen = torch.Generator().manual_seed(2)
    z1 = mean + scale * torch.randn((200, 3), generator=gen, dtype=torch.float64)
    solver = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8)
    logp, z0 = flow_log_prob(gaussian_ot_field(mean, scale), z1, solver, hutchinson=hutchinson, generator=gen)
    truth = torch.distributions.Normal(mean, scale).log_prob(z1).sum(dim=1)
    assert torch.allclose(z0, (z1 - mean) / scale, atol=1e-5)
    if hutchinson:  # the field is isotropic, so Hutchinson's estimate is exact here as well
        assert torch.allclose(logp, truth, atol=1e-4)
    else:
        assert torch.allclose(logp, truth, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 4.0])
def test_time_prior_has_power_law_cdf(alpha):
    t = sample_time(20000, alpha, torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    empirical = (t[:, None] <= grid).double().mean(dim=0)
    assert float((empirical - grid ** (1 + alpha)).abs().max()) < 0.015
    with pytest.raises(ValueError, match="time_prior_exponent"):
        sample_time(3, -1.0, torch.Generator())


def test_paths_velocity_is_time_derivative():
    gen = torch.Generator().manual_seed(4)
    z1, z0, noise = (torch.randn((7, 3), generator=gen, dtype=torch.float64) for _ in range(3))
    t, h = torch.rand(7, generator=gen, dtype=torch.float64) * 0.9 + 0.05, 1e-6
    for path in (lambda s: ot_path(z1, z0, s, 1e-3), lambda s: coupling_path(z1, z0, s, 0.1, noise)):
        fd = (path(t + h)[0] - path(t - h)[0]) / (2 * h)
        assert torch.allclose(fd, path(t)[1], atol=1e-6)
    z_end, _ = ot_path(z1, z0, torch.ones(7, dtype=torch.float64), 1e-3)
    assert torch.allclose(z_end, z1 + 1e-3 * z0)
    assert math.isclose(float(ot_path(z1, z0, torch.zeros(7, dtype=torch.float64), 0.1)[0][0, 0]), float(z0[0, 0]))
