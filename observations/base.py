"""The observation-operator contract.

An operator ``h`` maps a batch ``(member, *state_shape)`` to ``(member, n_obs)``; it is built from
torch operations so ``torch.autograd`` differentiates it. Operators compose left to right with ``|``:
``Subsample(every=4) | ATan()`` first keeps every 4th point, then takes the arctangent.

Each operator also reports, through :meth:`ObservationOperator.source_index`, which element of the
flattened state each output is attached to; together with the model grid this gives observation
locations for localization.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ObservationOperator", "Compose", "Elementwise", "flatten_members"]


def flatten_members(x: torch.Tensor) -> torch.Tensor:
    """Reshape ``(member, *shape)`` to ``(member, prod(shape))`` (a view when possible)."""
    if x.ndim < 1:
        raise ValueError(f"expected a batch with a leading member axis, got a scalar of shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


class ObservationOperator(ABC):
    """Base class of observation operators."""

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``h`` to ``x`` of shape ``(member, *shape)``; return ``(member, n_out)``."""

    @abstractmethod
    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Flat index into an input of shape ``shape`` that each output is located at, shape ``(n_out,)``."""

    def output_size(self, shape: tuple[int, ...]) -> int:
        """Number of outputs for an input of shape ``shape`` (per member)."""
        return int(self.source_index(shape).shape[0])

    def pointwise(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The map ``g`` with ``h(x)[:, j] = g(x_flat[:, source_index[j]])``, if ``h`` has that form.

        Every observation is then a function of the one state element it is located at, so ``g`` applied
        to any tensor of such elements (any shape) gives their observations. ``None`` (the default) for
        operators that mix elements.
        """
        return None

    def pointwise_chain(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """``chain(z, r)``: ``r`` times the derivative ``g'(z)`` of :meth:`pointwise`'s map, in place, if ``h`` has
        that form (``z`` and ``r`` of one shape; returns ``r``). The backward step of a vector-Jacobian product
        without autograd. ``None`` (the default) where ``h`` is not pointwise; gradients then go through autograd.
        """
        return None

    def __or__(self, other: "ObservationOperator") -> "Compose":
        if not isinstance(other, ObservationOperator):
            return NotImplemented
        return Compose(self, other)


@dataclass(frozen=True)
class Compose(ObservationOperator):
    """``first`` then ``second``: ``Compose(a, b)(x) == b(a(x))``; written ``a | b``."""

    first: ObservationOperator
    second: ObservationOperator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        inner = self.first.source_index(shape)
        return inner[self.second.source_index((inner.shape[0],))]

    def pointwise(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``second``'s map after ``first``'s, when both are pointwise."""
        first, second = self.first.pointwise(), self.second.pointwise()
        if first is None or second is None:
            return None
        return lambda z: second(first(z))

    def pointwise_chain(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The chain rule, when both parts are pointwise: ``r`` times ``second'(first(z))``, then ``first'(z)``."""
        inner, first_chain = self.first.pointwise(), self.first.pointwise_chain()
        second_chain = self.second.pointwise_chain()
        if inner is None or first_chain is None or second_chain is None:
            return None
        return lambda z, residual: first_chain(z, second_chain(inner(z), residual))


class Elementwise(ObservationOperator):
    """An operator applied point by point to the flattened state (one output per state element)."""

    @abstractmethod
    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise map of a tensor of any shape."""

    @abstractmethod
    def chain(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual`` (shape of ``z``) times the derivative of :meth:`apply` at ``z``, in place; returns it."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(flatten_members(x))

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.arange(int(np.prod(shape)), dtype=np.int64)

    def pointwise(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`apply`."""
        return self.apply

    def pointwise_chain(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """:meth:`chain`."""
        return self.chain
