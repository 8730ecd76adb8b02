"""Two-dimensional incompressible Navier-Stokes with Kolmogorov forcing, pseudo-spectral ETDRK4.

Vorticity form on the periodic square ``[0, length)^2``::

    w_t + u . grad(w) = nu lap(w) + curl(f),    f = (A sin(k_f y), 0),    k_f = 2 pi m / length,

so ``curl(f) = -A k_f cos(k_f y)``. The velocity comes from the stream function, ``lap(psi) = -w``,
``u = psi_y``, ``v = -psi_x``. The viscous term is integrated exactly by exponential time
differencing (ETDRK4, Cox & Matthews 2002, contour-integral coefficients of Kassam & Trefethen
2005); the forcing enters as a constant tendency. The advection term is evaluated
pseudo-spectrally in Basdevant's (1983) form, which for divergence-free velocity reads
``u . grad(w) = d_x d_y (v^2 - u^2) + (d_xx - d_yy)(u v)`` and costs two inverse and two forward
FFTs per evaluation, with Orszag's 2/3-rule dealiasing (the velocity and the products are
truncated to ``3 |j| < n``, so the products are alias-free). The laminar steady state
``w = -(A / (nu k_f)) cos(k_f y)`` is a fixed point of the scheme. The state is the vorticity
``w[member, y, x]`` on ``x_j = y_j = j length / n``.

Stability: ETDRK4 is explicit in the advection term, so ``dt`` must satisfy the Courant condition
``dt k_max max(|u| + |v|) <= 2.8`` (the RK4 limit on the imaginary axis is ``2 sqrt 2``), with
``k_max`` the largest retained wavenumber. It is checked against the laminar velocity when the
parameters are made and against the current velocity at the start of every :meth:`NavierStokes2D.step`
call. The bound is conservative: with Gaussian-process states at n = 64 the scheme stayed stable up
to 3.7 on this estimate and failed at 4.4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from enff.checks import check_positive, check_positive_int

from ._spectral import (
    Etdrk4Coefficients,
    PerDeviceCache,
    complex_dtype,
    dealias_mask,
    etdrk4_coefficients,
    etdrk4_step,
    wavenumbers,
)
from .base import MODELS, Grid, Model

__all__ = ["NavierStokes2D", "NavierStokes2DParams", "Velocity", "COURANT_LIMIT"]

#: Largest Courant number ``dt k_max max(|u| + |v|)`` accepted by :class:`NavierStokes2D`.
COURANT_LIMIT = 2.8


@dataclass(frozen=True)
class NavierStokes2DParams:
    """Parameters of :class:`NavierStokes2D`.

    Attributes
    ----------
    n:
        Grid points per side; the forcing mode must survive dealiasing (``3 m < n``).
    length:
        Side of the periodic square (length units).
    viscosity:
        Kinematic viscosity ``nu`` (length^2 / time).
    forcing_amplitude:
        ``A`` in ``f_x = A sin(2 pi m y / length)`` (length / time^2); 0 gives unforced flow.
    forcing_wavenumber:
        Integer mode number ``m`` of the forcing.
    dt:
        Time step (time units). The default 1e-3 divides the observation interval 0.01 and is
        stable and accurate up to ``n = 256`` with the default initial velocity (std 1): there a
        20-member draw had Courant numbers up to 1.5 (the limit is 2.8), and one member stayed
        within 3e-8 (relative L2) of a dt = 2.5e-4 run over 0.2 time units. Coarser grids allow
        larger steps (``n = 64``: 2.5e-3 stays within 1.3e-5 over 0.5 time units).
    initial_length_scale:
        Length scale ``l`` of the Gaussian covariance of the initial velocity (length units).
    initial_velocity_std:
        Pointwise standard deviation of each initial velocity component (length / time).
    """

    n: int = 64
    length: float = 2.0
    viscosity: float = 1e-3
    forcing_amplitude: float = 0.05
    forcing_wavenumber: int = 8
    dt: float = 1e-3
    initial_length_scale: float = 0.2
    initial_velocity_std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_positive_int("n", self.n))
        m = check_positive_int("forcing_wavenumber", self.forcing_wavenumber)
        object.__setattr__(self, "forcing_wavenumber", m)
        check_positive("length", self.length)
        check_positive("viscosity", self.viscosity)
        check_positive("dt", self.dt)
        check_positive("initial_length_scale", self.initial_length_scale)
        check_positive("initial_velocity_std", self.initial_velocity_std)
        if not np.isfinite(self.forcing_amplitude):
            raise ValueError(f"forcing_amplitude must be finite, got {self.forcing_amplitude!r}")
        if 3 * self.forcing_wavenumber >= self.n:
            raise ValueError(
                f"forcing_wavenumber={self.forcing_wavenumber} is removed by 2/3-rule dealiasing on n={self.n}; "
                f"use forcing_wavenumber < n / 3"
            )
        _check_courant(self.dt, self.laminar_speed * self.k_max, "the laminar velocity A / (nu k_f^2)")

    @property
    def k_max(self) -> float:
        """Largest wavenumber kept by dealiasing (1 / length units)."""
        return float(np.max(np.abs(wavenumbers(self.n, self.length)[dealias_mask(self.n)])))

    @property
    def laminar_speed(self) -> float:
        """Speed ``|A| / (nu k_f^2)`` of the laminar Kolmogorov flow (length / time)."""
        k_f = 2 * np.pi * self.forcing_wavenumber / self.length
        return abs(self.forcing_amplitude) / (self.viscosity * k_f**2)


def _check_courant(dt: float, rate: float, what: str) -> None:
    """Raise ``ValueError`` naming ``dt`` if ``dt * rate`` exceeds :data:`COURANT_LIMIT`.

    ``rate`` is ``k_max max(|u| + |v|)`` (maximum over the grid) in 1 / time units; ``what`` names
    the velocity it came from.
    """
    if dt * rate > COURANT_LIMIT:
        raise ValueError(
            f"dt={dt:g} is unstable for {what}: Courant number dt k_max max(|u| + |v|) = {dt * rate:.3g} "
            f"exceeds {COURANT_LIMIT}; use dt <= {COURANT_LIMIT / rate:.3g}"
        )


class Velocity(NamedTuple):
    """Velocity components, each of shape ``(member, n, n)`` indexed ``[member, y, x]`` (length / time)."""

    u: torch.Tensor
    v: torch.Tensor


@dataclass(frozen=True)
class _Coefficients:
    """Spectral operators of one (device, dtype), all of spectral shape ``(n, n // 2 + 1)`` per field.

    ``velocity`` maps ``w_hat`` to the ``(u, v)`` spectra and ``dealiased_velocity`` to their 2/3-rule
    truncation; ``products`` (real) maps the spectra of ``(v^2 - u^2, u v)`` to minus the dealiased
    advection term, ``(k_x k_y, k_x^2 - k_y^2)`` times the mask; ``forcing`` is ``FFT(curl f)``.
    """

    etd: Etdrk4Coefficients
    dealiased_velocity: torch.Tensor
    products: torch.Tensor
    forcing: torch.Tensor
    velocity: torch.Tensor


def _spectral_axes(n: int, length: float, *, zero_nyquist: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers ``(ky, kx)`` shaped ``(n, 1)`` and ``(1, n // 2 + 1)`` for ``rfft2`` over ``[y, x]``."""
    ky = wavenumbers(n, length, zero_nyquist=zero_nyquist)[:, None]
    kx = wavenumbers(n, length, half=True, zero_nyquist=zero_nyquist)[None, :]
    return ky, kx


def _inverse_laplacian(k2: np.ndarray) -> np.ndarray:
    """``1 / |k|^2`` with 0 for the mean mode."""
    return np.divide(1.0, k2, out=np.zeros_like(k2), where=k2 > 0)


def _stream_amplitude(k2: np.ndarray, length_scale: float) -> np.ndarray:
    """Unscaled spectral amplitude ``exp(-|k|^2 l^2 / 4) / |k|`` of the initial stream function (0 at k = 0)."""
    return np.sqrt(_inverse_laplacian(k2)) * np.exp(-k2 * length_scale**2 / 4)


@MODELS.register("navier_stokes2d")
class NavierStokes2D(Model):
    """Batched 2-D Kolmogorov flow; state is the vorticity of shape ``(member, n, n)``, ``[member, y, x]``.

    Parameters
    ----------
    n, length, viscosity, forcing_amplitude, forcing_wavenumber, dt, initial_length_scale, initial_velocity_std:
        See :class:`NavierStokes2DParams`.
    """

    state_dims = ("y", "x")
    variable_name = "vorticity"
    units = "1"  # dimensionless model units: 1 / time
    long_name = "relative vorticity (dimensionless model units, 1 / time)"

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
        self.params = NavierStokes2DParams(
            n=n,
            length=length,
            viscosity=viscosity,
            forcing_amplitude=forcing_amplitude,
            forcing_wavenumber=forcing_wavenumber,
            dt=dt,
            initial_length_scale=initial_length_scale,
            initial_velocity_std=initial_velocity_std,
        )
        self._coefficients = PerDeviceCache(self._build_coefficients)

    @property
    def grid(self) -> Grid:
        """Grid points ``j length / n`` on both axes, both periodic with length ``length``."""
        p = self.params
        axis = np.arange(p.n) * (p.length / p.n)
        return Grid(axes=(axis, axis.copy()), lengths=(float(p.length), float(p.length)))

    def _build_coefficients(self, device: torch.device, dtype: torch.dtype) -> _Coefficients:
        p = self.params
        ky, kx = _spectral_axes(p.n, p.length)
        dky, dkx = _spectral_axes(p.n, p.length, zero_nyquist=True)
        k2 = kx**2 + ky**2
        inv_k2 = _inverse_laplacian(k2)
        keep = dealias_mask(p.n)[:, None] & dealias_mask(p.n, half=True)[None, :]
        velocity = np.stack([1j * dky * inv_k2, -1j * dkx * inv_k2])
        k_f = 2 * np.pi * p.forcing_wavenumber / p.length
        y = self.grid.axes[0][:, None]
        curl_f = np.broadcast_to(-p.forcing_amplitude * k_f * np.cos(k_f * y), (p.n, p.n))
        cdtype = complex_dtype(dtype)

        def put(a: np.ndarray, kind: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=kind)

        return _Coefficients(
            etd=etdrk4_coefficients(-p.viscosity * k2, p.dt).to(device, dtype),
            dealiased_velocity=put(velocity * keep, cdtype),
            products=put(np.stack([kx * ky, kx**2 - ky**2]) * keep, dtype),
            forcing=put(np.fft.rfft2(curl_f), cdtype),
            velocity=put(velocity, cdtype),
        )

    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance the vorticity ``x`` of shape ``(member, n, n)`` by ``n_steps`` ETDRK4 steps of ``dt``.

        Raises ``ValueError`` naming ``dt`` if the Courant number of the current velocity exceeds
        :data:`COURANT_LIMIT`. Returns a new tensor of the same shape, dtype and device; ``x`` is not
        modified.
        """
        self.check_state(x)
        n_steps = check_positive_int("n_steps", n_steps)
        c = self._coefficients.get(x.device, x.dtype)
        shape = (self.params.n, self.params.n)

        def dealiased_velocity(w_hat: torch.Tensor) -> torch.Tensor:
            """Dealiased ``(u, v)`` on the grid, shape ``(member, 2, n, n)``."""
            return torch.fft.irfft2(w_hat.unsqueeze(1) * c.dealiased_velocity, s=shape)

        def nonlinear(w_hat: torch.Tensor) -> torch.Tensor:
            u, v = dealiased_velocity(w_hat).unbind(1)
            products = torch.fft.rfft2(torch.stack([(v - u) * (v + u), u * v], dim=1))
            return (products * c.products).sum(dim=1) + c.forcing

        w_hat = torch.fft.rfft2(x)
        speed = dealiased_velocity(w_hat).abs().sum(dim=1).amax()
        _check_courant(self.dt, float(speed) * self.params.k_max, "the current velocity of x")
        for _ in range(n_steps):
            w_hat = etdrk4_step(w_hat, c.etd, nonlinear)
        return torch.fft.irfft2(w_hat, s=shape)

    def velocity(self, w: torch.Tensor) -> Velocity:
        """Velocity ``(u, v) = (psi_y, -psi_x)`` of the vorticity ``w``, where ``lap(psi) = -w``.

        Parameters
        ----------
        w:
            Vorticity, shape ``(member, n, n)`` indexed ``[member, y, x]`` (1 / time).

        Returns
        -------
        :class:`Velocity` with ``u`` and ``v`` of shape ``(member, n, n)`` (length / time); the mean
        flow is zero and the divergence vanishes to round-off (Nyquist modes carry no velocity).
        """
        self.check_state(w)
        c = self._coefficients.get(w.device, w.dtype)
        uv = torch.fft.irfft2(torch.fft.rfft2(w).unsqueeze(1) * c.velocity, s=(self.params.n, self.params.n))
        return Velocity(*uv.unbind(1))

    def initial_state(
        self,
        generator: torch.Generator,
        n_members: int = 1,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Vorticity of a random divergence-free Gaussian-process velocity field.

        The velocity is the divergence-free (Leray) projection of a stationary Gaussian field with
        covariance ``exp(-|r|^2 / (2 l^2))`` (``l = initial_length_scale``, periodised on the grid),
        with the mean flow removed, scaled so that each velocity component has pointwise standard
        deviation exactly ``initial_velocity_std`` (as :meth:`velocity` computes it). Equivalently
        the stream function has spectrum ``exp(-|k|^2 l^2 / 2) / |k|^2``. It is drawn from white
        noise in float64 with ``generator`` (on ``device``) and then cast, so a seed gives the same
        states in both dtypes.

        Returns
        -------
        Tensor of shape ``(n_members, n, n)`` indexed ``[member, y, x]``.
        """
        n_members = check_positive_int("n_members", n_members)
        complex_dtype(dtype)  # raises ValueError naming dtype unless float32/float64
        p = self.params
        ky, kx = _spectral_axes(p.n, p.length)
        k2 = kx**2 + ky**2
        amplitude = _stream_amplitude(k2, p.initial_length_scale)
        # u_hat = i ky_d A(k) FFT(noise) has pointwise variance sum_k (ky_d A(k))^2 / n^2 over the full
        # spectrum (Parseval), which fixes the scale; the square grid makes v's variance the same.
        k_full = wavenumbers(p.n, p.length)
        ky_derivative = wavenumbers(p.n, p.length, zero_nyquist=True)[:, None]
        full = _stream_amplitude(k_full[:, None] ** 2 + k_full[None, :] ** 2, p.initial_length_scale)
        u_std = np.sqrt(np.sum((ky_derivative * full) ** 2)) / p.n
        multiplier = torch.from_numpy(k2 * amplitude * (p.initial_velocity_std / u_std)).to(device)
        noise = torch.randn(n_members, p.n, p.n, generator=generator, device=device, dtype=torch.float64)
        return torch.fft.irfft2(torch.fft.rfft2(noise) * multiplier, s=(p.n, p.n)).to(dtype)
