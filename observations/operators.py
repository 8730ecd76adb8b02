"""Concrete observation operators: pointwise functions and selections of state elements.

Pointwise operators (:class:`Identity`, :class:`ATan`, :class:`Tanh`, :class:`Power`) map every
element of the flattened state; selection operators (:class:`Subsample`, :class:`Indices`,
:class:`RandomFraction`, :class:`Patch`) keep a subset of the elements, in increasing flat (C order)
index except for :class:`Indices`, which keeps the order it is given. All are frozen dataclasses,
built from torch operations (so ``torch.autograd`` differentiates them) and compose with ``|``::

    h = Subsample(every=4) | ATan()      # every 4th point along each axis, then arctan

Selections need the state shape, which they read from the input: ``h(x)`` works for ``x`` of shape
``(member, *state_shape)`` with any ``state_shape``, and ``h.source_index(state_shape)`` gives the flat
state index each observation sits at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from enff.checks import check_positive_int
from enff.memo import IdentityMemo
from enff.registry import Registry

from .base import Elementwise, ObservationOperator, flatten_members

__all__ = [
    "OPERATORS",
    "ATan",
    "Identity",
    "Indices",
    "Patch",
    "Power",
    "RandomFraction",
    "Selection",
    "Subsample",
    "Tanh",
    "elementwise_operator",
]


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Normalise a state shape to a tuple of ints; raise ``ValueError`` if it has no elements."""
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"state shape must be non-empty with positive sizes, got {shape}")
    return shape


# --------------------------------------------------------------------------------------------------
# Pointwise operators
# --------------------------------------------------------------------------------------------------

#: Operator name (``operator`` in case files and netCDF attributes) -> pointwise operator class.
OPERATORS: Registry[type[Elementwise]] = Registry("observation operator")



@OPERATORS.register("identity")
@dataclass(frozen=True)
class Identity(Elementwise):
    """``h(x) = x`` on every state element."""

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Return ``z`` unchanged (any shape)."""
        return z

    def chain(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The derivative is 1: ``residual`` unchanged."""
        return residual


@OPERATORS.register("atan")
@dataclass(frozen=True)
class ATan(Elementwise):
    """``h(x) = arctan(x)`` on every state element (radians, in ``(-pi/2, pi/2)``)."""

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise arctangent of ``z`` (any shape)."""
        return torch.atan(z)

    def chain(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual / (1 + z^2)``, in place."""
        return residual.div_(torch.square(z).add_(1.0))


@OPERATORS.register("tanh")
@dataclass(frozen=True)
class Tanh(Elementwise):
    """``h(x) = tanh(x)`` on every state element (values in ``(-1, 1)``)."""

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise hyperbolic tangent of ``z`` (any shape)."""
        return torch.tanh(z)

    def chain(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual (1 - tanh(z)^2)``, in place."""
        return residual.mul_(torch.tanh(z).square_().neg_().add_(1.0))


class _SignedPower(torch.autograd.Function):
    """``sign(z) |z|^p`` with the derivative ``p |z|^(p-1)`` written out, exact at ``z = 0``.

    Autograd through ``sign`` and ``abs`` would give ``0`` instead of ``1`` at ``z = 0`` for ``p = 1``
    and ``0 * inf = nan`` for ``x |x|^(p-1)`` with ``1 < p < 2``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: torch.Tensor, exponent: float) -> torch.Tensor:
        return torch.sign(z) * torch.abs(z).pow(exponent)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, float], output: torch.Tensor) -> None:
        z, exponent = inputs
        ctx.save_for_backward(z)
        ctx.exponent = exponent

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad * ctx.exponent * torch.abs(z).pow(ctx.exponent - 1.0), None


@OPERATORS.register("power")
@dataclass(frozen=True)
class Power(Elementwise):
    """Sign-preserving power ``h(x) = sign(x) |x|^p`` on every state element.

    The map is odd, so negative states keep their sign: for odd integer ``p`` it equals ``x**p``, for
    ``p = 2`` it is ``x |x|`` (not ``x**2``). ``exponent >= 1`` is required so that the derivative
    ``p |x|^(p-1)`` is finite everywhere (at ``x = 0`` it is ``1`` for ``p = 1`` and ``0`` above).

    Parameters
    ----------
    exponent:
        The power ``p >= 1`` (dimensionless).
    """

    exponent: float

    def __post_init__(self) -> None:
        exponent = float(self.exponent)
        if not np.isfinite(exponent) or exponent < 1:
            raise ValueError(f"exponent must be a finite number >= 1 (so the gradient stays finite), got {self.exponent!r}")
        object.__setattr__(self, "exponent", exponent)

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise ``sign(z) |z|^exponent`` of ``z`` (any shape)."""
        return _SignedPower.apply(z, self.exponent)

    def chain(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual exponent |z|^(exponent - 1)``, in place (1 at ``z = 0`` for ``exponent = 1``, as the backward)."""
        return residual.mul_(self.exponent).mul_(torch.abs(z).pow_(self.exponent - 1.0))


def elementwise_operator(name: str, exponent: float | None = None) -> Elementwise:
    """Build the pointwise operator registered as ``name`` in :data:`OPERATORS`.

    Parameters
    ----------
    name:
        A registered name (``"identity"``, ``"atan"``, ``"tanh"``, ``"power"``).
    exponent:
        The power for ``"power"`` (required there, rejected for the other names).

    Raises
    ------
    ValueError
        Naming ``operator`` (with the valid names) or ``exponent``.
    """
    if name not in OPERATORS:
        valid = ", ".join(repr(n) for n in OPERATORS)
        raise ValueError(f"operator must be one of {valid}, got {name!r}")
    takes = OPERATORS.keys_of(name)
    if "exponent" in takes and exponent is None:
        raise ValueError(f"operator {name!r} needs an exponent")
    if exponent is not None and "exponent" not in takes:
        powers = ", ".join(repr(n) for n in OPERATORS if "exponent" in OPERATORS.keys_of(n))
        raise ValueError(f"exponent only applies to operator {powers}, not {name!r}")
    return OPERATORS.build(name, **({} if exponent is None else {"exponent": exponent}))


# --------------------------------------------------------------------------------------------------
# Selections
# --------------------------------------------------------------------------------------------------


class Selection(ObservationOperator):
    """Keep the elements ``source_index(state_shape)`` of the flattened state.

    Subclasses implement :meth:`source_index` (validating the shape); ``__call__`` gathers those
    elements. The index tensor is computed once per operator object, state shape and device and then
    reused (kept beside the operator, :data:`_INDEX_TENSORS`), since the operator is applied many times
    per analysis.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Select from ``x`` of shape ``(member, *state_shape)``; return ``(member, n_obs)``."""
        return flatten_members(x)[:, self._index_on(tuple(x.shape[1:]), x.device)]

    def pointwise(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`Identity.apply`: a selection passes each kept element through unchanged."""
        return Identity().apply

    def pointwise_chain(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """:meth:`Identity.chain`: the derivative is 1."""
        return Identity().chain

    def _index_on(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return _INDEX_TENSORS.get(self, (shape, device),
                                  lambda: torch.as_tensor(self.source_index(shape), dtype=torch.long, device=device))


#: The gathered index of each selection object, per state shape and device.
_INDEX_TENSORS: IdentityMemo[torch.Tensor] = IdentityMemo()


@dataclass(frozen=True)
class Subsample(Selection):
    """Every ``every``-th element along each state axis, starting at ``offset``.

    On a 1-D state of length ``n`` this keeps ``offset, offset + every, ...``; on a 2-D state it keeps
    the lattice ``x[offset::every, offset::every]`` (row-major order).

    Parameters
    ----------
    every:
        Stride in grid points, ``>= 1``.
    offset:
        First kept index on each axis, ``0 <= offset < every``.
    """

    every: int
    offset: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", check_positive_int("every", self.every))
        if isinstance(self.offset, bool) or int(self.offset) != self.offset or not 0 <= self.offset < self.every:
            raise ValueError(f"offset must be an integer in [0, every={self.every}), got {self.offset!r}")
        object.__setattr__(self, "offset", int(self.offset))

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Flat indices of the kept points of a state of shape ``shape``, shape ``(n_obs,)``."""
        shape = _shape(shape)
        if self.offset >= min(shape):
            raise ValueError(f"offset={self.offset} is beyond the state of shape {shape}: no point is observed")
        lattice = tuple(slice(self.offset, None, self.every) for _ in shape)
        return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)[lattice].reshape(-1)


@dataclass(frozen=True)
class Indices(Selection):
    """Explicit flat (C order) state indices, kept in the given order (repeats allowed).

    Parameters
    ----------
    index:
        Non-negative integer indices into the flattened state, shape ``(n_obs,)``; stored as a tuple.
    """

    index: tuple[int, ...]

    def __post_init__(self) -> None:
        index = np.asarray(self.index)
        if index.ndim != 1 or index.size == 0:
            raise ValueError(f"index must be a non-empty 1-D sequence, got shape {index.shape}")
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"index must hold integers, got dtype {index.dtype}")
        if index.min() < 0:
            raise ValueError(f"index must be >= 0, got minimum {index.min()}")
        object.__setattr__(self, "index", tuple(index.tolist()))

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """The indices as an array of shape ``(n_obs,)``, checked against ``prod(shape)``."""
        shape = _shape(shape)
        index = np.asarray(self.index, dtype=np.int64)
        size = int(np.prod(shape))
        if index.max() >= size:
            raise ValueError(f"index {index.max()} is out of range for a state of shape {shape} ({size} elements)")
        return index


@dataclass(frozen=True)
class RandomFraction(Selection):
    """A seeded random subset of ``round(fraction * n)`` state elements (at least one), sorted.

    The subset depends only on ``seed`` and the state size (it is drawn with a CPU
    ``torch.Generator``), so it is fixed for the run and identical on every device.

    Parameters
    ----------
    fraction:
        Observed fraction of the state elements, in ``(0, 1]``.
    seed:
        Seed of the draw, a non-negative integer.
    """

    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        fraction = float(self.fraction)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "fraction", fraction)

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Sorted distinct flat indices, shape ``(max(1, round(fraction * prod(shape))),)``."""
        size = int(np.prod(_shape(shape)))
        n_keep = max(1, round(self.fraction * size))
        generator = torch.Generator(device="cpu").manual_seed(int(self.seed))
        chosen = torch.randperm(size, generator=generator)[:n_keep]
        return np.sort(chosen.numpy()).astype(np.int64)


@dataclass(frozen=True)
class Patch(Selection):
    """The union of rectangular boxes on a 2-D state, each point once, in row-major order.

    Parameters
    ----------
    slices:
        Boxes ``(y0, y1, x0, x1)`` of half-open grid-index ranges ``y0 <= i < y1``, ``x0 <= j < x1``
        along the first and second state axes; stored as a tuple of 4-tuples.
    """

    slices: tuple[tuple[int, int, int, int], ...]

    def __post_init__(self) -> None:
        boxes = np.asarray(self.slices)
        if boxes.ndim != 2 or boxes.shape[0] == 0 or boxes.shape[1] != 4:
            raise ValueError(f"slices must be a non-empty list of (y0, y1, x0, x1) boxes, got shape {boxes.shape}")
        if not np.issubdtype(boxes.dtype, np.integer):
            raise ValueError(f"slices must hold integers, got dtype {boxes.dtype}")
        for k, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
            if not (0 <= y0 < y1 and 0 <= x0 < x1):
                raise ValueError(f"slices[{k}] = {(y0, y1, x0, x1)} must satisfy 0 <= y0 < y1 and 0 <= x0 < x1")
        object.__setattr__(self, "slices", tuple(tuple(box) for box in boxes.tolist()))

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Sorted flat indices of the points inside any box, shape ``(n_obs,)``."""
        shape = _shape(shape)
        if len(shape) != 2:
            raise ValueError(f"Patch slices need a 2-D state, got shape {shape}")
        inside = np.zeros(shape, dtype=bool)
        for k, (y0, y1, x0, x1) in enumerate(self.slices):
            if y1 > shape[0] or x1 > shape[1]:
                raise ValueError(f"slices[{k}] = {(y0, y1, x0, x1)} is out of range for a state of shape {shape}")
            inside[y0:y1, x0:x1] = True
        return np.flatnonzero(inside).astype(np.int64)
