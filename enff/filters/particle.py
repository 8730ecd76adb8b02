"""Bootstrap particle filter: Gaussian log-weights, effective sample size, systematic resampling, jitter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from enff.observations.space import ObservationSpace

from ._ensemble import EnsembleFilter, ObservedEnsemble
from .base import register

__all__ = ["BootstrapPF", "effective_sample_size", "log_weights", "systematic_resample"]


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
    residual = observed.innovation - observed.anomalies  # (y - h(x_j)) / s
    log_likelihood = -0.5 * (residual * residual).sum(dim=-1)
    return log_likelihood - torch.logsumexp(log_likelihood, dim=0)


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


@register("bpf")
@dataclass(frozen=True)
class BootstrapPF(EnsembleFilter):
    """Bootstrap particle filter (Gordon et al., 1993) resampling every cycle.

    The members are weighted by the Gaussian likelihood of the observations, resampled systematically
    and, optionally, jittered with independent Gaussian noise to keep copies apart. The effective
    sample size of the weights (before resampling) is reported as ``diagnostics["ess"]``.

    Attributes
    ----------
    jitter:
        Standard deviation of the Gaussian noise added after resampling, in state units (0 = none).
    inflation, rtps:
        See :class:`~enff.filters._ensemble.EnsembleFilter`.
    """

    diagnostic_names: ClassVar[tuple[str, ...]] = ("ess",)

    jitter: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        jitter = float(self.jitter)
        if not math.isfinite(jitter) or jitter < 0:
            raise ValueError(f"jitter must be a finite standard deviation >= 0 (state units), got {self.jitter!r}")

    def _unobserved(self, prior: torch.Tensor, diagnostics: dict[str, float] | None) -> torch.Tensor:
        if diagnostics is not None:
            diagnostics["ess"] = float(prior.shape[0])
        return prior

    def _update(
        self,
        members: torch.Tensor,
        observed: ObservedEnsemble,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
        diagnostics: dict[str, float] | None,
    ) -> torch.Tensor:
        weights = log_weights(observed)
        if diagnostics is not None:
            diagnostics["ess"] = effective_sample_size(weights)
        analysis = members[systematic_resample(weights, generator)]
        if self.jitter > 0:
            noise = torch.randn(analysis.shape, generator=generator, device=analysis.device, dtype=analysis.dtype)
            analysis = analysis + self.jitter * noise
        return analysis
