"""The localized ensemble Kalman-Bucy flow ``lenff-tempered`` against independent answers.

Checks: for linear observations and a global analysis, K tempering steps give the Kalman filter's mean and
covariance (of the ensemble's sample statistics) to round-off, for both schedules; one step is the LETKF; in the
local frame, K steps with linear observations and a finite radius are the LETKF, and with arctan every element's
analysis is the global tempered analysis of its own tapered local observations (a per-element loop);
with a finite radius and many members K steps approach the exact Kalman filter as closely as the LETKF does;
for a nonlinear scalar problem more steps come closer to the exact posterior mean (quadrature) than the
one-step ETKF; masked observations have no influence; member order; float32 against float64.
"""

import math

import numpy as np
import pytest
import torch

from enff.filters import get_filter
from enff.filters.local_tempering import step_sizes
from enff.filters.localization import gaspari_cohn
from enff.models.base import Grid
from enff.observations.operators import ATan, Indices
from enff.observations.space import ObservationSpace


def _space(d: int, operator, std: float, length: float | None = None) -> ObservationSpace:
    length = float(d) if length is None else length
    grid = Grid(axes=(np.arange(d) * (length / d),), lengths=(length,))
    n_obs = operator.output_size((d,))
    return ObservationSpace(operator, torch.full((n_obs,), std, dtype=torch.float64), grid, (d,))


def _analysis(name: str, forecast: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, **keys) -> torch.Tensor:
    return get_filter(name, **keys).analysis(forecast, y, obs, generator=torch.Generator().manual_seed(0)).ensemble


def _kalman(prior_mean, prior_cov, h, r, y):
    gain = prior_cov @ h.T @ np.linalg.inv(h @ prior_cov @ h.T + r)
    return prior_mean + gain @ (y - h @ prior_mean), (np.eye(len(prior_mean)) - gain @ h) @ prior_cov


@pytest.mark.parametrize("steps, schedule", [(1, "uniform"), (4, "uniform"), (7, "geometric")])
def test_linear_global_steps_give_the_kalman_filter_to_round_off(steps, schedule):
    d, n = 8, 6  # fewer members than state elements: the sample covariance is rank-deficient
    gen = torch.Generator().manual_seed(1)
    forecast = 2.0 + torch.randn(n, d, dtype=torch.float64, generator=gen)
    keep = np.array([0, 3, 4, 7])
    obs = _space(d, Indices(keep), std=0.4)
    y = torch.randn(keep.size, dtype=torch.float64, generator=gen)
    analysis = _analysis("lenff-tempered", forecast, y, obs, radius=math.inf, steps=steps, schedule=schedule).numpy()
    sample = forecast.numpy()
    mean, cov = _kalman(sample.mean(0), np.cov(sample.T), np.eye(d)[keep], 0.16 * np.eye(keep.size), y.numpy())
    np.testing.assert_allclose(analysis.mean(0), mean, rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.cov(analysis.T), cov, rtol=0, atol=1e-11)
    etkf = _analysis("etkf", forecast, y, obs)  # the symmetric square root: the same members, not just moments
    np.testing.assert_allclose(analysis, etkf.numpy(), rtol=0, atol=1e-11)


def test_one_step_is_the_letkf():
    d, n = 30, 8
    gen = torch.Generator().manual_seed(2)
    forecast = torch.randn(n, d, dtype=torch.float64, generator=gen)
    obs = _space(d, ATan(), std=0.2)
    y = torch.atan(torch.randn(d, dtype=torch.float64, generator=gen))
    keys = {"radius": 3.0, "inflation": 1.05, "rtps": 0.3, "adaptive_obs_error": 1.0}
    ours = _analysis("lenff-tempered", forecast, y, obs, steps=1, **keys)
    torch.testing.assert_close(ours, _analysis("letkf", forecast, y, obs, **keys), rtol=0, atol=1e-13)


@pytest.mark.parametrize("steps, schedule", [(4, "uniform"), (5, "geometric")])
def test_local_frame_with_linear_observations_is_the_letkf(steps, schedule):
    d, n = 40, 8
    gen = torch.Generator().manual_seed(9)
    forecast = torch.randn(n, d, dtype=torch.float64, generator=gen)
    obs = _space(d, Indices(np.arange(0, d, 3)), std=0.3)
    y = 0.5 * torch.randn(obs.n_obs, dtype=torch.float64, generator=gen)
    keys = {"radius": 3.0, "inflation": 1.05, "rtps": 0.3}
    letkf = _analysis("letkf", forecast, y, obs, **keys)
    local = _analysis("lenff-tempered", forecast, y, obs, steps=steps, schedule=schedule, frame="local", **keys)
    shared = _analysis("lenff-tempered", forecast, y, obs, steps=steps, schedule=schedule, **keys)
    torch.testing.assert_close(local, letkf, rtol=0, atol=1e-12)
    # the shared frame mixes neighbouring transforms: not the LETKF even for linear observations
    assert float((shared - letkf).abs().max()) > 1e-3


def test_local_frame_is_the_global_analysis_of_each_elements_local_observations():
    d, n, radius, std = 24, 7, 2.0, 0.2
    gen = torch.Generator().manual_seed(10)
    forecast = 1.2 * torch.randn(n, d, dtype=torch.float64, generator=gen)
    keep = np.arange(0, d, 2)
    obs = _space(d, Indices(keep) | ATan(), std=std)
    y = torch.atan(torch.randn(keep.size, dtype=torch.float64, generator=gen))
    keys = {"steps": 3, "schedule": "geometric"}
    local = _analysis("lenff-tempered", forecast, y, obs, radius=radius, frame="local", **keys)
    offset = np.abs(np.arange(d)[:, None] - keep[None, :])
    taper = gaspari_cohn(np.minimum(offset, d - offset), radius)  # (element, observation), periodic
    for element in range(d):
        near = np.flatnonzero(taper[element] > 0)
        errors = torch.as_tensor(std / np.sqrt(taper[element, near]))  # R / rho, as the LETKF tapers R^-1
        restricted = ObservationSpace(Indices(keep[near]) | ATan(), errors, obs.grid, obs.state_shape)
        alone = _analysis("lenff-tempered", forecast, y[near], restricted, radius=math.inf, **keys)
        torch.testing.assert_close(local[:, element], alone[:, element], rtol=0, atol=1e-12)


def test_local_frame_needs_a_pointwise_operator():
    from dataclasses import dataclass

    from enff.observations.base import ObservationOperator

    @dataclass(frozen=True)
    class Pairs(ObservationOperator):
        """Sums of neighbouring elements, located at the first of each pair: not pointwise."""

        def __call__(self, x):
            flat = x.reshape(x.shape[0], -1)
            return flat[:, 0::2] + flat[:, 1::2]

        def source_index(self, shape):
            return np.arange(0, int(np.prod(shape)), 2, dtype=np.int64)

    d, n = 12, 5
    forecast = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    obs = _space(d, Pairs(), std=0.3)
    y = torch.zeros(d // 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="frame 'local' needs an observation operator"):
        _analysis("lenff-tempered", forecast, y, obs, radius=2.0, steps=2, frame="local")
    _analysis("lenff-tempered", forecast, y, obs, radius=2.0, steps=2)  # the shared frame takes any operator


def _correlated_prior(d: int, n: int, length_scale: float, seed: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A periodic Gaussian-correlated prior ``N(m, B)`` on ``d`` points and ``n`` draws of it."""
    offset = np.minimum(np.arange(d), d - np.arange(d))
    row = np.exp(-0.5 * (offset / length_scale) ** 2)
    cov = np.stack([np.roll(row, k) for k in range(d)]) + 1e-6 * np.eye(d)
    mean = np.sin(2 * np.pi * np.arange(d) / d)
    draws = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)
    return mean, cov, torch.as_tensor(draws)


def test_finite_radius_approaches_the_kalman_filter_like_the_letkf():
    d, n = 40, 400
    mean, cov, forecast = _correlated_prior(d, n, length_scale=1.5, seed=3)
    keep = np.arange(0, d, 2)
    obs = _space(d, Indices(keep), std=0.5)
    rng = np.random.default_rng(4)
    truth = rng.multivariate_normal(mean, cov)
    y = torch.as_tensor(truth[keep] + 0.5 * rng.normal(size=keep.size))
    exact, _ = _kalman(mean, cov, np.eye(d)[keep], 0.25 * np.eye(keep.size), y.numpy())
    prior_error = np.abs(forecast.numpy().mean(0) - exact).max()
    tempered = _analysis("lenff-tempered", forecast, y, obs, radius=4.0, steps=5).numpy().mean(0)
    letkf = _analysis("letkf", forecast, y, obs, radius=4.0).numpy().mean(0)
    # the sampling error of an N = 400 analysis mean is about std / 20 = 0.05 (posterior std < 1)
    assert np.abs(tempered - exact).max() < 0.25 * prior_error
    assert np.abs(tempered - exact).max() < 0.2
    assert np.abs(tempered - letkf).max() < 0.1


def test_more_steps_approach_the_exact_nonlinear_posterior_mean():
    # scalar prior N(1.5, 1), y = arctan(x) + e with a small error: the posterior is far from the linearization
    n, std, y = 4000, 0.05, 0.4
    gen = torch.Generator().manual_seed(5)
    draws = torch.randn(n, dtype=torch.float64, generator=gen)
    forecast = (1.5 + (draws - draws.mean()) / draws.std())[:, None]
    grid = np.linspace(-10, 10, 200001)
    density = np.exp(-0.5 * (grid - 1.5) ** 2 - 0.5 * ((y - np.arctan(grid)) / std) ** 2)
    exact = float((grid * density).sum() / density.sum())
    obs = _space(1, ATan(), std=std)
    target = torch.tensor([y], dtype=torch.float64)
    errors = [abs(float(_analysis("lenff-tempered", forecast, target, obs, radius=math.inf, steps=k).mean()) - exact)
              for k in (1, 4, 32)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.1 * errors[0]


@pytest.mark.parametrize("frame", ["shared", "local"])
def test_masked_observations_have_no_influence(frame):
    d, n = 30, 7
    gen = torch.Generator().manual_seed(6)
    forecast = torch.randn(n, d, dtype=torch.float64, generator=gen)
    obs = _space(d, Indices(np.arange(0, d, 2)) | ATan(), std=0.3)
    y = torch.atan(torch.randn(obs.n_obs, dtype=torch.float64, generator=gen))
    drop = torch.tensor([1, 4, 5, 11])
    masked = y.clone()
    masked[drop] = float("nan")
    keep = np.setdiff1d(np.arange(obs.n_obs), drop.numpy())
    restricted = ObservationSpace(obs.operator | Indices(keep), obs.std[keep], obs.grid, obs.state_shape)
    keys = {"radius": 3.0, "steps": 3, "frame": frame}
    torch.testing.assert_close(_analysis("lenff-tempered", forecast, masked, obs, **keys),
                               _analysis("lenff-tempered", forecast, y[keep], restricted, **keys),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frame", ["shared", "local"])
def test_member_order_does_not_matter(frame):
    d, n = 30, 9
    gen = torch.Generator().manual_seed(7)
    forecast = torch.randn(n, d, dtype=torch.float64, generator=gen)
    obs = _space(d, ATan(), std=0.2)
    y = torch.atan(torch.randn(d, dtype=torch.float64, generator=gen))
    order = torch.randperm(n, generator=gen)
    keys = {"radius": 4.0, "steps": 4, "schedule": "geometric", "frame": frame}
    a = _analysis("lenff-tempered", forecast, y, obs, **keys)
    b = _analysis("lenff-tempered", forecast[order], y, obs, **keys)
    torch.testing.assert_close(a[order], b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("frame", ["shared", "local"])
def test_float32_matches_float64(frame):
    d, n = 256, 20
    gen = torch.Generator().manual_seed(8)
    forecast = 1.5 * torch.randn(n, d, dtype=torch.float64, generator=gen)
    obs = _space(d, ATan(), std=0.1, length=64.0)
    y = torch.atan(torch.randn(d, dtype=torch.float64, generator=gen))
    keys = {"radius": 2.0, "steps": 4, "frame": frame}
    double = _analysis("lenff-tempered", forecast, y, obs, **keys)
    obs32 = ObservationSpace(obs.operator, obs.std.float(), obs.grid, obs.state_shape)
    single = _analysis("lenff-tempered", forecast.float(), y.float(), obs32, **keys)
    assert single.dtype == torch.float32
    increment = (double - forecast).abs().max()
    assert float((single.double() - double).abs().max()) < 1e-4 * float(increment)


def test_step_sizes_and_bad_settings():
    assert step_sizes(4, "uniform") == [0.25] * 4
    assert step_sizes(3, "geometric") == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    with pytest.raises(ValueError, match="radius is required"):
        get_filter("lenff-tempered")
    with pytest.raises(ValueError, match="steps"):
        get_filter("lenff-tempered", radius=2.0, steps=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        get_filter("lenff-tempered", radius=2.0, schedule="linear")
    with pytest.raises(ValueError, match="frame must be one of"):
        get_filter("lenff-tempered", radius=2.0, frame="global")


def test_runs_from_a_case_file_and_set(tmp_path, small_case_file):
    import xarray as xr

    from enff.cli import main

    out = tmp_path / "tempered.nc"
    sets = [f"--set={item}" for item in ["filter.radius=5.0", "filter.steps=3", "filter.schedule=\"geometric\"",
                                         "observations.operator=\"atan\"", "run.cycles=4"]]
    assert main(["run", str(small_case_file), "--filter", "lenff-tempered", *sets, "--out", str(out),
                 "--no-progress"]) == 0
    with xr.open_dataset(out) as ds:
        assert ds.sizes["time"] == 4 and bool(ds["analysis_mean"].notnull().all())



def test_local_frame_of_colocated_fields_is_the_global_analysis_of_each_points_local_observations():
    # three fields at every point of a 6 x 6 torus (as Navier-Stokes' pressure, u, v) share one local analysis
    grid = Grid((np.zeros(3), np.arange(6.0), np.arange(6.0)), (None, 6.0, 6.0))
    n, radius, std = 8, 1.2, 0.3
    gen = torch.Generator().manual_seed(11)
    forecast = torch.randn(n, *grid.shape, dtype=torch.float64, generator=gen)
    keep = np.arange(1, 108, 4)
    obs = ObservationSpace(Indices(keep) | ATan(), torch.full((keep.size,), std, dtype=torch.float64), grid,
                           grid.shape)
    y = torch.atan(torch.randn(keep.size, dtype=torch.float64, generator=gen))
    keys = {"steps": 3, "schedule": "geometric"}
    local = _analysis("lenff-tempered", forecast, y, obs, radius=radius, frame="local", **keys).reshape(n, -1)
    point = np.stack(np.unravel_index(np.arange(108), grid.shape)[1:], axis=1)  # (element, 2) grid cell
    offset = np.abs(point[:, None, :] - point[keep][None, :, :])
    taper = gaspari_cohn(np.hypot(*np.moveaxis(np.minimum(offset, 6 - offset), -1, 0)), radius)
    assert (local - forecast.reshape(n, -1)).abs().max() > 0.1
    for element in range(108):
        near = np.flatnonzero(taper[element] > 0)
        errors = torch.as_tensor(std / np.sqrt(taper[element, near]))
        restricted = ObservationSpace(Indices(keep[near]) | ATan(), errors, grid, grid.shape)
        alone = _analysis("lenff-tempered", forecast, y[near], restricted, radius=math.inf, **keys).reshape(n, -1)
        torch.testing.assert_close(local[:, element], alone[:, element], rtol=0, atol=1e-12)
