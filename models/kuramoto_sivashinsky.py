"""The Kuramoto-Sivashinsky equation on a periodic line, integrated with ETDRK4.

``u_t = -u u_x - u_xx - u_xxxx`` on ``[0, length)`` with ``dim`` points ``x_j = j length / dim``.
In Fourier space ``v_k' = (k^2 - k^4) v_k - (i k / 2) FFT(u^2)_k``: the stiff linear part is
integrated exactly by exponential time differencing (ETDRK4, Cox & Matthews 2002) with the
contour-integral coefficients of Kassam & Trefethen (2005), and the quadratic term is evaluated
pseudo-spectrally without dealiasing (at the default resolution, 8 points per unit wavelength
of the most unstable mode, the spectrum has decayed to round-off well below the Nyquist wavenumber).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from enff.checks import check_positive, check_positive_int

from ._spectral import (
    Etdrk4Coefficients,
    PerDeviceCache,
    complex_dtype,
    etdrk4_coefficients,
    etdrk4_step,
    wavenumbers,
)
from .base import MODELS, Grid, Model

__all__ = ["KuramotoSivashinsky", "KuramotoSivashinskyParams"]


@dataclass(frozen=True)
class KuramotoSivashinskyParams:
    """Parameters of :class:`KuramotoSivashinsky`.

    Attributes
    ----------
    dim:
        Number of grid points (>= 4).
    length:
        Periodic domain length (space units).
    dt:
        ETDRK4 time step (time units).
    initial_noise_std:
        Standard deviation of the white noise added to the smooth initial state (>= 0).
    """

    dim: int = 1024
    length: float = 128 * math.pi
    dt: float = 0.25
    initial_noise_std: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("dim", self.dim)
        if self.dim < 4:
            raise ValueError(f"dim must be at least 4, got {self.dim!r}")
        check_positive("length", self.length)
        check_positive("dt", self.dt)
        if not np.isfinite(self.initial_noise_std) or self.initial_noise_std < 0:
            raise ValueError(f"initial_noise_std must be finite and >= 0, got {self.initial_noise_std!r}")


@dataclass(frozen=True)
class _Coefficients:
    """Spectral operators of one (device, dtype): ETDRK4 weights and the ``-i k / 2`` multiplier."""

    etd: Etdrk4Coefficients
    half_ik: torch.Tensor


@MODELS.register("kuramoto_sivashinsky")
class KuramotoSivashinsky(Model):
    """Batched Kuramoto-Sivashinsky model, state ``u`` of shape ``(member, dim)`` on ``x_j = j length / dim``.

    Parameters
    ----------
    dim, length, dt, initial_noise_std:
        See :class:`KuramotoSivashinskyParams`.
    """

    state_dims = ("x",)
    variable_name = "u"
    long_name = "Kuramoto-Sivashinsky field"

    def __init__(
        self, dim: int = 1024, length: float = 128 * math.pi, dt: float = 0.25, initial_noise_std: float = 1.0
    ) -> None:
        self.params = KuramotoSivashinskyParams(dim=dim, length=length, dt=dt, initial_noise_std=initial_noise_std)
        self._coefficients = PerDeviceCache(self._build_coefficients)

    @property
    def grid(self) -> Grid:
        """Grid points ``x_j = j length / dim`` with periodic length ``length``."""
        p = self.params
        return Grid(axes=(np.arange(p.dim) * (p.length / p.dim),), lengths=(float(p.length),))

    def _build_coefficients(self, device: torch.device, dtype: torch.dtype) -> _Coefficients:
        p = self.params
        k = wavenumbers(p.dim, p.length, half=True)
        etd = etdrk4_coefficients(k**2 - k**4, p.dt).to(device, dtype)
        half_ik = torch.from_numpy(-0.5j * wavenumbers(p.dim, p.length, half=True, zero_nyquist=True))
        return _Coefficients(etd=etd, half_ik=half_ik.to(device=device, dtype=complex_dtype(dtype)))

    @torch.no_grad()
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x`` of shape ``(member, dim)`` by ``n_steps`` ETDRK4 steps of ``dt``.

        Returns a new tensor of the same shape, dtype and device; ``x`` is not modified.
        """
        self.check_state(x)
        n_steps = check_positive_int("n_steps", n_steps)
        c = self._coefficients.get(x.device, x.dtype)
        dim = self.params.dim

        def nonlinear(v: torch.Tensor) -> torch.Tensor:
            return c.half_ik * torch.fft.rfft(torch.fft.irfft(v, n=dim) ** 2)

        v = torch.fft.rfft(x)
        for _ in range(n_steps):
            v = etdrk4_step(v, c.etd, nonlinear)
        return torch.fft.irfft(v, n=dim)

    def initial_state(
        self,
        generator: torch.Generator,
        n_members: int = 1,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Smooth start plus white noise: ``cos(x / 16) (1 + sin(x / 16)) + initial_noise_std * N(0, 1)``.

        The smooth part is Kassam & Trefethen's initial condition (periodic when ``length`` is a
        multiple of ``32 pi``, as the default ``128 pi`` is); the noise is independent at every point
        and member. Noise is drawn in float64 from ``generator`` (on ``device``) and then cast, so a
        seed gives the same states in both dtypes.

        Returns
        -------
        Tensor of shape ``(n_members, dim)``.
        """
        n_members = check_positive_int("n_members", n_members)
        complex_dtype(dtype)  # raises ValueError naming dtype unless float32/float64
        x = torch.as_tensor(self.grid.axes[0], device=device)
        smooth = torch.cos(x / 16) * (1 + torch.sin(x / 16))
        noise = torch.randn(n_members, self.params.dim, generator=generator, device=device, dtype=torch.float64)
        return (smooth + self.params.initial_noise_std * noise).to(dtype)
