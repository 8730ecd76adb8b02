"""The ensemble score filter (EnSF) of Bao, Zhang and Zhang (2024).

Diffusion time ``t`` runs from 0 (the forecast, "data") to 1 (noise) along the variance-preserving-type
forward process ``x_t = alpha_t x_0 + beta_t z`` with

    alpha_t = 1 - (1 - eps_alpha) t,    beta_t^2 = eps_beta + (1 - eps_beta) t,

drift rate ``f(t) = d log alpha_t / dt`` and squared diffusion ``g(t)^2 = d beta_t^2 / dt - 2 f(t) beta_t^2``.
The analysis integrates the reverse process from ``t = 1`` to ``t = 0`` with the score

    s(x, t) = s_prior(x, t) - h(t) grad E(x),    h(t) = 1 - t,

where ``E`` is the observation negative log-likelihood (the likelihood score is damped toward the noise
end and, optionally, clipped elementwise to ``[-clip, clip]``) and the prior score comes from the
forecast members ``x1``:

- ``"member"`` (as in the original EnSF code): particle ``i`` sees only its own member,
  ``s_prior(x_i) = -(x_i - alpha_t x1[i]) / beta_t^2``;
- ``"mixture"``: the exact score of the empirical mixture ``sum_j N(alpha_t x1[j], beta_t^2 I)``,
  ``s_prior(x_i) = -(x_i - alpha_t sum_j w_ij x1[j]) / beta_t^2`` with the softmax weights of
  :func:`enff.filters.velocity.mixture_weights`.

Samplers: reverse-time SDE by Euler-Maruyama, ``dx = [f x - g^2 s] dt + g dW``, or the probability-flow
ODE, ``dx/dt = f x - g^2 s / 2``, by Euler; ``steps`` = number of score evaluations, on the uniform grid
``t_k = 1 - k / steps`` (``t = 0`` itself is never evaluated, so ``eps_beta = 0`` is allowed).
With ``start="marginal"`` (the default) the particles start from the exact ``t = 1`` marginal of each
member, ``alpha_1 x1[i] + beta_1 z``, which tends to ``N(0, I)`` as ``eps_alpha -> 0``; ``start="noise"``
starts from ``N(0, I)`` whatever ``eps_alpha`` is, as the published EnSF and EnFF codes do. With
``eps_alpha = 1`` the two differ: from noise, the per-member prior score leaves each particle pulled
toward zero (the probability-flow ODE ends at ``x1 + beta_0 (z - x1)`` instead of ``x1 + beta_0 z``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch

from enff.checks import check_choices, check_positive_int
from enff.config import check_value
from enff.observations.space import ObservationSpace

from .base import register
from .generative import GenerativeFilter
from .inflation import check_inflation
from .likelihood import likelihood_gradient, member_blocks
from ..integrate import Field, euler_maruyama, integrate
from .velocity import mixture_weights, squared_distances

__all__ = ["VPSchedule", "prior_score", "EnSF", "PriorScore", "ReverseSampler", "Start", "PRIOR_SCORES",
           "REVERSE_SAMPLERS", "STARTS", "ScoreSampler"]

#: Prior-score forms of :class:`EnSF` (see the module docstring).
PriorScore = Literal["member", "mixture"]
#: Samplers of the reverse process: reverse-time SDE or probability-flow ODE.
ReverseSampler = Literal["sde", "ode"]
#: Starting distributions of the reverse process.
Start = Literal["marginal", "noise"]


@dataclass(frozen=True)
class VPSchedule:
    """``alpha_t = 1 - (1 - eps_alpha) t`` and ``beta_t^2 = eps_beta + (1 - eps_beta) t`` on ``t in [0, 1]``."""

    eps_alpha: float
    eps_beta: float

    def __post_init__(self) -> None:
        if not 0.0 < self.eps_alpha <= 1.0:
            raise ValueError(f"eps_alpha must lie in (0, 1], got {self.eps_alpha!r}")
        if not 0.0 <= self.eps_beta < 1.0:
            raise ValueError(f"eps_beta must lie in [0, 1), got {self.eps_beta!r}")

    def alpha(self, t: float) -> float:
        """Signal coefficient ``alpha_t`` (dimensionless)."""
        return 1.0 - (1.0 - self.eps_alpha) * t

    def beta_sq(self, t: float) -> float:
        """Noise variance ``beta_t^2`` in squared state units."""
        return self.eps_beta + (1.0 - self.eps_beta) * t

    def drift_rate(self, t: float) -> float:
        """``f(t) = d log alpha_t / dt``."""
        return -(1.0 - self.eps_alpha) / self.alpha(t)

    def diffusion_sq(self, t: float) -> float:
        """``g(t)^2 = d beta_t^2 / dt - 2 f(t) beta_t^2``."""
        return (1.0 - self.eps_beta) - 2.0 * self.drift_rate(t) * self.beta_sq(t)


def _member_score(schedule: VPSchedule, t: float, x: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    if x.shape != x1.shape:
        raise ValueError(
            f"the per-member score pairs particle i with member i: x {tuple(x.shape)} vs x1 {tuple(x1.shape)}"
        )
    return torch.add(x, x1, alpha=-schedule.alpha(t)).mul_(-1.0 / schedule.beta_sq(t))


def _mixture_score(schedule: VPSchedule, t: float, x: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    alpha, beta_sq = schedule.alpha(t), schedule.beta_sq(t)
    weights = mixture_weights(squared_distances(x, x1, a=alpha), math.sqrt(beta_sq)).to(x.dtype)
    return torch.addmm(x, weights, x1, beta=-1.0 / beta_sq, alpha=alpha / beta_sq)


#: The prior score of each form, ``score(schedule, t, x, x1)`` (see :func:`prior_score`).
PRIOR_SCORES: Mapping[PriorScore, Callable[[VPSchedule, float, torch.Tensor, torch.Tensor], torch.Tensor]] = (
    MappingProxyType({"member": _member_score, "mixture": _mixture_score}))


def prior_score(schedule: VPSchedule, t: float, x: torch.Tensor, x1: torch.Tensor, kind: PriorScore) -> torch.Tensor:
    """Score of the forward-process marginal of the forecast at diffusion time ``t``.

    Parameters
    ----------
    schedule:
        The forward process.
    t:
        Diffusion time in ``(0, 1]`` (``beta_t^2 > 0`` required).
    x:
        Particles, shape ``(P, d)``; ``P == M`` for ``kind="member"``.
    x1:
        Forecast members, shape ``(M, d)``.
    kind:
        ``"member"`` or ``"mixture"`` (see the module docstring).

    Returns
    -------
    Score, shape ``(P, d)``, per state unit.
    """
    check_value("score", kind, PriorScore)
    return PRIOR_SCORES[kind](schedule, t, x, x1)


def _from_noise(schedule: VPSchedule, x1: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise


def _from_marginal(schedule: VPSchedule, x1: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return torch.add(schedule.alpha(1.0) * x1, noise, alpha=math.sqrt(schedule.beta_sq(1.0)))


#: The reverse process's start of each :data:`Start` from the schedule, the forecast ``x1`` ``(M, d)`` and
#: standard normal noise shaped like ``x1``.
STARTS: Mapping[Start, Callable[[VPSchedule, torch.Tensor, torch.Tensor], torch.Tensor]] = MappingProxyType({
    "marginal": _from_marginal,
    "noise": _from_noise,
})


def _reverse_sde(drift: Field, schedule: VPSchedule, x: torch.Tensor, steps: int,
                 generator: torch.Generator) -> torch.Tensor:
    return euler_maruyama(drift, lambda t: math.sqrt(schedule.diffusion_sq(t)), x, evaluations=steps,
                          generator=generator, start=1.0, end=0.0)


def _probability_flow(drift: Field, schedule: VPSchedule, x: torch.Tensor, steps: int,
                      generator: torch.Generator) -> torch.Tensor:
    return integrate(drift, x, evaluations=steps, method="euler", start=1.0, end=0.0)


@dataclass(frozen=True)
class ScoreSampler:
    """A reverse-process sampler: the weight of ``g^2 s`` in its drift and the integration from ``t = 1`` to 0."""

    score_weight: float
    run: Callable[[Field, VPSchedule, torch.Tensor, int, torch.Generator], torch.Tensor]


#: Each :data:`ReverseSampler`: Euler-Maruyama on the reverse-time SDE (drift ``f x - g^2 s``) or Euler on the
#: probability-flow ODE (``f x - g^2 s / 2``), ``steps`` drift evaluations from ``t = 1`` to 0.
REVERSE_SAMPLERS: Mapping[ReverseSampler, ScoreSampler] = MappingProxyType({
    "sde": ScoreSampler(1.0, _reverse_sde),
    "ode": ScoreSampler(0.5, _probability_flow),
})


@register("ensf")
@dataclass(frozen=True)
class EnSF(GenerativeFilter):
    """Ensemble score filter hyper-parameters (the case file's ``[filter]`` keys) and analysis.

    Attributes
    ----------
    steps:
        Score evaluations per analysis (reverse-time steps).
    eps_alpha:
        ``alpha_1``, in ``(0, 1]`` (1: no signal decay, a variance-exploding path).
    eps_beta:
        ``beta_0^2``, in ``[0, 1)``.
    score:
        Prior score form, ``"member"`` or ``"mixture"``.
    sampler:
        ``"sde"`` (reverse-time Euler-Maruyama) or ``"ode"`` (probability-flow ODE, Euler).
    clip:
        Elementwise bound on the damped likelihood score (``inf`` = no clipping), per state unit.
    start:
        ``"marginal"`` (each member's exact ``t = 1`` marginal) or ``"noise"`` (``N(0, I)``, as published).
    inflation:
        Multiplicative factor on the forecast anomalies before the analysis (1 = none).
    """

    steps: int = 50
    eps_alpha: float = 0.05
    eps_beta: float = 0.0
    score: PriorScore = "member"
    sampler: ReverseSampler = "sde"
    clip: float = math.inf
    start: Start = "marginal"
    inflation: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        self.schedule()
        check_choices(self)  # score, sampler, start
        if not float(self.clip) > 0.0:
            raise ValueError(f"clip must be > 0 (inf = no clipping), got {self.clip!r}")
        check_inflation(self.inflation)

    def schedule(self) -> VPSchedule:
        """The forward process of this filter."""
        return VPSchedule(eps_alpha=self.eps_alpha, eps_beta=self.eps_beta)

    def _transport(
        self,
        x1: torch.Tensor,
        previous: torch.Tensor | None,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        schedule = self.schedule()
        score = PRIOR_SCORES[self.score]
        return self._reverse(schedule, x1, y, obs, lambda x, t: score(schedule, t, x, x1), generator=generator), {}

    def _reverse(self, schedule: VPSchedule, x1: torch.Tensor, y: torch.Tensor, obs: ObservationSpace,
                 prior: Callable[[torch.Tensor, float], torch.Tensor], *, generator: torch.Generator) -> torch.Tensor:
        """Integrate the reverse process from ``t = 1`` to 0 with the prior score ``prior(x, t)`` ``(P, d)``."""

        def score(x: torch.Tensor, t: float) -> torch.Tensor:
            total = prior(x, t)
            for block in member_blocks(x.shape[0], x.shape[1]):
                likelihood = likelihood_gradient(x[block], y, obs).mul_(-(1.0 - t))
                total[block].add_(likelihood.clamp_(-self.clip, self.clip))
            return total

        sampler = REVERSE_SAMPLERS[self.sampler]

        def drift(x: torch.Tensor, t: float) -> torch.Tensor:
            weight = schedule.diffusion_sq(t) * sampler.score_weight
            return score(x, t).mul_(-weight).add_(x, alpha=schedule.drift_rate(t))

        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        start = STARTS[self.start](schedule, x1, noise)
        return sampler.run(drift, schedule, start, self.steps, generator)
