"""The Lorenz-63 model, ``dx/dt = sigma (y - x)``, ``dy/dt = x (rho - z) - y``, ``dz/dt = x y - beta z``.

Integrated with classical RK4 on torch tensors of shape ``(member, 3)`` on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from enff.checks import check_positive, check_positive_int
from enff.integrate import rk4_steps, tendency_field

from .base import MODELS, Grid, Model

__all__ = ["L63_MAX_DT_TIMES_RATE", "Lorenz63", "Lorenz63Params"]

#: Largest accepted ``dt * (sigma + 1 + beta)`` (the rate ``sigma + 1 + beta`` is minus the trace of
#: the Jacobian, the phase-space contraction rate). Measured here with RK4 from 200 states on the
#: attractor over 100 time units: with (10, 28, 8/3) every trajectory stayed bounded up to
#: dt = 0.13 (1.78), 5 % diverged at 0.14 (1.91) and 19 % at 0.15 (2.05); with (16, 45.92, 4)
#: 2.5 % diverged at dt = 0.08 (1.68) and 26 % at 0.095 (2.0). The bound rejects steps that fail
#: in a long run (standard parameters: dt > 0.146); the usual dt = 0.01 is far below.
L63_MAX_DT_TIMES_RATE = 2.0


@dataclass(frozen=True)
class Lorenz63Params:
    """Parameters of :class:`Lorenz63` (the classical chaotic values by default).

    Attributes
    ----------
    sigma, rho, beta:
        Prandtl number, Rayleigh-number ratio and geometric factor; all finite and > 0.
    dt:
        RK4 time step in model time units, ``0 < dt * (sigma + 1 + beta) <= L63_MAX_DT_TIMES_RATE``.
    """

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    dt: float = 0.01

    def __post_init__(self) -> None:
        for name in ("sigma", "rho", "beta", "dt"):
            object.__setattr__(self, name, check_positive(name, getattr(self, name)))
        dt_max = L63_MAX_DT_TIMES_RATE / (self.sigma + 1.0 + self.beta)
        if self.dt > dt_max:
            raise ValueError(f"dt = {self.dt} exceeds the RK4 stability bound {dt_max:.4g} of Lorenz-63 with {self}")


@MODELS.register("lorenz63")
class Lorenz63(Model):
    """The three-variable Lorenz-63 system, integrated with RK4.

    Parameters
    ----------
    sigma, rho, beta, dt:
        See :class:`Lorenz63Params`.

    Notes
    -----
    The state is ``(member, 3)`` holding ``(x, y, z)`` along dimension ``variable`` at positions
    0, 1, 2 (not periodic). :meth:`step` is not differentiable.
    """

    state_dims = ("variable",)
    variable_name = "state"
    units = "1"
    long_name = "Lorenz-63 state (x, y, z)"

    def __init__(self, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0, dt: float = 0.01) -> None:
        self.params = Lorenz63Params(sigma=sigma, rho=rho, beta=beta, dt=dt)
        self._grid = Grid(axes=(np.arange(3, dtype=np.float64),), lengths=(None,))

    def __repr__(self) -> str:
        return f"Lorenz63({self.params!r})"

    @property
    def grid(self) -> Grid:
        """Positions 0, 1, 2 of ``x, y, z`` on a non-periodic axis."""
        return self._grid

    def initial_state(
        self,
        generator: torch.Generator,
        n_members: int = 1,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Draw ``n_members`` states from N(0, 1) independently per variable, shape ``(n_members, 3)``."""
        n_members = check_positive_int("n_members", n_members)
        return torch.randn(n_members, 3, generator=generator, dtype=dtype, device=device)

    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x`` of shape ``(member, 3)`` by ``n_steps`` RK4 steps of ``dt``.

        Returns a new tensor of the shape, dtype and device of ``x``; ``x`` is not modified.
        """
        self.check_state(x)
        n_steps = check_positive_int("n_steps", n_steps)
        return rk4_steps(tendency_field(self._tendency, x), x, self.params.dt, n_steps)

    def _tendency(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Write the Lorenz-63 tendency of ``x`` (``(member, 3)``) into ``out``."""
        p = self.params
        out[:, 0] = p.sigma * (x[:, 1] - x[:, 0])
        out[:, 1] = x[:, 0] * (p.rho - x[:, 2]) - x[:, 1]
        out[:, 2] = x[:, 0] * x[:, 1] - p.beta * x[:, 2]
