"""The line search's step lengths (:func:`~enff.filters.step_length.best_step_lengths`) as one numba kernel.

The torch function forms the trial states of every local problem at every step length as float64 tensors
(``(steps, batch, n_obs)``, about ten passes over them); this kernel walks the local problems one at a time
and keeps the increments at the local observations' elements in a small scratch array, so it reads each
problem's data once. The cost and its ties are the torch function's (the sum over the local observations
runs in another order, so costs agree to round-off). Only observation operators whose pointwise map is one
of :data:`PointwiseKind` have a kernel form (:func:`pointwise_kind`); the others use the torch function.
Compiled lazily and cached on disk (``cache=True``).
"""

from __future__ import annotations

import enum
import math

import numba
import numpy as np

from enff.observations.base import Compose, ObservationOperator
from enff.observations.operators import ATan, Identity, Power, Selection, Tanh

__all__ = ["PointwiseKind", "pointwise_kind", "step_lengths"]


class PointwiseKind(enum.IntEnum):
    """The pointwise maps ``g`` the kernel evaluates (``exponent`` is used by ``POWER`` only)."""

    IDENTITY = 0
    ATAN = 1
    TANH = 2
    POWER = 3  # sign(z) |z|^exponent


def pointwise_kind(operator: ObservationOperator) -> tuple[PointwiseKind, float] | None:
    """The kernel form ``(kind, exponent)`` of ``operator``'s pointwise map, or ``None`` if it has none.

    Selections pass elements through (identity); a composition has a form when at most one of its two
    parts is not the identity.
    """
    if isinstance(operator, (Selection, Identity)):
        return PointwiseKind.IDENTITY, 1.0
    if isinstance(operator, ATan):
        return PointwiseKind.ATAN, 1.0
    if isinstance(operator, Tanh):
        return PointwiseKind.TANH, 1.0
    if isinstance(operator, Power):
        return PointwiseKind.POWER, float(operator.exponent)
    if isinstance(operator, Compose):
        first, second = pointwise_kind(operator.first), pointwise_kind(operator.second)
        if first is None or second is None:
            return None
        if first[0] == PointwiseKind.IDENTITY:
            return second
        if second[0] == PointwiseKind.IDENTITY:
            return first
    return None


@numba.njit(cache=True)
def _apply(kind, exponent, z):
    """``g(z)`` of :class:`PointwiseKind` ``kind`` for one float64 ``z``."""
    if kind == 1:
        return math.atan(z)
    if kind == 2:
        return math.tanh(z)
    if kind == 3:
        return math.copysign(abs(z) ** exponent, z)
    return z


@numba.njit(cache=True)
def step_lengths(anomalies, mean, wbar, index, weight, sources, innovation, observed_mean, error_std, kind,
                 exponent, halvings, out):
    """The step length of each local problem, minimizing ``J(a)`` over ``1, 1/2, ..., 2^-halvings, 0``.

    Parameters
    ----------
    anomalies, mean:
        Forecast anomalies ``(N, d)`` and mean ``(d,)``.
    wbar:
        Mean weights of each local problem, ``(rows, N)`` float64.
    index, weight:
        Local observation indices and tapers of each problem, ``(rows, width)`` (zero taper: padding).
    sources:
        Flat state index of each observation, ``(p,)`` int64.
    innovation, observed_mean, error_std:
        Scaled innovation ``dy``, ensemble mean of ``h(x)`` and error std ``s`` of each observation, ``(p,)``.
    kind, exponent:
        The pointwise map (:func:`pointwise_kind`).
    halvings:
        :data:`~enff.filters.step_length.STEP_HALVINGS`.
    out:
        The chosen step lengths, ``(rows,)`` float64, written; ties go to the longer step.
    """
    n_members = anomalies.shape[0]
    width = index.shape[1]
    base = np.empty(width)
    increment = np.empty(width)
    prior_scale = 0.5 * (n_members - 1.0)
    for row in range(wbar.shape[0]):
        norm2 = 0.0
        for k in range(n_members):
            norm2 += wbar[row, k] * wbar[row, k]
        for a in range(width):
            source = sources[index[row, a]]
            base[a] = np.float64(mean[source])
            acc = 0.0
            for k in range(n_members):
                acc += np.float64(anomalies[k, source]) * wbar[row, k]
            increment[a] = acc
        best_cost = math.inf
        best_step = 0.0
        for s in range(halvings + 2):
            step = 0.0 if s == halvings + 1 else 2.0 ** -s
            cost = prior_scale * (step * step) * norm2
            for a in range(width):
                w = np.float64(weight[row, a])
                if w == 0.0:
                    continue
                obs = index[row, a]
                residual = np.float64(innovation[obs]) - (
                    _apply(kind, exponent, base[a] + step * increment[a]) - np.float64(observed_mean[obs])
                ) / np.float64(error_std[obs])
                cost += 0.5 * w * residual * residual
            if cost < best_cost:
                best_cost = cost
                best_step = step
        out[row] = best_step
