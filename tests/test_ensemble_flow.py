"""EnFF: samplers, guidance and the filters against independent answers (resampling, Kalman filter)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from enff.filters import get_filter
from enff.filters.ensemble_flow import EnFFF2P, EnFFOT, flow_analysis
from enff.filters.guidance import GUIDANCE, LocalGuidance, MonteCarloGuidance, NoGuidance
from enff.filters.likelihood import likelihood_gradient
from enff.integrate import euler_maruyama, integrate
from enff.filters.paths import OTPath
from enff.observations.operators import ATan, Indices
from enff.observations.space import ObservationSpace

from helpers import CUDA, ring_space


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("evaluations", [1, 2, 3, 4, 7])
def test_sampler_spends_exactly_s_evaluations(method, evaluations):
    calls = []

    def field(x, t):
        calls.append(t)
        return -x

    integrate(field, torch.ones(3), evaluations=evaluations, method=method)
    assert len(calls) == evaluations
    assert all(0.0 <= t < 1.0 for t in calls)  # never at the stiff end of the OT path


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_sampler_order_on_linear_decay(method, order):
    """``dx/dt = -x`` from 1 to 0 backwards and 0 to 1 forwards: error falls like ``S^-order``."""
    exact = math.exp(-1.0)

    def error(s):
        x = integrate(lambda x, t: -x, torch.ones(1, dtype=torch.float64), evaluations=s, method=method)
        return abs(x.item() - exact)

    ratio = error(16) / error(32)
    assert 2**order * 0.8 < ratio < 2**order * 1.25
    one = torch.ones(1, dtype=torch.float64)
    back = integrate(lambda x, t: -x, one, evaluations=64, method=method, start=1.0, end=0.0)
    assert back.item() == pytest.approx(math.e, rel=0.02)


def test_euler_maruyama_variance_of_brownian_motion():
    g = torch.Generator().manual_seed(0)
    x = euler_maruyama(
        lambda x, t: torch.zeros_like(x), lambda t: 2.0, torch.zeros(40000, dtype=torch.float64),
        evaluations=10, generator=g, start=1.0, end=0.25,
    )
    assert x.var().item() == pytest.approx(4.0 * 0.75, rel=0.03)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="S"):
        integrate(lambda x, t: x, torch.ones(1), evaluations=0)
    with pytest.raises(ValueError, match="sampler"):
        integrate(lambda x, t: x, torch.ones(1), evaluations=2, method="rk4")


# ------------------------------------------------------------------------------------------------
# guidance
# ------------------------------------------------------------------------------------------------


def test_likelihood_gradient_is_analytic_for_atan_and_ignores_masked_entries():
    d = 5
    x = torch.linspace(-2, 2, 2 * d, dtype=torch.float64).reshape(2, d)
    y = torch.tensor([0.1, -0.3, float("nan"), 0.4, 1.0], dtype=torch.float64)
    obs = ring_space(d, ATan(), std=0.5)
    y_obs, space = obs.observed(y)
    grad = likelihood_gradient(x, y_obs, space)
    expected = -(torch.nan_to_num(y) - torch.atan(x)) / 0.25 / (1 + x**2)
    expected[:, 2] = 0.0
    torch.testing.assert_close(grad, expected)


def test_local_guidance_uses_the_predicted_end_point():
    d = 3
    obs = ring_space(d, std=2.0)
    y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.zeros(2, d, dtype=torch.float64)
    v = torch.ones(2, d, dtype=torch.float64)
    guide = LocalGuidance(scale=0.3, schedule="linear")
    endpoint = x + 0.5 * v
    expected = v + 0.3 * 0.5 * (y - endpoint) / 4.0
    torch.testing.assert_close(guide.add_force(v, x, 0.5, y, obs), expected)
    torch.testing.assert_close(v, expected)  # in place
    assert LocalGuidance(scale=0.3).strength(0.1) == 0.3


# ------------------------------------------------------------------------------------------------
# the flow with Monte Carlo guidance against likelihood-weighted resampling
# ------------------------------------------------------------------------------------------------

MEMBERS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
Y = torch.tensor([1.2, 0.2], dtype=torch.float64)


def _member_frequencies(guidance, particles=4000, seed=0):
    obs = ring_space(2, std=1.0)
    g = torch.Generator().manual_seed(seed)
    path = OTPath(sigma_min=0.01)
    source = torch.randn(particles, 2, generator=g, dtype=torch.float64)
    result = flow_analysis(path, source, MEMBERS, Y, obs, guidance=guidance, steps=40)
    distance = torch.cdist(result.particles, MEMBERS)
    nearest = distance.argmin(dim=1)
    assert distance.min(dim=1).values.max() < 0.1  # every particle ends on a member
    return torch.bincount(nearest, minlength=3).double() / particles, result


def test_mc_guidance_reproduces_likelihood_weighted_resampling():
    frequencies, result = _member_frequencies(MonteCarloGuidance())
    weights = torch.softmax(-0.5 * ((Y - MEMBERS) ** 2).sum(1), dim=0)
    assert weights.max() - weights.min() > 0.3  # the likelihood weights are far from uniform
    torch.testing.assert_close(frequencies, weights, rtol=0, atol=0.03)
    assert result.distinct_members == 3
    assert 1 / 3 < result.max_weight <= 1.0


def test_without_guidance_the_flow_resamples_the_forecast_uniformly():
    frequencies, _ = _member_frequencies(NoGuidance())
    torch.testing.assert_close(frequencies, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=0.03)


def _kalman(mean, cov, h, r, y):
    gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + r)
    return mean + gain @ (y - h @ mean), (torch.eye(len(mean), dtype=cov.dtype) - gain @ h) @ cov


def test_mc_guidance_approaches_the_kalman_filter_as_n_grows():
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    obs = ring_space(2, Indices((0,)), std=0.7)
    y = torch.tensor([1.8], dtype=torch.float64)
    h, r = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.49]], dtype=torch.float64)
    mean_kf, cov_kf = _kalman(mean, cov, h, r, y)
    assert (mean_kf - mean).norm() > 0.3  # the update is large compared with the errors tested below
    root = torch.linalg.cholesky(cov)
    enff = get_filter("enff-ot", guidance="mc", steps=20, sampler="heun", sigma_min=0.01)
    errors = []
    for n in (16, 128, 1024):
        trial_errors = []
        for trial in range(3):
            g = torch.Generator().manual_seed(100 * n + trial)
            forecast = mean + torch.randn(n, 2, generator=g, dtype=torch.float64) @ root.T
            analysis = enff.analysis(forecast, y, obs, generator=g).ensemble
            error = (analysis.mean(0) - mean_kf).norm() + (torch.cov(analysis.T) - cov_kf).norm()
            trial_errors.append(error.item())
        errors.append(float(np.mean(trial_errors)))
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.2, errors


# ------------------------------------------------------------------------------------------------
# the registered filters
# ------------------------------------------------------------------------------------------------


def _unpack(result):
    """The analysis ensemble and the diagnostics of an :class:`~enff.filters.Analysis`."""
    return result.ensemble, result.diagnostics


def _forecast(n=12, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", ["enff-ot", "enff-f2p"])
@pytest.mark.parametrize("guidance", ["local", "mc"])
def test_masked_observations_have_no_influence(name, guidance):
    d = 6
    forecast = _forecast(d=d)
    previous = _forecast(d=d, seed=1)
    y = torch.tensor([2.0, float("nan"), 1.5, float("nan"), 0.0, 2.5], dtype=torch.float64)
    kept = (0, 2, 4, 5)
    enff = get_filter(name, guidance=guidance, guidance_scale=0.5, steps=6)
    full = enff.analysis(forecast, y, ring_space(d, std=0.5), previous=previous,
                         generator=torch.Generator().manual_seed(3)).ensemble
    reduced = enff.analysis(
        forecast, y[list(kept)], ring_space(d, Indices(kept), std=0.5),
        previous=previous, generator=torch.Generator().manual_seed(3),
    ).ensemble
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full, reduced)


@pytest.mark.parametrize("name, scale", [("enff-ot", 0.3), ("enff-f2p", 0.05)])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_local_guidance_pulls_the_ensemble_toward_the_observations(name, scale, sampler):
    """On the OT path the pull toward the members damps a guidance offset to about
    ``sigma_min ln(1 / sigma_min) lambda grad E``, on the F2P path it is ``lambda grad E``: hence the scales."""
    d = 6
    forecast = _forecast(n=20, d=d, seed=4)
    y = torch.full((d,), 3.0, dtype=torch.float64)
    obs = ring_space(d, std=0.3)
    kwargs = dict(steps=10, sigma_min=0.05, sampler=sampler)
    g = torch.Generator().manual_seed(5)
    guided = get_filter(name, guidance="local", guidance_scale=scale, **kwargs).analysis(
        forecast, y, obs, previous=forecast, generator=g
    ).ensemble
    free = get_filter(name, guidance="none", **kwargs).analysis(forecast, y, obs, previous=forecast,
                                                                generator=g).ensemble
    misfit = lambda ens: (ens.mean(0) - y).norm().item()  # noqa: E731
    assert misfit(guided) < 0.8 * misfit(forecast)
    assert misfit(free) == pytest.approx(misfit(forecast), rel=0.15)


def test_f2p_follows_each_members_own_path():
    """Without guidance, previous member j (plus sigma_min noise) flows onto forecast member j."""
    d, n = 4, 8
    previous = 10.0 * _forecast(n=n, d=d, seed=6)
    forecast = previous + 0.5 * _forecast(n=n, d=d, seed=7)
    enff = EnFFF2P(steps=8, sigma_min=1e-3, guidance="none")
    result = enff.analysis(forecast, torch.zeros(d, dtype=torch.float64), ring_space(d), previous=previous,
                           generator=torch.Generator().manual_seed(8))
    analysis, diagnostics = result.ensemble, result.diagnostics
    torch.testing.assert_close(analysis, forecast, rtol=0, atol=1e-2)
    assert diagnostics == {"max_weight": pytest.approx(1.0), "distinct_members": float(n)}


def test_f2p_without_previous_uses_the_forecast_as_source():
    forecast = _forecast(n=6, d=4)
    enff = EnFFF2P(steps=4, sigma_min=1e-3, guidance="none")
    y = torch.zeros(4, dtype=torch.float64)
    analysis = enff.analysis(forecast, y, ring_space(4), generator=torch.Generator().manual_seed(0)).ensemble
    torch.testing.assert_close(analysis, forecast, rtol=0, atol=1e-2)
    # the F2P path starts from the previous analysis; the OT path never reads it
    previous = forecast + 5.0
    for filt, uses_previous in ((enff, True), (EnFFOT(steps=4, sigma_min=1e-3, guidance="none"), False)):
        with_previous, without = (filt.analysis(forecast, y, ring_space(4), previous=p, generator=torch.Generator().manual_seed(0))
                                  .ensemble for p in (previous, None))
        assert torch.equal(with_previous, without) is not uses_previous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_analysis_shape_dtype_diagnostics_and_reproducibility(dtype):
    forecast = _forecast(n=10, d=5, dtype=dtype).reshape(10, 5)
    obs = ring_space(5, ATan(), std=0.1)
    y = torch.atan(torch.ones(5, dtype=torch.float64))
    enff = get_filter("enff-ot", steps=5, sampler="heun")
    a, first = _unpack(enff.analysis(forecast, y, obs, generator=torch.Generator().manual_seed(1)))
    b, second = _unpack(enff.analysis(forecast, y, obs, generator=torch.Generator().manual_seed(1)))
    assert a.shape == forecast.shape and a.dtype == dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert set(first) == set(enff.diagnostic_names) == set(second)
    assert 0.1 <= first["max_weight"] <= 1.0 and 1 <= first["distinct_members"] <= 10


def test_the_flat_guidance_keys_build_one_guidance_object_with_the_filter():
    filt = get_filter("enff-ot", guidance="local", guidance_scale=0.3, guidance_schedule="linear")
    assert filt.guide == LocalGuidance(scale=0.3, schedule="linear")
    assert get_filter("enff-f2p", guidance="mc", guidance_scale=0.3).guide == MonteCarloGuidance()
    assert get_filter("enff-ot", guidance="none").guide == NoGuidance()
    assert dataclasses.replace(filt, guidance="mc").guide == MonteCarloGuidance()  # rebuilt with the keys
    assert "guide" not in repr(filt) and set(GUIDANCE) == {"local", "mc", "kalman", "none"}
    with pytest.raises(ValueError, match="guidance must be one of"):
        get_filter("enff-ot", guidance="kalman")  # the Gaussian guide belongs to the localized OT flow


def test_analysis_diagnostics_are_read_only():
    result = get_filter("enff-ot", steps=3).analysis(_forecast(n=6, d=4), torch.zeros(4, dtype=torch.float64),
                                                     ring_space(4), generator=torch.Generator().manual_seed(0))
    assert set(result.diagnostics) == {"max_weight", "distinct_members"}
    with pytest.raises(TypeError):
        result.diagnostics["max_weight"] = 0.0


@pytest.mark.parametrize(
    "key, value",
    [("steps", 0), ("sigma_min", 0.0), ("guidance", "global"), ("guidance_scale", -1.0),
     ("guidance_schedule", "cosine"), ("sampler", "rk4"), ("inflation", 0.0)],
)
def test_hyper_parameter_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        get_filter("enff-ot", **{key: value})


def test_shape_errors_name_the_argument():
    enff = get_filter("enff-f2p")
    with pytest.raises(ValueError, match="forecast"):
        enff.analysis(torch.zeros(4, 3), torch.zeros(5), ring_space(5), generator=torch.Generator())
    with pytest.raises(ValueError, match="previous"):
        enff.analysis(
            torch.zeros(4, 5), torch.zeros(5), ring_space(5), previous=torch.zeros(3, 5), generator=torch.Generator()
        )


@CUDA
def test_cuda_analysis_matches_cpu_statistics():
    forecast = _forecast(n=16, d=32, dtype=torch.float32)
    obs = ring_space(32, std=0.5)
    obs_gpu = ObservationSpace(obs.operator, obs.std.cuda(), obs.grid, obs.state_shape)
    y = torch.zeros(32, dtype=torch.float64)
    enff = get_filter("enff-ot", steps=10)
    cpu = enff.analysis(forecast, y, obs, generator=torch.Generator().manual_seed(0)).ensemble
    gpu = enff.analysis(forecast.cuda(), y.cuda(), obs_gpu,
                        generator=torch.Generator(device="cuda").manual_seed(0)).ensemble
    assert gpu.device.type == "cuda"
    assert (gpu.mean().cpu() - cpu.mean()).abs() < 0.2


@pytest.mark.parametrize("name", ["enff-ot", "enff-f2p", "ensf", "etkf", "enkf", "letkf", "bpf"])
def test_cycle_with_every_observation_missing_returns_the_inflated_forecast(name):
    from enff.filters import get_filter

    obs = ring_space(16, ATan(), 0.1)
    forecast = torch.randn(6, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hyper = {"radius": 3.0} if name == "letkf" else {}
    filt = get_filter(name, inflation=1.1, **hyper)
    y = torch.full((16,), float("nan"), dtype=torch.float64)
    analysis = filt.analysis(forecast, y, obs, previous=forecast, generator=torch.Generator().manual_seed(1)).ensemble
    mean = forecast.mean(0)
    torch.testing.assert_close(analysis, mean + 1.1 * (forecast - mean))
