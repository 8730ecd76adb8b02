"""Ensemble verification scores on torch tensors (members on the leading axis).

All functions take an ensemble ``(member, *state)`` and a verifying truth ``(*state)`` on the same
device and return plain tensors, so they run inside the cycle on CPU or GPU.

:data:`SCORES` declares, once, the per-cycle scores of a run: the name of the run-file variable, which
ensemble it scores, whether it needs the truth, its function, and its name in :func:`enff.summary.summarize`.
The cycle runner computes them, the run file defines their variables and the summary averages them
from this one list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["SCORES", "Score", "crps_fair", "energy_score_fair", "rank_counts", "rmse", "spread"]


def _check(ensemble: torch.Tensor, truth: torch.Tensor) -> None:
    if ensemble.ndim < 1 or tuple(ensemble.shape[1:]) != tuple(truth.shape):
        raise ValueError(
            f"ensemble (member, *state) and truth (*state) disagree: {tuple(ensemble.shape)} vs {tuple(truth.shape)}"
        )
    if ensemble.shape[0] < 2:
        raise ValueError(f"scores need at least 2 members, got {ensemble.shape[0]}")


def rmse(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error of the ensemble mean over all state elements (scalar, state units)."""
    _check(ensemble, truth)
    return torch.sqrt(torch.mean((ensemble.mean(0) - truth) ** 2))


def spread(ensemble: torch.Tensor) -> torch.Tensor:
    """Ensemble spread: square root of the state-averaged unbiased (N - 1) member variance (scalar)."""
    if ensemble.shape[0] < 2:
        raise ValueError(f"spread needs at least 2 members, got {ensemble.shape[0]}")
    return torch.sqrt(torch.mean(ensemble.var(0, unbiased=True)))


def crps_fair(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Fair (unbiased) ensemble CRPS per state element, averaged over the state (scalar, state units).

    ``CRPS = mean_i |x_i - y| - sum_{i,j} |x_i - x_j| / (2 N (N - 1))``; the pair sum is evaluated in
    O(N log N) per element from the sorted members: ``sum_{i<j} (x_(j) - x_(i)) = sum_k (2k - N - 1) x_(k)``.
    """
    _check(ensemble, truth)
    n = ensemble.shape[0]
    skill = (ensemble - truth).abs().mean(0)
    ordered = torch.sort(ensemble, dim=0).values
    shape = (n,) + (1,) * (ensemble.ndim - 1)
    k = torch.arange(1, n + 1, device=ensemble.device, dtype=ensemble.dtype).reshape(shape)
    pair_sum = ((2 * k - n - 1) * ordered).sum(0)  # = sum_{i<j} |x_i - x_j|
    return torch.mean(skill - pair_sum / (n * (n - 1)))


def energy_score_fair(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Fair multivariate energy score over the whole state vector (scalar; grows like RMSE * sqrt(d)).

    ``ES = mean_i |x_i - y| - sum_{i != j} |x_i - x_j| / (2 N (N - 1))`` with Euclidean norms over the
    flattened state. Member distances come from the Gram matrix of centred members (O(N^2 d)).
    """
    _check(ensemble, truth)
    n = ensemble.shape[0]
    flat = ensemble.reshape(n, -1)
    skill = torch.linalg.vector_norm(flat - truth.reshape(1, -1), dim=1).mean()
    centred = flat - flat.mean(0, keepdim=True)
    gram = centred @ centred.T
    sq = gram.diagonal()
    dist2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)
    return skill - torch.sqrt(dist2).sum() / (2 * n * (n - 1))


def rank_counts(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Rank-histogram counts: how many state elements have the truth at rank r among the members.

    Returns an integer tensor of shape ``(member + 1,)``; rank r means r members lie below the truth
    (ties count as below with probability one half, broken deterministically by counting half of them).
    """
    _check(ensemble, truth)
    n = ensemble.shape[0]
    below = (ensemble < truth).sum(0)
    ties = (ensemble == truth).sum(0)
    rank = (below + ties // 2).reshape(-1)
    return torch.bincount(rank, minlength=n + 1)


@dataclass(frozen=True)
class Score:
    """One per-cycle score of a run.

    Attributes
    ----------
    name:
        Its run-file variable (``(time,)``, units of the state).
    ensemble:
        The ensemble it scores.
    function:
        ``function(ensemble)`` when it needs no truth, else ``function(ensemble, truth)``; a scalar tensor.
    needs_truth:
        Whether it compares with the truth (twin experiments only).
    long_name:
        The variable's ``long_name``.
    summary:
        Its key in :func:`enff.summary.summarize` (the time mean after the burn-in).
    headline:
        Listed first in the summary.
    """

    name: str
    ensemble: Literal["forecast", "analysis"]
    function: Callable[..., torch.Tensor]
    needs_truth: bool
    long_name: str
    summary: str
    headline: bool = False

    def evaluate(self, forecast: torch.Tensor, analysis: torch.Tensor, truth: torch.Tensor | None) -> float:
        """The score of this cycle's ``forecast`` / ``analysis`` ``(member, *state)`` against ``truth`` ``(*state)``."""
        ensemble = {"forecast": forecast, "analysis": analysis}[self.ensemble]
        return float(self.function(ensemble, truth) if self.needs_truth else self.function(ensemble))


#: The per-cycle scores of every run, in the order of the run file's variables.
SCORES: tuple[Score, ...] = (
    Score("rmse_forecast", "forecast", rmse, True, "RMSE of the forecast ensemble mean", "rmse_forecast"),
    Score("rmse_analysis", "analysis", rmse, True, "RMSE of the analysis ensemble mean", "rmse", headline=True),
    Score("spread_forecast", "forecast", spread, False, "forecast ensemble spread", "spread_forecast"),
    Score("spread_analysis", "analysis", spread, False, "analysis ensemble spread", "spread", headline=True),
    Score("crps_forecast", "forecast", crps_fair, True, "fair ensemble CRPS of the forecast, mean over state",
          "crps_forecast"),
    Score("crps_analysis", "analysis", crps_fair, True, "fair ensemble CRPS of the analysis, mean over state",
          "crps", headline=True),
    Score("energy_score_analysis", "analysis", energy_score_fair, True,
          "fair energy score of the analysis over the whole state", "energy_score"),
)
