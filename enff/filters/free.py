"""The free-running ensemble: no analysis at all (a baseline and a pipeline check)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

from .base import Analysis, Filter, register

__all__ = ["FreeRun"]


@register("none")
@dataclass(frozen=True)
class FreeRun(Filter):
    """Returns the forecast unchanged (a copy): the ensemble runs free of the observations."""

    def analysis(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        previous: torch.Tensor | None = None,
        generator: torch.Generator,
    ) -> Analysis:
        return Analysis(forecast.clone())
