"""The analysis template of the generative filters (flow and score filters): check, inflate, mask, transport.

:class:`GenerativeFilter` checks the forecast (and the previous analysis), inflates the forecast, drops
missing observations and hands flat ``(member, d)`` ensembles to the subclass's
:meth:`GenerativeFilter._transport`, which moves particles from a source to the analysis.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from enff.observations.space import ObservationSpace

from .base import Analysis, Filter
from .inflation import multiplicative_inflation

__all__ = ["GenerativeFilter"]


def _check_ensemble_like(name: str, ensemble: torch.Tensor, obs: ObservationSpace) -> None:
    if ensemble.ndim != 1 + len(obs.state_shape) or tuple(ensemble.shape[1:]) != tuple(obs.state_shape):
        raise ValueError(
            f"{name} must have shape (member, {', '.join(map(str, obs.state_shape))}), got {tuple(ensemble.shape)}"
        )
    if ensemble.shape[0] < 2 or not ensemble.is_floating_point():
        raise ValueError(
            f"{name} must be a floating ensemble of at least 2 members, got {tuple(ensemble.shape)} {ensemble.dtype}"
        )


class GenerativeFilter(Filter):
    """Template of the generative filters: mask, inflate, flatten, transport, reshape.

    Subclasses are frozen dataclasses with an ``inflation`` field (multiplicative factor on the forecast
    anomalies, 1 = none) and implement :meth:`_transport` on flat ``(member, d)`` ensembles.
    """

    inflation: float

    def analysis(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        previous: torch.Tensor | None = None,
        generator: torch.Generator,
    ) -> Analysis:
        _check_ensemble_like("forecast", forecast, obs)
        if previous is not None and previous.shape != forecast.shape:
            raise ValueError(
                f"previous must be shaped like forecast {tuple(forecast.shape)}, got {tuple(previous.shape)}"
            )
        inflated = multiplicative_inflation(forecast, self.inflation)
        if not bool(torch.isfinite(y).any()):
            return Analysis(inflated)  # every observation missing: nothing to assimilate
        y, obs = obs.observed(y)
        prior = inflated.reshape(forecast.shape[0], -1)
        flat_previous = None if previous is None else previous.reshape(forecast.shape[0], -1)
        members, diagnostics = self._transport(prior, flat_previous, y, obs, generator=generator)
        return Analysis(members.reshape(forecast.shape), diagnostics)

    @abstractmethod
    def _transport(
        self,
        x1: torch.Tensor,
        previous: torch.Tensor | None,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Analysis of the inflated forecast ``x1`` ``(N, d)`` given finite ``y``; returns ``(N, d)`` and the
        diagnostics."""
