"""Localized ensemble Kalman-Bucy flow on the tempering path: the filter ``lenff-tempered``.

Path. The tempering (homotopy) path ``p_s(x) ∝ p_f(x) L(y | x)^s``, ``s in [0, 1]``, joins the forecast
(``s = 0``) to the posterior (``s = 1``); ``L(y | x)^s`` is the likelihood with error covariance ``R / s``.
For a Gaussian ``p_s = N(m_s, P_s)`` and linear ``h(x) = H x``, ``P_s^-1 = P_f^-1 + s H^T R^-1 H`` and the
deterministic flow

    dx/ds = -P_s H^T R^-1 ((H x + H m_s) / 2 - y)

moves samples of ``p_0`` to samples of ``p_s`` for every ``s`` (mean and anomalies follow the Kalman-Bucy
equations exactly): the ensemble Kalman-Bucy filter of Bergemann and Reich (2010, *A localization technique
for ensemble Kalman filters*, QJRMS 136; *A mollified ensemble Kalman filter*, QJRMS 136) and Reich (2011,
*A dynamical systems framework for intermittent data assimilation*, BIT 51). For a nonlinear ``h`` the flow
uses ``h(x)`` and the ensemble's own covariances at ``s``, so the linearization of ``h`` is renewed along the
flow instead of being taken once at the forecast.

Integrator. The flow over ``[s, s + a]`` from a Gaussian ensemble with linear ``h`` is exactly one ETKF
update (symmetric square root) with error covariance ``R / a``. With ``K`` steps ``a_k`` summing to 1, each
step is therefore an ensemble-space square-root update at the current particles, with ``S`` and ``dy``
re-evaluated through ``h`` and scaled by ``sqrt(a_k)``. For linear ``h`` and a global analysis the ``K`` steps
compose to the one-step ETKF exactly: the step transforms ``T_k = sqrt(N - 1) A_k^{-1/2}``,
``A_k = (N - 1) I + a_k S_k S_k^T``, are functions of the Gram matrix ``G = S S^T`` of the forecast (``S_k =
T_{k-1} ... T_1 S``), so they commute, and on an eigenvector of ``G`` with eigenvalue ``g`` the product is
``prod_k sqrt((N - 1 + A_{k-1} g) / (N - 1 + A_k g)) = sqrt((N - 1) / (N - 1 + g))`` with ``A_k = a_1 + ... +
a_k``; the means compose as sequential assimilation of the same observations with ``R / a_k``, which is
exact for a Gaussian. So ``K = 1`` is the LETKF and ``K > 1`` differs only through the nonlinearity of
``h`` and, with a finite radius, through localization (tested in ``tests/test_local_tempering.py``).

Localization. Every step is an LETKF analysis (:func:`~enff.filters.letkf.letkf_update`): domain
localization with the Gaspari-Cohn taper of ``R^-1`` at ``radius`` (model length units). Inflation,
relaxation to prior spread and adaptive observation-error inflation are those of the classical filters
(:class:`~enff.filters.kalman.EnsembleKalmanFilter`); the error std that adaptive inflation chooses from the
forecast is kept for every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch

from enff.checks import check_positive_int
from enff.config import check_value
from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import ObservedEnsemble, observe
from .kalman import EnsembleKalmanFilter
from .letkf import letkf_update
from .localization import check_radius

__all__ = ["LEnFFTempered", "RAW_STEPS", "TemperingSchedule", "step_sizes", "tempered"]

#: How the tempering path ``[0, 1]`` is divided into steps: equal steps, or steps doubling in size (the
#: first, taken with the forecast's linearization, is the smallest).
TemperingSchedule = Literal["uniform", "geometric"]

#: The unnormalised step sizes of each :data:`TemperingSchedule` for ``K`` steps.
RAW_STEPS: Mapping[TemperingSchedule, Callable[[int], list[float]]] = MappingProxyType({
    "uniform": lambda steps: [1.0] * steps,
    "geometric": lambda steps: [2.0**k for k in range(steps)],
})


def step_sizes(steps: int, schedule: TemperingSchedule) -> list[float]:
    """Step sizes ``a_1, ..., a_K`` of the tempering path (``K = steps``), positive and summing to 1.

    ``"uniform"``: ``a_k = 1 / K``; ``"geometric"``: ``a_k ∝ 2^(k - 1)``.
    """
    check_positive_int("steps", steps)
    check_value("schedule", schedule, TemperingSchedule)
    raw = RAW_STEPS[schedule](steps)
    total = sum(raw)
    return [r / total for r in raw]


def tempered(observed: ObservedEnsemble, size: float) -> ObservedEnsemble:
    """``observed`` with error covariance ``R / size``: ``S`` and ``dy`` times ``sqrt(size)``, the std divided."""
    root = size**0.5
    return ObservedEnsemble(observed.anomalies * root, observed.innovation * root, observed.mean,
                            observed.std / root)


@register("lenff-tempered")
@dataclass(frozen=True)
class LEnFFTempered(EnsembleKalmanFilter):
    """Localized ensemble Kalman-Bucy flow on the tempering path (see the module docstring).

    Attributes
    ----------
    radius:
        Gaspari-Cohn half-width of every step's local analyses in model length units (required; ``inf`` =
        global), the same meaning as the LETKF's.
    steps:
        ``K``, the number of tempering steps (``K = 1`` is the LETKF); each costs one LETKF analysis and one
        evaluation of ``h`` on the ensemble.
    schedule:
        How the path is divided (:data:`TemperingSchedule`).
    inflation, rtps, adaptive_obs_error:
        See :class:`~enff.filters.kalman.EnsembleKalmanFilter`.
    """

    radius: float | None = None
    steps: int = 4
    schedule: TemperingSchedule = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_radius(self.radius, required=True)
        step_sizes(self.steps, self.schedule)

    def _kalman_update(
        self, members: torch.Tensor, observed: ObservedEnsemble, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        radius = check_radius(self.radius, required=True)
        y = observed.mean + observed.innovation * observed.std
        current, x = observed, members
        for k, size in enumerate(step_sizes(self.steps, self.schedule)):
            if k:  # the flow's linearization of h at the current particles
                current = observe(x.reshape(x.shape[0], *obs.state_shape), y, obs, observed.std)
            x, _ = letkf_update(x, tempered(current, size), obs, radius)
        return x, {}
