"""The gradient of the observation negative log-likelihood, evaluated in member blocks.

``E(x) = |y - h(x)|^2 / (2 s^2)`` (:meth:`ObservationSpace.neg_log_likelihood`; missing observations must be
dropped with ``obs.observed(y)`` beforehand). The generative filters follow ``-grad E``: the gradient
guidance of the flow filters (:mod:`enff.filters.guidance`) and the likelihood score of the score filters
(:mod:`enff.filters.ensemble_score`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from enff.memo import IdentityMemo
from enff.observations.space import ObservationSpace

__all__ = ["BLOCK_ELEMENTS", "autograd_likelihood_gradient", "likelihood_gradient", "member_blocks", "states"]

#: Elements (members x state) per block of a gradient evaluation. Its temporaries then stay small enough to
#: be recycled by the allocator instead of being freshly mapped (and page-faulted) on every call, which
#: dominated the cost of an unblocked evaluation at d = 1e6 on CPU.
BLOCK_ELEMENTS = 1 << 21


def states(x: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
    """View flat particles ``(P, d)`` as ``(P, *state_shape)`` for the observation operator."""
    return x.reshape(x.shape[0], *obs.state_shape)


def likelihood_gradient(x: torch.Tensor, y: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
    """``grad_x E(x)`` for every particle.

    Where every observation is a function ``g`` of the one state element it sits at (``obs.operator``'s
    :meth:`~enff.observations.base.ObservationOperator.pointwise` map, with its derivative ``g'``), the gradient
    is written out, ``g'(x_q) (g(x_q) - y_j) / s_j^2`` added at the element ``q`` of observation ``j``, in place
    where it can be: a third less time than the vector-Jacobian product through ``h`` (arctan at d = 1e6, N = 20,
    float32, one thread, in the guidance's :func:`member_blocks`: 0.096 s against 0.148 s on the 2-core Intel
    Xeon, ``benchmarks/results/enff_speed_xeon_breakdown.md``), equal to it to
    round-off (``tests/test_likelihood.py``). Other operators go through autograd.

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
    chain = obs.operator.pointwise_chain()
    if chain is None:
        return autograd_likelihood_gradient(x, y, obs)
    pointwise = obs.operator.pointwise()
    with torch.no_grad():
        x = x.detach()
        index = _gather_index(obs, x.device)
        z = x if index is None else x[:, index]  # the observed elements, (P, n_obs)
        seen = pointwise(z)
        target = y.to(z.dtype)
        shares = seen.untyped_storage().data_ptr() == z.untyped_storage().data_ptr()  # z itself, or a view of it
        residual = seen - target if shares else seen.sub_(target)  # never written into the particles
        weighted = chain(z, residual.div_(obs.std.to(z.dtype) ** 2))
        return weighted if index is None else torch.zeros_like(x).index_add_(1, index, weighted)


def autograd_likelihood_gradient(x: torch.Tensor, y: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
    """:func:`likelihood_gradient` by a vector-Jacobian product through the observation operator."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        hx = obs.h(states(leaf, obs))
        # grad E = J_h^T (h(x) - y) / s^2: one vector-Jacobian product through h, no graph for E itself
        weighted = (hx.detach() - y.to(hx.dtype)).div_(obs.std.to(hx.dtype) ** 2)
        (grad,) = torch.autograd.grad(hx, leaf, grad_outputs=weighted)
    return grad


#: Flat state index of each observation of an operator, per state shape and device (:func:`_gather_index`).
_GATHER_INDEX: IdentityMemo[torch.Tensor | None] = IdentityMemo()


def _gather_index(obs: ObservationSpace, device: torch.device) -> torch.Tensor | None:
    """``obs.state_index`` as a ``long`` tensor on ``device``, or ``None`` where the observations are the whole
    state in its own order (nothing to gather or scatter); kept beside the operator."""

    def compute() -> torch.Tensor | None:
        index = obs.state_index
        if index.shape[0] == math.prod(obs.state_shape) and np.array_equal(index, np.arange(index.shape[0])):
            return None
        return torch.as_tensor(index, dtype=torch.long, device=device)

    return _GATHER_INDEX.get(obs.operator, (obs.state_shape, device), compute)


def member_blocks(n_members: int, d: int) -> list[slice]:
    """Consecutive slices of the member axis with about :data:`BLOCK_ELEMENTS` elements each (>= 1 member)."""
    rows = max(1, BLOCK_ELEMENTS // max(d, 1))
    return [slice(start, start + rows) for start in range(0, n_members, rows)]
