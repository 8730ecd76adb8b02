"""Bootstrap particle filter: Gaussian log-weights, ESS, systematic resampling, tempering, regularization."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal

import torch

from enff.checks import check_choices
from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import ObservedEnsemble, observe
from .template import EnsembleFilter

__all__ = [
    "PERTURBED",
    "BootstrapPF",
    "Perturb",
    "duplicated",
    "effective_sample_size",
    "log_weights",
    "regularization_noise",
    "systematic_resample",
    "tempering_step",
]

#: Which resampled members get the regularization and jitter noise: every one, or only the copies of
#: members selected more than once (unique survivors stay exact).
Perturb = Literal["all", "duplicates"]

#: Most tempering stages per analysis; the last stage assimilates whatever likelihood is left.
MAX_STAGES = 32


def log_likelihood(observed: ObservedEnsemble) -> torch.Tensor:
    """Gaussian log-likelihood of each member up to a constant, ``-|y - h(x_j)|^2 / (2 s^2)``, shape ``(member,)``.

    Parameters
    ----------
    observed:
        Scaled observation anomalies ``(member, n_obs)`` and innovation ``(n_obs,)``.
    """
    residual = observed.innovation - observed.anomalies  # (y - h(x_j)) / s
    return -0.5 * (residual * residual).sum(dim=-1)


def log_weights(observed: ObservedEnsemble) -> torch.Tensor:
    """Normalized Gaussian log-likelihood weights of the members.

    Parameters
    ----------
    observed:
        Scaled observation anomalies ``(member, n_obs)`` and innovation ``(n_obs,)``.

    Returns
    -------
    ``log w_j``, shape ``(member,)``, with ``logsumexp(log w) = 0``; ``w_j`` is proportional to
    ``exp(-|y - h(x_j)|^2 / (2 s^2))``.
    """
    loglik = log_likelihood(observed)
    return loglik - torch.logsumexp(loglik, dim=0)


def tempering_step(loglik: torch.Tensor, remaining: float, target_ess: float) -> float:
    """Largest tempering exponent increment whose incremental weights keep the ESS at ``target_ess``.

    Finds ``phi`` in ``(0, remaining]`` with ``ESS(phi * loglik) = target_ess`` by bisection (the ESS decreases monotonically in ``phi``); returns ``remaining`` when even the whole
    rest of the likelihood keeps the ESS at or above the target.

    Parameters
    ----------
    loglik:
        Log-likelihood of each member, shape ``(member,)``.
    remaining:
        Exponent still to assimilate, in (0, 1].
    target_ess:
        Effective sample size to keep, in members.
    """

    def ess(phi: float) -> float:
        scaled = phi * loglik.double()
        return effective_sample_size(scaled - torch.logsumexp(scaled, dim=0))

    if ess(remaining) >= target_ess:
        return remaining
    low, high = 0.0, remaining
    for _ in range(50):
        middle = 0.5 * (low + high)
        if ess(middle) >= target_ess:
            low = middle
        else:
            high = middle
    return max(low, remaining / MAX_STAGES)


def effective_sample_size(log_weight: torch.Tensor) -> float:
    """``1 / sum_j w_j^2`` for normalized log-weights of shape ``(member,)``; between 1 and ``member``."""
    return float(torch.exp(-torch.logsumexp(2.0 * log_weight.double(), dim=0)))


def systematic_resample(log_weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Systematic resampling: one uniform offset, ``N`` evenly spaced positions on the weight CDF.

    Member ``j`` is copied ``floor(N w_j)`` or ``ceil(N w_j)`` times.

    Parameters
    ----------
    log_weight:
        Normalized log-weights, shape ``(member,)``.
    generator:
        Source of the uniform offset, on ``log_weight``'s device.

    Returns
    -------
    Indices of the selected members, shape ``(member,)``, sorted.
    """
    n = log_weight.shape[0]
    cumulative = torch.cumsum(torch.exp(log_weight.double()), dim=0)
    offset = torch.rand((), generator=generator, device=log_weight.device, dtype=torch.float64)
    positions = (offset + torch.arange(n, device=log_weight.device, dtype=torch.float64)) / n
    return torch.searchsorted(cumulative / cumulative[-1], positions, right=True)


def duplicated(index: torch.Tensor) -> torch.Tensor:
    """Mask of the entries of a sorted index vector ``(member,)`` whose value occurs more than once."""
    return (index == index.roll(1)) | (index == index.roll(-1))


#: The members each :data:`Perturb` chooses from a sorted resampling index ``(member,)``: a boolean mask.
PERTURBED: Mapping[Perturb, Callable[[torch.Tensor], torch.Tensor]] = MappingProxyType({
    "all": lambda index: torch.ones_like(index, dtype=torch.bool),
    "duplicates": duplicated,
})


def regularization_noise(
    members: torch.Tensor, log_weight: torch.Tensor, n_draws: int, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian draws with the weighted (unbiased) sample covariance of ``members``.

    The covariance is ``C = sum_j w_j (x_j - m)(x_j - m)^T / (1 - sum_j w_j^2)`` with the weighted mean
    ``m``; draws are ``z @ C12`` with ``z`` standard normal ``(n_draws, member)`` and
    ``C12[j] = sqrt(w_j / (1 - sum w^2)) (x_j - m)``, so they live in the span of the anomalies and
    cost ``O(n_draws * member * d)`` without a ``d x d`` matrix; when ``d < member`` the symmetric square
    root of ``C`` (``d x d``) replaces ``C12`` and the cost is ``O(n_draws * d^2 + d^3)``. Degenerate
    weights (one member holds all the weight) fall back to equal weights.

    Parameters
    ----------
    members:
        Ensemble, shape ``(member, d)``.
    log_weight:
        Normalized log-weights, shape ``(member,)``.
    n_draws:
        Number of draws.
    generator:
        Source of ``z``, on ``members``' device.

    Returns
    -------
    Noise, shape ``(n_draws, d)``, in state units.
    """
    weight = torch.exp(log_weight.to(members.dtype))
    concentration = float((weight * weight).sum())
    if concentration > 1.0 - 1e-12:
        weight = torch.full_like(weight, 1.0 / weight.shape[0])
        concentration = 1.0 / weight.shape[0]
    mean = weight @ members
    c12 = torch.sqrt(weight / (1.0 - concentration)).unsqueeze(-1) * (members - mean)
    if members.shape[1] < members.shape[0]:  # fewer state elements than members: a d x d square root is cheaper
        eigenvalues, vectors = torch.linalg.eigh(c12.T @ c12)
        c12 = (vectors * eigenvalues.clamp_min(0.0).sqrt()).T
    z = torch.randn((n_draws, c12.shape[0]), generator=generator, device=members.device, dtype=members.dtype)
    return z @ c12


@register("bpf")
@dataclass(frozen=True)
class BootstrapPF(EnsembleFilter):
    """Bootstrap particle filter (Gordon et al., 1993), optionally tempered and regularized.

    The members are weighted by the Gaussian likelihood of the observations and resampled
    systematically every cycle (the filter contract returns an equally weighted ensemble, so no weights
    are carried between cycles). Four options fight weight collapse in a deterministic model:

    * ``tempering`` (adaptive likelihood tempering): the likelihood ``p(y|x)`` is assimilated as
      ``p(y|x)^phi_1 ... p(y|x)^phi_K`` with ``sum phi_k = 1``, each ``phi_k`` as large as keeps the
      effective sample size of its incremental weights at ``tempering * member`` (at most
      ``MAX_STAGES`` stages); after every stage the members are resampled and regularized. With
      ``tempering = 0``, or when the whole likelihood keeps the ESS above the target, there is one stage.
    * ``regularization`` (regularized PF, Musso et al., 2001): after resampling, members get Gaussian
      noise with covariance ``phi_k (regularization * h)^2 C``, ``C`` the weighted sample covariance of
      the members before resampling and ``h = member^(-1/(d + 4))`` Scott's bandwidth. The factor
      ``phi_k`` makes the noise of all stages add up to one kernel of that width, however many stages
      tempering takes.
    * ``perturb = "duplicates"``: only members selected more than once get the noise (every copy of
      them); members selected once stay exact, so a well-spread weight distribution adds little noise.
    * ``shrink`` (kernel shrinkage, Liu and West, 2001): a perturbed member becomes
      ``m + a (x - m) + noise`` with ``m`` the weighted mean and ``a = sqrt(1 - width^2)``, so the
      kernel keeps the weighted mean and covariance instead of inflating the covariance by
      ``1 + width^2``.

    ``jitter`` adds independent isotropic noise of a fixed std after the last stage (to the members
    chosen by ``perturb``). The diagnostics are ``ess``, the effective sample size of the full likelihood
    weights of the forecast, and ``stages``, the number of stages.

    Attributes
    ----------
    jitter:
        Standard deviation of the isotropic Gaussian noise added after resampling, in state units (0 = none).
    regularization:
        Bandwidth factor of the covariance-shaped noise, dimensionless, >= 0 (0 = none).
    tempering:
        Target ESS fraction per tempering stage, in [0, 1) (0 = no tempering).
    perturb:
        Which resampled members get noise: ``"all"`` or ``"duplicates"``.
    shrink:
        Shrink perturbed members towards the weighted mean so the kernel keeps the covariance.
    inflation, rtps:
        See :class:`~enff.filters.template.EnsembleFilter`.
    """

    reported: ClassVar[tuple[str, ...]] = ("ess", "stages")

    jitter: float = 0.0
    regularization: float = 0.0
    tempering: float = 0.0
    perturb: Perturb = "all"
    shrink: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("jitter", "regularization"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        check_choices(self)  # perturb
        if not 0.0 <= float(self.tempering) < 1.0:
            raise ValueError(f"tempering must lie in [0, 1) (target ESS fraction per stage), got {self.tempering!r}")

    def _kernel_move(self, members: torch.Tensor, log_weight: torch.Tensor, resampled: torch.Tensor, width: float,
                     generator: torch.Generator) -> torch.Tensor:
        """Displacement of each resampled member by the regularization kernel, shape ``(member, d)``.

        Noise with covariance ``width^2 C`` (``C`` the weighted covariance of ``members``), plus, with
        ``shrink``, the pull ``(a - 1)(x - m)`` towards the weighted mean ``m`` with ``a = sqrt(1 - width^2)``.
        """
        move = width * regularization_noise(members, log_weight, resampled.shape[0], generator)
        if self.shrink:
            centre = torch.exp(log_weight.to(members.dtype)) @ members
            move = move + (math.sqrt(max(0.0, 1.0 - width * width)) - 1.0) * (resampled - centre)
        return move

    def _unobserved_diagnostics(self, n_members: int) -> dict[str, float]:
        return {"ess": float(n_members), "stages": 0.0}

    def _update(
        self, members: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        n = members.shape[0]
        bandwidth = self.regularization * n ** (-1.0 / (members.shape[1] + 4))
        observed = observe(members.reshape(n, *obs.state_shape), y, obs)
        loglik = log_likelihood(observed)
        std = obs.std.to(members)
        scaled_y = y.to(members) / std  # to re-weigh members moved by an intermediate stage
        analysis, remaining, stages = members, 1.0, 0
        while remaining > 0:
            stages += 1
            step = remaining
            if self.tempering > 0 and stages < MAX_STAGES:
                step = tempering_step(loglik, remaining, self.tempering * n)
            remaining = 0.0 if step >= remaining * (1.0 - 1e-9) else remaining - step
            weights = step * loglik - torch.logsumexp(step * loglik, dim=0)
            index = systematic_resample(weights, generator)
            resampled = analysis[index]
            chosen = PERTURBED[self.perturb](index)
            chosen = chosen.unsqueeze(-1).to(members.dtype)
            if bandwidth > 0:
                width = bandwidth * math.sqrt(step)
                resampled = resampled + chosen * self._kernel_move(analysis, weights, resampled, width, generator)
            analysis, loglik = resampled, loglik[index]
            if remaining > 0 and bandwidth > 0:
                moved = obs.h(analysis.reshape(n, *obs.state_shape)) / std
                loglik = -0.5 * ((scaled_y - moved) ** 2).sum(dim=-1)
        diagnostics = {"ess": effective_sample_size(log_weights(observed)), "stages": float(stages)}
        if self.jitter > 0:
            noise = torch.randn(analysis.shape, generator=generator, device=analysis.device, dtype=analysis.dtype)
            analysis = analysis + chosen * self.jitter * noise
        return analysis, diagnostics
