"""Build the observation operator from a case file's ``[observations]`` table.

Operator keys (the cycle runner owns ``every``, ``std``, ``source`` and ``file``)::

    operator      = "identity" | "atan" | "tanh" | "power"   pointwise function (default "identity")
    exponent      = 3.0                  power for operator = "power" (>= 1, sign-preserving)
    stride        = 4                    Subsample: every 4th point along each axis ...
    offset        = 0                    ... starting at this index (with stride only)
    indices       = [0, 5, 17]           Indices: explicit flat state indices
    fraction      = 0.25                 RandomFraction: seeded random subset of the points ...
    fraction_seed = 0                    ... drawn with this seed (with fraction only)
    patches       = [[0, 8, 0, 8]]       Patch: (y0, y1, x0, x1) boxes on a 2-D state

At most one selection (``stride``, ``indices``, ``fraction``, ``patches``) is allowed; it is applied
first, then the pointwise function. The keys are those of the registries: :data:`SELECTIONS` (a selection
key -> a factory taking it and its companions) and :data:`enff.observations.operators.OPERATORS` (the
pointwise functions by name, with their own keys such as ``exponent``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from enff.registry import Registry

from .base import ObservationOperator
from .operators import OPERATORS, Identity, Indices, Patch, RandomFraction, Selection, Subsample, elementwise_operator

__all__ = ["OPERATOR_KEYS", "SELECTIONS", "operator_from_config"]

#: Selection key of the ``[observations]`` table (``stride``, ...) -> factory taking that key and its
#: companions (``offset``, ...) as keywords. A table names at most one selection.
SELECTIONS: Registry[Any] = Registry("observation selection")


@SELECTIONS.register("stride")
def _stride(stride: int, offset: int = 0) -> Selection:
    return Subsample(stride, offset)


@SELECTIONS.register("indices")
def _indices(indices: Sequence[int]) -> Selection:
    return Indices(indices)  # type: ignore[arg-type]


@SELECTIONS.register("fraction")
def _fraction(fraction: float, fraction_seed: int = 0) -> Selection:
    return RandomFraction(fraction, fraction_seed)


@SELECTIONS.register("patches")
def _patches(patches: Sequence[Sequence[int]]) -> Selection:
    return Patch(patches)  # type: ignore[arg-type]


def _operator_keys() -> dict[str, type | tuple[type, ...]]:
    from enff.config import accepted_types

    keys: dict[str, Any] = {"operator": str}
    for registry in (OPERATORS, SELECTIONS):
        for name in registry:
            keys.update({key: accepted_types(annotation) for key, annotation in registry.keys_of(name).items()})
    return keys


#: Operator key of the ``[observations]`` table -> accepted Python type(s) of its value: ``operator``
#: and the keywords of the registered pointwise operators and selections.
OPERATOR_KEYS: dict[str, type | tuple[type, ...]] = _operator_keys()


def _check_types(cfg: Mapping[str, Any]) -> None:
    for key, types in OPERATOR_KEYS.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ValueError(f"[observations] {key} must be {names}, got {type(value).__name__} {value!r}")


def _selection(cfg: Mapping[str, Any], state_shape: tuple[int, ...]) -> Selection | None:
    chosen = [key for key in SELECTIONS if key in cfg]
    if len(chosen) > 1:
        raise ValueError(f"[observations] give at most one of {', '.join(SELECTIONS)}; got {', '.join(chosen)}")
    for key in SELECTIONS:
        for companion in set(SELECTIONS.keys_of(key)) - {key}:
            if companion in cfg and key not in cfg:
                raise ValueError(f"[observations] {companion} is only used together with {key}")
    if not chosen:
        return None
    key = chosen[0]
    keys = [k for k in SELECTIONS.keys_of(key) if k in cfg]
    try:
        selection = SELECTIONS.build(key, **{k: cfg[k] for k in keys})
        selection.source_index(state_shape)
    except ValueError as err:
        raise ValueError(f"[observations] {', '.join(SELECTIONS.keys_of(key))}: {err}") from None
    return selection


def operator_from_config(cfg: Mapping[str, Any], state_shape: tuple[int, ...]) -> ObservationOperator:
    """The observation operator described by an ``[observations]`` table.

    Parameters
    ----------
    cfg:
        The table (keys in the module docstring; keys not in :data:`OPERATOR_KEYS` are ignored).
    state_shape:
        Shape of one model state; the selection is checked against it.

    Returns
    -------
    The selection followed by the pointwise function (``selection | function``), either alone when the
    other is absent or the identity, or :class:`Identity` when the table names neither.

    Raises
    ------
    ValueError
        Naming the offending key: wrong type, unknown operator (listing the valid ones), out-of-range
        value, or a combination that does not fit.
    """
    _check_types(cfg)
    selection = _selection(cfg, tuple(int(n) for n in state_shape))
    try:
        function = elementwise_operator(cfg.get("operator", "identity"), cfg.get("exponent"))
    except ValueError as err:
        raise ValueError(f"[observations] operator, exponent: {err}") from None
    if selection is None:
        return function
    return selection if isinstance(function, Identity) else selection | function
