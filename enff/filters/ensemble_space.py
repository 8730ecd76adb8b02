"""Ensemble-space algebra of the Kalman-type filters: the observed ensemble, AOEI and the square-root update.

Notation (Hunt et al., 2007): ``N`` members, state dimension ``d``, ``p`` observations. The forecast
anomalies are ``X' = X - mean`` (``(N, d)``); the scaled observation anomalies are
``S = (h(X) - mean h) / s`` (``(N, p)``, ``s`` the error std) and the scaled innovation is
``dy = (y - mean h) / s`` (``(p,)``). The Kalman-type filters work in the ``N``-dimensional ensemble space with
the precision ``A = (N - 1) I + S diag(w) S^T``, ``w`` the (optional) localization weights of R^-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

__all__ = ["ObservedEnsemble", "adaptive_error_inflation", "ensemble_precision", "observe",
           "square_root_update", "square_root_update_and_weights"]


@dataclass(frozen=True)
class ObservedEnsemble:
    """The forecast ensemble seen through the observations, scaled by the error std.

    Attributes
    ----------
    anomalies:
        ``S = (h(x_j) - mean_j h(x_j)) / s``, shape ``(member, n_obs)``, dimensionless.
    innovation:
        ``dy = (y - mean_j h(x_j)) / s``, shape ``(n_obs,)``, dimensionless.
    mean:
        ``mean_j h(x_j)``, shape ``(n_obs,)``, in observation units.
    std:
        The error std ``s`` the other two are scaled by, shape ``(n_obs,)``, in observation units (the
        observation error std, times the inflation factor after :func:`adaptive_error_inflation`).
    """

    anomalies: torch.Tensor
    innovation: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def observe(forecast: torch.Tensor, y: torch.Tensor, obs: ObservationSpace,
            std: torch.Tensor | None = None) -> ObservedEnsemble:
    """Ensemble estimate of ``H`` applied to ``forecast`` (works for nonlinear ``h``).

    Parameters
    ----------
    forecast:
        Ensemble, shape ``(member, *state_shape)``.
    y:
        Finite observations, shape ``(n_obs,)``.
    obs:
        Observation space without missing entries (after ``obs.observed``).
    std:
        Error std to scale by, shape ``(n_obs,)``, observation units; ``None`` for ``obs.std``.
    """
    hx = obs.h(forecast)
    std = (obs.std if std is None else std).to(device=hx.device, dtype=hx.dtype)
    mean = hx.mean(dim=0)
    return ObservedEnsemble(torch.sub(hx, mean).div_(std), (y.to(device=hx.device, dtype=hx.dtype) - mean) / std,
                            mean, std)  # hx may be a view of forecast: a new tensor, scaled in place


def adaptive_error_inflation(observed: ObservedEnsemble, threshold: float = 1.0
                             ) -> tuple[ObservedEnsemble, torch.Tensor]:
    """Adaptive observation error inflation (AOEI; Minamide and Zhang, 2017) of a scaled observed ensemble.

    An observation whose innovation ``d`` exceeds ``threshold`` times its total std
    ``sqrt(sigma_h^2 + s^2)`` (``sigma_h^2`` the ensemble variance of ``h(x)`` there, ``s`` its error std)
    gets the error variance ``d^2 / threshold^2 - sigma_h^2``, just enough to bring it to ``threshold``;
    ``threshold = 1`` is the published AOEI, ``max(s^2, d^2 - sigma_h^2)``. In the scaled units of
    :class:`ObservedEnsemble` the error std is multiplied by ``f = sqrt(max(1, dy^2 / threshold^2 - var_j S))``
    and both ``S`` and ``dy`` are divided by ``f``. An innovation far outside what the ensemble and the
    error allow (an ensemble sure of the wrong value, or a nonlinear ``h`` whose slope the ensemble
    misjudges) then gives a bounded increment instead of an extrapolation of ``h``.

    Returns the inflated ensemble and ``f``, shape ``(n_obs,)``, ``>= 1``.
    """
    n = observed.anomalies.shape[0]
    prior_variance = observed.anomalies.pow(2).sum(dim=0) / (n - 1)
    factor = (observed.innovation.pow(2) / threshold**2 - prior_variance).clamp_min(1.0).sqrt()
    return ObservedEnsemble(observed.anomalies / factor, observed.innovation / factor, observed.mean,
                            observed.std * factor), factor


def ensemble_precision(anomalies: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``A = (N - 1) I + S^T diag(w) S`` for a batch of local problems.

    Parameters
    ----------
    anomalies:
        Scaled observation anomalies ``S``, shape ``(..., n_obs, member)`` (observations first).
    weight:
        Localization weights multiplying R^-1, shape ``(..., n_obs)``, or ``None`` for all ones.

    Returns
    -------
    ``A``, shape ``(..., member, member)``.
    """
    n = anomalies.shape[-1]
    weighted = anomalies if weight is None else anomalies * weight.unsqueeze(-1)
    gram = weighted.transpose(-1, -2) @ anomalies
    return gram + (n - 1) * torch.eye(n, dtype=gram.dtype, device=gram.device)


def square_root_update(
    anomalies: torch.Tensor,
    innovation: torch.Tensor,
    state_anomalies: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """ETKF update of the state anomalies with the symmetric square root, for a batch of local problems.

    With ``A = (N - 1) I + S^T diag(w) S`` the ensemble weights are
    ``T = wbar 1^T + sqrt(N - 1) A^{-1/2}`` and ``wbar = A^{-1} S^T diag(w) dy`` (Hunt et al., 2007);
    analysis member ``k`` is ``mean + sum_j T[j, k] X'[j]``. The symmetric square root keeps the
    analysis anomalies centred (``A 1 = (N - 1) 1``). ``T`` is never formed: it is applied to ``X'``
    through the eigen-decomposition of the smaller of ``A`` (``N x N``) and the observation-space
    matrix ``K = B B^T`` (``n_obs x n_obs``, ``B = diag(sqrt(w)) S``); both give the same ``T`` to
    round-off, so one local problem costs one eigen-decomposition of size ``min(N, n_obs)``.

    Parameters
    ----------
    anomalies:
        ``S``, shape ``(..., n_obs, member)``.
    innovation:
        ``dy``, shape ``(..., n_obs)``.
    state_anomalies:
        ``X'``, shape ``(..., member, n_state)``.
    weight:
        Localization weights of R^-1 (``>= 0``), shape ``(..., n_obs)``, or ``None``.

    Returns
    -------
    ``T^T X'``, shape ``(..., member, n_state)``: the analysis minus the forecast mean, in the dtype of
    ``state_anomalies``.

    Notes
    -----
    The eigenproblem is always solved in float64: with many precise observations the largest eigenvalue
    of ``A`` dwarfs the smallest, ``N - 1`` (the member-mean direction), and float32 rounding can make the
    latter negative (seen at d = 1e6 with arctan observations of std 0.05: NaN analyses).
    """
    return square_root_update_and_weights(anomalies, innovation, state_anomalies, weight)[0]


def square_root_update_and_weights(
    anomalies: torch.Tensor,
    innovation: torch.Tensor,
    state_anomalies: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`square_root_update` and the mean weights ``wbar = A^{-1} S^T diag(w) dy`` it used.

    Returns ``T^T X'`` (``(..., member, n_state)``, dtype of ``state_anomalies``) and ``wbar``
    (``(..., member)``, float64): the analysis mean is ``mean + sum_j wbar[j] X'[j]``.
    """
    work = torch.float64
    solve = _observation_space_update if anomalies.shape[-2] < anomalies.shape[-1] else _member_space_update
    update, weights = solve(anomalies.to(work), innovation.to(work), state_anomalies.to(work),
                            None if weight is None else weight.to(work))
    return update.to(state_anomalies.dtype), weights


def _member_space_update(
    anomalies: torch.Tensor, innovation: torch.Tensor, state_anomalies: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`square_root_update_and_weights` through ``A = Q diag(lambda) Q^T`` (``N x N``)."""
    n = anomalies.shape[-1]
    eigenvalues, vectors = torch.linalg.eigh(ensemble_precision(anomalies, weight))
    weighted = innovation if weight is None else innovation * weight
    projected = (weighted.unsqueeze(-2) @ anomalies) @ vectors  # dy^T diag(w) S Q, (..., 1, member)
    weights = (projected / eigenvalues.unsqueeze(-2)) @ vectors.transpose(-1, -2)  # wbar^T, (..., 1, member)
    scale = ((n - 1) / eigenvalues).sqrt().unsqueeze(-1)
    rotated = vectors.transpose(-1, -2) @ state_anomalies  # Q^T X'
    return vectors @ (scale * rotated) + weights @ state_anomalies, weights.squeeze(-2)


def _observation_space_update(
    anomalies: torch.Tensor, innovation: torch.Tensor, state_anomalies: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`square_root_update_and_weights` through ``K = B B^T = U diag(lambda) U^T`` (``n_obs x n_obs``).

    With ``c = N - 1``, ``f(l) = (c + l)^{-1/2}`` and ``A = c I + B^T B``:
    ``sqrt(c) A^{-1/2} = I + B^T U diag(sqrt(c) g(lambda)) U^T B`` where
    ``g(l) = (f(l) - f(0)) / l = -1 / (sqrt(c + l) sqrt(c) (sqrt(c + l) + sqrt(c)))`` is smooth at
    ``l = 0``, and ``wbar = B^T U diag(1 / (c + lambda)) U^T sqrt(w) dy`` (push-through identity).
    """
    c = anomalies.shape[-1] - 1.0
    root = anomalies if weight is None else anomalies * weight.sqrt().unsqueeze(-1)  # B, (..., p, N)
    eigenvalues, vectors = torch.linalg.eigh(root @ root.transpose(-1, -2))
    eigenvalues = eigenvalues.clamp_min(0.0)
    rooted = innovation if weight is None else innovation * weight.sqrt()
    projected = (rooted.unsqueeze(-2) @ vectors) / (c + eigenvalues).unsqueeze(-2)  # (..., 1, p)
    weights = (projected @ vectors.transpose(-1, -2)) @ root  # wbar^T, (..., 1, member)
    rotated = vectors.transpose(-1, -2) @ (root @ state_anomalies)  # U^T B X', (..., p, n_state)
    total = (c + eigenvalues).sqrt()
    gain = -1.0 / (total * (total + c**0.5))  # sqrt(c) g(lambda), (..., p)
    spread = state_anomalies + root.transpose(-1, -2) @ (vectors @ (gain.unsqueeze(-1) * rotated))
    return spread + weights @ state_anomalies, weights.squeeze(-2)
