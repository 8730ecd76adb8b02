"""The gradient of the observation negative log-likelihood, evaluated in member blocks.

``E(x) = |y - h(x)|^2 / (2 s^2)`` (:meth:`ObservationSpace.neg_log_likelihood`; missing observations must be
dropped with ``obs.observed(y)`` beforehand). The generative filters follow ``-grad E``: the gradient
guidance of the flow filters (:mod:`enff.filters.guidance`) and the likelihood score of the score filters
(:mod:`enff.filters.ensemble_score`).
"""

from __future__ import annotations

import torch

from enff.observations.space import ObservationSpace

__all__ = ["BLOCK_ELEMENTS", "likelihood_gradient", "member_blocks", "states"]

#: Elements (members x state) per block of a gradient evaluation. Its temporaries then stay small enough to
#: be recycled by the allocator instead of being freshly mapped (and page-faulted) on every call, which
#: dominated the cost of an unblocked evaluation at d = 1e6 on CPU.
BLOCK_ELEMENTS = 1 << 21


def states(x: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
    """View flat particles ``(P, d)`` as ``(P, *state_shape)`` for the observation operator."""
    return x.reshape(x.shape[0], *obs.state_shape)


def likelihood_gradient(x: torch.Tensor, y: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
    """``grad_x E(x)`` for every particle, by a vector-Jacobian product through the observation operator.

    Parameters
    ----------
    x:
        Particles, shape ``(P, d)`` with ``d = prod(obs.state_shape)``.
    y:
        Finite observations, shape ``(n_obs,)``.
    obs:
        Observation space matching ``y`` (``obs.observed(y)`` already applied).

    Returns
    -------
    Gradient of shape ``(P, d)``, dtype of ``x``, per state unit (``E`` is dimensionless).
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        hx = obs.h(states(leaf, obs))
        # grad E = J_h^T (h(x) - y) / s^2: one vector-Jacobian product through h, no graph for E itself
        weighted = (hx.detach() - y.to(hx.dtype)).div_(obs.std.to(hx.dtype) ** 2)
        (grad,) = torch.autograd.grad(hx, leaf, grad_outputs=weighted)
    return grad


def member_blocks(n_members: int, d: int) -> list[slice]:
    """Consecutive slices of the member axis with about :data:`BLOCK_ELEMENTS` elements each (>= 1 member)."""
    rows = max(1, BLOCK_ELEMENTS // max(d, 1))
    return [slice(start, start + rows) for start in range(0, n_members, rows)]
