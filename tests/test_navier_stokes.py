"""2-D Navier-Stokes model: exact solutions, analytic tendency, convergence, velocity, batching, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enff.models import NavierStokes2D
from enff.models.navier_stokes import COURANT_LIMIT, NavierStokes2DParams

from helpers import DEVICES


def mesh(model: NavierStokes2D, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Grid coordinates ``(y, x)``, each of shape ``(n, n)`` indexed ``[y, x]``."""
    y, x = (torch.as_tensor(a, device=device) for a in model.grid.axes)
    return torch.meshgrid(y, x, indexing="ij")


def test_defaults_and_grid() -> None:
    model = NavierStokes2D()
    assert model.params == NavierStokes2DParams(
        n=64, length=2.0, viscosity=1e-3, forcing_amplitude=0.05, forcing_wavenumber=8, dt=1e-3
    )
    assert model.state_dims == ("y", "x")
    assert model.state_shape == (64, 64)
    assert model.grid.lengths == (2.0, 2.0)
    np.testing.assert_allclose(model.grid.axes[1][:2], [0.0, 2.0 / 64])
    assert round(0.01 / model.dt) * model.dt == pytest.approx(0.01)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_taylor_green_vortex_decays_exactly(device: str, dtype: torch.dtype) -> None:
    """w = 2 k sin(k x) sin(k y) has no advection and decays as exp(-2 nu k^2 t)."""
    model = NavierStokes2D(n=32, viscosity=0.02, forcing_amplitude=0.0, forcing_wavenumber=1, dt=0.01)
    y, x = mesh(model, device)
    k = 2 * math.pi * 3 / model.params.length
    w0 = (2 * k * torch.sin(k * x) * torch.sin(k * y))[None].to(dtype)
    n_steps = 50
    w = model.step(w0, n_steps)
    decay = math.exp(-2 * model.params.viscosity * k**2 * n_steps * model.dt)
    assert 0.05 < decay < 0.5
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(w, w0 * decay, rtol=0, atol=tol * w0.abs().max().item())


@pytest.mark.parametrize("kwargs", [{}, {"n": 32, "viscosity": 0.05, "forcing_wavenumber": 2, "dt": 0.01}])
def test_laminar_kolmogorov_flow_is_steady(kwargs: dict) -> None:
    """w(y) = -(A / (nu k)) cos(k y), k = 2 pi m / length, is a fixed point of the scheme."""
    model = NavierStokes2D(**kwargs)
    p = model.params
    y, _ = mesh(model)
    k = 2 * math.pi * p.forcing_wavenumber / p.length
    w0 = (-(p.forcing_amplitude / (p.viscosity * k)) * torch.cos(k * y))[None]
    w = model.step(w0, 40)
    torch.testing.assert_close(w, w0, rtol=0, atol=1e-11 * w0.abs().max().item())
    u, v = model.velocity(w0)
    torch.testing.assert_close(u[0], (p.forcing_amplitude / (p.viscosity * k**2)) * torch.sin(k * y))
    torch.testing.assert_close(v, torch.zeros_like(v), rtol=0, atol=1e-14)


def two_mode_flow(model: NavierStokes2D) -> tuple[torch.Tensor, ...]:
    """psi = cos(y) + sin(2 x) on [0, 2 pi)^2: w = cos(y) + 4 sin(2 x), u = -sin(y), v = -2 cos(2 x),
    and u . grad(w) = -6 sin(y) cos(2 x)."""
    y, x = mesh(model)
    w = torch.cos(y) + 4 * torch.sin(2 * x)
    return w[None], -torch.sin(y), -2 * torch.cos(2 * x), -6 * torch.sin(y) * torch.cos(2 * x)


def test_velocity_and_tendency_of_an_analytic_flow() -> None:
    """Velocity and the instantaneous tendency w_t = -u . grad(w) + nu lap(w) match the analytic values."""
    model = NavierStokes2D(
        n=32, length=2 * math.pi, viscosity=0.01, forcing_amplitude=0.0, forcing_wavenumber=1, dt=1e-6
    )
    w0, u, v, advection = two_mode_flow(model)
    got = model.velocity(w0)
    torch.testing.assert_close(got.u[0], u)
    torch.testing.assert_close(got.v[0], v)
    y, x = mesh(model)
    laplacian = -torch.cos(y) - 16 * torch.sin(2 * x)
    tendency = (model.step(w0) - w0)[0] / model.dt
    torch.testing.assert_close(tendency, -advection + model.params.viscosity * laplacian, rtol=0, atol=1e-4)


def test_forcing_enters_as_its_curl() -> None:
    """From rest, w_t = curl f = -A k cos(k y) with k = 2 pi m / length."""
    model = NavierStokes2D(n=32, viscosity=1e-3, forcing_amplitude=0.3, forcing_wavenumber=3, dt=1e-6)
    y, _ = mesh(model)
    k = 2 * math.pi * 3 / model.params.length
    w = model.step(torch.zeros(1, 32, 32, dtype=torch.float64))
    torch.testing.assert_close(w[0] / model.dt, -0.3 * k * torch.cos(k * y), rtol=0, atol=1e-6)


def test_velocity_is_spectrally_divergence_free() -> None:
    """k_x u_hat + k_y v_hat = 0 mode by mode, to round-off."""
    model = NavierStokes2D(n=64)
    w = model.initial_state(torch.Generator().manual_seed(0), 3)
    u_hat, v_hat = (torch.fft.fft2(c) for c in model.velocity(w))
    k = torch.as_tensor(np.fft.fftfreq(64, 1 / 64) * 2 * math.pi / model.params.length)
    divergence_hat = k[None, None, :] * u_hat + k[None, :, None] * v_hat
    assert divergence_hat.abs().max() < 1e-13 * k.abs().max() * u_hat.abs().max()


def central_difference(f: torch.Tensor, dim: int, h: float) -> torch.Tensor:
    """Second-order periodic central difference of ``f`` along ``dim`` with spacing ``h``."""
    return (f.roll(-1, dims=dim) - f.roll(1, dims=dim)) / (2 * h)


def test_velocity_finite_difference_divergence_and_curl_converge() -> None:
    """Central-difference divergence -> 0 and curl -> w (minus its mean) at second order in h."""
    divergence, curl_error = [], []
    for n in (32, 64, 128):
        model = NavierStokes2D(n=n, length=2 * math.pi, forcing_amplitude=0.0, forcing_wavenumber=1)
        y, x = mesh(model)
        w = torch.exp(torch.sin(x) + torch.cos(y - x))[None]
        u, v = model.velocity(w)
        h = 2 * math.pi / n
        dudx = central_difference(u, -1, h)
        divergence.append(((dudx + central_difference(v, -2, h)).abs().max() / dudx.abs().max()).item())
        curl = central_difference(v, -1, h) - central_difference(u, -2, h)
        curl_error.append(((curl - (w - w.mean())).abs().max() / w.abs().max()).item())
    for errors in (divergence, curl_error):
        assert errors[-1] < 1e-3
        np.testing.assert_allclose(np.log2(np.array(errors[:-1]) / np.array(errors[1:])), 2.0, atol=0.1)


def test_initial_state_statistics() -> None:
    """Each velocity component has pointwise std initial_velocity_std; the mean flow is zero."""
    model = NavierStokes2D(n=64, initial_velocity_std=2.0)
    w = model.initial_state(torch.Generator().manual_seed(1), 40)
    u, v = model.velocity(w)
    assert w.shape == (40, 64, 64)
    assert u.mean(dim=(-2, -1)).abs().max() < 1e-12
    for component in (u, v):
        assert abs(component.std().item() - 2.0) < 0.1
    again = model.initial_state(torch.Generator().manual_seed(1), 40, dtype=torch.float32)
    torch.testing.assert_close(again, w.float())


def test_initial_length_scale_sets_the_correlation() -> None:
    """Shorter length scale, rougher field: mean-square vorticity scales like 1 / l^2."""
    gen = torch.Generator().manual_seed(2)
    enstrophy = [
        NavierStokes2D(n=64, initial_length_scale=scale).initial_state(gen, 20).square().mean().item()
        for scale in (0.2, 0.1)
    ]
    assert 3.0 < enstrophy[1] / enstrophy[0] < 5.0


def test_fourth_order_convergence() -> None:
    """Error against a 320-step reference drops ~16x per halving of dt (n = 32, t = 0.2)."""
    w0 = NavierStokes2D(n=32).initial_state(torch.Generator().manual_seed(0), 1)
    t_end = 0.2
    reference = NavierStokes2D(n=32, dt=t_end / 320).step(w0, 320)
    errors = []
    for n_steps in (10, 20, 40):
        w = NavierStokes2D(n=32, dt=t_end / n_steps).step(w0, n_steps)
        errors.append((w - reference).abs().max().item())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, 4.0, atol=0.3)


def test_member_alone_equals_member_in_batch() -> None:
    model = NavierStokes2D(n=32)
    batch = model.initial_state(torch.Generator().manual_seed(3), 4)
    torch.testing.assert_close(model.step(batch[1:2], 5), model.step(batch, 5)[1:2], rtol=1e-13, atol=1e-13)


def test_float32_agrees_with_float64() -> None:
    model = NavierStokes2D(n=64)
    w64 = model.initial_state(torch.Generator().manual_seed(4), 2)
    out64 = model.step(w64, 10)
    out32 = model.step(w64.float(), 10)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-5 * out64.abs().max().item())


def test_step_leaves_input_unchanged() -> None:
    model = NavierStokes2D(n=32)
    w = model.initial_state(torch.Generator().manual_seed(5), 2, dtype=torch.float32)
    copy = w.clone()
    out = model.step(w, 2)
    assert torch.equal(w, copy)
    assert out.shape == w.shape and out.dtype == w.dtype


def test_unstable_dt_raises_naming_dt() -> None:
    model = NavierStokes2D(n=64, dt=0.01)
    w = model.initial_state(torch.Generator().manual_seed(6), 2)
    u, v = model.velocity(w)
    courant = 0.01 * model.params.k_max * (u.abs() + v.abs()).max().item()
    assert courant > COURANT_LIMIT
    with pytest.raises(ValueError, match="dt=0.01 is unstable"):
        model.step(w)
    # a stable step for the same state is accepted
    NavierStokes2D(n=64, dt=0.5 * 0.01 * COURANT_LIMIT / courant).step(w)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"n": 64.5}, "n"),
        ({"length": -2.0}, "length"),
        ({"viscosity": 0.0}, "viscosity"),
        ({"dt": 0.0}, "dt"),
        ({"forcing_wavenumber": 2.5}, "forcing_wavenumber"),
        ({"forcing_wavenumber": 0}, "forcing_wavenumber"),
        ({"n": 24}, "forcing_wavenumber"),
        ({"forcing_amplitude": float("inf")}, "forcing_amplitude"),
        ({"initial_length_scale": 0.0}, "initial_length_scale"),
        ({"initial_velocity_std": -1.0}, "initial_velocity_std"),
        ({"viscosity": 1e-6}, "dt"),  # laminar speed A / (nu k^2) = 79: Courant number 5 at dt = 1e-3
    ],
)
def test_bad_parameters_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        NavierStokes2D(**kwargs)


def test_bad_inputs_raise() -> None:
    model = NavierStokes2D(n=32)
    w = torch.zeros(2, 32, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_steps"):
        model.step(w, 0)
    with pytest.raises(ValueError, match="shape"):
        model.step(torch.zeros(2, 32, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        model.velocity(torch.zeros(32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32 or float64"):
        model.step(w.to(torch.int32))
    with pytest.raises(ValueError, match="dtype"):
        model.initial_state(torch.Generator(), 1, dtype=torch.float16)
