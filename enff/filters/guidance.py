"""Guidance: how the observations steer a flow from the forecast toward the analysis.

``E(x) = |y - h(x)|^2 / (2 s^2)`` is the observation negative log-likelihood
(:meth:`ObservationSpace.neg_log_likelihood`; missing observations must be dropped with
``obs.observed(y)`` beforehand). Three kinds, selected by name in :func:`make_guidance`:

``"local"``
    The predicted end point of a particle at flow time ``t`` is ``xh = x + (1 - t) v(x)``; the guidance
    force is ``g = -lambda(t) grad E(xh)``, the gradient of ``E`` taken *at* ``xh`` with respect to
    ``xh``. It is **not** back-propagated through ``v`` (that is, ``d xh / d x`` is taken as the
    identity): this is the local guidance of the ensemble flow filter, costs one pass of ``h`` and its
    adjoint, and avoids differentiating the ``P x M`` weight matrix. The schedule ``lambda(t)`` is
    ``lambda`` (``"constant"``) or ``lambda * t`` (``"linear"``, no pull while the particles are still
    source noise).
``"mc"``
    Monte Carlo (exact) guidance: each member's conditional path is re-weighted by the likelihood of its
    end point, ``l_j = -E(x1[j])``, inside the softmax of the marginal velocity. The flow then transports
    the source to the posterior mixture ``sum_j exp(-E(x1[j])) N(x1[j], sigma_1^2 I)``: with few members
    this is likelihood-weighted resampling of the forecast.
``"none"``
    The flow reproduces the forecast distribution.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass
from typing import Callable

import torch

from enff.observations.space import ObservationSpace

__all__ = [
    "GUIDANCE_KINDS",
    "SCHEDULES",
    "Guidance",
    "NoGuidance",
    "LocalGuidance",
    "MonteCarloGuidance",
    "likelihood_gradient",
    "member_blocks",
    "make_guidance",
]

#: Elements (members x state) per block of the guidance evaluation. Its temporaries then stay small
#: enough to be recycled by the allocator instead of being freshly mapped (and page-faulted) on every
#: call, which dominated the cost of an unblocked evaluation at d = 1e6 on CPU.
BLOCK_ELEMENTS = 1 << 21

#: Names accepted by :func:`make_guidance`.
GUIDANCE_KINDS = ("local", "mc", "none")

#: Time profile of the local guidance strength: ``lambda(t) = scale * SCHEDULES[name](t)``.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "linear": lambda t: t,
}


def _states(x: torch.Tensor, obs: ObservationSpace) -> torch.Tensor:
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
        hx = obs.h(_states(leaf, obs))
        # grad E = J_h^T (h(x) - y) / s^2: one vector-Jacobian product through h, no graph for E itself
        weighted = (hx.detach() - y.to(hx.dtype)).div_(obs.std.to(hx.dtype) ** 2)
        (grad,) = torch.autograd.grad(hx, leaf, grad_outputs=weighted)
    return grad


def member_blocks(n_members: int, d: int) -> list[slice]:
    """Consecutive slices of the member axis with about :data:`BLOCK_ELEMENTS` elements each (>= 1 member)."""
    rows = max(1, BLOCK_ELEMENTS // max(d, 1))
    return [slice(start, start + rows) for start in range(0, n_members, rows)]


class Guidance(ABC):
    """Base class: a guidance may re-weight the members and/or add a force to the velocity.

    Both hooks default to "nothing".
    """

    def member_log_weights(
        self, x1: torch.Tensor, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor | None:
        """Log-weights of the forecast members ``x1`` (shape ``(M, d)``), shape ``(M,)``, or ``None``."""
        return None

    def add_force(
        self, velocity: torch.Tensor, x: torch.Tensor, t: float, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor:
        """Add the guidance term ``g`` to ``velocity`` in place and return it (both ``(P, d)``, flow time ``t``)."""
        return velocity


@dataclass(frozen=True)
class NoGuidance(Guidance):
    """No guidance: the flow samples the forecast distribution."""


@dataclass(frozen=True)
class LocalGuidance(Guidance):
    """``g = -lambda(t) grad E(xh)`` at the predicted end point ``xh = x + (1 - t) v(x)``.

    Attributes
    ----------
    scale:
        ``lambda`` (>= 0), in state units^2 per unit flow time (``E`` is dimensionless).
    schedule:
        A key of :data:`SCHEDULES`.
    """

    scale: float
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"guidance_scale must be finite and >= 0, got {self.scale!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {tuple(SCHEDULES)}, got {self.schedule!r}")

    def strength(self, t: float) -> float:
        """``lambda(t)``."""
        return self.scale * SCHEDULES[self.schedule](t)

    def add_force(
        self, velocity: torch.Tensor, x: torch.Tensor, t: float, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor:
        strength = self.strength(t)
        if strength == 0.0:
            return velocity
        for block in member_blocks(x.shape[0], x.shape[1]):
            endpoint = torch.add(x[block], velocity[block], alpha=1.0 - t)
            velocity[block].add_(likelihood_gradient(endpoint, y, obs), alpha=-strength)
        return velocity


@dataclass(frozen=True)
class MonteCarloGuidance(Guidance):
    """Exact Monte Carlo guidance: member ``j`` is weighted by its likelihood ``exp(-E(x1[j]))``."""

    def member_log_weights(
        self, x1: torch.Tensor, y: torch.Tensor, obs: ObservationSpace
    ) -> torch.Tensor | None:
        with torch.no_grad():
            return -obs.neg_log_likelihood(_states(x1, obs), y)


def make_guidance(kind: str, scale: float = 0.0, schedule: str = "constant") -> Guidance:
    """The guidance named ``kind`` (one of :data:`GUIDANCE_KINDS`); ``scale``/``schedule`` are for ``"local"``."""
    if kind == "local":
        return LocalGuidance(scale=scale, schedule=schedule)
    if kind == "mc":
        return MonteCarloGuidance()
    if kind == "none":
        return NoGuidance()
    raise ValueError(f"guidance must be one of {GUIDANCE_KINDS}, got {kind!r}")
