"""Ensemble transform Kalman filter (deterministic square-root EnKF) with the symmetric square root."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import ObservedEnsemble, square_root_update
from .kalman import EnsembleKalmanFilter

__all__ = ["ETKF"]


@register("etkf")
@dataclass(frozen=True)
class ETKF(EnsembleKalmanFilter):
    """Global ETKF (Bishop et al., 2001; Hunt et al., 2007) with the symmetric, mean-preserving square root.

    The analysis is computed in the ``N``-dimensional ensemble space: ``O(N^2 (d + p) + N^3)`` work
    and no ``d x d`` or ``p x p`` matrix. With a linear ``h`` and ``N > d`` its mean and covariance
    equal the Kalman filter's for the ensemble's sample mean and covariance.

    Attributes
    ----------
    inflation, rtps, adaptive_obs_error:
        See :class:`~enff.filters.kalman.EnsembleKalmanFilter`.
    """

    def _kalman_update(
        self, members: torch.Tensor, observed: ObservedEnsemble, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mean = members.mean(dim=0)
        return mean + square_root_update(observed.anomalies.T, observed.innovation, members - mean), {}
