"""EnSF: the forward process, the prior scores against autograd, and sanity of the analysis."""

import math

import pytest
import torch

from enff.filters import get_filter
from enff.filters.ensemble_score import VPSchedule, prior_score
from enff.observations.operators import Indices
from enff.observations.space import ObservationSpace

from helpers import CUDA, ring_space


def _forecast(n=24, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("eps_alpha, eps_beta", [(0.05, 0.0), (1.0, 0.2), (0.6, 0.075)])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.95])
def test_schedule_coefficients_satisfy_the_forward_sde(eps_alpha, eps_beta, t):
    """``f = d log alpha / dt`` and ``d beta^2 / dt = 2 f beta^2 + g^2`` by finite differences."""
    s, h = VPSchedule(eps_alpha, eps_beta), 1e-6
    dlog_alpha = (math.log(s.alpha(t + h)) - math.log(s.alpha(t - h))) / (2 * h)
    dbeta_sq = (s.beta_sq(t + h) - s.beta_sq(t - h)) / (2 * h)
    assert s.drift_rate(t) == pytest.approx(dlog_alpha, rel=1e-6, abs=1e-9)
    assert dbeta_sq == pytest.approx(2 * s.drift_rate(t) * s.beta_sq(t) + s.diffusion_sq(t), rel=1e-6)
    assert s.alpha(1.0) == pytest.approx(eps_alpha) and s.beta_sq(0.0) == pytest.approx(eps_beta)


@pytest.mark.parametrize("t", [0.05, 0.4, 1.0])
def test_prior_scores_match_autograd_of_the_log_density(t):
    schedule = VPSchedule(0.3, 0.01)
    x1 = _forecast(n=6, d=4, seed=1)
    x = _forecast(n=6, d=4, seed=2)
    alpha, beta_sq = schedule.alpha(t), schedule.beta_sq(t)
    leaf = x.clone().requires_grad_(True)
    log_components = -((leaf[:, None, :] - alpha * x1[None]) ** 2).sum(-1) / (2 * beta_sq)
    (mixture,) = torch.autograd.grad(torch.logsumexp(log_components, dim=1).sum(), leaf, retain_graph=True)
    (member,) = torch.autograd.grad(torch.diagonal(log_components).sum(), leaf)
    torch.testing.assert_close(prior_score(schedule, t, x, x1, "mixture"), mixture)
    torch.testing.assert_close(prior_score(schedule, t, x, x1, "member"), member)


@pytest.mark.parametrize("score", ["member", "mixture"])
@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_identity_observations_with_small_noise_pull_toward_y(score, sampler):
    d = 5
    forecast = _forecast(d=d, seed=3)
    y = torch.full((d,), 2.5, dtype=torch.float64)
    ensf = get_filter("ensf", steps=100, eps_alpha=0.05, eps_beta=0.01, score=score, sampler=sampler)
    analysis = ensf.analysis(forecast, y, ring_space(d, std=0.1), generator=torch.Generator().manual_seed(4)).ensemble
    misfit = lambda ens: (ens.mean(0) - y).norm().item()  # noqa: E731
    assert torch.isfinite(analysis).all()
    # the prior score grows like 1 / beta_t^2 as t -> 0, so EnSF stops short of y (measured 0.15-0.37 here)
    assert misfit(analysis) < 0.5 * misfit(forecast)


@pytest.mark.parametrize("score", ["member", "mixture"])
def test_uninformative_observations_leave_the_forecast_distribution(score):
    d, n = 3, 400
    forecast = _forecast(n=n, d=d, seed=5)
    y = torch.full((d,), 4.0, dtype=torch.float64)
    ensf = get_filter("ensf", steps=60, eps_alpha=0.05, score=score)
    analysis = ensf.analysis(forecast, y, ring_space(d, std=1e4), generator=torch.Generator().manual_seed(6)).ensemble
    # sampling error of a mean and of a std estimated from n members
    torch.testing.assert_close(analysis.mean(0), forecast.mean(0), rtol=0, atol=4 / math.sqrt(n))
    torch.testing.assert_close(analysis.std(0), forecast.std(0), rtol=0.15, atol=0)
    if score == "member":  # each particle is drawn back to its own member
        assert (analysis - forecast).abs().median() < 0.25


def test_clipping_bounds_the_likelihood_score():
    d = 4
    forecast = _forecast(n=16, d=d, seed=7)
    y = torch.full((d,), 3.0, dtype=torch.float64)
    obs = ring_space(d, std=0.05)
    kwargs = dict(steps=40, eps_alpha=0.05)
    seeded = lambda: torch.Generator().manual_seed(8)  # noqa: E731
    free = get_filter("ensf", **kwargs).analysis(forecast, y, obs, generator=seeded()).ensemble
    clipped = get_filter("ensf", clip=1e-6, **kwargs).analysis(forecast, y, obs, generator=seeded()).ensemble
    ignored = get_filter("ensf", **kwargs).analysis(forecast, y, ring_space(d, std=1e12), generator=seeded()).ensemble
    torch.testing.assert_close(clipped, ignored, rtol=0, atol=1e-4)
    assert (free - clipped).abs().max() > 0.5


def test_masked_observations_have_no_influence():
    d = 5
    forecast = _forecast(d=d, seed=9)
    y = torch.tensor([2.0, float("nan"), 1.0, 0.5, float("nan")], dtype=torch.float64)
    kept = (0, 2, 3)
    ensf = get_filter("ensf", steps=20, score="mixture")
    full = ensf.analysis(forecast, y, ring_space(d, std=0.3), generator=torch.Generator().manual_seed(1)).ensemble
    reduced = ensf.analysis(
        forecast, y[list(kept)], ring_space(d, Indices(kept), 0.3), generator=torch.Generator().manual_seed(1)
    ).ensemble
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full, reduced)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_reproducibility(dtype):
    forecast = _forecast(n=8, d=6, dtype=dtype)
    obs = ring_space(6, std=0.5)
    y = torch.zeros(6, dtype=torch.float64)
    ensf = get_filter("ensf", steps=10)
    a = ensf.analysis(forecast, y, obs, generator=torch.Generator().manual_seed(2)).ensemble
    b = ensf.analysis(forecast, y, obs, generator=torch.Generator().manual_seed(2)).ensemble
    assert a.shape == forecast.shape and a.dtype == dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the score filter never reads the previous analysis
    with_previous = ensf.analysis(forecast, y, obs, previous=forecast + 3.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(with_previous.ensemble, a, rtol=0, atol=0)


@pytest.mark.parametrize("start", ["marginal", "noise"])
def test_probability_flow_from_each_start_ends_where_the_ode_says(start):
    """eps_alpha = 1, uninformative observations, per-member score: dx/dt = g^2 (x - x1) / (2 beta^2), so the
    offset from the member scales by beta_t / beta_1 and the particle ends at x1 + beta_0 (x_start - x1)."""
    d, n = 4, 6
    forecast = 3.0 * _forecast(n=n, d=d, seed=7)
    eps_beta = 0.25
    ensf = get_filter("ensf", steps=2000, eps_alpha=1.0, eps_beta=eps_beta, sampler="ode", start=start)
    analysis = ensf.analysis(forecast, torch.zeros(d, dtype=torch.float64), ring_space(d, std=1e8),
                             generator=torch.Generator().manual_seed(8)).ensemble
    z = torch.randn(forecast.shape, generator=torch.Generator().manual_seed(8), dtype=forecast.dtype)
    x_start = z if start == "noise" else forecast + z  # alpha_1 = 1, beta_1 = 1
    expected = forecast + math.sqrt(eps_beta) * (x_start - forecast)
    torch.testing.assert_close(analysis, expected, rtol=0, atol=5e-3)


@pytest.mark.parametrize(
    "key, value",
    [("steps", 0), ("eps_alpha", 0.0), ("eps_beta", 1.0), ("score", "kernel"), ("sampler", "heun"),
     ("clip", 0.0), ("start", "prior"), ("inflation", -1.0)],
)
def test_hyper_parameter_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        get_filter("ensf", **{key: value})


@CUDA
def test_cuda_runs():
    forecast = _forecast(n=8, d=6, dtype=torch.float32).cuda()
    obs = ring_space(6, std=0.5)
    obs = ObservationSpace(obs.operator, obs.std.cuda(), obs.grid, obs.state_shape)
    out = get_filter("ensf", steps=10).analysis(
        forecast, torch.zeros(6, device="cuda"), obs, generator=torch.Generator(device="cuda").manual_seed(0)
    ).ensemble
    assert out.device.type == "cuda" and torch.isfinite(out).all()
