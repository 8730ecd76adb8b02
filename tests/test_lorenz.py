"""Lorenz-63 and Lorenz-96: RK4 accuracy, backend agreement, contract and validation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from enff.models import Lorenz63, Lorenz96, Model
from enff.models._l96_numba import l96_rk4_parallel, l96_rk4_serial

from helpers import CUDA

L96_BACKENDS = ("torch", "numba", "numba-serial")
DTYPES = (torch.float32, torch.float64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _on_attractor(model: Lorenz63 | Lorenz96, n_members: int, seed: int = 0) -> torch.Tensor:
    """Float64 states after a spin-up of 10 model time units."""
    x = model.initial_state(_gen(seed), n_members)
    return model.step(x, round(10.0 / model.dt))


def _l63_rhs(_t: float, u: np.ndarray, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0) -> np.ndarray:
    return np.array([sigma * (u[1] - u[0]), u[0] * (rho - u[2]) - u[1], u[0] * u[1] - beta * u[2]])


def _l96_rhs(_t: float, u: np.ndarray, forcing: float = 8.0) -> np.ndarray:
    return (np.roll(u, -1) - np.roll(u, 2)) * np.roll(u, 1) - u + forcing


def _reference(rhs: Callable[[float, np.ndarray], np.ndarray], x: torch.Tensor, horizon: float) -> np.ndarray:
    """DOP853 solution at ``horizon`` for every member of ``x`` (``(member, d)``), float64."""
    out = [solve_ivp(rhs, (0.0, horizon), row, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1] for row in x.numpy()]
    return np.stack(out)


# --- accuracy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "rhs", "dts", "horizon"),
    [
        (lambda dt: Lorenz63(dt=dt), _l63_rhs, (0.02, 0.01, 0.005), 0.4),
        (lambda dt: Lorenz96(dt=dt, backend="torch"), _l96_rhs, (0.04, 0.02, 0.01), 0.4),
        (lambda dt: Lorenz96(dt=dt, backend="numba"), _l96_rhs, (0.04, 0.02, 0.01), 0.4),
    ],
    ids=["lorenz63", "lorenz96-torch", "lorenz96-numba"],
)
def test_rk4_converges_at_fourth_order(
    make: Callable[[float], Model], rhs: Callable[[float, np.ndarray], np.ndarray], dts: tuple[float, ...], horizon: float
) -> None:
    x0 = _on_attractor(make(0.01), 3)
    truth = _reference(rhs, x0, horizon)
    errors = []
    for dt in dts:
        model = make(dt)
        x = model.step(x0, round(horizon / dt))
        errors.append(np.abs(x.numpy() - truth).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 12) & (ratios < 20)), f"error ratios per halving of dt: {ratios} (errors {errors})"


@pytest.mark.parametrize("backend", L96_BACKENDS)
def test_lorenz96_matches_dop853(backend: str) -> None:
    # RK4 error at dt = 0.002 over 0.2 time units is a few 1e-9 (it is 3e-5 at dt = 0.01).
    model = Lorenz96(dim=40, dt=0.002, backend=backend)
    x0 = _on_attractor(model, 4, seed=1)
    x = model.step(x0, 100)
    truth = _reference(_l96_rhs, x0, 0.2)
    np.testing.assert_allclose(x.numpy(), truth, rtol=0, atol=5e-8)


def test_lorenz96_nondefault_forcing_matches_dop853() -> None:
    model = Lorenz96(dim=12, forcing=5.0, dt=0.002)
    x0 = model.initial_state(_gen(2), 2)
    truth = _reference(lambda t, u: _l96_rhs(t, u, forcing=5.0), x0, 0.2)
    np.testing.assert_allclose(model.step(x0, 100).numpy(), truth, rtol=0, atol=5e-8)


# --- backends agree -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [40, 1001])
def test_numba_parallel_equals_serial_equals_torch(dtype: torch.dtype, dim: int) -> None:
    base = Lorenz96(dim=dim, backend="torch")
    x = _on_attractor(base, 5).to(dtype)  # 5 members: not a multiple of the thread count
    y = {b: Lorenz96(dim=dim, backend=b).step(x, 4) for b in L96_BACKENDS}
    torch.testing.assert_close(y["numba"], y["numba-serial"], rtol=0, atol=0)
    tol = {torch.float32: 1e-5, torch.float64: 1e-13}[dtype]
    torch.testing.assert_close(y["numba"], y["torch"], rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_parallel_kernel_any_width(n_threads: int) -> None:
    import numba

    # Long rows keep the threads busy at the same time, so shared scratch memory would show.
    x = Lorenz96(dim=50_000).initial_state(_gen(8), 7).numpy()
    serial, parallel = np.empty_like(x), np.empty_like(x)
    l96_rk4_serial(x, serial, np.float64(8.0), np.float64(0.05), 30)
    before = numba.get_num_threads()
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        l96_rk4_parallel(x, parallel, np.float64(8.0), np.float64(0.05), 30)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(parallel, serial)


@pytest.mark.parametrize("backend", L96_BACKENDS)
def test_member_alone_equals_member_in_batch(backend: str) -> None:
    model = Lorenz96(dim=40, backend=backend)
    x = _on_attractor(model, 6)
    batch = model.step(x, 7)
    for m in (0, 3, 5):
        torch.testing.assert_close(model.step(x[m : m + 1], 7), batch[m : m + 1], rtol=0, atol=0)


def test_lorenz63_member_alone_equals_member_in_batch() -> None:
    model = Lorenz63()
    x = _on_attractor(model, 6)
    batch = model.step(x, 25)
    torch.testing.assert_close(model.step(x[4:5], 25), batch[4:5], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    "model", [Lorenz63(), Lorenz96(backend="torch"), Lorenz96(backend="numba")], ids=["l63", "l96-torch", "l96-numba"]
)
def test_float32_agrees_with_float64_over_short_horizon(model: Lorenz63 | Lorenz96) -> None:
    x64 = _on_attractor(model, 4)
    x32 = x64.to(torch.float32)
    y64 = model.step(x32.to(torch.float64), 10)
    y32 = model.step(x32, 10)
    assert y32.dtype == torch.float32
    scale = y64.abs().max().item()
    err = (y32.to(torch.float64) - y64).abs().max().item()
    assert err < 1e-5 * scale, f"float32 deviates by {err} (scale {scale})"


def test_numba_kernel_handles_a_million_variables() -> None:
    model = Lorenz96(dim=1_000_000)
    x = model.initial_state(_gen(3), 2)
    y = model.step(x, 1)
    assert y.shape == (2, 1_000_000) and torch.isfinite(y).all()
    torch.testing.assert_close(y, Lorenz96(dim=1_000_000, backend="torch").step(x, 1), rtol=1e-13, atol=1e-12)


@CUDA
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_torch_path_matches_cpu(dtype: torch.dtype) -> None:
    model = Lorenz96(dim=128)
    x = _on_attractor(model, 3).to(dtype)
    y_cuda = model.step(x.cuda(), 5)
    assert y_cuda.device.type == "cuda" and y_cuda.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(y_cuda.cpu(), model.step(x, 5), rtol=tol, atol=tol * 10)
    l63 = Lorenz63()
    z = _on_attractor(l63, 3).to(dtype)
    torch.testing.assert_close(l63.step(z.cuda(), 5).cpu(), l63.step(z, 5), rtol=tol, atol=tol * 10)


# --- contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [Lorenz63(), Lorenz96(backend="torch"), Lorenz96(backend="numba"), Lorenz96(backend="numba-serial")]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_returns_new_tensor_and_leaves_input_unchanged(model: Lorenz63 | Lorenz96, dtype: torch.dtype) -> None:
    x = model.initial_state(_gen(4), 3, dtype=dtype)
    copy = x.clone()
    y = model.step(x, 3)
    assert torch.equal(x, copy)
    assert y.shape == x.shape and y.dtype == dtype and y.data_ptr() != x.data_ptr()
    assert not torch.equal(y, x)


def test_step_accepts_a_non_contiguous_batch() -> None:
    model = Lorenz96(dim=40)
    x = _on_attractor(model, 6)
    torch.testing.assert_close(model.step(x[::2], 2), model.step(x[::2].contiguous(), 2), rtol=0, atol=0)


def test_initial_states() -> None:
    l96, l63 = Lorenz96(dim=500), Lorenz63()
    x = l96.initial_state(_gen(5), 40, dtype=torch.float32)
    assert x.shape == (40, 500) and x.dtype == torch.float32
    assert abs(x.std().item() - 3.0) < 0.1
    assert torch.equal(l96.initial_state(_gen(5), 40, dtype=torch.float32), x)
    z = l63.initial_state(_gen(5), 4000)
    assert z.shape == (4000, 3) and abs(z.std().item() - 1.0) < 0.05


def test_grids() -> None:
    l96 = Lorenz96(dim=10)
    np.testing.assert_array_equal(l96.grid.axes[0], np.arange(10))
    assert l96.grid.lengths == (10.0,) and l96.state_shape == (10,)
    assert l96.grid.distance(np.array([0.0]), np.array([9.0])) == 1.0
    l63 = Lorenz63()
    np.testing.assert_array_equal(l63.grid.axes[0], [0, 1, 2])
    assert l63.grid.lengths == (None,) and l63.state_shape == (3,)


@pytest.mark.parametrize(("model", "dim_name", "size"), [(Lorenz63(), "variable", 3), (Lorenz96(dim=12), "x", 12)])
def test_to_dataarray(model: Lorenz63 | Lorenz96, dim_name: str, size: int) -> None:
    x = model.initial_state(_gen(6), 5)
    da = model.to_dataarray(x)
    assert da.dims == ("member", dim_name) and da.shape == (5, size)
    np.testing.assert_array_equal(da["member"], np.arange(5))
    np.testing.assert_array_equal(da[dim_name], np.arange(size))
    np.testing.assert_array_equal(da.values, x.numpy())
    assert da.attrs["units"] == model.units and da.attrs["long_name"] == model.long_name


@pytest.mark.parametrize(("model", "dim_name"), [(Lorenz63(), "variable"), (Lorenz96(dim=16), "x")])
def test_nature_run(model: Lorenz63 | Lorenz96, dim_name: str) -> None:
    ds = model.nature_run(6, every=3, spinup=10, seed=7)
    da = ds[model.variable_name]
    assert da.dims == ("time", dim_name) and da.shape == (6, model.state_shape[0])
    np.testing.assert_allclose(ds["time"], np.arange(6) * 3 * model.dt)
    x0 = model.step(model.initial_state(_gen(7), 1), 10)
    np.testing.assert_array_equal(da.values[0], x0[0].numpy())
    np.testing.assert_array_equal(da.values[-1], model.step(x0, 15)[0].numpy())


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 3}, "dim"),
        ({"dim": 40.5}, "dim"),
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.01}, "dt"),
        ({"dt": float("nan")}, "dt"),
        ({"dt": 0.2}, "dt"),
        ({"forcing": 16.0, "dt": 0.1}, "dt"),
        ({"forcing": float("nan")}, "forcing"),
        ({"forcing": float("inf")}, "forcing"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_lorenz96_rejects_bad_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Lorenz96(**kwargs)


def test_lorenz96_accepts_largest_stable_step() -> None:
    assert Lorenz96(forcing=8.0, dt=0.175).dt == 0.175


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma": 0.0}, "sigma"),
        ({"rho": -1.0}, "rho"),
        ({"beta": float("inf")}, "beta"),
        ({"dt": 0.0}, "dt"),
        ({"dt": 0.2}, "dt"),
    ],
)
def test_lorenz63_rejects_bad_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Lorenz63(**kwargs)


@pytest.mark.parametrize("model", [Lorenz63(), Lorenz96(dim=8)], ids=["l63", "l96"])
@pytest.mark.parametrize(
    ("make", "n_steps", "name"),
    [
        (lambda d: torch.zeros(2, d + 1, dtype=torch.float64), 1, "shape"),
        (lambda d: torch.zeros(d, dtype=torch.float64), 1, "shape"),
        (lambda d: torch.zeros(2, d, dtype=torch.float16), 1, "float32 or float64"),
        (lambda d: torch.zeros(2, d, dtype=torch.int64), 1, "float32 or float64"),
        (lambda d: torch.zeros(2, d, dtype=torch.float64), 0, "n_steps"),
        (lambda d: torch.zeros(2, d, dtype=torch.float64), 1.5, "n_steps"),
    ],
)
def test_step_rejects_bad_input(
    model: Model, make: Callable[[int], torch.Tensor], n_steps: float, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        model.step(make(model.state_shape[0]), n_steps)


@pytest.mark.parametrize("backend", ["numba", "numba-serial"])
def test_numba_backend_rejects_non_cpu_state(backend: str) -> None:
    x = torch.zeros(2, 8, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="backend"):
        Lorenz96(dim=8, backend=backend).step(x)
