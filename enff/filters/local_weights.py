"""Localized Monte Carlo weights: a softmax over members at every grid point, from tapered local distances.

The global Monte Carlo weights of the ensemble flow and score filters are a softmax over members of a
squared distance summed over the whole state; at ``d >= 1e3`` they are one-hot. Localized weights use,
at every spatial grid point ``k``, the tapered local distance (:mod:`enff.filters.spatial_taper`)

    D_ijk = sum_l rho(k, l) sum_f (x_ifl - mu_jfl)^2,     w_ijk = softmax_j(-D_ijk / (2 sigma^2) + l_jk),

(``f`` the co-located fields, ``l_jk`` optional per-point member log-weights such as a tapered local
log-likelihood), as local particle filters do. Quantities of the members are then averaged per point,
``sum_j w_ijk z_jfk``. With ``rho = 1`` (infinite radius) the weights are the global ones at every point.

On the CPU with a periodic grid (:class:`~enff.filters.spatial_taper.PeriodicTaper`, every shipped model) a
fused numba kernel (:mod:`~enff.filters._local_mixture_numba`) computes weights and averages one particle at a
time, all sums in float64 (3.8x faster than the torch path at d = 1e6, N = 20, float32, one thread); elsewhere
particles are processed in blocks so that the ``(block, member, fields, points)`` work array stays near
:data:`BLOCK_ELEMENTS`. Memory beyond the inputs is ``O((P + M) d)`` plus one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from enff.observations.space import ObservationSpace

from .spatial_taper import PeriodicTaper, SpatialLayout, SpatialTaper

__all__ = ["BLOCK_ELEMENTS", "WeightStats", "LocalMixture", "local_mixture", "local_log_likelihood",
           "point_weight_stats", "squared_residuals"]

#: Elements of the per-block work array (particles x members x state).
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class WeightStats:
    """Collapse diagnostics of per-point weights ``w_ijk`` (particles i, members j, points k).

    Attributes
    ----------
    max_weight:
        Largest weight, averaged over particles and points (``1 / M`` uniform, 1 collapsed).
    distinct_members:
        Number of distinct members that are some particle's largest weight, averaged over points.
    ess_mean, ess_min:
        Local effective sample size ``1 / sum_j w_ijk^2`` averaged over particles, then its mean and
        its minimum over points, in members.
    """

    max_weight: float
    distinct_members: float
    ess_mean: float
    ess_min: float

    def as_diagnostics(self) -> dict[str, float]:
        """The run-file diagnostics ``max_weight``, ``distinct_members``, ``local_ess_mean``, ``local_ess_min``."""
        return {"max_weight": self.max_weight, "distinct_members": self.distinct_members,
                "local_ess_mean": self.ess_mean, "local_ess_min": self.ess_min}


class _StatsAccumulator:
    """Sums of the per-point statistics over blocks of particles."""

    def __init__(self, n_members: int, n_points: int, device: torch.device) -> None:
        self.largest = 0.0
        self.count = 0
        self.ess = torch.zeros(n_points, dtype=torch.float64, device=device)
        self.followed = torch.zeros(n_members, n_points, dtype=torch.float64, device=device)

    def add(self, weights: torch.Tensor) -> None:
        """Add weights of shape ``(block, member, points)`` (float64)."""
        largest, follows = weights.max(dim=1)
        self.followed.scatter_add_(0, follows, torch.ones_like(largest))
        self.add_sums(float(largest.sum()), weights.shape[0], weights.square().sum(dim=1).reciprocal_().sum(dim=0))

    def add_sums(self, largest: float, count: int, ess: torch.Tensor, followed: torch.Tensor | None = None) -> None:
        """Add the sums over ``count`` particles: of the largest weight over particles and points, of the
        effective sample size per point ``(points,)`` and, if given, of the particles following each member
        ``(M, points)``."""
        self.largest += largest
        self.count += count
        self.ess += ess
        if followed is not None:
            self.followed += followed

    def result(self) -> WeightStats:
        n_points = self.ess.shape[0]
        ess = self.ess / self.count
        distinct = (self.followed > 0).sum(dim=0).double().mean()
        return WeightStats(self.largest / (self.count * n_points), float(distinct), float(ess.mean()),
                           float(ess.min()))


def point_weight_stats(weights: torch.Tensor) -> WeightStats:
    """:class:`WeightStats` of weights ``(particles, member, points)``."""
    acc = _StatsAccumulator(weights.shape[1], weights.shape[2], weights.device)
    acc.add(weights.to(torch.float64))
    return acc.result()


@dataclass(frozen=True)
class LocalMixture:
    """Per-point weighted member averages for every particle.

    Attributes
    ----------
    averages:
        One tensor per averaged member quantity, shape ``(P, fields, points)``, dtype of the particles.
    stats:
        Collapse diagnostics of the weights.
    """

    averages: tuple[torch.Tensor, ...]
    stats: WeightStats


def local_mixture(
    layout: SpatialLayout,
    taper: SpatialTaper,
    x: torch.Tensor,
    centres: torch.Tensor,
    sigma: float,
    values: Sequence[torch.Tensor],
    *,
    log_prior: torch.Tensor | None = None,
) -> LocalMixture:
    """Average member quantities with the localized weights of the mixture ``sum_j N(centres_j, sigma^2 I)``.

    Parameters
    ----------
    layout, taper:
        Fields and points of the state, and the tapered-sum operator of its grid.
    x:
        Particles, shape ``(P, fields, points)``.
    centres:
        Mixture centres, shape ``(M, fields, points)``, same dtype and device as ``x``.
    sigma:
        Standard deviation of every component, state units.
    values:
        Member quantities to average, each ``(M, fields, points)``.
    log_prior:
        Optional member log-weights per point, shape ``(M, points)``.

    Returns
    -------
    :class:`LocalMixture` with one ``(P, fields, points)`` average per entry of ``values``.
    """
    n_particles, n_members = x.shape[0], centres.shape[0]
    if centres.shape[1:] != x.shape[1:] or any(v.shape != centres.shape for v in values):
        raise ValueError(f"particles {tuple(x.shape)}, centres {tuple(centres.shape)} and averaged values "
                         f"{[tuple(v.shape) for v in values]} must share (fields, points)")
    if log_prior is not None and log_prior.shape != (n_members, layout.n_points):
        raise ValueError(f"log_prior must have shape ({n_members}, {layout.n_points}), got {tuple(log_prior.shape)}")
    acc = _StatsAccumulator(n_members, layout.n_points, x.device)
    scale = -0.5 / float(sigma) ** 2
    if x.device.type == "cpu" and isinstance(taper, PeriodicTaper):
        return LocalMixture(_periodic_mixture(taper, x, centres, scale, values, log_prior, acc), acc.result())
    averages = tuple(torch.empty_like(x) for _ in values)
    rows = max(1, BLOCK_ELEMENTS // max(1, centres.numel()))
    for start in range(0, n_particles, rows):
        block = slice(start, start + rows)
        distance = taper.apply(layout.reduce((x[block, None] - centres[None]).square_()))  # (b, M, points)
        logits = distance.to(torch.float64).mul_(scale)
        if log_prior is not None:
            logits.add_(log_prior.to(torch.float64))
        weights = torch.softmax(logits, dim=1)
        acc.add(weights)
        cast = weights.to(x.dtype)
        for average, value in zip(averages, values):
            average[block] = torch.einsum("bmk,mfk->bfk", cast, value)
    return LocalMixture(averages, acc.result())


def _periodic_mixture(taper: PeriodicTaper, x: torch.Tensor, centres: torch.Tensor, scale: float,
                      values: Sequence[torch.Tensor], log_prior: torch.Tensor | None, acc: _StatsAccumulator
                      ) -> tuple[torch.Tensor, ...]:
    """:func:`local_mixture`'s averages on a periodic grid by the fused numba kernel (CPU tensors), one
    ``(P, fields, points)`` tensor per value; the weight statistics are added to ``acc``.

    The kernel reads the members with the member axis last, so ``centres`` and ``values`` are copied once as
    ``(points, fields, M)``; its only other work array is one particle's ``(points, M)`` squared distances.
    """
    from ._local_mixture_numba import local_mixture_points

    n_particles, n_fields, n_points = x.shape
    n_members = centres.shape[0]
    first, second, taps = taper.taps

    def members_last(z: torch.Tensor) -> np.ndarray:
        return z.detach().to(x.dtype).permute(2, 1, 0).contiguous().numpy()

    prior = (np.empty((0, n_members)) if log_prior is None
             else log_prior.detach().to(torch.float64).T.contiguous().numpy())
    averages = torch.empty((len(values), n_particles, n_fields, n_points), dtype=x.dtype)
    largest, ess, followed = np.zeros(1), np.zeros(n_points), np.zeros((n_members, n_points))
    n0, n1 = (*taper.shape, 1)[:2]
    local_mixture_points(x.detach().contiguous().numpy(), members_last(centres),
                         np.stack([members_last(value) for value in values]), prior, n0, n1, first, second, taps,
                         scale, averages.numpy(), largest, ess, followed)
    acc.add_sums(float(largest[0]), n_particles, torch.from_numpy(ess), torch.from_numpy(followed))
    return tuple(averages)


def squared_residuals(members: torch.Tensor, y: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
    """``(y_o - h(x_j)_o)^2 / (2 s_o^2)`` for every member and observation, float64, shape ``(M, n_obs)``.

    ``members`` is ``(M, d)`` or ``(M, *state_shape)``; ``y`` holds finite observations only.
    """
    with torch.no_grad():
        hx = obs.h(members.reshape(members.shape[0], *obs.state_shape))
        residual = (y.to(hx.dtype) - hx) / obs.std.to(hx.dtype)
        return residual.square_().mul_(0.5).to(torch.float64)


def local_log_likelihood(
    layout: SpatialLayout, taper: SpatialTaper, terms: torch.Tensor, obs: ObservationSpace
) -> torch.Tensor:
    """Tapered local Gaussian log-likelihood of each member at every grid point.

    ``l_jk = -sum_o rho(k, p_o) e_jo`` with ``p_o`` the grid point of observation ``o`` (its location on
    the model grid) and ``e_jo = (y_o - h(x_j)_o)^2 / (2 s_o^2)``.

    Parameters
    ----------
    layout, taper:
        Fields and points of the state, and the tapered-sum operator of its grid.
    terms:
        ``e``, shape ``(M, n_obs)`` (:func:`squared_residuals`), dimensionless.
    obs:
        Observation space the terms belong to (gives each observation's grid point).

    Returns
    -------
    Float64 log-likelihoods, shape ``(M, points)``.
    """
    point = torch.as_tensor(layout.point_of(obs.state_index), device=terms.device)
    on_grid = torch.zeros(terms.shape[0], layout.n_points, dtype=torch.float64, device=terms.device)
    on_grid.index_add_(1, point, terms.to(torch.float64))
    return taper.apply(on_grid).neg_()
