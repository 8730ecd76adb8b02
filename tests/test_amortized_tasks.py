"""Task simulators and the C2ST against independent truth."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from enff.amortized import c2st
from enff.amortized.calibration import expected_coverage, sbc_ranks
from enff.amortized.tasks import Lorenz96Task, sbibm_task


def test_two_moons_simulator_matches_its_definition():
    task = sbibm_task("two_moons")
    theta, x = task.simulations(20000, torch.Generator().manual_seed(0))
    # Undo the parameter-dependent shift: what is left is the crescent p = (r cos a + 0.25, r sin a).
    s = math.sqrt(0.5)
    p = x - torch.stack([-torch.abs(theta[:, 0] + theta[:, 1]) * s, (theta[:, 1] - theta[:, 0]) * s], dim=1)
    r = torch.hypot(p[:, 0] - 0.25, p[:, 1])
    assert abs(float(r.mean()) - 0.1) < 1e-3 and abs(float(r.std()) - 0.01) < 1e-3
    assert float(p[:, 0].min()) > 0.25 - 0.01  # a in (-pi/2, pi/2): the crescent opens to the left
    assert bool((theta.abs() <= 1).all())


def test_gaussian_linear_simulator_noise():
    task = sbibm_task("gaussian_linear")
    theta, x = task.simulations(20000, torch.Generator().manual_seed(1))
    assert abs(float(theta.var()) - 0.1) < 0.005 and abs(float((x - theta).var()) - 0.1) < 0.005


def test_lorenz96_simulator_matches_scipy():
    task = Lorenz96Task(obs_std=0.0, n_obs=5)
    theta = torch.tensor([[8.0, 1.0], [6.5, 0.7]], dtype=torch.float64)
    x = task.simulate(theta, torch.Generator().manual_seed(2)).reshape(2, task.n_obs, task.n_sites)
    times = task.dt * task.obs_every * np.arange(1, task.n_obs + 1)
    for row, (forcing, damping) in enumerate(theta.tolist()):
        def rhs(_, v):
            return (np.roll(v, -1) - np.roll(v, 2)) * np.roll(v, 1) - damping * v + forcing
        ref = solve_ivp(rhs, (0, times[-1]), task.initial_state(torch.float64).numpy(), t_eval=times,
                        rtol=1e-10, atol=1e-10).y.T
        assert np.abs(x[row].numpy() - ref).max() < 1e-2  # RK4 truncation at dt = 0.05 is ~3e-3 here


def test_lorenz96_real_system_differs_and_prior_bounds():
    task = Lorenz96Task()
    gen = torch.Generator().manual_seed(3)
    theta = task.sample_prior(100, gen)
    assert bool(task.prior.support.check(theta).all())
    sim, real = task.simulate(theta, gen), task.simulate(theta, gen, real=True)
    assert sim.shape == real.shape == (100, task.x_dim)
    assert float((sim - real).pow(2).mean().sqrt()) > 2 * task.obs_std
    with pytest.raises(ValueError, match="theta must have shape"):
        task.simulate(torch.zeros(3, 3), gen)


def test_c2st_tells_apart_only_different_samples():
    pytest.importorskip("sklearn")
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn((500, 2), generator=gen), torch.randn((500, 2), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same, shifted = c2st(a, b), c2st(a, b + 3.0)
    assert same < 0.6 and shifted > 0.95
    with pytest.raises(ValueError, match="c2st needs"):
        c2st(a, b[:, :1])


def test_coverage_of_exact_posterior_samples_is_nominal():
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn((2000, 2), generator=gen)
    samples = torch.randn((300, 2000, 2), generator=gen)  # exact posterior = prior when data carry no information
    assert sbc_ranks(samples, theta).shape == (2000, 2)
    levels = torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(expected_coverage(samples, theta, levels), levels[:, None].expand(3, 2), atol=0.04)
    assert float(expected_coverage(samples * 0.3, theta, levels)[1].mean()) < 0.3  # overconfident -> undercovers


def test_slcp_simulator_has_the_stated_gaussian_and_matches_sbibm():
    task = sbibm_task("slcp")
    theta = torch.tensor([[0.7, -1.2, 1.1, -0.8, 0.9]])
    x = task.simulate(theta.expand(40000, 5), torch.Generator().manual_seed(2)).reshape(40000, 4, 2)
    s1, s2, rho = 1.1**2, 0.8**2, math.tanh(0.9)
    cov = torch.tensor([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])
    for draw in range(4):
        torch.testing.assert_close(x[:, draw].mean(0), theta[0, :2], atol=0.03, rtol=0)
        torch.testing.assert_close(torch.cov(x[:, draw].T), cov, atol=0.03, rtol=0.03)
    assert abs(float(torch.corrcoef(torch.stack([x[:, 0, 0], x[:, 1, 0]]))[0, 1])) < 0.02  # draws independent
    assert task.prior.support.check(task.sample_prior(1000, torch.Generator().manual_seed(3))).all()
    sbibm = pytest.importorskip("sbibm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sbibm.get_task("slcp").get_simulator()(theta.expand(40000, 5)).reshape(40000, 8).float()
    ours = x.reshape(40000, 8)  # same layout: draw by draw, (first, second) within a draw
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(ours.T), torch.cov(theirs.T), atol=0.04, rtol=0.04)
