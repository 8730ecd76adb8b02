"""2-D Kolmogorov flow with the primitive state ``(pressure, u, v)``: the published experiments' variables.

The published Navier-Stokes experiments (Transue et al. 2025) carry pressure and both velocity
components at every grid point (``d = 3 n^2``), perturb all three by N(0, 1) for the initial ensemble,
observe ``arctan`` of all three and score RMSE over all three. Velocity and pressure are of order one
there, while the vorticity of the same flow is of order ten, so a vorticity-state run is a different
(much less observable) problem. This model gives the primitive state on top of the vorticity dynamics
of :class:`~enff.models.NavierStokes2D`:

* a step takes the vorticity of the state's velocity, ``w = v_x - u_y`` (which drops any divergent
  part of the velocity; the pressure in the state is not used), advances it with
  :meth:`NavierStokes2D.step` and returns the new velocity and its pressure;
* the pressure solves the incompressible pressure Poisson equation
  ``lap(p) = -d_i d_j (u_i u_j)`` (density 1; the Kolmogorov forcing is divergence-free and does not
  enter) with zero mean, products dealiased by the 2/3 rule.

So every returned state is divergence-free with its consistent pressure, whatever the analysis did
to the input.
"""

from __future__ import annotations

import numpy as np
import torch

from enff.checks import check_positive_int

from ._spectral import PerDeviceCache, complex_dtype, dealias_mask
from .base import MODELS, Grid, Model
from .navier_stokes import NavierStokes2D, _inverse_laplacian, _spectral_axes

__all__ = ["NavierStokes2DPrimitive", "FIELDS"]

#: Order of the fields on the state's leading axis.
FIELDS = ("pressure", "u", "v")


@MODELS.register("navier_stokes2d_primitive")
class NavierStokes2DPrimitive(Model):
    """Batched 2-D Kolmogorov flow; state ``(member, 3, n, n)`` indexed ``[member, field, y, x]``.

    ``field`` 0 is the pressure (length^2 / time^2, density 1, zero mean), 1 and 2 the velocity
    components ``u`` (along x) and ``v`` (along y) in length / time. The three fields share grid
    positions: the field axis has zero extent, so localization treats them as co-located.

    Parameters
    ----------
    n, length, viscosity, forcing_amplitude, forcing_wavenumber, dt, initial_length_scale, initial_velocity_std:
        As for :class:`~enff.models.NavierStokes2D`, whose dynamics this model uses.
    """

    state_dims = ("field", "y", "x")
    variable_name = "flow"
    units = "1"  # dimensionless model units: pressure in length^2/time^2 (density 1), u, v in length/time
    long_name = "pressure and velocity components u, v (field pressure, u, v; dimensionless model units)"

    def __init__(
        self,
        n: int = 64,
        length: float = 2.0,
        viscosity: float = 1e-3,
        forcing_amplitude: float = 0.05,
        forcing_wavenumber: int = 8,
        dt: float = 1e-3,
        initial_length_scale: float = 0.2,
        initial_velocity_std: float = 1.0,
    ) -> None:
        self.vorticity_model = NavierStokes2D(
            n=n, length=length, viscosity=viscosity, forcing_amplitude=forcing_amplitude,
            forcing_wavenumber=forcing_wavenumber, dt=dt, initial_length_scale=initial_length_scale,
            initial_velocity_std=initial_velocity_std,
        )
        self.params = self.vorticity_model.params
        self._operators = PerDeviceCache(self._build_operators)

    @property
    def grid(self) -> Grid:
        """The vorticity model's grid behind a field axis of zero extent (the fields are co-located)."""
        flat = self.vorticity_model.grid
        return Grid(axes=(np.zeros(len(FIELDS)), *flat.axes), lengths=(None, *flat.lengths))

    def coords(self) -> dict[str, np.ndarray]:
        """The field names :data:`FIELDS` (pressure, u, v) and the grid positions."""
        return {"field": np.array(FIELDS), "y": self.grid.axes[1], "x": self.grid.axes[2]}

    def _build_operators(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        p = self.params
        dky, dkx = np.broadcast_arrays(*_spectral_axes(p.n, p.length, zero_nyquist=True))
        ky, kx = _spectral_axes(p.n, p.length)
        keep = dealias_mask(p.n)[:, None] & dealias_mask(p.n, half=True)[None, :]
        # p_hat = -(kx^2 FFT(u u) + 2 kx ky FFT(u v) + ky^2 FFT(v v)) / |k|^2, products dealiased
        pressure = -np.stack([dkx**2, 2 * dkx * dky, dky**2]) * _inverse_laplacian(kx**2 + ky**2) * keep
        curl = np.stack([-1j * dky, 1j * dkx])  # w_hat = i kx v_hat - i ky u_hat
        return {
            "pressure": torch.from_numpy(np.ascontiguousarray(pressure)).to(device=device, dtype=dtype),
            "curl": torch.from_numpy(curl).to(device=device, dtype=complex_dtype(dtype)),
        }

    def pressure(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Zero-mean pressure of the divergence-free velocity ``(u, v)``, each ``(member, n, n)``.

        Solves ``lap(p) = -d_i d_j (u_i u_j)`` spectrally; returns ``(member, n, n)`` in length^2 / time^2.
        """
        ops = self._operators.get(u.device, u.dtype)
        products = torch.fft.rfft2(torch.stack([u * u, u * v, v * v], dim=1))
        return torch.fft.irfft2((products * ops["pressure"]).sum(dim=1), s=u.shape[-2:])

    def vorticity(self, x: torch.Tensor) -> torch.Tensor:
        """Vorticity ``v_x - u_y`` of the state ``x`` ``(member, 3, n, n)``; returns ``(member, n, n)`` (1 / time)."""
        self.check_state(x)
        ops = self._operators.get(x.device, x.dtype)
        uv_hat = torch.fft.rfft2(x[:, 1:])
        return torch.fft.irfft2((uv_hat * ops["curl"]).sum(dim=1), s=x.shape[-2:])

    def from_vorticity(self, w: torch.Tensor) -> torch.Tensor:
        """Primitive state ``(member, 3, n, n)`` of the vorticity ``w`` ``(member, n, n)``."""
        u, v = self.vorticity_model.velocity(w)
        return torch.stack([self.pressure(u, v), u, v], dim=1)

    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x`` ``(member, 3, n, n)`` by ``n_steps`` steps of ``dt`` (see the module docstring).

        The state's pressure and the divergent part of its velocity are discarded; the result is
        divergence-free with its consistent pressure. Raises ``ValueError`` as
        :meth:`NavierStokes2D.step` does when the Courant number is too large.
        """
        n_steps = check_positive_int("n_steps", n_steps)
        return self.from_vorticity(self.vorticity_model.step(self.vorticity(x), n_steps))

    def initial_state(
        self,
        generator: torch.Generator,
        n_members: int = 1,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Primitive state of :meth:`NavierStokes2D.initial_state` (a divergence-free Gaussian-process
        velocity and its pressure), shape ``(n_members, 3, n, n)``."""
        return self.from_vorticity(self.vorticity_model.initial_state(generator, n_members, dtype=dtype,
                                                                      device=device))
