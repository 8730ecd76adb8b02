"""The ensemble flow filter (EnFF): training-free flow matching from a source ensemble to the analysis.

A probability path (:mod:`enff.filters.paths`) joins a source ensemble at flow time 0 to the forecast
ensemble at flow time 1; the Monte Carlo marginal velocity (:mod:`enff.filters.velocity`) transports the
source particles along it, and guidance (:mod:`enff.filters.guidance`) pulls them toward the
observations, so that at flow time 1 they form the analysis ensemble. ``steps`` is ``S``, the number of
velocity evaluations (see :mod:`enff.integrate` for how Euler and Heun spend them).

Registered filters: ``enff-ot`` (conditional optimal-transport path, Gaussian source) and ``enff-f2p``
(filtering-to-predictive path, the previous analysis as source).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from enff.checks import check_choices, check_positive_int
from enff.observations.space import ObservationSpace

from .base import register
from .generative import GenerativeFilter
from .guidance import Guidance, Schedule, build_guidance
from .inflation import check_inflation
from ..integrate import Sampler, integrate
from .paths import F2PPath, OTPath, ProbabilityPath
from .velocity import marginal_velocity, weight_summary

__all__ = ["FlowResult", "flow_analysis", "EnsembleFlowFilter", "EnFFOT", "EnFFF2P"]


@dataclass(frozen=True)
class FlowResult:
    """Outcome of one guided flow.

    Attributes
    ----------
    particles:
        The particles at flow time 1, shape ``(P, d)``.
    max_weight:
        Largest Monte Carlo weight of each particle, averaged over particles and velocity evaluations
        (``1 / M`` uniform, 1 fully collapsed onto single members).
    distinct_members:
        Number of distinct forecast members that are some particle's largest weight at the last
        velocity evaluation.
    """

    particles: torch.Tensor
    max_weight: float
    distinct_members: int


def flow_analysis(
    path: ProbabilityPath,
    source: torch.Tensor,
    x1: torch.Tensor,
    y: torch.Tensor,
    obs: ObservationSpace,
    *,
    guidance: Guidance,
    steps: int,
    sampler: Sampler = "euler",
    x0: torch.Tensor | None = None,
) -> FlowResult:
    """Transport ``source`` particles along ``path`` to the forecast ``x1``, guided by the observations.

    Parameters
    ----------
    path:
        Probability path from the source (flow time 0) to the forecast (flow time 1).
    source:
        Particles at flow time 0, shape ``(P, d)`` (``P`` may differ from the member count).
    x1:
        Forecast members, shape ``(M, d)``, ``d = prod(obs.state_shape)``.
    y:
        Finite observations, shape ``(n_obs,)`` (``obs.observed(y)`` already applied).
    obs:
        Observation space of ``y``.
    guidance:
        How the observations steer the flow.
    steps:
        ``S``, the number of velocity evaluations.
    sampler:
        ``"euler"`` or ``"heun"``.
    x0:
        Paired source members, shape ``(M, d)``, for paired paths.

    Returns
    -------
    :class:`FlowResult`.
    """
    log_prior = guidance.member_log_weights(x1, y, obs)
    largest: list[torch.Tensor] = []
    last_weights: list[torch.Tensor] = []
    # the samplers use a field value only until two further evaluations: two buffers, used in turn
    buffers = [torch.empty_like(source), torch.empty_like(source)]

    def field(x: torch.Tensor, t: float) -> torch.Tensor:
        out = buffers[len(largest) % 2]
        estimate = marginal_velocity(path, t, x, x1, x0, log_prior=log_prior, out=out)
        largest.append(estimate.weights.max(dim=1).values.mean())
        last_weights[:] = [estimate.weights]
        return guidance.add_force(estimate.velocity, x, t, y, obs)

    particles = integrate(field, source, evaluations=steps, method=sampler)
    _, distinct = weight_summary(last_weights[0])
    return FlowResult(particles, float(torch.stack(largest).mean()), distinct)


@dataclass(frozen=True)
class EnsembleFlowFilter(GenerativeFilter):
    """EnFF hyper-parameters (the case file's ``[filter]`` keys) and analysis.

    Attributes
    ----------
    steps:
        ``S``, velocity evaluations per analysis (the published "sampling steps" minus one).
    sigma_min:
        Smallest standard deviation of the conditional paths, in state units, in ``(0, 1)``.
    guidance:
        ``"local"``, ``"mc"`` (exact Monte Carlo re-weighting) or ``"none"`` (:mod:`enff.filters.guidance`).
    guidance_scale:
        ``lambda`` of local guidance (>= 0).
    guidance_schedule:
        ``"constant"`` (``lambda(t) = lambda``) or ``"linear"`` (``lambda(t) = lambda t``).
    sampler:
        ``"euler"`` or ``"heun"``.
    inflation:
        Multiplicative factor on the forecast anomalies before the analysis (1 = none).
    guide:
        The guidance object these keys describe, built once with the filter (not a key).
    """

    reported: ClassVar[tuple[str, ...]] = ("max_weight", "distinct_members")
    path_type: ClassVar[type[ProbabilityPath]]

    steps: int = 20
    sigma_min: float = 1e-2
    guidance: Literal["local", "mc", "none"] = "local"
    guidance_scale: float = 0.05
    guidance_schedule: Schedule = "constant"
    sampler: Sampler = "euler"
    inflation: float = 1.0
    guide: Guidance = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_choices(self)  # guidance, guidance_schedule, sampler (and a subclass's options)
        self.path()
        object.__setattr__(self, "guide", build_guidance(self.guidance, scale=self.guidance_scale,
                                                         schedule=self.guidance_schedule))
        check_inflation(self.inflation)

    def path(self) -> ProbabilityPath:
        """The probability path with this filter's ``sigma_min``."""
        return self.path_type(sigma_min=self.sigma_min)

    def _source_members(self, x1: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor | None:
        """Paired source members ``x0`` for the path (``None`` for unpaired paths)."""
        return None

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
        source = path.sample_source(x1, x0, generator)
        result = flow_analysis(
            path, source, x1, y, obs, guidance=self.guide, steps=self.steps, sampler=self.sampler, x0=x0
        )
        return result.particles, {"max_weight": result.max_weight, "distinct_members": float(result.distinct_members)}


@register("enff-ot")
@dataclass(frozen=True)
class EnFFOT(EnsembleFlowFilter):
    """EnFF on the conditional optimal-transport path: source ``N(0, I)``, ``sigma_t = 1 - (1 - sigma_min) t``."""

    path_type: ClassVar[type[ProbabilityPath]] = OTPath


@register("enff-f2p")
@dataclass(frozen=True)
class EnFFF2P(EnsembleFlowFilter):
    """EnFF on the filtering-to-predictive path: member ``j`` of the previous analysis flows to forecast ``j``.

    Without a previous analysis (the first cycle) the forecast itself is the source: the conditional
    paths are then constant, the marginal velocity vanishes, and the analysis is the forecast plus
    ``sigma_min`` noise moved by the guidance force alone (``"mc"`` guidance has no effect then).
    """

    path_type: ClassVar[type[ProbabilityPath]] = F2PPath

    def _source_members(self, x1: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor | None:
        return x1 if previous is None else previous.to(dtype=x1.dtype)
