"""Localized ensemble score filter ``lensf``: the mixture prior score with per-grid-point weights.

The EnSF mixture prior score (:func:`enff.filters.ensemble_score.prior_score`, ``score = "mixture"``) is
``-(x_i - alpha_t sum_j w_ij x1_j) / beta_t^2`` with global softmax weights over members, one-hot in high
dimension. ``lensf`` takes the weights per grid point from the tapered local distance
(:mod:`enff.filters.local_weights`), ``w_ijk = softmax_j(-sum_l rho(k, l) |x_il - alpha_t x1_jl|^2 / (2 beta_t^2))``.
Everything else (schedule, damped likelihood score, clipping, samplers, start) is the EnSF's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_score import EnSF
from .inflation import check_rtps
from .local_flow import LOCAL_DIAGNOSTICS, SpreadRelaxation, combine_stats
from .local_weights import WeightStats, local_mixture
from .localization import check_radius
from .spatial_taper import SpatialLayout, spatial_taper

__all__ = ["LEnSF"]


@register("lensf")
@dataclass(frozen=True)
class LEnSF(SpreadRelaxation, EnSF):
    """Localized EnSF hyper-parameters (the case file's ``[filter]`` keys) and analysis.

    Attributes
    ----------
    radius:
        Gaspari-Cohn half-width of the weights in model length units (required; ``inf`` = global weights).
    rtps:
        Relaxation of the analysis spread to the prior spread, in ``[0, 1]`` (0 = none).
    score:
        Only ``"mixture"``: the per-member score has no weights to localize.
    steps, eps_alpha, eps_beta, sampler, clip, start, inflation:
        As for :class:`~enff.filters.ensemble_score.EnSF`.
    """

    reported: ClassVar[tuple[str, ...]] = LOCAL_DIAGNOSTICS

    radius: float | None = None
    score: Literal["mixture"] = "mixture"
    rtps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_radius(self.radius, required=True)
        check_rtps(self.rtps)

    def _transport(
        self,
        x1: torch.Tensor,
        previous: torch.Tensor | None,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        schedule = self.schedule()
        layout = SpatialLayout.of(obs.grid)
        taper = spatial_taper(layout, check_radius(self.radius, required=True))
        members = layout.split(x1)
        history: list[WeightStats] = []

        def prior(x: torch.Tensor, t: float) -> torch.Tensor:
            alpha, beta_sq = schedule.alpha(t), schedule.beta_sq(t)
            mixture = local_mixture(layout, taper, layout.split(x), alpha * members, beta_sq**0.5, (members,))
            history.append(mixture.stats)
            return torch.add(x, mixture.averages[0].reshape(x.shape), alpha=-alpha).mul_(-1.0 / beta_sq)

        particles = self._reverse(schedule, x1, y, obs, prior, generator=generator)
        return particles, combine_stats(history).as_diagnostics()
