"""Kuramoto-Sivashinsky model: analytic tendency, fourth-order convergence, batching, dtypes, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enff.models import KuramotoSivashinsky
from enff.models.kuramoto_sivashinsky import KuramotoSivashinskyParams

from helpers import DEVICES


def smooth_start(model: KuramotoSivashinsky) -> torch.Tensor:
    """Kassam & Trefethen's noise-free start, shape (1, dim)."""
    x = torch.as_tensor(model.grid.axes[0])
    return (torch.cos(x / 16) * (1 + torch.sin(x / 16)))[None]


def test_defaults_and_grid() -> None:
    model = KuramotoSivashinsky()
    assert model.params == KuramotoSivashinskyParams(dim=1024, length=128 * math.pi, dt=0.25)
    assert model.state_dims == ("x",)
    assert model.state_shape == (1024,)
    assert model.grid.lengths == (128 * math.pi,)
    np.testing.assert_allclose(model.grid.axes[0][1], 128 * math.pi / 1024)


@pytest.mark.parametrize("device", DEVICES)
def test_tendency_of_a_single_mode(device: str) -> None:
    """For u = sin(k x): u_t = -(k / 2) sin(2 k x) + (k^2 - k^4) sin(k x) exactly, at t = 0."""
    model = KuramotoSivashinsky(dim=64, length=4 * math.pi, dt=1e-5)
    x = torch.as_tensor(model.grid.axes[0], device=device)
    k = 0.5
    u0 = torch.sin(k * x)[None]
    expected = -(k / 2) * torch.sin(2 * k * x) + (k**2 - k**4) * torch.sin(k * x)
    tendency = (model.step(u0) - u0)[0] / model.dt
    torch.testing.assert_close(tendency, expected, rtol=0, atol=1e-5)


def test_fourth_order_convergence() -> None:
    """Error against a dt = 1/256 reference drops ~16x per halving of dt (default domain, t = 2)."""
    x0 = smooth_start(KuramotoSivashinsky())
    t_end = 2.0
    reference = KuramotoSivashinsky(dt=1 / 256).step(x0, 512)
    errors = []
    for dt in (0.5, 0.25, 0.125):
        u = KuramotoSivashinsky(dt=dt).step(x0, round(t_end / dt))
        errors.append((u - reference).abs().max().item())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[-1] < 1e-8
    np.testing.assert_allclose(orders, 4.0, atol=0.3)


def test_member_alone_equals_member_in_batch() -> None:
    model = KuramotoSivashinsky()
    batch = model.initial_state(torch.Generator().manual_seed(3), 5)
    torch.testing.assert_close(model.step(batch[2:3], 8), model.step(batch, 8)[2:3], rtol=1e-13, atol=1e-13)


def test_float32_agrees_with_float64() -> None:
    model = KuramotoSivashinsky()
    x64 = model.initial_state(torch.Generator().manual_seed(4), 3)
    u64 = model.step(x64, 4)
    u32 = model.step(x64.float(), 4)
    assert u32.dtype == torch.float32
    torch.testing.assert_close(u32.double(), u64, rtol=0, atol=1e-5 * u64.abs().max().item())


def test_step_leaves_input_unchanged_and_keeps_dtype() -> None:
    model = KuramotoSivashinsky(dim=128, length=32 * math.pi)
    x = model.initial_state(torch.Generator().manual_seed(5), 2, dtype=torch.float32)
    copy = x.clone()
    out = model.step(x, 3)
    assert torch.equal(x, copy)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_initial_state_is_smooth_start_plus_unit_noise() -> None:
    model = KuramotoSivashinsky()
    x = model.initial_state(torch.Generator().manual_seed(6), 20)
    noise = x - smooth_start(model)
    assert x.shape == (20, 1024)
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 1.0) < 0.02
    again = model.initial_state(torch.Generator().manual_seed(6), 20, dtype=torch.float32)
    torch.testing.assert_close(again, x.float())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2}, "dim"),
        ({"dim": 10.5}, "dim"),
        ({"length": 0.0}, "length"),
        ({"dt": -0.25}, "dt"),
        ({"dt": float("nan")}, "dt"),
        ({"initial_noise_std": -1.0}, "initial_noise_std"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        KuramotoSivashinsky(**kwargs)


def test_bad_inputs_raise() -> None:
    model = KuramotoSivashinsky(dim=64, length=16 * math.pi)
    x = torch.zeros(2, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_steps"):
        model.step(x, 0)
    with pytest.raises(ValueError, match="shape"):
        model.step(torch.zeros(2, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32 or float64"):
        model.step(x.to(torch.float16))
    with pytest.raises(ValueError, match="n_members"):
        model.initial_state(torch.Generator(), 0)
    with pytest.raises(ValueError, match="dtype"):
        model.initial_state(torch.Generator(), 1, dtype=torch.int64)
