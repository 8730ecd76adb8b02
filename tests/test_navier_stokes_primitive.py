"""Navier-Stokes with the primitive state (pressure, u, v): pressure against analytic solutions and the
momentum equation, projection of the input, co-located fields in localization, a cycling run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enff.casefile import load_case, parse_case
from enff.cycle import run_case
from enff.models import NavierStokes2D, NavierStokes2DPrimitive
from enff.plots import plot_run
from enff.runfile import open_run


def mesh(model: NavierStokes2DPrimitive) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates ``(y, x)``, each ``(n, n)`` indexed ``[y, x]``."""
    _, y, x = model.grid.axes
    return np.meshgrid(y, x, indexing="ij")


def test_shape_grid_and_registry() -> None:
    model = NavierStokes2DPrimitive(n=16, forcing_wavenumber=2)
    assert model.state_shape == (3, 16, 16)
    assert model.state_dims == ("field", "y", "x")
    points = model.grid.points()
    # pressure, u and v at one grid point are at distance 0 from each other
    same_place = points.reshape(3, 16 * 16, 3)
    assert model.grid.distance(same_place[0], same_place[2]).max() == 0.0
    case = parse_case("""
    [model]
    name = "navier_stokes2d_primitive"
    n = 16
    forcing_wavenumber = 2
    [observations]
    operator = "atan"
    every = 1
    std = 0.1
    [ensemble]
    size = 2
    [filter]
    name = "none"
    [run]
    cycles = 1
    """)
    assert isinstance(case.model, NavierStokes2DPrimitive)


def test_taylor_green_pressure_vorticity_and_decay() -> None:
    """u = sin(kx) cos(ky), v = -cos(kx) sin(ky): p = (cos 2kx + cos 2ky) / 4, w = 2 k sin(kx) sin(ky),
    and the flow decays as exp(-2 nu k^2 t) with the pressure as its square."""
    model = NavierStokes2DPrimitive(n=32, length=2 * math.pi, viscosity=0.02, forcing_amplitude=0.0,
                                    forcing_wavenumber=1, dt=0.01)
    y, x = mesh(model)
    k = 3.0
    u, v = np.sin(k * x) * np.cos(k * y), -np.cos(k * x) * np.sin(k * y)
    pressure = (np.cos(2 * k * x) + np.cos(2 * k * y)) / 4
    state = torch.tensor(np.stack([pressure, u, v]))[None]
    torch.testing.assert_close(model.pressure(state[:, 1], state[:, 2])[0], torch.tensor(pressure), rtol=0,
                               atol=1e-13)
    torch.testing.assert_close(model.vorticity(state)[0], torch.tensor(2 * k * np.sin(k * x) * np.sin(k * y)),
                               rtol=0, atol=1e-12)
    n_steps = 40
    decay = math.exp(-2 * model.params.viscosity * k**2 * n_steps * model.dt)
    expected = torch.tensor(np.stack([pressure * decay**2, u * decay, v * decay]))[None]
    torch.testing.assert_close(model.step(state, n_steps), expected, rtol=0, atol=1e-12)


def test_pressure_solves_the_poisson_equation_of_an_analytic_flow() -> None:
    """lap(p) = -(u_x^2 + 2 u_y v_x + v_y^2) for psi = sin x sin 2y + cos(3x + y) / 2 (derivatives by hand)."""
    model = NavierStokes2DPrimitive(n=64, length=2 * math.pi, forcing_wavenumber=1)
    y, x = mesh(model)
    u = 2 * np.sin(x) * np.cos(2 * y) - 0.5 * np.sin(3 * x + y)
    v = -np.cos(x) * np.sin(2 * y) + 1.5 * np.sin(3 * x + y)
    u_x = 2 * np.cos(x) * np.cos(2 * y) - 1.5 * np.cos(3 * x + y)
    u_y = -4 * np.sin(x) * np.sin(2 * y) - 0.5 * np.cos(3 * x + y)
    v_x = np.sin(x) * np.sin(2 * y) + 4.5 * np.cos(3 * x + y)
    v_y = -2 * np.cos(x) * np.cos(2 * y) + 1.5 * np.cos(3 * x + y)
    np.testing.assert_allclose(u_x + v_y, 0, atol=1e-12)
    p = model.pressure(torch.tensor(u)[None], torch.tensor(v)[None])[0].numpy()
    k = np.fft.fftfreq(64, 1 / 64)
    laplacian = np.real(np.fft.ifft2(-(k[:, None] ** 2 + k[None, :] ** 2) * np.fft.fft2(p)))
    np.testing.assert_allclose(laplacian, -(u_x**2 + 2 * u_y * v_x + v_y**2), atol=1e-10)
    assert abs(p.mean()) < 1e-12


def test_step_satisfies_the_momentum_equation() -> None:
    """Centred time difference of u over two small steps against -u.grad(u) - grad(p) + nu lap(u) + f."""
    model = NavierStokes2DPrimitive(n=32, viscosity=0.01, forcing_amplitude=0.5, forcing_wavenumber=2, dt=1e-4,
                                    initial_length_scale=0.5)  # resolved: dealiasing truncates nothing visible
    x0 = model.initial_state(torch.Generator().manual_seed(3), 1)
    x1 = model.step(x0)
    x2 = model.step(x1)
    p, u, v = (f.numpy() for f in x1[0])
    k = np.fft.fftfreq(32, 1 / 32) * 2 * math.pi / model.params.length

    def d(field: np.ndarray, axis: int) -> np.ndarray:
        kk = k[:, None] if axis == 0 else k[None, :]
        return np.real(np.fft.ifft2(1j * kk * np.fft.fft2(field)))

    y, _ = mesh(model)
    k_f = 2 * math.pi * model.params.forcing_wavenumber / model.params.length
    forcing = model.params.forcing_amplitude * np.sin(k_f * y)
    for c, (field, force) in enumerate([(u, forcing), (v, 0.0)]):
        tendency = (x2[0, c + 1] - x0[0, c + 1]).numpy() / (2 * model.dt)
        gradient_p = d(p, 1) if c == 0 else d(p, 0)
        viscous = model.params.viscosity * (d(d(field, 0), 0) + d(d(field, 1), 1))
        expected = -(u * d(field, 1) + v * d(field, 0)) - gradient_p + viscous + force
        scale = np.abs(expected).max()
        np.testing.assert_allclose(tendency, expected, atol=1e-6 * scale)


def test_step_discards_the_pressure_and_divergent_velocity_of_the_input() -> None:
    model = NavierStokes2DPrimitive(n=32, forcing_wavenumber=2, dt=2e-3)
    x = model.initial_state(torch.Generator().manual_seed(0), 2)
    y, xx = mesh(model)
    potential_flow = torch.tensor(np.stack([np.cos(math.pi * xx), np.sin(math.pi * y)]))  # grad of a potential
    disturbed = x.clone()
    disturbed[:, 0] += torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    disturbed[:, 1:] += 0.3 * potential_flow
    torch.testing.assert_close(model.step(disturbed, 3), model.step(x, 3), rtol=0, atol=1e-12)


def test_initial_state_matches_the_vorticity_model() -> None:
    kwargs = dict(n=32, forcing_wavenumber=2)
    primitive, vorticity = NavierStokes2DPrimitive(**kwargs), NavierStokes2D(**kwargs)
    x = primitive.initial_state(torch.Generator().manual_seed(5), 3)
    w = vorticity.initial_state(torch.Generator().manual_seed(5), 3)
    torch.testing.assert_close(primitive.vorticity(x), w, rtol=0, atol=1e-8)  # Nyquist modes carry no velocity
    torch.testing.assert_close(primitive.step(x, 5), primitive.from_vorticity(vorticity.step(w, 5)), rtol=0,
                               atol=1e-10)


def test_bad_state_shape_raises() -> None:
    model = NavierStokes2DPrimitive(n=16, forcing_wavenumber=2)
    with pytest.raises(ValueError, match=r"shape \(member, 3, 16, 16\)"):
        model.step(torch.zeros(1, 16, 16, dtype=torch.float64))


def test_published_case_cycles_with_a_localized_filter(tmp_path) -> None:
    case = load_case("ns64_atan", filter_name="letkf",
                     overrides=["model.n=16", "model.forcing_wavenumber=2", "run.cycles=3", "filter.radius=0.3"])
    summary = run_case(case, tmp_path / "run.nc", progress=False)
    ds = open_run(tmp_path / "run.nc")
    assert summary.cycles_done == 3
    assert ds["truth"].dims == ("time", "field", "y", "x")
    assert np.isfinite(ds["rmse_analysis"]).all()
    assert float(ds["rmse_analysis"][-1]) < float(ds["rmse_forecast"][0])
    written = plot_run(tmp_path / "run.nc")  # one snapshots figure per field
    assert {tmp_path / f"run_snapshots_{field}.png" for field in ("pressure", "u", "v")} <= set(written)
