"""Guidance: how the observations steer a flow from the forecast toward the analysis.

``E(x) = |y - h(x)|^2 / (2 s^2)`` is the observation negative log-likelihood
(:meth:`ObservationSpace.neg_log_likelihood`; missing observations must be dropped with
``obs.observed(y)`` beforehand). A guidance is one frozen object, registered in :data:`GUIDANCE` under the
name case files use (``guidance = "..."``); a flow filter builds it once from its keys
(:func:`build_guidance`):

``"local"`` (:class:`LocalGuidance`)
    The predicted end point of a particle at flow time ``t`` is ``xh = x + (1 - t) v(x)``; the guidance
    force is ``g = -lambda(t) grad E(xh)``, the gradient of ``E`` taken *at* ``xh`` with respect to
    ``xh``. It is **not** back-propagated through ``v`` (that is, ``d xh / d x`` is taken as the
    identity): this is the local guidance of the ensemble flow filter, costs one pass of ``h`` and its
    adjoint, and avoids differentiating the ``P x M`` weight matrix. The schedule ``lambda(t)`` is
    ``lambda`` (``"constant"``) or ``lambda * t`` (``"linear"``, no pull while the particles are still
    source noise).
``"mc"`` (:class:`MonteCarloGuidance`)
    Monte Carlo (exact) guidance: each member's conditional path is re-weighted by the likelihood of its
    end point, ``l_j = -E(x1[j])``, inside the softmax of the marginal velocity. The flow then transports
    the source to the posterior mixture ``sum_j exp(-E(x1[j])) N(x1[j], sigma_1^2 I)``: with few members
    this is likelihood-weighted resampling of the forecast.
``"kalman"`` (:class:`KalmanGuidance`)
    The Gaussian-posterior guide of the localized optimal-transport flow (:mod:`enff.filters.kalman_guidance`).
``"none"`` (:class:`NoGuidance`)
    The flow reproduces the forecast distribution.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import torch

from enff.config import check_value
from enff.observations.space import ObservationSpace
from enff.registry import Registry

from .likelihood import likelihood_gradient, member_blocks, states

__all__ = [
    "GUIDANCE",
    "SCHEDULES",
    "Guidance",
    "KalmanGuidance",
    "LocalGuidance",
    "MonteCarloGuidance",
    "NoGuidance",
    "Schedule",
    "build_guidance",
]

#: Time profiles of the local guidance strength.
Schedule = Literal["constant", "linear"]

#: ``lambda(t) = scale * SCHEDULES[schedule](t)``.
SCHEDULES: Mapping[Schedule, Callable[[float], float]] = MappingProxyType({
    "constant": lambda t: 1.0,
    "linear": lambda t: t,
})


class Guidance(ABC):
    """Base class: a guidance may re-weight the members and/or add a force to the velocity.

    Both hooks default to "nothing".
    """

    def member_log_weights(
        self, x1: torch.Tensor, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor | None:
        """Log-weights of the forecast members ``x1`` (shape ``(M, d)``), shape ``(M,)``, or ``None``."""
        return None

    def add_force(
        self, velocity: torch.Tensor, x: torch.Tensor, t: float, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor:
        """Add the guidance term ``g`` to ``velocity`` in place and return it (both ``(P, d)``, flow time ``t``)."""
        return velocity


#: Guidance name (the case files' ``guidance`` key) -> guidance class.
GUIDANCE: Registry[type[Guidance]] = Registry("guidance")


@GUIDANCE.register("none")
@dataclass(frozen=True)
class NoGuidance(Guidance):
    """No guidance: the flow samples the forecast distribution."""


@GUIDANCE.register("local")
@dataclass(frozen=True)
class LocalGuidance(Guidance):
    """``g = -lambda(t) grad E(xh)`` at the predicted end point ``xh = x + (1 - t) v(x)``.

    Attributes
    ----------
    scale:
        ``lambda`` (>= 0), in state units^2 per unit flow time (``E`` is dimensionless); the case files'
        ``guidance_scale``.
    schedule:
        ``"constant"`` or ``"linear"`` (:data:`SCHEDULES`); the case files' ``guidance_schedule``.
    """

    scale: float
    schedule: Schedule = "constant"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"guidance_scale must be finite and >= 0, got {self.scale!r}")
        check_value("guidance_schedule", self.schedule, Schedule)

    def strength(self, t: float) -> float:
        """``lambda(t)``."""
        return self.scale * SCHEDULES[self.schedule](t)

    def add_force(
        self, velocity: torch.Tensor, x: torch.Tensor, t: float, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor:
        strength = self.strength(t)
        if strength == 0.0:
            return velocity
        for block in member_blocks(x.shape[0], x.shape[1]):
            endpoint = torch.add(x[block], velocity[block], alpha=1.0 - t)
            velocity[block].add_(likelihood_gradient(endpoint, y, obs), alpha=-strength)
        return velocity


@GUIDANCE.register("mc")
@dataclass(frozen=True)
class MonteCarloGuidance(Guidance):
    """Exact Monte Carlo guidance: member ``j`` is weighted by its likelihood ``exp(-E(x1[j]))``."""

    def member_log_weights(
        self, x1: torch.Tensor, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor | None:
        with torch.no_grad():
            return -obs.neg_log_likelihood(states(x1, obs), y)


@GUIDANCE.register("kalman")
@dataclass(frozen=True)
class KalmanGuidance(Guidance):
    """Covariance-aware guidance: the Gaussian-posterior guide, exact for a Gaussian prior and linear observations.

    It acts inside the localized optimal-transport flow (:func:`enff.filters.local_flow.local_flow_analysis`),
    which prepares a :class:`~enff.filters.kalman_guidance.KalmanGuide` from the forecast once per analysis.
    """


def build_guidance(kind: str, **keys: Any) -> Guidance:
    """The guidance ``kind`` built from a filter's flat keys, once per filter.

    Parameters
    ----------
    kind:
        The filter's ``guidance`` key, a name in :data:`GUIDANCE` (the filter's ``Literal`` annotation
        says which it supports, checked by :func:`enff.checks.check_choices`).
    keys:
        The filter's guidance parameters named as the guidance fields (``scale``, ``schedule``); each kind
        takes those it has and ignores the others, as the flat case-file keys always did.
    """
    accepted = GUIDANCE.keys_of(kind)
    return GUIDANCE.build(kind, **{name: value for name, value in keys.items() if name in accepted})
