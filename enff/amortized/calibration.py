"""Calibration checks of an amortized posterior over many (parameter, observation) pairs.

Simulation-based calibration ranks (Talts et al. 2018) and the expected coverage of central
marginal credible intervals, both computed from posterior samples only.
"""

from __future__ import annotations

import torch

__all__ = ["sbc_ranks", "expected_coverage"]


def sbc_ranks(samples: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rank of each true parameter among its posterior samples, per dimension.

    Parameters
    ----------
    samples:
        Posterior samples, shape ``(n, batch, d)`` (as returned by :meth:`Posterior.sample`).
    theta:
        True parameters that generated each observation, shape ``(batch, d)``.

    Returns
    -------
    Ranks in ``0..n``, shape ``(batch, d)``; uniform for a calibrated posterior.
    """
    if samples.ndim != 3 or theta.shape != samples.shape[1:]:
        raise ValueError(f"samples must be (n, batch, d) and theta (batch, d), got {tuple(samples.shape)} "
                         f"and {tuple(theta.shape)}")
    return (samples < theta[None]).sum(dim=0)


def expected_coverage(samples: torch.Tensor, theta: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Fraction of true parameters inside central marginal credible intervals, per level and dimension.

    Parameters
    ----------
    samples:
        Posterior samples, shape ``(n, batch, d)``.
    theta:
        True parameters, shape ``(batch, d)``.
    levels:
        Credibility levels in ``(0, 1)``, shape ``(m,)``.

    Returns
    -------
    Empirical coverage, shape ``(m, d)``; equal to ``levels`` (per column) for a calibrated posterior.
    """
    ranks = sbc_ranks(samples, theta).to(samples.dtype) / samples.shape[0]
    lower = (1 - levels)[:, None, None] / 2
    inside = (ranks[None] >= lower) & (ranks[None] <= 1 - lower)
    return inside.to(samples.dtype).mean(dim=1)

