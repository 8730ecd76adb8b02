"""The analysis template of the filters that update the members themselves (Kalman and particle filters).

:class:`EnsembleFilter` checks the forecast, inflates it, drops missing observations, hands the flattened
members and the finite observations to the subclass's :meth:`EnsembleFilter._update`, and relaxes the
result toward the inflated forecast spread (RTPS). The Kalman-type filters build on it through
:class:`~enff.filters.kalman.EnsembleKalmanFilter`; the particle filters use it directly.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

from .base import Analysis, Filter
from .inflation import check_inflation, check_rtps, multiplicative_inflation, rtps

__all__ = ["EnsembleFilter"]


@dataclass(frozen=True)
class EnsembleFilter(Filter):
    """Template of the classical filters: check, inflate, mask, update, relax.

    Attributes
    ----------
    inflation:
        Multiplicative factor on the forecast anomalies (1 = none).
    rtps:
        Relaxation-to-prior-spread factor in [0, 1] (0 = none); the prior is the inflated forecast.
    """

    inflation: float = 1.0
    rtps: float = 0.0

    def __post_init__(self) -> None:
        check_inflation(self.inflation)
        check_rtps(self.rtps)

    def analysis(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        previous: torch.Tensor | None = None,
        generator: torch.Generator,
    ) -> Analysis:
        if forecast.ndim < 2 or tuple(forecast.shape[1:]) != tuple(obs.state_shape) or forecast.shape[0] < 2:
            raise ValueError(
                f"forecast must have shape (member >= 2, {', '.join(map(str, obs.state_shape))}), "
                f"got {tuple(forecast.shape)}"
            )
        if not forecast.is_floating_point():
            raise ValueError(f"forecast must be a floating tensor, got {forecast.dtype}")
        if y.shape != (obs.n_obs,):
            raise ValueError(f"observation vector y must have shape ({obs.n_obs},), got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).any()):
            return Analysis(multiplicative_inflation(forecast, self.inflation),
                            self._unobserved_diagnostics(forecast.shape[0]))
        # the inflated prior; at factor 1 the forecast itself, no copy (``_update`` never writes into its members)
        prior = forecast if self.inflation == 1.0 else multiplicative_inflation(forecast, self.inflation)
        y, obs = obs.observed(y)
        updated, diagnostics = self._update(prior.reshape(prior.shape[0], -1), y, obs, generator=generator)
        updated = updated.reshape(forecast.shape)
        return Analysis(rtps(prior, updated, self.rtps) if self.rtps else updated, diagnostics)  # no copy at 0

    def _unobserved_diagnostics(self, n_members: int) -> dict[str, float]:
        """Diagnostics of an analysis with every observation missing (it returns the inflated prior): none."""
        return {}

    @abstractmethod
    def _update(
        self, members: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Analysis of the flattened, inflated forecast ``members`` ``(N, d)`` given the finite observations ``y``
        ``(n_obs,)`` of ``obs``; returns new analysis members ``(N, d)`` and the diagnostics. ``members`` may be
        the caller's forecast itself: never write into it."""
