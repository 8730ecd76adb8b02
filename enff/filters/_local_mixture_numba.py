"""Fused numba kernel of the localized Monte Carlo weights on a periodic grid (CPU), one particle at a time.

For particle ``i`` it forms the squared distances to every member summed over the co-located fields,
``q_jl = sum_f (x_ifl - c_jfl)^2`` (float64, ``(points, members)``), then at every point ``k`` the tapered sum
``D_jk = sum_o rho_o q_j,k+o`` over the taper's non-zero offsets ``o`` (periodic wrap), the softmax of
``scale * D_jk + log_prior_jk`` over members, its collapse statistics, and the weighted member averages of
each value. This is :func:`~enff.filters.local_weights.local_mixture` with the
:class:`~enff.filters.spatial_taper.PeriodicTaper`, in one pass over the particle's data and without the
``(particles, members, points)`` work arrays of the torch path; all sums in float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["local_mixture_points"]

#: Let LLVM reorder sums and fuse multiply-adds (so that the loops over members vectorize).
_FASTMATH = {"reassoc", "contract"}
#: Members whose logit is this far below the largest get weight 0 instead of ``exp(-gap) < 4e-44`` (far below
#: float64 round-off beside the largest weight's 1, and it keeps the arithmetic out of subnormal numbers,
#: whose operations cost about a hundred times more: collapsed weights are the common case).
_NEGLIGIBLE_GAP = 100.0


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def local_mixture_points(x, centres, values, log_prior, n0, n1, off0, off1, taps, scale, averages, largest, ess,
                         followed):
    """Localized weights and weighted member averages of every particle, written into ``averages``.

    Parameters
    ----------
    x:
        Particles, shape ``(P, F, K)`` (``F`` co-located fields, ``K = n0 * n1`` grid points, row-major).
    centres:
        Mixture centres, members last: shape ``(K, F, M)``.
    values:
        Member quantities to average, members last: shape ``(V, K, F, M)``.
    log_prior:
        Member log-weights per point, shape ``(K, M)`` float64, or ``(0, M)`` for none.
    n0, n1:
        Grid shape (``n1 = 1`` on a one-dimensional grid).
    off0, off1, taps:
        The taper's non-zero offsets on each axis (in ``[0, n)``, periodic) and their weights, ``(T,)``.
    scale:
        ``-1 / (2 sigma^2)``.
    averages:
        Output, shape ``(V, P, F, K)``.
    largest, ess, followed:
        Accumulated in place (float64): the sum over particles and points of the largest weight, shape
        ``(1,)``; the sum over particles of the effective sample size ``1 / sum_j w_j^2`` per point, ``(K,)``;
        how many particles follow member ``j`` (their largest weight) at each point, ``(M, K)``.
    """
    n_particles, n_fields, n_points = x.shape
    n_members = centres.shape[2]
    n_values = values.shape[0]
    has_prior = log_prior.shape[0] > 0
    squared = np.empty((n_points, n_members))
    logits = np.empty(n_members)
    for i in range(n_particles):
        for k in range(n_points):
            for j in range(n_members):
                squared[k, j] = 0.0
            for f in range(n_fields):
                xi = np.float64(x[i, f, k])
                for j in range(n_members):
                    diff = xi - centres[k, f, j]
                    squared[k, j] += diff * diff
        for a in range(n0):
            for b in range(n1):
                k = a * n1 + b
                for j in range(n_members):
                    logits[j] = 0.0
                for t in range(off0.shape[0]):
                    ra = a + off0[t]
                    if ra >= n0:
                        ra -= n0
                    rb = b + off1[t]
                    if rb >= n1:
                        rb -= n1
                    neighbour = ra * n1 + rb
                    w = taps[t]
                    for j in range(n_members):
                        logits[j] += w * squared[neighbour, j]
                top = -np.inf
                best = 0
                for j in range(n_members):
                    value = scale * logits[j]
                    if has_prior:
                        value += log_prior[k, j]
                    logits[j] = value
                    if value > top:
                        top = value
                        best = j
                total = 0.0
                for j in range(n_members):
                    gap = logits[j] - top
                    e = math.exp(gap) if gap > -_NEGLIGIBLE_GAP else 0.0
                    logits[j] = e
                    total += e
                inverse = 1.0 / total
                squares = 0.0
                for j in range(n_members):
                    logits[j] *= inverse
                    squares += logits[j] * logits[j]
                largest[0] += logits[best]
                ess[k] += 1.0 / squares
                followed[best, k] += 1.0
                for v in range(n_values):
                    for f in range(n_fields):
                        acc = 0.0
                        for j in range(n_members):
                            acc += logits[j] * values[v, k, f, j]
                        averages[v, i, f, k] = acc
