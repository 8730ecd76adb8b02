"""The Lorenz-96 model, ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` on a periodic ring.

Integrated with classical RK4: on CPU by default with a fused numba kernel
(:mod:`enff.models._l96_numba`), on other devices (or on request) with the torch path and its
preallocated buffers (:func:`enff.integrate.rk4_steps`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch

from enff.checks import check_positive, check_positive_int
from enff.config import check_value
from enff.integrate import Tendency, rk4_steps, tendency_field

from ._l96_numba import l96_rk4_parallel, l96_rk4_serial
from .base import MODELS, Grid, Model

__all__ = ["BACKENDS", "KERNELS", "L96_MAX_DT_TIMES_FORCING", "Backend", "Kernel", "Lorenz96", "Lorenz96Params",
           "lorenz96_tendency"]

#: Largest accepted ``dt * max(|F|, 1)``. Measured here with RK4 from 100 states on the attractor
#: (40 variables, 30 time units) for F = 4, 8, 16 and 32: at dt * F = 1.3 every trajectory stayed
#: bounded, at 1.4 up to 6 % diverged, at 1.5 up to 57 % and at 1.6 up to 98 %. The bound rejects
#: steps at which long runs diverge (F = 8: dt > 0.175); steps just below it may still diverge now
#: and then. The usual dt = 0.05 is far below.
L96_MAX_DT_TIMES_FORCING = 1.4

Backend = Literal["auto", "torch", "numba", "numba-serial"]
#: The integrators a backend runs: the torch RK4 or a numba kernel.
Kernel = Literal["torch", "numba", "numba-serial"]
#: The kernel each :data:`Backend` runs on CPU tensors and on tensors of any other device (``None``: refused).
BACKENDS: Mapping[Backend, tuple[Kernel, Kernel | None]] = MappingProxyType({
    "auto": ("numba", "torch"),
    "torch": ("torch", "torch"),
    "numba": ("numba", None),
    "numba-serial": ("numba-serial", None),
})


@dataclass(frozen=True)
class Lorenz96Params:
    """Parameters of :class:`Lorenz96`.

    Attributes
    ----------
    dim:
        Number of variables on the ring (>= 4).
    forcing:
        Constant forcing ``F`` (finite; ``F = 8`` is the usual chaotic setting).
    dt:
        RK4 time step in model time units, ``0 < dt * max(|forcing|, 1) <= L96_MAX_DT_TIMES_FORCING``.
    """

    dim: int = 40
    forcing: float = 8.0
    dt: float = 0.05

    def __post_init__(self) -> None:
        dim = check_positive_int("dim", self.dim)
        if dim < 4:
            raise ValueError(f"dim must be >= 4 for Lorenz-96 (its stencil spans 4 variables), got {dim}")
        if not math.isfinite(float(self.forcing)):
            raise ValueError(f"forcing must be finite, got {self.forcing!r}")
        dt = check_positive("dt", self.dt)
        dt_max = L96_MAX_DT_TIMES_FORCING / max(abs(float(self.forcing)), 1.0)
        if dt > dt_max:
            raise ValueError(
                f"dt = {dt} exceeds the RK4 stability bound {dt_max:.4g} of Lorenz-96 with forcing {self.forcing}"
            )
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "forcing", float(self.forcing))
        object.__setattr__(self, "dt", dt)


@MODELS.register("lorenz96")
class Lorenz96(Model):
    """Lorenz-96 on a periodic ring of ``dim`` variables, integrated with RK4.

    Parameters
    ----------
    dim, forcing, dt:
        See :class:`Lorenz96Params`.
    backend:
        ``"torch"`` (any device, preallocated in-place buffers), ``"numba"`` (CPU, fused kernel with
        members on numba's threads), ``"numba-serial"`` (CPU, the same kernel on one thread) or
        ``"auto"``: ``"numba"`` for CPU tensors, ``"torch"`` otherwise. On the 2-core development
        CPU (otherwise idle) one step of 20 x 1e6 float64 took about 0.09 s with ``"numba"``, 0.16 s
        with ``"numba-serial"`` and 0.45 s with ``"torch"``; with the cores busy the two numba
        backends were equally fast.

    Notes
    -----
    The state is ``(member, dim)`` with dimension ``x`` at positions ``0 .. dim - 1`` and periodic
    length ``dim``. :meth:`step` is not differentiable.
    """

    state_dims = ("x",)
    variable_name = "x"
    units = "1"
    long_name = "Lorenz-96 variable"

    def __init__(self, dim: int = 40, forcing: float = 8.0, dt: float = 0.05, *, backend: Backend = "auto") -> None:
        check_value("backend", backend, Backend)
        self.params = Lorenz96Params(dim=dim, forcing=forcing, dt=dt)
        self.backend = backend
        self._grid = Grid(axes=(np.arange(self.params.dim, dtype=np.float64),), lengths=(float(self.params.dim),))

    def __repr__(self) -> str:
        return f"Lorenz96({self.params!r}, backend={self.backend!r})"

    @property
    def grid(self) -> Grid:
        """Positions ``0 .. dim - 1`` on a ring of periodic length ``dim``."""
        return self._grid

    def initial_state(
        self,
        generator: torch.Generator,
        n_members: int = 1,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Draw ``n_members`` states from N(0, 3^2) independently per variable, shape ``(n_members, dim)``."""
        n_members = check_positive_int("n_members", n_members)
        return torch.randn(n_members, self.params.dim, generator=generator, dtype=dtype, device=device).mul_(3.0)

    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x`` of shape ``(member, dim)`` by ``n_steps`` RK4 steps of ``dt``.

        Returns a new tensor of the shape, dtype and device of ``x``; ``x`` is not modified.
        """
        self.check_state(x)
        n_steps = check_positive_int("n_steps", n_steps)
        return KERNELS[self._resolve_backend(x.device)](self.params, x, n_steps)

    def _resolve_backend(self, device: torch.device) -> Kernel:
        """The kernel that runs on ``device``; raise if a numba backend meets a non-CPU tensor."""
        on_cpu, elsewhere = BACKENDS[self.backend]
        kernel = on_cpu if device.type == "cpu" else elsewhere
        if kernel is None:
            raise ValueError(f"backend={self.backend!r} needs CPU tensors, got a state on {device}")
        return kernel


def _torch_steps(params: Lorenz96Params, x: torch.Tensor, n_steps: int) -> torch.Tensor:
    tendency = lorenz96_tendency(params.dim, params.forcing, device=x.device)
    return rk4_steps(tendency_field(tendency, x), x, params.dt, n_steps)


def _numba_steps(kernel: Callable[..., None]) -> Callable[[Lorenz96Params, torch.Tensor, int], torch.Tensor]:
    def run(params: Lorenz96Params, x: torch.Tensor, n_steps: int) -> torch.Tensor:
        src = x.detach().contiguous()
        out = torch.empty_like(src)
        scalar = src.numpy().dtype.type
        kernel(src.numpy(), out.numpy(), scalar(params.forcing), scalar(params.dt), n_steps)
        return out

    return run


#: ``n_steps`` RK4 steps of ``(member, dim)`` states by each :data:`Kernel` (a new tensor like ``x``).
KERNELS: Mapping[Kernel, Callable[[Lorenz96Params, torch.Tensor, int], torch.Tensor]] = MappingProxyType({
    "torch": _torch_steps,
    "numba": _numba_steps(l96_rk4_parallel),
    "numba-serial": _numba_steps(l96_rk4_serial),
})


def lorenz96_tendency(
    dim: int, forcing: float | torch.Tensor, damping: torch.Tensor | None = None, *, device: torch.device | str
) -> Tendency:
    """In-place Lorenz-96 tendency ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - c x_i + F`` for ``(member, dim)`` states.

    Parameters
    ----------
    dim:
        Number of variables on the ring (>= 4).
    forcing:
        ``F``: a number, or a tensor broadcasting against ``(member, dim)`` (per member or per site).
    damping:
        ``c``, a tensor broadcasting against ``(member, dim)``; ``None`` for the model's ``c = 1``.
    device:
        Device of the states.
    """
    edge = torch.tensor([0, 1, dim - 1], device=device)
    plus1, minus1, minus2 = (edge + 1) % dim, (edge - 1) % dim, (edge - 2) % dim

    def tendency(x: torch.Tensor, out: torch.Tensor) -> None:
        interior = out[:, 2:-1]
        torch.sub(x[:, 3:], x[:, :-3], out=interior)
        interior.mul_(x[:, 1:-2])
        out[:, edge] = (x[:, plus1] - x[:, minus2]) * x[:, minus1]
        out.sub_(x if damping is None else damping * x).add_(forcing)

    return tendency
