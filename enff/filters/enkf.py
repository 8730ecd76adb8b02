"""Stochastic ensemble Kalman filter with perturbed observations and optional covariance localization."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import ObservedEnsemble, ensemble_precision
from .kalman import EnsembleKalmanFilter
from .localization import check_radius, covariance_taper_tensors

__all__ = ["EnKF"]


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix^{-1} rhs`` for a symmetric positive definite ``matrix`` by Cholesky."""
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(matrix))


@register("enkf")
@dataclass(frozen=True)
class EnKF(EnsembleKalmanFilter):
    """EnKF with perturbed observations (Burgers et al., 1998; Houtekamer and Mitchell, 1998).

    Every member is updated with the Kalman gain of the ensemble covariance toward its own perturbed
    observation ``y + e_j``, ``e_j ~ N(0, R)`` drawn from the generator and centred over the members
    (so the analysis mean is the Kalman update of the forecast mean). Without localization and with
    more observations than members the gain is applied in ensemble space (``K d = X'^T A^{-1} S d / s``,
    no ``p x p`` matrix); otherwise in observation space. With a finite
    ``radius`` the covariances are tapered with Gaspari-Cohn (``rho_xy o P H^T`` and
    ``rho_yy o H P H^T``), which needs dense ``d x p`` and ``p x p`` tapers (moderate sizes only).

    Attributes
    ----------
    radius:
        Gaspari-Cohn half-width in model length units; ``None`` or ``inf`` = no localization.
    inflation, rtps, adaptive_obs_error:
        See :class:`~enff.filters.kalman.EnsembleKalmanFilter`.
    """

    radius: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_radius(self.radius)

    def _kalman_update(
        self, members: torch.Tensor, observed: ObservedEnsemble, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        n, p = observed.anomalies.shape
        scaled = observed.anomalies
        noise = torch.randn(scaled.shape, generator=generator, device=scaled.device, dtype=scaled.dtype)
        innovations = observed.innovation - scaled + (noise - noise.mean(dim=0))  # (y + e_j - h(x_j)) / s
        anomalies = members - members.mean(dim=0)
        localized = not math.isinf(check_radius(self.radius))
        if not localized and p > n:
            weights = _solve_spd(ensemble_precision(scaled.T), scaled @ innovations.T)
            return members + weights.T @ anomalies, {}
        innovation_cov = scaled.T @ scaled / (n - 1)
        cross_cov = anomalies.T @ scaled / (n - 1)
        if localized:
            state_obs, obs_obs = covariance_taper_tensors(obs, self.radius, members.device, members.dtype)
            innovation_cov, cross_cov = obs_obs * innovation_cov, state_obs * cross_cov
        innovation_cov += torch.eye(p, dtype=scaled.dtype, device=scaled.device)
        return members + (cross_cov @ _solve_spd(innovation_cov, innovations.T)).T, {}
