"""Step length of a local ensemble-space mean update, chosen on the local posterior cost (backtracking).

With a nonlinear observation operator the (L)ETKF mean weights ``wbar`` are one Gauss-Newton step from
the forecast mean, taken with the ensemble's linearization of ``h``. Where that linearization is poor
(``arctan`` observations of an ensemble sure of the wrong sign, where ``h`` is flat) the step can
overshoot to states far outside the attractor. Evaluating the local cost

    J(a) = (N - 1) / 2 * a^2 |wbar|^2 + 1/2 * sum_j w_j ((y_j - h_j(xbar + a X' wbar)) / s_j)^2

(the ensemble-space cost of Hunt et al., 2007, restricted to the line ``w = a wbar``) at
``a = 1, 1/2, ..., 2^-STEP_HALVINGS`` and ``a = 0``, and taking the step with the smallest cost, bounds
every increment by what the observations support. For a linear ``h`` the cost is a quadratic with its
minimum at ``a = 1`` exactly, so the update is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["STEP_HALVINGS", "best_step_lengths"]

#: Number of halvings tried after the full step (the shortest non-zero step is ``2**-STEP_HALVINGS``).
STEP_HALVINGS = 10


def best_step_lengths(
    mean_weights: torch.Tensor,
    source_mean: torch.Tensor,
    source_increment: torch.Tensor,
    innovation: torch.Tensor,
    observed_mean: torch.Tensor,
    error_std: torch.Tensor,
    weight: torch.Tensor,
    pointwise: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The step length ``a`` minimizing the local cost ``J(a)`` over ``1, 1/2, ..., 2^-STEP_HALVINGS, 0``.

    Parameters
    ----------
    mean_weights:
        ``wbar`` per local problem, shape ``(batch, member)``.
    source_mean:
        Forecast mean at the state element each local observation is located at, shape ``(batch, n_obs)``.
    source_increment:
        Increment ``X' wbar`` of those elements under the problem's own weights, shape ``(batch, n_obs)``.
    innovation:
        Scaled innovation ``dy = (y - mean h) / s``, shape ``(batch, n_obs)``.
    observed_mean:
        Ensemble mean of ``h(x)``, ``(batch, n_obs)``, observation units.
    error_std:
        The error std ``s``, ``(batch, n_obs)``, observation units.
    weight:
        Localization weights of ``R^-1`` (0 on padding), ``(batch, n_obs)``.
    pointwise:
        ``g`` with ``h(x)_j = g(x at j's element)``
        (:meth:`~enff.observations.base.ObservationOperator.pointwise`).

    Returns
    -------
    The chosen step lengths, shape ``(batch,)``, float64; ties go to the longer step.
    """
    work = torch.float64
    steps = torch.tensor([2.0**-k for k in range(STEP_HALVINGS + 1)] + [0.0], dtype=work, device=mean_weights.device)
    trial = source_mean.to(work) + steps[:, None, None] * source_increment.to(work)  # (step, batch, n_obs)
    residual = innovation.to(work) - (pointwise(trial) - observed_mean.to(work)) / error_std.to(work)
    misfit = 0.5 * (weight.to(work) * residual.square()).sum(dim=-1)
    prior = 0.5 * (mean_weights.shape[-1] - 1) * steps[:, None] ** 2 * mean_weights.to(work).square().sum(dim=-1)
    return steps[(prior + misfit).argmin(dim=0)]
