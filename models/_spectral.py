"""Shared pieces of the pseudo-spectral models: wavenumbers, dealiasing, ETDRK4 and a coefficient cache.

Spectral arrays follow ``torch.fft``/``numpy.fft`` conventions: unnormalised forward transforms,
``1/n`` on the inverse, and the last axis of a real transform holds the ``n // 2 + 1`` non-negative
wavenumbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Generic, TypeVar

import numpy as np
import torch

__all__ = [
    "Etdrk4Coefficients",
    "PerDeviceCache",
    "complex_dtype",
    "dealias_mask",
    "etdrk4_coefficients",
    "etdrk4_step",
    "wavenumbers",
]

T = TypeVar("T")

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """Complex dtype matching a real one: complex64 for float32, complex128 for float64."""
    try:
        return _COMPLEX[dtype]
    except KeyError:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}") from None


def wavenumbers(n: int, length: float, *, half: bool = False, zero_nyquist: bool = False) -> np.ndarray:
    """Angular wavenumbers ``2 pi j / length`` of an ``n``-point periodic axis, in FFT order.

    Parameters
    ----------
    n:
        Number of grid points.
    length:
        Periodic length of the axis (model length units).
    half:
        Return the ``n // 2 + 1`` non-negative wavenumbers of a real (``rfft``) transform instead of
        all ``n`` of a full transform.
    zero_nyquist:
        Set the Nyquist wavenumber (``j = n / 2`` for even ``n``) to zero, as needed for odd
        derivatives so that they map real fields to real fields.

    Returns
    -------
    Array of shape ``(n,)`` or ``(n // 2 + 1,)``, float64, units 1 / length.
    """
    j = np.fft.rfftfreq(n, 1.0 / n) if half else np.fft.fftfreq(n, 1.0 / n)
    if zero_nyquist and n % 2 == 0:
        j = np.where(np.abs(j) == n // 2, 0.0, j)
    return 2.0 * np.pi * j / length


def dealias_mask(n: int, *, half: bool = False) -> np.ndarray:
    """Orszag's 2/3-rule mask of one axis: ``True`` where ``3 |j| < n`` (modes kept), FFT order.

    Returns a boolean array of shape ``(n,)``, or ``(n // 2 + 1,)`` with ``half=True``.
    """
    j = np.fft.rfftfreq(n, 1.0 / n) if half else np.fft.fftfreq(n, 1.0 / n)
    return 3.0 * np.abs(j) < n


@dataclass(frozen=True)
class Etdrk4Coefficients:
    """Per-mode ETDRK4 coefficients of Cox & Matthews (2002) for ``v' = L v + N(v)`` with diagonal real ``L``.

    All fields are real tensors of the spectral shape (multiplying the complex spectra mode by mode):
    ``e = exp(L h)``, ``e2 = exp(L h / 2)``, ``q = h phi_1(L h / 2) / 2`` and the three weights
    ``f1, f2, f3`` of the final combination (``alpha, beta, gamma`` in Kassam & Trefethen 2005).
    """

    e: torch.Tensor
    e2: torch.Tensor
    q: torch.Tensor
    f1: torch.Tensor
    f2: torch.Tensor
    f3: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> Etdrk4Coefficients:
        """Copy of the coefficients on ``device`` with real dtype ``dtype``."""
        moved = {f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)}
        return Etdrk4Coefficients(**moved)


def etdrk4_coefficients(linear: np.ndarray, dt: float, n_contour: int = 32) -> Etdrk4Coefficients:
    """ETDRK4 coefficients for the diagonal linear operator ``linear`` and step ``dt``.

    The phi-functions are evaluated as means over ``n_contour`` points of a unit circle centred at
    each ``L dt`` in the complex plane (Kassam & Trefethen 2005), which avoids the cancellation of the
    explicit formulas for small ``|L dt|``.

    Parameters
    ----------
    linear:
        Real eigenvalues ``L`` of the linear operator, any shape (units 1 / time).
    dt:
        Time step (time units).
    n_contour:
        Number of contour points.

    Returns
    -------
    Float64 CPU coefficients of the shape of ``linear``.
    """
    lh = np.asarray(linear, dtype=np.float64) * dt
    roots = np.exp(1j * np.pi * (np.arange(1, n_contour + 1) - 0.5) / n_contour)
    z = lh[..., None] + roots
    ez = np.exp(z)

    def contour_mean(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(dt * np.mean(values, axis=-1).real)

    return Etdrk4Coefficients(
        e=torch.from_numpy(np.exp(lh)),
        e2=torch.from_numpy(np.exp(lh / 2)),
        q=contour_mean((np.exp(z / 2) - 1) / z),
        f1=contour_mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3),
        f2=contour_mean((2 + z + ez * (z - 2)) / z**3),
        f3=contour_mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3),
    )


def etdrk4_step(
    v: torch.Tensor, coef: Etdrk4Coefficients, nonlinear: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """One ETDRK4 step of ``v' = L v + N(v)`` in spectral space (Cox & Matthews 2002).

    Parameters
    ----------
    v:
        Complex spectra, shape ``(member, *spectral_shape)``.
    coef:
        Coefficients from :func:`etdrk4_coefficients` on ``v``'s device, broadcasting against ``v``.
    nonlinear:
        ``N``, mapping spectra to spectra of the same shape.

    Returns
    -------
    The spectra one step later, a new tensor.
    """
    nv = nonlinear(v)
    e2v = coef.e2 * v
    a = e2v + coef.q * nv
    na = nonlinear(a)
    b = e2v + coef.q * na
    nb = nonlinear(b)
    c = coef.e2 * a + coef.q * (2 * nb - nv)
    nc = nonlinear(c)
    return coef.e * v + coef.f1 * nv + coef.f2 * (2 * (na + nb)) + coef.f3 * nc


class PerDeviceCache(Generic[T]):
    """Build an object once per ``(device, dtype)`` and hand back the cached one afterwards.

    Parameters
    ----------
    build:
        ``build(device, dtype)`` returning the object (e.g. coefficient tensors) for that pair.
    """

    def __init__(self, build: Callable[[torch.device, torch.dtype], T]) -> None:
        self._build = build
        self._items: dict[tuple[torch.device, torch.dtype], T] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> T:
        """The object for ``(device, dtype)``, built on first use."""
        key = (torch.device(device), dtype)
        if key not in self._items:
            self._items[key] = self._build(*key)
        return self._items[key]
