"""The LETKF's numba kernel (CPU) against the batched torch path and against a dense per-element reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enff.filters import ETKF
from enff.filters.ensemble_space import ObservedEnsemble, observe
from enff.filters.letkf import letkf_update
from enff.filters.localization import LocalObservations, gaspari_cohn, local_domains, local_observations, taper_pairs
from enff.models.base import Grid
from enff.observations.operators import ATan, Identity, Tanh
from enff.observations.space import ObservationSpace, Select

from helpers import ring


def _problem(grid: Grid, operator, n_members: int, std: np.ndarray, seed: int, spread: float = 1.0):
    """Forecast members ``(N, d)`` float64, observations and their space on ``grid``."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(grid.shape))
    obs = ObservationSpace(operator, torch.as_tensor(std, dtype=torch.float64), grid, grid.shape)
    forecast = torch.as_tensor(rng.standard_normal(d) + spread * rng.standard_normal((n_members, d)))
    y = torch.as_tensor(rng.standard_normal(std.size))
    return forecast, y, obs


def _analysis(forecast: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, radius: float, backend: str,
              line_search: bool = False) -> tuple[torch.Tensor, float]:
    observed = observe(forecast.reshape(forecast.shape[0], *obs.state_shape), y, obs)
    return letkf_update(forecast, observed, obs, radius, line_search=line_search, backend=backend)


def _dense_reference(forecast: np.ndarray, hx: np.ndarray, y: np.ndarray, std: np.ndarray, taper: np.ndarray
                     ) -> np.ndarray:
    """Hunt et al. (2007) per element: ``taper (d, p)`` multiplies R^-1; symmetric square root by ``eigh``."""
    n = forecast.shape[0]
    xm, ym = forecast.mean(0), hx.mean(0)
    xa, ya = forecast - xm, hx - ym
    out = forecast.copy()
    for i in np.nonzero(taper.any(axis=1))[0]:
        rinv = taper[i] / std**2
        precision = (n - 1) * np.eye(n) + (ya * rinv) @ ya.T
        values, vectors = np.linalg.eigh(precision)
        transform = vectors @ np.diag(np.sqrt((n - 1) / values)) @ vectors.T
        wbar = np.linalg.solve(precision, (ya * rinv) @ (y - ym))
        out[:, i] = xm[i] + (transform + wbar[:, None]).T @ xa[:, i]
    return out


#: Three co-located fields on a 6 x 6 torus (a field axis of zero extent, as the primitive Navier-Stokes model).
FIELDS_6X6 = Grid((np.zeros(3), np.arange(6.0), np.arange(6.0)), (None, 6.0, 6.0))

# geometry, operator, members, std, radius: observation-space (m < N) and member-space (m >= N) problems,
# different numbers of local observations side by side (sparse, non-periodic edges), two dimensions
CASES = {
    "ring-all-observed-obs-space": (ring(40), Identity(), 20, np.ones(40), 4.0),
    "ring-all-observed-member-space": (ring(30), Identity(), 8, np.full(30, 0.5), 3.0),
    "ring-sparse-varying-std": (ring(31), Select(np.arange(0, 31, 3)), 6,
                                np.linspace(0.3, 1.2, 11), 2.5),
    "open-line-edges": (Grid((np.arange(25.0),), (None,)), Identity(), 10, np.full(25, 0.7), 2.0),
    "torus-8x8": (Grid((np.arange(8.0), np.arange(8.0)), (8.0, 8.0)), Identity(), 12, np.full(64, 0.8), 0.9),
    "precise-arctan": (ring(24), ATan(), 10, np.full(24, 0.05), 2.0),
    # three fields at every point of a 6 x 6 torus (as Navier-Stokes' pressure, u, v): one local problem per point
    "colocated-fields-member-space": (FIELDS_6X6, Identity(), 8, np.linspace(0.5, 1.0, 108), 1.0),
    "colocated-fields-obs-space": (FIELDS_6X6, Select(np.arange(1, 108, 5)), 20, np.full(22, 0.6), 1.2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_numba_kernel_equals_torch_path_and_dense_reference(name):
    grid, operator, n_members, std, radius = CASES[name]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=len(name))
    numba_out, _ = _analysis(forecast, y, obs, radius, "numba")
    torch_out, _ = _analysis(forecast, y, obs, radius, "torch")
    scale = float(forecast.abs().max())
    torch.testing.assert_close(numba_out, torch_out, rtol=0, atol=1e-12 * scale)

    points, locations = grid.points(), obs.locations
    distance = grid.distance(points[:, None, :], locations[None, :, :])  # (d, p)
    x = forecast.numpy()
    hx = operator(forecast.reshape(n_members, *grid.shape)).numpy()
    expected = _dense_reference(x, hx, y.numpy(), std, gaspari_cohn(distance, radius))
    np.testing.assert_allclose(numba_out.numpy(), expected, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("name", list(CASES))
def test_numba_kernel_lane_count_does_not_change_the_analysis(name, monkeypatch):
    # the host picks 8 or 16 lanes (host_lanes); a block's problems are padded to its largest: round-off only
    import enff.filters._letkf_numba as kernel

    grid, operator, n_members, std, radius = CASES[name]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=len(name) + 1)
    outs = {}
    for lanes in (1, 8, 16):
        monkeypatch.setattr(kernel, "LANES", lanes)
        outs[lanes] = _analysis(forecast, y, obs, radius, "numba")[0]
    scale = float(forecast.abs().max())
    for lanes in (8, 16):
        torch.testing.assert_close(outs[lanes], outs[1], rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("radius", [2.5, float("inf")], ids=["local", "global"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_precision_equals_the_rescaled_observed_ensemble(backend, radius):
    # a tempering step of size a assimilates R / a: S and dy times sqrt(a), done through the tapers instead
    grid, operator, n_members, std, _ = CASES["ring-sparse-varying-std"]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=7)
    observed = observe(forecast.reshape(n_members, *obs.state_shape), y, obs)
    size = 0.3
    root = size**0.5
    rescaled = ObservedEnsemble(observed.anomalies * root, observed.innovation * root, observed.mean,
                                observed.std / root)
    expected, _ = letkf_update(forecast, rescaled, obs, radius, backend=backend)
    out, _ = letkf_update(forecast, observed, obs, radius, backend=backend, precision=size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12 * float(forecast.abs().max()))
    assert (out - letkf_update(forecast, observed, obs, radius, backend=backend)[0]).abs().max() > 1e-3


def test_precision_is_checked_and_refused_with_the_line_search():
    grid, operator, n_members, std, radius = CASES["precise-arctan"]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=8)
    observed = observe(forecast.reshape(n_members, *obs.state_shape), y, obs)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="precision must be a finite number > 0"):
            letkf_update(forecast, observed, obs, radius, precision=bad)
    with pytest.raises(ValueError, match="line_search assimilates R itself"):
        letkf_update(forecast, observed, obs, radius, line_search=True, precision=0.5)


def test_numba_kernel_in_float32_matches_the_float64_analysis():
    grid, operator, n_members, std, radius = CASES["ring-all-observed-obs-space"]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=3)
    single, _ = _analysis(forecast.float(), y.float(), obs, radius, "numba")
    double, _ = _analysis(forecast, y, obs, radius, "numba")
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), double, rtol=0, atol=1e-5)


def test_numba_kernel_line_search_equals_torch_path():
    # arctan observations of an ensemble sure of the wrong sign at a few elements: some steps are shortened
    grid, operator, n_members, std, radius = CASES["precise-arctan"]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=5, spread=0.3)
    forecast[:, 3:6] -= 6.0
    y[3:6] = torch.atan(torch.tensor(5.0))
    numba_out, numba_short = _analysis(forecast, y, obs, radius, "numba", line_search=True)
    torch_out, torch_short = _analysis(forecast, y, obs, radius, "torch", line_search=True)
    assert numba_short == torch_short > 0
    torch.testing.assert_close(numba_out, torch_out, rtol=0, atol=1e-10)


def test_line_search_without_a_kernel_form_uses_the_torch_search():
    # atan then tanh has no form in the step kernel: the numba backend falls back to the torch step search
    operator = ATan() | Tanh()
    forecast, y, obs = _problem(ring(24), operator, 10, np.full(24, 0.05), seed=5, spread=0.3)
    forecast[:, 3:6] -= 6.0
    y[3:6] = torch.tanh(torch.atan(torch.tensor(5.0)))
    numba_out, numba_short = _analysis(forecast, y, obs, 2.0, "numba", line_search=True)
    torch_out, torch_short = _analysis(forecast, y, obs, 2.0, "torch", line_search=True)
    assert numba_short == torch_short > 0
    torch.testing.assert_close(numba_out, torch_out, rtol=0, atol=1e-10)


def test_line_search_of_colocated_fields_shares_one_step_and_equals_the_per_element_path():
    # the numba kernel solves one problem per point for the three fields there and shortens its step once;
    # the torch path solves and searches every element alone: the same analysis to round-off
    forecast, y, obs = _problem(FIELDS_6X6, ATan(), 10, np.full(108, 0.05), seed=7, spread=0.3)
    forecast[:, :20] -= 6.0
    y[:20] = torch.atan(torch.tensor(5.0))
    numba_out, numba_short = _analysis(forecast, y, obs, 1.2, "numba", line_search=True)
    torch_out, torch_short = _analysis(forecast, y, obs, 1.2, "torch", line_search=True)
    assert numba_short == pytest.approx(torch_short) and numba_short > 0
    torch.testing.assert_close(numba_out, torch_out, rtol=0, atol=1e-10)
    plain, _ = _analysis(forecast, y, obs, 1.2, "numba")
    assert not torch.allclose(numba_out, plain)


def test_numba_kernel_at_huge_radius_is_the_global_etkf():
    grid, operator, n_members, std, _ = CASES["ring-sparse-varying-std"]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=7)
    local, _ = _analysis(forecast, y, obs, 1e8, "numba")  # every taper is 1 - O(1e-13)
    global_ = ETKF().analysis(forecast, y, obs, generator=torch.Generator()).ensemble
    torch.testing.assert_close(local, global_, rtol=0, atol=1e-10)


def test_unknown_backend_is_refused():
    grid, operator, n_members, std, radius = CASES["ring-sparse-varying-std"]
    forecast, y, obs = _problem(grid, operator, n_members, std, seed=1)
    with pytest.raises(ValueError, match="backend must be"):
        _analysis(forecast, y, obs, radius, "fortran")


@pytest.mark.parametrize("name", ["colocated-fields-obs-space", "ring-sparse-varying-std"])
def test_local_domains_group_colocated_elements_with_the_per_element_lists(name):
    grid, operator, _, std, radius = CASES[name]
    obs = ObservationSpace(operator, torch.as_tensor(std), grid, grid.shape)
    domains = local_domains(obs, radius)
    direct = LocalObservations.from_pairs(*taper_pairs(grid, grid.points(), obs.locations, radius))
    per_element = local_observations(obs, radius)
    for got in (per_element, domains.per_element()):
        np.testing.assert_array_equal(got.active, direct.active)
        np.testing.assert_array_equal(got.index, direct.index)
        np.testing.assert_array_equal(got.weight, direct.weight)
    fields = 3 if grid is FIELDS_6X6 else 1
    assert domains.elements.shape == (direct.active.size // fields, fields)
    points = grid.points()[domains.elements]  # (domain, field, ndim): each domain's elements share one point
    np.testing.assert_array_equal(points, np.broadcast_to(points[:, :1], points.shape))


def test_local_domains_built_in_blocks_equal_one_block(monkeypatch):
    from enff.filters import localization

    grid, operator, _, std, radius = CASES["colocated-fields-obs-space"]
    obs = ObservationSpace(operator, torch.as_tensor(std), grid, grid.shape)
    sources = np.asarray(obs.state_index)
    whole = localization._build_domains(grid, sources, radius)
    monkeypatch.setattr(localization, "PAIR_BLOCK", 7)  # a few locations per block
    blocks = localization._build_domains(grid, sources, radius)
    for name in ("elements", "index", "weight"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name))
