"""Checks every registered filter (``enff.filters.FILTERS``) must pass, run once per filter.

- Masked (non-finite) observations have no influence: the analysis equals that of the problem without them.
- Permuting the forecast members permutes the analysis (or leaves it unchanged, for filters whose
  particles are fresh draws); filters that tie random draws to member positions are declared below.
- float32 and float64 on the CPU and on CUDA (when available) give finite analyses of the forecast's
  shape, dtype and device, reporting every diagnostic the filter declares.
- The Kalman-type filters reproduce the exact Kalman filter on a linear-Gaussian problem.
- The analysis leaves the forecast as it was and shares no memory with it (at inflation 1 the template hands
  the forecast itself to the update, with every observation missing it returns a copy).

A filter registered later is checked too: give it settings in ``SETTINGS`` if it needs any, and declare it
in ``PERMUTATION`` if it is not permutation-equivariant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enff.filters import FILTERS, get_filter
from enff.observations.operators import ATan, Indices

from helpers import DEVICES, DTYPES, analysed, generator, ring_space

#: Hyper-parameters each filter is built with here (small and fast); filters not named use their defaults.
SETTINGS: dict[str, dict[str, object]] = {
    "letkf": {"radius": 2.0},
    "lenff-ot": {"radius": 2.0, "steps": 10},
    "lenff-f2p": {"radius": 2.0, "steps": 10},
    "lensf": {"radius": 2.0, "steps": 20},
    "lpf": {"radius": 2.0},
    "lenff-tempered": {"radius": 2.0, "steps": 3},
    "enff-ot": {"steps": 10},
    "enff-f2p": {"steps": 10},
    "ensf": {"steps": 20},
}

#: Filters these checks cannot build, with the reason and where they are tested instead.
NOT_BUILT: dict[str, str] = {
    "learned": "needs a trained posterior file; tests/test_learned_analysis.py checks it",
}

#: "invariant": the particles are fresh draws from the source and the ensemble enters only through sums over
#: members, so a permutation of the forecast leaves the analysis unchanged. Any other entry is the reason a
#: filter is not permutation-symmetric (its random draws are tied to member positions; only its distribution
#: is symmetric). Filters not named are permutation-equivariant.
PERMUTATION: dict[str, str] = {
    "enff-ot": "invariant",
    "lenff-ot": "invariant",
    "enkf": "the observation perturbations are drawn in member order",
    "bpf": "systematic resampling walks the members in order with one uniform draw",
    "lpf": "the local resampling walks the members in order",
    "enff-f2p": "particle i starts at member i plus source noise drawn in member order",
    "lenff-f2p": "particle i starts at member i plus source noise drawn in member order",
    "ensf": "particle i starts from member i's t = 1 marginal (noise in member order) and follows member i's score",
    "lensf": "particle i starts from member i's t = 1 marginal, with noise drawn in member order",
}

D, N = 8, 12  # state dimension (a ring) and ensemble size of the small problems


def _names() -> list:
    """Every filter the package registers (test modules may register stand-ins of their own: not these)."""
    shipped = [name for name in FILTERS.names() if FILTERS[name].__module__.startswith("enff.")]
    return [pytest.param(name, marks=pytest.mark.skip(reason=NOT_BUILT[name])) if name in NOT_BUILT else name
            for name in shipped]


def _build(name: str):
    return get_filter(name, **SETTINGS.get(name, {}))


def _forecast(dtype: torch.dtype = torch.float64, device: str = "cpu") -> torch.Tensor:
    """``(N, D)`` members around 2 with unit spread (away from arctan's linear range)."""
    return (2.0 + torch.randn(N, D, generator=generator(1), dtype=torch.float64)).to(dtype=dtype, device=device)


def _observations(dtype: torch.dtype = torch.float64, device: str = "cpu") -> torch.Tensor:
    """Arctan observations of every ring element, ``(D,)``."""
    return torch.atan(2.0 + torch.randn(D, generator=generator(2), dtype=torch.float64)).to(dtype=dtype, device=device)


@pytest.mark.parametrize("name", _names())
def test_masked_observations_have_no_influence(name):
    filt, forecast, y = _build(name), _forecast(), _observations()
    keep = np.array([0, 1, 3, 4, 6])
    masked = y.clone()
    masked[[2, 5, 7]] = float("nan")
    out = analysed(filt, forecast, masked, ring_space(D, ATan(), 0.3), seed=3, previous=forecast)
    reference = analysed(filt, forecast, y[keep], ring_space(D, ATan() | Indices(keep), 0.3), seed=3,
                         previous=forecast)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("missing", [False, True], ids=["observed", "all-missing"])
@pytest.mark.parametrize("name", _names())
def test_analysis_leaves_forecast_alone(name, missing):
    filt, forecast, y = _build(name), _forecast(), _observations()
    if missing:
        y = torch.full_like(y, float("nan"))
    before = forecast.clone()
    out = analysed(filt, forecast, y, ring_space(D, ATan(), 0.3), seed=3, previous=forecast)
    torch.testing.assert_close(forecast, before, rtol=0, atol=0)
    out.add_(1.0)  # an analysis written into afterwards must not change the forecast either
    torch.testing.assert_close(forecast, before, rtol=0, atol=0)


def _permutation_params() -> list:
    params = []
    for param in _names():
        name = param if isinstance(param, str) else param.values[0]
        kind = PERMUTATION.get(name, "equivariant")
        if kind not in ("equivariant", "invariant"):
            param = pytest.param(name, marks=pytest.mark.xfail(reason=kind, raises=AssertionError, strict=True))
        params.append(param)
    return params


@pytest.mark.parametrize("name", _permutation_params())
def test_member_permutation(name):
    filt, forecast, y, obs = _build(name), _forecast(), _observations(), ring_space(D, ATan(), 0.3)
    perm = torch.randperm(N, generator=generator(4))
    out = analysed(filt, forecast, y, obs, seed=5, previous=forecast)
    permuted = analysed(filt, forecast[perm], y, obs, seed=5, previous=forecast[perm])
    expected = out if PERMUTATION.get(name) == "invariant" else out[perm]
    torch.testing.assert_close(permuted, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", _names())
def test_dtype_and_device(name, dtype, device):
    """Finite analyses of the forecast's shape, dtype and device, with every declared diagnostic, finite."""
    filt, forecast = _build(name), _forecast(dtype, device)
    result = filt.analysis(forecast, _observations(dtype, device), ring_space(D, ATan(), 0.3), previous=forecast,
                           generator=generator(6, device))
    out = result.ensemble
    assert out.shape == forecast.shape and out.dtype == dtype and out.device == forecast.device
    assert torch.isfinite(out).all()
    assert sorted(result.diagnostics) == sorted(filt.diagnostic_names)
    assert all(math.isfinite(value) for value in result.diagnostics.values())


# ------------------------------------------------------------------------------------------------
# Kalman-type filters on a linear-Gaussian problem
# ------------------------------------------------------------------------------------------------

#: Filters whose analysis mean and covariance are the Kalman filter's for the forecast's sample mean and
#: covariance, exactly (deterministic square root; the LETKF with an infinite radius is the ETKF).
KALMAN_EXACT: dict[str, dict[str, object]] = {"etkf": {}, "letkf": {"radius": math.inf},
                                              "lenff-tempered": {"radius": math.inf, "steps": 4}}


def _kalman(mean: np.ndarray, cov: np.ndarray, index: np.ndarray, std: np.ndarray, y: np.ndarray):
    """Kalman analysis mean and covariance for observations ``y = x[index] + N(0, diag(std^2))``."""
    h = np.eye(mean.size)[index]
    gain = cov @ h.T @ np.linalg.inv(h @ cov @ h.T + np.diag(std**2))
    return mean + gain @ (y - h @ mean), (np.eye(mean.size) - gain @ h) @ cov


def _linear_problem(n: int):
    rng = np.random.default_rng(8)
    root = rng.standard_normal((6, 6))
    forecast = rng.standard_normal(6) + rng.standard_normal((n, 6)) @ (root / 2 + np.eye(6)).T
    index, std = np.array([0, 2, 3, 5]), np.array([0.5, 1.0, 0.8, 1.5])
    y = rng.standard_normal(4)
    obs = ring_space(6, Indices(index), std)
    mean, cov = forecast.mean(axis=0), np.cov(forecast, rowvar=False)
    return torch.as_tensor(forecast), torch.as_tensor(y), obs, _kalman(mean, cov, index, std, y), (mean, cov)


@pytest.mark.parametrize("name", sorted(KALMAN_EXACT))
def test_kalman_type_filters_match_the_kalman_filter(name):
    forecast, y, obs, (mean, cov), _ = _linear_problem(n=10)
    out = analysed(get_filter(name, **KALMAN_EXACT[name]), forecast, y, obs).numpy()
    np.testing.assert_allclose(out.mean(axis=0), mean, atol=1e-10)
    np.testing.assert_allclose(np.cov(out, rowvar=False), cov, atol=1e-10)


def test_enkf_matches_the_kalman_filter_in_the_large_ensemble_limit():
    """Perturbed observations: the Kalman moments up to sampling error (4000 members, about 0.02 here)."""
    forecast, y, obs, (mean, cov), (prior_mean, _) = _linear_problem(n=4000)
    out = analysed(get_filter("enkf"), forecast, y, obs).numpy()
    assert np.abs(mean - prior_mean).max() > 0.3  # the update is far larger than the tolerance
    np.testing.assert_allclose(out.mean(axis=0), mean, atol=0.06)
    np.testing.assert_allclose(np.cov(out, rowvar=False), cov, atol=0.06)
