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
first, then the pointwise function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import ObservationOperator
from .operators import Identity, Indices, Patch, RandomFraction, Selection, Subsample, elementwise_operator

__all__ = ["OPERATOR_KEYS", "operator_from_config"]

#: Operator key of the ``[observations]`` table -> accepted Python type(s) of its value.
OPERATOR_KEYS: dict[str, type | tuple[type, ...]] = {
    "operator": str,
    "exponent": (int, float),
    "stride": int,
    "offset": int,
    "indices": (list, tuple),
    "fraction": (int, float),
    "fraction_seed": int,
    "patches": (list, tuple),
}

#: Selection key -> (its companion keys, builder from the table).
_SELECTIONS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], Selection]]] = {
    "stride": (("offset",), lambda cfg: Subsample(cfg["stride"], cfg.get("offset", 0))),
    "indices": ((), lambda cfg: Indices(cfg["indices"])),
    "fraction": (("fraction_seed",), lambda cfg: RandomFraction(cfg["fraction"], cfg.get("fraction_seed", 0))),
    "patches": ((), lambda cfg: Patch(cfg["patches"])),
}


def _check_types(cfg: Mapping[str, Any]) -> None:
    for key, types in OPERATOR_KEYS.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ValueError(f"[observations] {key} must be {names}, got {type(value).__name__} {value!r}")


def _selection(cfg: Mapping[str, Any], state_shape: tuple[int, ...]) -> Selection | None:
    chosen = [key for key in _SELECTIONS if key in cfg]
    if len(chosen) > 1:
        raise ValueError(f"[observations] give at most one of {', '.join(_SELECTIONS)}; got {', '.join(chosen)}")
    for key, (companions, _) in _SELECTIONS.items():
        for companion in companions:
            if companion in cfg and key not in cfg:
                raise ValueError(f"[observations] {companion} is only used together with {key}")
    if not chosen:
        return None
    key = chosen[0]
    companions, build = _SELECTIONS[key]
    try:
        selection = build(cfg)
        selection.source_index(state_shape)
    except ValueError as err:
        raise ValueError(f"[observations] {', '.join((key, *companions))}: {err}") from None
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
