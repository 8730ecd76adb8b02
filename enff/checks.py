"""The value checks that hyper-parameter classes call on construction.

A small module importing nothing of enff but :mod:`enff.config`'s annotation reader, so that every
package (models, observations, filters, integrators, amortized flows) can use it without an import
cycle. An option is a field annotated with ``Literal``; :func:`check_choices` checks all of a
dataclass's options against their annotations with :func:`enff.config.check_value` (the case
validator's own check, so a value built in Python is refused with the message a case file gets).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, Literal

from enff.config import check_value, union_arms

__all__ = ["check_choices", "check_positive", "check_positive_int"]


def check_positive(name: str, value: float) -> float:
    """Return ``float(value)`` or raise ``ValueError`` naming ``name`` if it is not finite and > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return value


def check_positive_int(name: str, value: int) -> int:
    """Return ``int(value)`` or raise ``ValueError`` naming ``name`` if it is not an integer >= 1."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@functools.cache
def _options(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(field name, annotation)`` of every ``init`` field of the dataclass ``cls`` with a ``Literal`` arm."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls)
                 if f.init and any(typing.get_origin(arm) is Literal for arm in union_arms(hints[f.name])))


def check_choices(instance: Any) -> None:
    """Raise ``ValueError`` (``"<field> must be one of ..., got ..."``) unless every ``Literal``-annotated
    field of the dataclass ``instance`` holds one of its values (annotations of ``type(instance)``, so a
    subclass that narrows a field is checked against its own values)."""
    for name, annotation in _options(type(instance)):
        check_value(name, getattr(instance, name), annotation)
