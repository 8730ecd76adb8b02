"""Classical ensemble filters against independent truth: Kalman filter, explicit formulas, geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace

import numpy as np
import pytest
import scipy.linalg
import torch

from enff.filters import BootstrapPF, EnKF, ETKF, LETKF, get_filter, multiplicative_inflation, rtps
from enff.filters.ensemble_space import observe
from enff.filters.localization import gaspari_cohn, local_observations
from enff.filters.ensemble_space import _member_space_update, _observation_space_update
from enff.filters.particle import (
    duplicated,
    effective_sample_size,
    log_weights,
    regularization_noise,
    systematic_resample,
    tempering_step,
)
from enff.models.base import Grid
from enff.observations.base import ObservationOperator, flatten_members
from enff.observations.operators import ATan
from enff.observations.space import ObservationSpace, Select

from helpers import DEVICES, ring, ring_space


@dataclass(frozen=True, eq=False)
class Linear(ObservationOperator):
    """Test-only linear operator ``h(x) = H x`` on the flattened state, located at ``index``."""

    matrix: torch.Tensor
    index: np.ndarray

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return flatten_members(x) @ self.matrix.to(device=x.device, dtype=x.dtype).T

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.index


def space(operator: ObservationOperator, std: np.ndarray, grid: Grid) -> ObservationSpace:
    return ObservationSpace(operator, torch.as_tensor(std, dtype=torch.float64), grid, grid.shape)


def exact_ensemble(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` members whose sample mean and covariance are exactly ``mean`` and ``cov``."""
    z = np.random.default_rng(seed).standard_normal((n, mean.size))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / (n - 1))).T
    return mean + z @ np.linalg.cholesky(cov).T


@dataclass
class Problem:
    mean: np.ndarray
    cov: np.ndarray
    matrix: np.ndarray
    std: np.ndarray
    y: np.ndarray
    grid: Grid

    @property
    def obs(self) -> ObservationSpace:
        index = np.argmax(np.abs(self.matrix), axis=1)
        return space(Linear(torch.as_tensor(self.matrix), index), self.std, self.grid)

    def kalman(self) -> tuple[np.ndarray, np.ndarray]:
        """Kalman filter analysis mean and covariance."""
        h, r = self.matrix, np.diag(self.std**2)
        gain = self.cov @ h.T @ np.linalg.inv(h @ self.cov @ h.T + r)
        return self.mean + gain @ (self.y - h @ self.mean), (np.eye(self.mean.size) - gain @ h) @ self.cov


def linear_problem(shape: tuple[int, ...] = (5,), p: int = 3, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    root = rng.standard_normal((d, d))
    grid = Grid(tuple(np.arange(n, dtype=np.float64) for n in shape), tuple(float(n) for n in shape))
    return Problem(
        mean=rng.standard_normal(d),
        cov=root @ root.T / d + 0.5 * np.eye(d),
        matrix=rng.standard_normal((p, d)),
        std=rng.uniform(0.5, 1.5, p),
        y=rng.standard_normal(p),
        grid=grid,
    )


def moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    flat = flatten_members(x).double().cpu().numpy()
    return flat.mean(axis=0), np.cov(flat, rowvar=False)


def unpack(result):
    """The analysis ensemble and the diagnostics of an :class:`~enff.filters.Analysis`."""
    return result.ensemble, result.diagnostics


def run(filt, forecast: np.ndarray, problem: Problem, seed: int = 1, dtype=torch.float64, device="cpu"):
    """The analysis ensemble of ``filt`` for the problem's observations (:func:`run_with_diagnostics`)."""
    return run_with_diagnostics(filt, forecast, problem, seed, dtype, device).ensemble


def run_with_diagnostics(filt, forecast: np.ndarray, problem: Problem, seed: int = 1, dtype=torch.float64,
                         device="cpu"):
    x = torch.as_tensor(forecast, dtype=dtype, device=device).reshape(-1, *problem.grid.shape)
    gen = torch.Generator(device=device).manual_seed(seed)
    y = torch.as_tensor(problem.y, dtype=dtype, device=device)
    return filt.analysis(x, y, problem.obs, generator=gen)


# ---------------------------------------------------------------- linear-Gaussian: Kalman filter truth


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("shape", [(5,), (2, 3)])
@pytest.mark.parametrize("filt", [ETKF(), LETKF(radius=math.inf)], ids=["etkf", "letkf-inf"])
def test_square_root_filters_equal_kalman_filter(filt, shape, dtype, tol, device):
    problem = linear_problem(shape)
    forecast = exact_ensemble(problem.mean, problem.cov, n=12, seed=3)
    mean, cov = moments(run(filt, forecast, problem, dtype=dtype, device=device))
    kf_mean, kf_cov = problem.kalman()
    np.testing.assert_allclose(mean, kf_mean, atol=tol, rtol=tol)
    np.testing.assert_allclose(cov, kf_cov, atol=tol, rtol=tol)


def test_stochastic_enkf_converges_to_kalman_filter():
    problem = linear_problem((3,), p=2)
    kf_mean, kf_cov = problem.kalman()
    errors = []
    for n in (40, 4000):
        mean, cov = moments(run(EnKF(), exact_ensemble(problem.mean, problem.cov, n, seed=5), problem))
        # centred perturbations: the mean update is the Kalman update of the sample statistics
        np.testing.assert_allclose(mean, kf_mean, atol=1e-10)
        errors.append(np.linalg.norm(cov - kf_cov) / np.linalg.norm(kf_cov))
    assert errors[1] < 0.05
    assert errors[1] < errors[0] / 3


def test_localized_enkf_with_huge_radius_matches_global():
    # p > N: the global update runs in ensemble space, the localized one in observation space
    problem = linear_problem((6,), p=4)
    forecast = np.random.default_rng(2).standard_normal((3, 6))
    np.testing.assert_allclose(
        run(EnKF(radius=1e6), forecast, problem).numpy(), run(EnKF(), forecast, problem).numpy(), atol=1e-8
    )


def test_particle_weights_converge_to_kalman_filter():
    problem = linear_problem((2,), p=2)
    kf_mean, kf_cov = problem.kalman()
    errors = []
    for n, seed in ((300, 11), (300_000, 12)):
        x = torch.as_tensor(np.random.default_rng(seed).multivariate_normal(problem.mean, problem.cov, n))
        w = log_weights(observe(x, torch.as_tensor(problem.y), problem.obs)).exp().numpy()
        mean = w @ x.numpy()
        cov = (x.numpy() - mean).T @ ((x.numpy() - mean) * w[:, None])
        errors.append(np.linalg.norm(mean - kf_mean) + np.linalg.norm(cov - kf_cov))
    assert errors[1] < 0.02
    assert errors[1] < errors[0] / 5


@pytest.mark.parametrize("tempering", [0.0, 0.5])
def test_particle_filter_resampled_mean_and_ess(tempering):
    problem = linear_problem((2,), p=2)
    kf_mean, _ = problem.kalman()
    forecast = np.random.default_rng(4).multivariate_normal(problem.mean, problem.cov, 100_000)
    analysis, diagnostics = unpack(run_with_diagnostics(BootstrapPF(tempering=tempering), forecast, problem))
    mean, _ = moments(analysis)
    np.testing.assert_allclose(mean, kf_mean, atol=0.03)
    assert 1.0 <= diagnostics["ess"] <= 100_000
    # resampling copies members only
    assert set(map(tuple, analysis.numpy().round(12))) <= set(map(tuple, forecast.round(12)))


def test_systematic_resampling_counts_are_floor_or_ceil():
    n = 50
    for seed in range(20):
        w = torch.distributions.Dirichlet(torch.full((n,), 0.3, dtype=torch.float64)).sample()
        w[::7] = 0.0
        w /= w.sum()
        index = systematic_resample(w.log(), torch.Generator().manual_seed(seed))
        counts = torch.bincount(index, minlength=n).numpy()
        expected = n * w.numpy()
        assert counts.sum() == n
        assert np.all((counts >= np.floor(expected - 1e-9)) & (counts <= np.ceil(expected + 1e-9)))
        assert np.all(counts[::7] == 0)


def test_ess_of_uninformative_and_degenerate_weights():
    assert effective_sample_size(torch.full((8,), -math.log(8.0))) == pytest.approx(8.0)
    assert effective_sample_size(torch.tensor([0.0, -1e30, -1e30])) == pytest.approx(1.0)


def test_tempered_regularized_particle_filter_approaches_kalman():
    problem = linear_problem((2,), p=2)
    kf_mean, kf_cov = problem.kalman()
    forecast = np.random.default_rng(5).multivariate_normal(problem.mean, problem.cov, 50_000)
    analysis, diagnostics = unpack(run_with_diagnostics(BootstrapPF(tempering=0.9, regularization=0.5), forecast,
                                                         problem))
    mean, cov = moments(analysis)
    assert diagnostics["stages"] > 1
    np.testing.assert_allclose(mean, kf_mean, atol=0.03)
    np.testing.assert_allclose(cov, kf_cov, atol=0.05 * np.abs(kf_cov).max())


def test_tempering_step_hits_the_target_ess():
    loglik = -0.5 * torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64).square() * 40
    step = tempering_step(loglik, 1.0, 250.0)
    assert 0 < step < 1
    scaled = step * loglik
    assert effective_sample_size(scaled - torch.logsumexp(scaled, 0)) == pytest.approx(250.0, rel=1e-6)
    assert tempering_step(loglik * 1e-9, 0.7, 250.0) == 0.7  # weak likelihood: one stage takes the rest


def test_regularization_noise_has_the_weighted_covariance():
    rng = np.random.default_rng(6)
    members = rng.standard_normal((30, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]])
    w = rng.dirichlet(np.ones(30))
    noise = regularization_noise(
        torch.as_tensor(members), torch.as_tensor(np.log(w)), 400_000, torch.Generator().manual_seed(1)
    ).numpy()
    expected = np.cov(members, rowvar=False, aweights=w, ddof=1)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(np.cov(noise, rowvar=False), expected, atol=0.02 * np.abs(expected).max())


@pytest.mark.parametrize("p, n", [(7, 20), (15, 20), (3, 5)])
def test_observation_and_member_space_square_roots_agree(p, n):
    gen = torch.Generator().manual_seed(p)
    s = torch.randn(50, p, n, generator=gen, dtype=torch.float64)
    s = s - s.mean(-1, keepdim=True)
    dy = torch.randn(50, p, generator=gen, dtype=torch.float64)
    w = torch.rand(50, p, generator=gen, dtype=torch.float64)
    w[:, -1] = 0.0  # padding
    x = torch.randn(50, n, 3, generator=gen, dtype=torch.float64)
    x = x - x.mean(-2, keepdim=True)
    for observation_space, member_space in zip(_observation_space_update(s, dy, x, w), _member_space_update(s, dy, x, w)):
        torch.testing.assert_close(observation_space, member_space, rtol=0, atol=1e-12)
    precision = (n - 1) * torch.eye(n, dtype=torch.float64) + s.transpose(-1, -2) @ (w.unsqueeze(-1) * s)
    mean_weights = torch.linalg.solve(precision, (s.transpose(-1, -2) @ (w * dy).unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(_member_space_update(s, dy, x, w)[1], mean_weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shrink, factor", [(False, 1.0 + 0.6**2), (True, 1.0)])
def test_regularization_kernel_inflates_covariance_unless_shrunk(shrink, factor):
    # uninformative likelihood: every member is kept once, so the analysis is the kernel-smoothed forecast;
    # the plain kernel multiplies the covariance by 1 + width^2, the shrunk kernel keeps mean and covariance
    problem = linear_problem((2,), p=1)
    problem.std[:] = 1e6
    forecast = np.random.default_rng(7).multivariate_normal([1.0, -2.0], [[2.0, 0.6], [0.6, 1.0]], 100_000)
    n, d = forecast.shape
    regularization = 0.6 / n ** (-1.0 / (d + 4))  # kernel width 0.6
    mean, cov = moments(run(BootstrapPF(regularization=regularization, shrink=shrink), forecast, problem))
    np.testing.assert_allclose(mean, forecast.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(cov, factor * np.cov(forecast, rowvar=False), rtol=0.03, atol=0.02)


def test_duplicates_only_perturbation_keeps_single_survivors_exact():
    problem = linear_problem((2,), p=2)
    forecast = np.random.default_rng(8).multivariate_normal(problem.mean, problem.cov, 2_000)
    for perturb, exact_share in (("duplicates", 0.05), ("all", 0.0)):
        analysis = run(BootstrapPF(regularization=1.0, jitter=0.1, perturb=perturb), forecast, problem).numpy()
        exact = np.isclose(analysis[:, None, :], forecast[None], rtol=0, atol=1e-12).all(-1).any(-1)
        if perturb == "all":
            assert not exact.any()
        else:  # the members drawn once survive unchanged, every copy of a duplicate moves
            assert exact.mean() > exact_share and not exact.all()
            assert len(np.unique(analysis.round(12), axis=0)) == len(analysis)


def test_duplicated_marks_every_copy():
    index = torch.tensor([0, 2, 2, 3, 5, 5, 5, 7])
    assert duplicated(index).tolist() == [False, True, True, False, True, True, True, False]
    assert duplicated(torch.tensor([4, 4])).tolist() == [True, True]


def test_particle_jitter_adds_requested_spread():
    problem = linear_problem((3,), p=1)
    problem.std[:] = 1e6  # uninformative: resampling keeps every member once
    forecast = np.zeros((20_000, 3))
    _, cov = moments(run(BootstrapPF(jitter=0.5), forecast, problem))
    np.testing.assert_allclose(np.diag(cov), 0.25, rtol=0.05)


# ---------------------------------------------------------------- explicit formulas


def reference_etkf(forecast: np.ndarray, hx: np.ndarray, y: np.ndarray, rinv: np.ndarray) -> np.ndarray:
    """Hunt et al. (2007) ETKF written with dense matrices and scipy's matrix square root."""
    n = forecast.shape[0]
    xm, ym = forecast.mean(0), hx.mean(0)
    xa, ya = forecast - xm, hx - ym
    pa = np.linalg.inv((n - 1) * np.eye(n) + ya @ rinv @ ya.T)
    w = scipy.linalg.sqrtm((n - 1) * pa).real + (pa @ ya @ rinv @ (y - ym))[:, None]
    return xm + w.T @ xa


def test_etkf_with_nonlinear_operator_matches_dense_formula():
    d, n = 6, 8
    rng = np.random.default_rng(7)
    forecast = rng.standard_normal((n, d)) * 2
    y, std = rng.standard_normal(d), rng.uniform(0.3, 1.0, d)
    obs = space(ATan(), std, ring(d))
    out = ETKF().analysis(torch.as_tensor(forecast), torch.as_tensor(y), obs, generator=torch.Generator()).ensemble
    expected = reference_etkf(forecast, np.arctan(forecast), y, np.diag(std**-2.0))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-10)


def test_letkf_matches_pointwise_reference():
    d, n, radius = 12, 6, 1.7
    rng = np.random.default_rng(8)
    forecast = rng.standard_normal((n, d))
    index = np.arange(0, d, 2)
    y, std = rng.standard_normal(index.size), rng.uniform(0.5, 1.0, index.size)
    obs = space(Select(index), std, ring(d))
    out = LETKF(radius=radius).analysis(torch.as_tensor(forecast), torch.as_tensor(y), obs, generator=torch.Generator()).ensemble
    expected = forecast.copy()
    for i in range(d):
        dist = np.abs(index - i)
        taper = gaspari_cohn(np.minimum(dist, d - dist), radius)
        if taper.any():
            expected[:, i] = reference_etkf(forecast, forecast[:, index], y, np.diag(taper / std**2))[:, i]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-10)


def test_letkf_chunking_does_not_change_the_analysis(monkeypatch):
    import enff.filters.letkf as letkf_module

    problem = linear_problem((30,), p=30)
    problem.matrix = np.eye(30)
    forecast = np.random.default_rng(6).standard_normal((8, 30))
    whole = run(LETKF(radius=3.0), forecast, problem)
    monkeypatch.setattr(letkf_module, "CHUNK_ELEMENTS", 100)  # 100 // (11 local obs * 8 members) = 1 element per chunk
    torch.testing.assert_close(run(LETKF(radius=3.0), forecast, problem), whole, rtol=0, atol=1e-12)


def test_letkf_with_huge_radius_matches_etkf():
    problem = linear_problem((7,), p=7)
    problem.matrix = np.eye(7)
    forecast = exact_ensemble(problem.mean, problem.cov, n=10, seed=9)
    np.testing.assert_allclose(
        run(LETKF(radius=1e5), forecast, problem).numpy(), run(ETKF(), forecast, problem).numpy(), atol=1e-6
    )


def test_gaspari_cohn_values():
    r = np.array([0.0, 1.0, 2.0, 3.0, 0.999999, 1.000001])
    g = gaspari_cohn(r, 1.0)
    np.testing.assert_allclose(g[:4], [1.0, 5.0 / 24.0, 0.0, 0.0], atol=1e-14)
    assert abs(g[4] - g[5]) < 1e-5
    assert np.all(np.diff(gaspari_cohn(np.linspace(0, 2, 101), 1.0)) <= 0)


def test_letkf_uses_periodic_two_dimensional_distances():
    shape, radius = (8, 8), 0.75
    grid = Grid((np.arange(8.0), np.arange(8.0)), (8.0, 8.0))
    obs = ObservationSpace(Select(np.array([0])), torch.tensor([0.5], dtype=torch.float64), grid, shape)
    forecast = torch.as_tensor(np.random.default_rng(10).standard_normal((6, *shape)))
    out = LETKF(radius=radius).analysis(forecast, torch.tensor([3.0], dtype=torch.float64), obs, generator=torch.Generator()).ensemble
    changed = (out - forecast).abs().amax(dim=0) > 1e-12
    for point in [(0, 0), (7, 7), (0, 7), (1, 0), (1, 1)]:  # across both periodic boundaries
        assert changed[point], point
    for point in [(0, 2), (4, 4), (2, 7)]:  # (0, 2) is 2 steps away in the flattened index but 2.0 > 2 * radius
        assert not changed[point], point
    local = local_observations(obs, radius)
    corner = int(np.nonzero(local.active == 63)[0][0])
    assert local.weight[corner].max() == pytest.approx(gaspari_cohn(np.sqrt(2.0), radius))
    assert local_observations(obs, radius) is local  # cached, not rebuilt


# ---------------------------------------------------------------- symmetries, masking, inflation


def test_deterministic_filters_are_permutation_equivariant():
    problem = linear_problem((8,), p=8)
    problem.matrix = np.eye(8)
    forecast = exact_ensemble(problem.mean, problem.cov, n=10, seed=12)
    perm = np.random.default_rng(0).permutation(10)
    for filt in (ETKF(inflation=1.1), LETKF(radius=2.0, rtps=0.5)):
        np.testing.assert_allclose(run(filt, forecast[perm], problem).numpy(), run(filt, forecast, problem).numpy()[perm], atol=1e-12)


def test_stochastic_filters_are_permutation_invariant_in_distribution():
    problem = linear_problem((3,), p=2)
    forecast = exact_ensemble(problem.mean, problem.cov, n=3000, seed=13)
    perm = np.random.default_rng(1).permutation(3000)
    for filt in (EnKF(), BootstrapPF()):
        a, b = moments(run(filt, forecast, problem)), moments(run(filt, forecast[perm], problem))
        np.testing.assert_allclose(a[0], b[0], atol=0.05)
        np.testing.assert_allclose(a[1], b[1], atol=0.1)
    w = log_weights(observe(torch.as_tensor(forecast), torch.as_tensor(problem.y), problem.obs))
    w_perm = log_weights(observe(torch.as_tensor(forecast[perm]), torch.as_tensor(problem.y), problem.obs))
    torch.testing.assert_close(w_perm, w[perm])


@pytest.mark.parametrize("name, hyper", [("etkf", {}), ("enkf", {}), ("enkf", {"radius": 2.0}), ("letkf", {"radius": 2.0}), ("bpf", {"jitter": 0.1})])
def test_masked_observations_have_no_influence(name, hyper):
    d, n = 10, 8
    grid = ring(d)
    forecast = torch.as_tensor(np.random.default_rng(14).standard_normal((n, d)))
    y = torch.as_tensor(np.random.default_rng(15).standard_normal(d))
    std = np.full(d, 0.7)
    masked = y.clone()
    masked[[1, 4, 5]] = float("nan")
    keep = np.array([0, 2, 3, 6, 7, 8, 9])
    filt = get_filter(name, **hyper)
    out = filt.analysis(forecast, masked, space(ATan(), std, grid), generator=torch.Generator().manual_seed(2)).ensemble
    reference = filt.analysis(
        forecast, y[keep], space(ATan() | Select(keep), std[keep], grid), generator=torch.Generator().manual_seed(2)
    ).ensemble
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)


def test_all_observations_masked_returns_forecast():
    forecast = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    obs = space(ATan(), np.ones(4), ring(4))
    y = torch.full((4,), float("nan"), dtype=torch.float64)
    for filt in (ETKF(), EnKF(), LETKF(radius=1.0), BootstrapPF(jitter=1.0)):
        out, diagnostics = unpack(filt.analysis(forecast, y, obs, generator=torch.Generator()))
        torch.testing.assert_close(out, forecast)
    assert diagnostics == {"ess": 5.0, "stages": 0.0}


def test_multiplicative_inflation_formula():
    x = torch.randn(7, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = multiplicative_inflation(x, 1.3).numpy()
    xn = x.numpy()
    np.testing.assert_allclose(out, xn.mean(0) + 1.3 * (xn - xn.mean(0)), atol=1e-14)
    np.testing.assert_allclose(out.std(0, ddof=1), 1.3 * xn.std(0, ddof=1), rtol=1e-12)


def test_rtps_formula():
    gen = torch.Generator().manual_seed(1)
    forecast = 2.0 * torch.randn(9, 5, generator=gen, dtype=torch.float64)
    analysis = 0.5 * torch.randn(9, 5, generator=gen, dtype=torch.float64) + 1.0
    analysis[:, 0] = 3.0  # zero analysis spread: left unchanged
    out = rtps(forecast, analysis, 0.6).numpy()
    f, a = forecast.numpy(), analysis.numpy()
    sf, sa = f.std(0, ddof=1), a.std(0, ddof=1)
    np.testing.assert_allclose(out.mean(0), a.mean(0), atol=1e-13)
    np.testing.assert_allclose(out.std(0, ddof=1)[1:], (0.6 * sf + 0.4 * sa)[1:], rtol=1e-12)
    np.testing.assert_allclose(out[:, 0], 3.0)


def test_filters_apply_inflation_before_update():
    problem = linear_problem((4,), p=2)
    forecast = exact_ensemble(problem.mean, problem.cov, n=9, seed=16)
    inflated = problem.mean + 1.2 * (forecast - problem.mean)
    np.testing.assert_allclose(
        run(ETKF(inflation=1.2), forecast, problem).numpy(), run(ETKF(), inflated, problem).numpy(), atol=1e-12
    )


@pytest.mark.parametrize(
    "name, hyper, field",
    [
        ("etkf", {"inflation": 0.0}, "inflation"),
        ("enkf", {"rtps": 1.5}, "rtps"),
        ("enkf", {"radius": -1.0}, "radius"),
        ("letkf", {}, "radius"),
        ("bpf", {"jitter": -0.1}, "jitter"),
        ("bpf", {"regularization": float("nan")}, "regularization"),
        ("bpf", {"tempering": 1.0}, "tempering"),
        ("bpf", {"perturb": "some"}, "perturb"),
    ],
)
def test_invalid_hyper_parameters_name_the_field(name, hyper, field):
    with pytest.raises(ValueError, match=field):
        get_filter(name, **hyper)


def test_forecast_shape_is_checked():
    obs = space(ATan(), np.ones(4), ring(4))
    with pytest.raises(ValueError, match="forecast must have shape"):
        ETKF().analysis(torch.zeros(5, 3, dtype=torch.float64), torch.zeros(4), obs, generator=torch.Generator())


def test_localized_enkf_refuses_dense_tapers_that_do_not_fit(monkeypatch):
    from enff.filters import localization

    monkeypatch.setattr(localization, "MAX_DENSE_TAPER_BYTES", 1024)
    obs = ring_space(64)
    forecast = torch.randn(8, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="dense tapers of .* use the letkf filter"):
        EnKF(radius=4.0).analysis(forecast, torch.zeros(64, dtype=torch.float64), obs,
                                  generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- adaptive observation error inflation


@pytest.mark.parametrize("threshold", [1.0, 3.0])
@pytest.mark.parametrize("name, hyper", [("etkf", {}), ("letkf", {"radius": math.inf})])
def test_adaptive_obs_error_is_the_kalman_filter_with_the_inflated_error(name, hyper, threshold):
    filt = get_filter(name, adaptive_obs_error=threshold, **hyper)
    problem = linear_problem((5,), p=3, seed=4)
    forecast = exact_ensemble(problem.mean, problem.cov, n=12, seed=3)
    prior_var = np.einsum("pi,ij,pj->p", problem.matrix, problem.cov, problem.matrix)
    problem.y = problem.matrix @ problem.mean + np.array([30.0, -0.1, 12.0]) * np.sqrt(prior_var + problem.std**2)
    innovation = problem.y - problem.matrix @ problem.mean
    inflated = dataclass_replace(problem, std=np.sqrt(np.maximum(problem.std**2,
                                                                 innovation**2 / threshold**2 - prior_var)))
    assert np.all(inflated.std[[0, 2]] > 5 * problem.std[[0, 2]])
    assert inflated.std[1] == pytest.approx(problem.std[1])
    analysis, diagnostics = unpack(run_with_diagnostics(filt, forecast, problem))
    mean, cov = moments(analysis)
    kf_mean, kf_cov = inflated.kalman()
    np.testing.assert_allclose(mean, kf_mean, atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(cov, kf_cov, atol=1e-10, rtol=1e-10)
    assert diagnostics == {"inflated_obs": pytest.approx(2 / 3)}
    assert filt.diagnostic_names == ("inflated_obs",) and ETKF().diagnostic_names == ()


def test_adaptive_obs_error_bounds_the_increment_of_a_confident_wrong_ensemble():
    # arctan observations, ensemble tightly around -5 while the truth is +5 (innovation of 55 error stds):
    # the plain ETKF trusts the ensemble's linearisation of arctan and jumps by more than 10 prior spreads
    # in one step; AOEI moves the mean towards the observation by less than one spread.
    rng = np.random.default_rng(2)
    forecast = -5.0 + 0.5 * rng.standard_normal((20, 1))
    obs = space(ATan(), np.array([0.05]), ring(1))
    y = torch.tensor([math.atan(5.0)], dtype=torch.float64)
    x = torch.as_tensor(forecast)
    plain = ETKF().analysis(x, y, obs, generator=torch.Generator()).ensemble
    adaptive = ETKF(adaptive_obs_error=1.0).analysis(x, y, obs, generator=torch.Generator()).ensemble
    spread = float(x.std())
    assert float(plain.mean() - x.mean()) > 10 * spread
    assert 0 < float(adaptive.mean() - x.mean()) < spread


def test_adaptive_obs_error_rejects_bad_thresholds():
    for bad in ("yes", True, -1.0, math.inf):
        with pytest.raises(ValueError, match="adaptive_obs_error must be a threshold >= 0"):
            ETKF(adaptive_obs_error=bad)
    for particle in ("bpf", "lpf"):  # the particle filters weigh members by the stated error: not one of their keys
        with pytest.raises(ValueError, match="unknown key.* adaptive_obs_error"):
            get_filter(particle, radius=2.0, adaptive_obs_error=1.0)


# ---------------------------------------------------------------- LETKF line search on the local cost


def test_letkf_line_search_matches_a_direct_minimization_of_the_local_cost():
    # arctan observations (std 0.05) of a ring of 6; at element 2 the ensemble is sure of -5 (spread 1) while
    # the truth is +5: the plain LETKF jumps to about +9. Reference: for every element the dense ETKF weights with its Gaspari-Cohn tapers, the local cost
    # J(a) = (N-1)/2 a^2 |wbar|^2 + 1/2 sum_j taper_j ((y_j - atan(xbar_j + a X'_j wbar)) / s_j)^2 minimized
    # over the candidate steps with numpy, the spread update left as the plain LETKF's.
    from enff.filters.step_length import STEP_HALVINGS

    d, n, radius = 6, 10, 2.0
    rng = np.random.default_rng(11)
    truth = rng.uniform(-1.0, 1.0, d)
    truth[2] = 5.0
    forecast = truth + 0.3 * rng.standard_normal((n, d))
    forecast[:, 2] = -5.0 + rng.standard_normal(n)
    std = np.full(d, 0.05)
    y = np.arctan(truth) + std * rng.standard_normal(d)
    obs = space(ATan(), std, ring(d))
    x, yt = torch.as_tensor(forecast), torch.as_tensor(y)
    out, diagnostics = unpack(LETKF(radius=radius, line_search=True).analysis(x, yt, obs, generator=torch.Generator()))
    plain = LETKF(radius=radius).analysis(x, yt, obs, generator=torch.Generator()).ensemble.numpy()

    steps = np.array([2.0**-k for k in range(STEP_HALVINGS + 1)] + [0.0])
    xm = forecast.mean(0)
    xa = forecast - xm
    hx = np.arctan(forecast)
    ya = hx - hx.mean(0)
    expected_mean, chosen = np.empty(d), np.empty(d)
    for i in range(d):
        dist = np.abs(np.arange(d) - i)
        taper = gaspari_cohn(np.minimum(dist, d - dist), radius)
        rinv = np.diag(taper / std**2)
        wbar = np.linalg.solve((n - 1) * np.eye(n) + ya @ rinv @ ya.T, ya @ rinv @ (y - hx.mean(0)))
        cost = [0.5 * (n - 1) * a**2 * wbar @ wbar
                + 0.5 * np.sum(taper * ((y - np.arctan(xm + a * (wbar @ xa))) / std) ** 2) for a in steps]
        chosen[i] = steps[int(np.argmin(cost))]
        expected_mean[i] = xm[i] + chosen[i] * (wbar @ xa[:, i])
    assert chosen[2] < 1  # the full linearized step overshoots at the wrong-sign element
    assert abs(plain.mean(0)[2] - xm[2]) > abs(expected_mean[2] - xm[2])
    np.testing.assert_allclose(out.numpy().mean(0), expected_mean, atol=1e-10)
    np.testing.assert_allclose(out.numpy() - out.numpy().mean(0), plain - plain.mean(0), atol=1e-10)
    assert diagnostics == {"shortened_steps": pytest.approx(np.mean(chosen < 1))}


def test_letkf_line_search_leaves_linear_observations_unchanged():
    d, n, radius = 12, 6, 1.7
    rng = np.random.default_rng(8)
    forecast = torch.as_tensor(3.0 * rng.standard_normal((n, d)))
    index = np.arange(0, d, 2)
    y, std = torch.as_tensor(rng.standard_normal(index.size)), rng.uniform(0.1, 1.0, index.size)
    obs = space(Select(index), std, ring(d))
    searched, diagnostics = unpack(LETKF(radius=radius, line_search=True).analysis(forecast, y, obs,
                                                                                  generator=torch.Generator()))
    plain = LETKF(radius=radius).analysis(forecast, y, obs, generator=torch.Generator()).ensemble
    torch.testing.assert_close(searched, plain, rtol=0, atol=1e-12)
    assert diagnostics == {"shortened_steps": 0.0}
    assert LETKF(radius=1.0, line_search=True).diagnostic_names == ("shortened_steps",)


def test_letkf_line_search_rejects_bad_settings():
    with pytest.raises(ValueError, match="line_search must be true or false"):
        LETKF(radius=1.0, line_search="yes")
    with pytest.raises(ValueError, match="line_search needs a finite radius"):
        LETKF(radius=math.inf, line_search=True)
    problem = linear_problem((5,), p=3)
    with pytest.raises(ValueError, match="line_search needs an observation operator"):
        run(LETKF(radius=2.0, line_search=True), np.random.default_rng(0).standard_normal((6, 5)), problem)
