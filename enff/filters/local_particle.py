"""Local particle filter ``lpf`` (Penny and Miyoshi, 2016): per-grid-point weights and resampling.

At every grid point ``k`` the members are weighted by the tapered local likelihood
``w_jk = softmax_j(-sum_o rho(k, p_o) (y_o - h(x_j)_o)^2 / (2 s_o^2))`` (the same machinery as the localized
Monte Carlo guidance, :func:`enff.filters.local_weights.local_log_likelihood`), and the analysis at ``k``
is a systematic resampling of the members' values at ``k``. One uniform offset serves every point, so
neighbouring points with similar weights pick the same members and the analysed fields stay continuous
(Penny and Miyoshi's remedy for the discontinuities of independent local resampling). Co-located fields
share their point's weights. Optional Gaussian ``jitter`` and the template's inflation and RTPS keep the
spread from collapsing in a deterministic model.

RTPS acts after the jitter, on the resampled members. Where a point's weights collapse onto one member, the
anomalies left there are the jitter alone (or one other member), and RTPS rescales them by
``1 + rtps * (sigma_f / sigma_a - 1)`` to ``rtps`` times the prior spread, whatever the jitter. With a strong
RTPS and few observations per point's region this feeds back: on ``l96_40_sparse`` at radius 3 and RTPS 0.9
the factor reaches 60, the spread runs away and after about 25 cycles a member leaves the range the model's
time step can integrate (non-finite forecast). Sparse networks want a small radius and a moderate RTPS
(``benchmarks/results/tune_lpf_l96_40_sparse.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import observe
from .local_flow import LOCAL_DIAGNOSTICS
from .local_weights import WeightStats, local_log_likelihood, point_weight_stats
from .localization import check_radius
from .spatial_taper import SpatialLayout, spatial_taper
from .template import EnsembleFilter

__all__ = ["LocalPF", "local_systematic_resample"]


def local_systematic_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Systematic resampling at every point with one shared uniform offset.

    Parameters
    ----------
    weights:
        Normalized weights, shape ``(member, points)`` (float64).
    generator:
        Source of the offset, on ``weights``' device.

    Returns
    -------
    Member indices, shape ``(member, points)``: row ``i`` is the member that analysis member ``i`` copies at
    each point, sorted along the member axis.
    """
    n = weights.shape[0]
    cumulative = torch.cumsum(weights, dim=0).T.contiguous()  # (points, member)
    offset = torch.rand((), generator=generator, device=weights.device, dtype=torch.float64)
    positions = (offset + torch.arange(n, device=weights.device, dtype=torch.float64)) / n
    positions = positions.expand(cumulative.shape[0], n).contiguous() * cumulative[:, -1:]
    return torch.searchsorted(cumulative, positions, right=True).clamp_(max=n - 1).T


@register("lpf")
@dataclass(frozen=True)
class LocalPF(EnsembleFilter):
    """Local particle filter hyper-parameters (the case file's ``[filter]`` keys) and analysis.

    Attributes
    ----------
    radius:
        Gaspari-Cohn half-width of the local likelihood in model length units (required; ``inf`` gives the
        bootstrap particle filter's weights at every point).
    jitter:
        Standard deviation of isotropic Gaussian noise added after resampling, state units (0 = none).
    inflation, rtps:
        See :class:`~enff.filters.template.EnsembleFilter` (RTPS relaxes toward the inflated forecast spread).
    """

    reported: ClassVar[tuple[str, ...]] = LOCAL_DIAGNOSTICS

    radius: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_radius(self.radius, required=True)
        if not (math.isfinite(float(self.jitter)) and self.jitter >= 0):
            raise ValueError(f"jitter must be a finite number >= 0, got {self.jitter!r}")

    def _update(
        self, members: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        observed = observe(members.reshape(members.shape[0], *obs.state_shape), y, obs)
        layout = SpatialLayout.of(obs.grid)
        taper = spatial_taper(layout, check_radius(self.radius, required=True))
        terms = 0.5 * (observed.innovation - observed.anomalies).to(torch.float64).square()  # (M, p)
        weights = torch.softmax(local_log_likelihood(layout, taper, terms, obs), dim=0)  # (M, points)
        index = local_systematic_resample(weights, generator)
        split = layout.split(members)
        chosen = index[:, None, :].expand(split.shape)
        analysis = torch.gather(split, 0, chosen).reshape(members.shape)
        if self.jitter > 0:
            noise = torch.randn(analysis.shape, generator=generator, device=analysis.device, dtype=analysis.dtype)
            analysis = analysis.add_(noise, alpha=float(self.jitter))
        stats = point_weight_stats(weights[None])
        distinct = self._distinct(index, weights.shape[0])
        return analysis, WeightStats(stats.max_weight, distinct, stats.ess_mean, stats.ess_min).as_diagnostics()

    @staticmethod
    def _distinct(index: torch.Tensor, n_members: int) -> float:
        """Number of distinct members resampled at a point, averaged over points."""
        counts = torch.zeros(n_members, index.shape[1], dtype=torch.float64, device=index.device)
        counts.scatter_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        return float((counts > 0).sum(dim=0).double().mean())
