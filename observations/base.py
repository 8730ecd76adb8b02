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

    def pointwise_slope(self) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
        """The derivative ``g'`` of :meth:`pointwise`'s map, applied elementwise, if ``h`` has that form.

        ``g'(z)`` has the shape of ``z``; a map that returns ``None`` means ``g' = 1`` everywhere (no tensor is
        made). ``None`` (the default) where ``h`` is not pointwise; the gradients then go through autograd.
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

    def pointwise_slope(self) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
        """The chain rule: ``second'(first(z)) first'(z)``, when both parts are pointwise."""
        inner, first_slope = self.first.pointwise(), self.first.pointwise_slope()
        second_slope = self.second.pointwise_slope()
        if inner is None or first_slope is None or second_slope is None:
            return None

        def slope(z: torch.Tensor) -> torch.Tensor | None:
            outer, near = second_slope(inner(z)), first_slope(z)
            if outer is None or near is None:
                return near if outer is None else outer
            return outer.mul_(near)

        return slope


class Elementwise(ObservationOperator):
    """An operator applied point by point to the flattened state (one output per state element)."""

    @abstractmethod
    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise map of a tensor of any shape."""

    @abstractmethod
    def slope(self, z: torch.Tensor) -> torch.Tensor | None:
        """Derivative of :meth:`apply` at every element of ``z`` (a new tensor, shape of ``z``), or ``None``
        where it is 1 everywhere."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(flatten_members(x))

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.arange(int(np.prod(shape)), dtype=np.int64)

    def pointwise(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`apply`."""
        return self.apply

    def pointwise_slope(self) -> Callable[[torch.Tensor], torch.Tensor | None]:
        """:meth:`slope`."""
        return self.slope
