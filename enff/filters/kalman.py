"""The template of the Kalman-type filters (ETKF, LETKF, EnKF): the observed ensemble, AOEI, the update."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch

from enff.observations.space import ObservationSpace

from .ensemble_space import ObservedEnsemble, adaptive_error_inflation, observe
from .template import EnsembleFilter

__all__ = ["EnsembleKalmanFilter"]


@dataclass(frozen=True)
class EnsembleKalmanFilter(EnsembleFilter):
    """Template of the Kalman-type filters: the members seen through the observations, optionally with AOEI.

    Attributes
    ----------
    adaptive_obs_error:
        Threshold, in total standard deviations, above which an innovation gets its observation error
        inflated (:func:`~enff.filters.ensemble_space.adaptive_error_inflation`; 1 is the published AOEI,
        0 = off). The diagnostic ``inflated_obs`` is the fraction of observations inflated in a cycle. Meant
        for nonlinear observations (``atan``), where a confident ensemble on the wrong branch otherwise
        receives a huge linearized increment; it also damps the large first corrections of an ensemble that
        starts far from the truth (measured on ``l96_1e6_atan`` at dim 1e5, see that case file).
    inflation, rtps:
        See :class:`~enff.filters.template.EnsembleFilter`.
    """

    reported_when: ClassVar[Mapping[str, str]] = MappingProxyType({"inflated_obs": "adaptive_obs_error"})

    adaptive_obs_error: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.adaptive_obs_error
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError("adaptive_obs_error must be a threshold >= 0 in standard deviations (0 = off), "
                             f"got {value!r}")

    def _update(
        self, members: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        observed = observe(members.reshape(members.shape[0], *obs.state_shape), y, obs)
        diagnostics: dict[str, float] = {}
        if self.adaptive_obs_error:
            observed, factor = adaptive_error_inflation(observed, self.adaptive_obs_error)
            diagnostics["inflated_obs"] = float((factor > 1.0).float().mean())
        updated, more = self._kalman_update(members, observed, obs, generator=generator)
        return updated, {**diagnostics, **more}

    @abstractmethod
    def _kalman_update(
        self, members: torch.Tensor, observed: ObservedEnsemble, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Analysis of the flattened, inflated forecast ``members`` ``(N, d)`` from the observed ensemble (scaled
        anomalies and innovation of the finite observations of ``obs``); returns ``(N, d)`` and the diagnostics."""
