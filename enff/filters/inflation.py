"""Covariance inflation shared by every ensemble filter: multiplicative and relaxation to prior spread.

Both functions act on ensembles shaped ``(member, *state)`` with the member on the leading axis and
work for any floating dtype and device. Spreads are sample standard deviations (``N - 1`` in the
denominator) per state element.
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_inflation", "check_rtps", "multiplicative_inflation", "rtps"]


def check_inflation(factor: float, name: str = "inflation") -> float:
    """Return ``float(factor)`` or raise ``ValueError`` naming ``name`` unless it is finite and > 0."""
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0.0:
        raise ValueError(f"{name} must be a finite factor > 0 (1.0 = no inflation), got {factor!r}")
    return factor


def check_rtps(factor: float, name: str = "rtps") -> float:
    """Return ``float(factor)`` or raise ``ValueError`` naming ``name`` unless it lies in [0, 1]."""
    factor = float(factor)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (0 = no relaxation), got {factor!r}")
    return factor


def _check_ensemble(name: str, ensemble: torch.Tensor) -> None:
    if ensemble.ndim < 2 or ensemble.shape[0] < 2:
        raise ValueError(f"{name} must have shape (member >= 2, *state), got {tuple(ensemble.shape)}")


def multiplicative_inflation(ensemble: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the anomalies about the ensemble mean by ``factor``.

    Parameters
    ----------
    ensemble:
        Ensemble, shape ``(member, *state)``.
    factor:
        Multiplicative factor on the anomalies (the standard deviation is multiplied by ``factor``,
        the covariance by ``factor**2``); 1 returns an unchanged copy.

    Returns
    -------
    ``mean + factor * (ensemble - mean)``, a new tensor shaped like ``ensemble``.
    """
    _check_ensemble("ensemble", ensemble)
    factor = check_inflation(factor, "factor")
    if factor == 1.0:
        return ensemble.clone()
    mean = ensemble.mean(dim=0, keepdim=True)
    return (ensemble - mean).mul_(factor).add_(mean)  # one new tensor, no temporaries


def rtps(forecast: torch.Tensor, analysis: torch.Tensor, factor: float) -> torch.Tensor:
    """Relaxation to prior spread (Whitaker and Hamill, 2012).

    Each analysis anomaly is rescaled per state element so that its spread becomes
    ``factor * sigma_f + (1 - factor) * sigma_a``, where ``sigma_f`` and ``sigma_a`` are the sample
    standard deviations of ``forecast`` and ``analysis``. Elements whose analysis spread is zero are
    left unchanged. The analysis mean is preserved.

    Parameters
    ----------
    forecast:
        Prior ensemble, shape ``(member, *state)``.
    analysis:
        Posterior ensemble, same shape as ``forecast`` (the member count may differ).
    factor:
        Relaxation factor in [0, 1]; 0 returns an unchanged copy of ``analysis``.

    Returns
    -------
    The relaxed analysis, a new tensor shaped like ``analysis``.
    """
    _check_ensemble("forecast", forecast)
    _check_ensemble("analysis", analysis)
    if forecast.shape[1:] != analysis.shape[1:]:
        raise ValueError(
            f"forecast and analysis must share the state shape, got {tuple(forecast.shape)} and {tuple(analysis.shape)}"
        )
    factor = check_rtps(factor, "factor")
    if factor == 0.0:
        return analysis.clone()
    sigma_f = forecast.std(dim=0)
    sigma_a = analysis.std(dim=0)
    positive = sigma_a > 0
    scale = torch.where(positive, 1.0 + factor * (sigma_f - sigma_a) / torch.where(positive, sigma_a, 1.0), 1.0)
    mean = analysis.mean(dim=0, keepdim=True)
    return mean + (analysis - mean) * scale
