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

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from enff.models.base import check_positive_int
from enff.observations.space import ObservationSpace

from .base import Filter, register
from .guidance import Guidance, make_guidance
from .inflation import check_inflation, multiplicative_inflation
from ..integrate import SAMPLERS, integrate
from .paths import F2PPath, OTPath, ProbabilityPath
from .velocity import marginal_velocity, weight_summary

__all__ = ["FlowResult", "flow_analysis", "GenerativeFilter", "EnsembleFlowFilter", "EnFFOT", "EnFFF2P"]


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
    sampler: str = "euler",
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
        diagnostics: dict[str, float] | None = None,
    ) -> torch.Tensor:
        _check_ensemble_like("forecast", forecast, obs)
        if previous is not None and previous.shape != forecast.shape:
            raise ValueError(
                f"previous must be shaped like forecast {tuple(forecast.shape)}, got {tuple(previous.shape)}"
            )
        inflated = multiplicative_inflation(forecast, self.inflation)
        if not bool(torch.isfinite(y).any()):
            return inflated  # every observation missing: nothing to assimilate
        y, obs = obs.observed(y)
        prior = inflated.reshape(forecast.shape[0], -1)
        flat_previous = None if previous is None else previous.reshape(forecast.shape[0], -1)
        members = self._transport(prior, flat_previous, y, obs, generator=generator, diagnostics=diagnostics)
        return members.reshape(forecast.shape)

    @abstractmethod
    def _transport(
        self,
        x1: torch.Tensor,
        previous: torch.Tensor | None,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
        diagnostics: dict[str, float] | None,
    ) -> torch.Tensor:
        """Analysis of the inflated forecast ``x1`` ``(N, d)`` given finite ``y``; returns ``(N, d)``."""


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
        ``"local"``, ``"mc"`` (exact Monte Carlo re-weighting) or ``"none"``.
    guidance_scale:
        ``lambda`` of local guidance (>= 0).
    guidance_schedule:
        ``"constant"`` (``lambda(t) = lambda``) or ``"linear"`` (``lambda(t) = lambda t``).
    sampler:
        ``"euler"`` or ``"heun"``.
    inflation:
        Multiplicative factor on the forecast anomalies before the analysis (1 = none).
    """

    diagnostic_names: ClassVar[tuple[str, ...]] = ("max_weight", "distinct_members")
    path_type: ClassVar[type[ProbabilityPath]]

    steps: int = 20
    sigma_min: float = 1e-2
    guidance: str = "local"
    guidance_scale: float = 0.05
    guidance_schedule: str = "constant"
    sampler: str = "euler"
    inflation: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        self.path()
        self.guide()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        check_inflation(self.inflation)

    def path(self) -> ProbabilityPath:
        """The probability path with this filter's ``sigma_min``."""
        return self.path_type(sigma_min=self.sigma_min)

    def guide(self) -> Guidance:
        """The guidance object described by ``guidance``, ``guidance_scale`` and ``guidance_schedule``."""
        return make_guidance(self.guidance, self.guidance_scale, self.guidance_schedule)

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
        diagnostics: dict[str, float] | None,
    ) -> torch.Tensor:
        path = self.path()
        x0 = self._source_members(x1, previous)
        source = path.sample_source(x1, x0, generator)
        result = flow_analysis(
            path, source, x1, y, obs, guidance=self.guide(), steps=self.steps, sampler=self.sampler, x0=x0
        )
        if diagnostics is not None:
            diagnostics["max_weight"] = result.max_weight
            diagnostics["distinct_members"] = float(result.distinct_members)
        return result.particles


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
    needs_previous: ClassVar[bool] = True

    def _source_members(self, x1: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor | None:
        return x1 if previous is None else previous.to(dtype=x1.dtype)
