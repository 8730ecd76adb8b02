"""Localized ensemble flow filters ``lenff-ot`` and ``lenff-f2p``: Monte Carlo weights per grid point.

The published EnFF (:mod:`enff.filters.ensemble_flow`) weighs the members by a distance over the whole
state, so in high dimension every particle follows one member. Here the marginal velocity at grid point
``k`` averages the conditional velocities at ``k`` with the localized weights of
:mod:`enff.filters.local_weights`: with ``mu_t = a x1 + b x0``,

    v_i(k) = c x_i(k) + (a' - c a) sum_j w_ijk x1_j(k) + (b' - c b) sum_j w_ijk x0_j(k),   c = sigma_t' / sigma_t.

Guidance kinds (``guidance``):

``"local"``
    The gradient guidance of the published filter, ``-lambda(t) grad E`` at ``x + (1 - t) v``.
``"mc"``
    Localized Monte Carlo guidance: the tapered local log-likelihood of each member at every grid point
    (as in local particle filters) is added to the per-point logits.
``"kalman"``
    The Gaussian-posterior guide (:mod:`enff.filters.kalman_guidance`): exact for a Gaussian prior and
    linear observations, localized like the LETKF. Optimal-transport path only: on the paired F2P path the
    flow position identifies the member in ensemble space, so the ensemble-space conditional covariance
    of the end point vanishes and the guide would do nothing.
``"none"``
    No guidance.

``radius`` is the Gaspari-Cohn half-width in model length units, as for the LETKF (``inf`` gives the
global weights at every point, that is the published filter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar, Literal

import numpy as np
import torch

from enff.observations.base import ObservationOperator, flatten_members
from enff.observations.space import ObservationSpace

from .base import Analysis, register
from .ensemble_flow import EnFFF2P, EnFFOT, EnsembleFlowFilter
from .guidance import Guidance, KalmanGuidance, MonteCarloGuidance
from .inflation import check_rtps, multiplicative_inflation, rtps
from .kalman_guidance import KalmanGuide
from .localization import check_radius
from .local_weights import WeightStats, local_log_likelihood, local_mixture, squared_residuals
from ..integrate import Sampler, integrate
from .paths import ProbabilityPath
from .spatial_taper import SpatialLayout, spatial_taper

__all__ = ["LocalFlowResult", "local_flow_analysis", "LocalEnsembleFlowFilter", "LEnFFOT",
           "LEnFFF2P", "LOCAL_DIAGNOSTICS", "COORDINATE_CHANGES", "FlowCoordinates", "SpreadRelaxation",
           "Standardized", "standardize",
           "combine_stats"]

#: Coordinates the localized flow runs in (see :class:`LocalEnsembleFlowFilter`).
FlowCoordinates = Literal["state", "standardized"]

#: Per-cycle diagnostics of every filter with localized weights.
LOCAL_DIAGNOSTICS = ("max_weight", "distinct_members", "local_ess_mean", "local_ess_min")


@dataclass(frozen=True)
class LocalFlowResult:
    """Outcome of one localized guided flow.

    Attributes
    ----------
    particles:
        Particles at flow time 1, shape ``(P, d)``.
    stats:
        Weight diagnostics averaged over the velocity evaluations, except ``distinct_members`` and
        ``ess_min``, which are those of the last evaluation (where the weights are sharpest).
    """

    particles: torch.Tensor
    stats: WeightStats


def combine_stats(history: list[WeightStats]) -> WeightStats:
    """Weight diagnostics of a whole flow: means over evaluations, ``distinct_members`` and ``ess_min`` of the last."""
    last = history[-1]
    return WeightStats(
        max_weight=sum(s.max_weight for s in history) / len(history),
        distinct_members=last.distinct_members,
        ess_mean=sum(s.ess_mean for s in history) / len(history),
        ess_min=last.ess_min,
    )


def local_flow_analysis(
    path: ProbabilityPath,
    source: torch.Tensor,
    x1: torch.Tensor,
    y: torch.Tensor,
    obs: ObservationSpace,
    *,
    radius: float,
    guidance: Guidance,
    steps: int,
    sampler: Sampler = "euler",
    x0: torch.Tensor | None = None,
) -> LocalFlowResult:
    """Transport ``source`` particles ``(P, d)`` to the analysis with localized weights.

    Parameters
    ----------
    path:
        Probability path from the source (flow time 0) to the forecast (flow time 1).
    source:
        Particles at flow time 0, shape ``(P, d)``.
    x1:
        Forecast members, shape ``(M, d)``.
    y:
        Finite observations, shape ``(n_obs,)``.
    obs:
        Observation space of ``y``.
    radius:
        Gaspari-Cohn half-width of the weights (and of the kalman guide), model length units.
    guidance:
        Monte Carlo guidance weighs the members per point by their tapered local likelihood, Kalman guidance
        adds the shift of the Gaussian-posterior guide, any other guidance adds its force
        (:meth:`~enff.filters.guidance.Guidance.add_force`).
    steps:
        ``S``, the number of velocity evaluations.
    sampler:
        ``"euler"`` or ``"heun"``.
    x0:
        Paired source members ``(M, d)`` for paired paths.

    Returns
    -------
    :class:`LocalFlowResult`.
    """
    layout = SpatialLayout.of(obs.grid)
    taper = spatial_taper(layout, radius)
    members = layout.split(x1)
    sources = layout.split(x0) if path.paired else None
    values = (members,) if sources is None else (members, sources)
    log_prior = None
    if isinstance(guidance, MonteCarloGuidance):
        log_prior = local_log_likelihood(layout, taper, squared_residuals(x1, y, obs), obs)
    guide = KalmanGuide.prepare(x1, y, obs, layout, taper, radius) if isinstance(guidance, KalmanGuidance) else None
    history: list[WeightStats] = []

    def field(x: torch.Tensor, t: float) -> torch.Tensor:
        a, b = path.mean_coefficients(t)
        da, db = path.mean_coefficient_derivatives(t)
        sigma = path.std(t)
        rate = path.std_derivative(t) / sigma
        centres = a * members if sources is None else torch.add(a * members, sources, alpha=b)
        mixture = local_mixture(layout, taper, layout.split(x), centres, sigma, values, log_prior=log_prior)
        history.append(mixture.stats)
        endpoint = mixture.averages[0].reshape(x.shape)
        velocity = torch.add(x.mul(rate), endpoint, alpha=da - rate * a)
        if sources is not None:
            velocity.add_(mixture.averages[1].reshape(x.shape), alpha=db - rate * b)
        if guide is not None:
            velocity.add_(guide.shift(endpoint, t, sigma), alpha=1.0 / sigma)
        else:
            guidance.add_force(velocity, x, t, y, obs)
        return velocity

    particles = integrate(field, source, evaluations=steps, method=sampler)
    return LocalFlowResult(particles, combine_stats(history))


@dataclass(frozen=True, eq=False)
class Standardized(ObservationOperator):
    """``x = mean + scale * z`` for flat standardized states ``z``: the map back to the state, as an operator.

    Composed in front of an observation operator (``Standardized(m, s) | h``) it lets a filter work on
    standardized states while observing (and differentiating) the real ones. Output ``j`` is state
    element ``j``, so observation locations do not change.

    Attributes
    ----------
    mean, scale:
        Per-element offset and scale, shape ``(d,)``, state units.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.mean, flatten_members(x), self.scale)

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.arange(int(np.prod(shape)), dtype=np.int64)


def standardize(x1: torch.Tensor) -> Standardized:
    """Mean and standard deviation per element of the members ``x1`` ``(M, d)`` (zero spread: scale 1)."""
    scale = x1.std(dim=0)
    return Standardized(x1.mean(dim=0), torch.where(scale > 0, scale, torch.ones_like(scale)))


#: The change of coordinates of each :data:`FlowCoordinates` from the forecast members ``(M, d)``: none for
#: ``"state"``, the standardization for ``"standardized"``.
COORDINATE_CHANGES: Mapping[FlowCoordinates, Callable[[torch.Tensor], Standardized | None]] = MappingProxyType({
    "state": lambda x1: None,
    "standardized": standardize,
})


class SpreadRelaxation:
    """Mixin for generative filters: relaxation of the analysis spread to the prior's (RTPS) after the analysis.

    The class it is mixed into has an ``rtps`` field (factor in ``[0, 1]``, 0 = none) and an ``inflation``
    field; the prior is the inflated forecast, as for the classical filters.
    """

    rtps: float
    inflation: float

    def analysis(self, forecast: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, *,
                 previous: torch.Tensor | None = None, generator: torch.Generator) -> Analysis:
        """The analysis of the generative filter, its spread relaxed toward the inflated forecast's."""
        result = super().analysis(forecast, y, obs, previous=previous, generator=generator)  # type: ignore[misc]
        if self.rtps == 0.0:
            return result
        return replace(result, ensemble=rtps(multiplicative_inflation(forecast, self.inflation), result.ensemble,
                                             self.rtps))


@dataclass(frozen=True)
class LocalEnsembleFlowFilter(SpreadRelaxation, EnsembleFlowFilter):
    """Localized EnFF hyper-parameters (the case file's ``[filter]`` keys) and analysis.

    Attributes
    ----------
    radius:
        Gaspari-Cohn half-width of the weights in model length units (required; ``inf`` = global weights).
    guidance:
        ``"local"``, ``"mc"``, ``"kalman"`` or ``"none"`` (see the module docstring).
    rtps:
        Relaxation of the analysis spread to the prior spread, in ``[0, 1]`` (0 = none; see
        :func:`~enff.filters.inflation.rtps`).
    coordinates:
        ``"state"`` (the flow moves the states themselves, as published) or ``"standardized"``: the flow moves
        ``z = (x - m) / s``, ``m`` and ``s`` the forecast mean and spread of each element, and the result is
        mapped back. The source ``N(0, I)`` then has the forecast's scale, so the per-point weights separate
        the particles while the flow still has time to move them (in state coordinates a forecast spread far
        below 1 keeps the local weights uniform until the last steps and the particles collapse onto one
        weighted mean); ``sigma_min`` is then in units of the forecast spread and ``guidance_scale`` acts on
        ``grad_z E = s grad_x E``.
    steps, sigma_min, guidance_scale, guidance_schedule, sampler, inflation:
        As for the global filter (:class:`~enff.filters.ensemble_flow.EnsembleFlowFilter`);
        ``guidance_scale`` and ``guidance_schedule`` only matter for ``"local"`` guidance.
    """

    reported: ClassVar[tuple[str, ...]] = LOCAL_DIAGNOSTICS
    radius: float | None = None
    guidance: Literal["local", "mc", "kalman", "none"] = "local"
    rtps: float = 0.0
    coordinates: FlowCoordinates = "state"

    def __post_init__(self) -> None:
        check_radius(self.radius, required=True)
        check_rtps(self.rtps)
        super().__post_init__()  # checks the options, coordinates among them
        if isinstance(self.guide, KalmanGuidance) and self.path_type.paired:
            raise ValueError("guidance = \"kalman\" needs the unpaired optimal-transport path (lenff-ot): on the "
                             "paired F2P path the ensemble-space covariance of the end point given the flow "
                             "position vanishes")

    def _transport(
        self,
        x1: torch.Tensor,
        previous: torch.Tensor | None,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        path = self.path()
        x0 = self._source_members(x1, previous)
        change = COORDINATE_CHANGES[self.coordinates](x1)
        if change is not None:
            x1 = (x1 - change.mean) / change.scale
            x0 = None if x0 is None else (x0 - change.mean) / change.scale
            obs = replace(obs, operator=change | obs.operator)
        source = path.sample_source(x1, x0, generator)
        result = local_flow_analysis(
            path, source, x1, y, obs, radius=check_radius(self.radius, required=True), guidance=self.guide,
            steps=self.steps, sampler=self.sampler, x0=x0,
        )
        particles = result.particles if change is None else torch.addcmul(change.mean, result.particles, change.scale)
        return particles, result.stats.as_diagnostics()


@register("lenff-ot")
@dataclass(frozen=True)
class LEnFFOT(LocalEnsembleFlowFilter, EnFFOT):
    """Localized EnFF on the conditional optimal-transport path (source ``N(0, I)``)."""


@register("lenff-f2p")
@dataclass(frozen=True)
class LEnFFF2P(LocalEnsembleFlowFilter, EnFFF2P):
    """Localized EnFF on the filtering-to-predictive path (the previous analysis as source)."""
