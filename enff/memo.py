"""Values computed once per live object and kept beside it, so that frozen objects stay untouched.

Grids, observation operators and selections are frozen dataclasses holding arrays or long tuples: hashing
their content on every use costs as much as the work a cache would save. :class:`IdentityMemo` keys on the
object's identity instead and drops the object's values when it is garbage-collected.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["IdentityMemo"]

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    """``get(owner, key, compute)``: ``compute()`` once per live ``owner`` (by identity) and ``key``."""

    def __init__(self) -> None:
        self._values: dict[int, dict[Hashable, V]] = {}

    def get(self, owner: object, key: Hashable, compute: Callable[[], V]) -> V:
        """The value for ``owner`` (any object that takes weak references) and ``key``, computed at first use.

        ``compute`` must not keep ``owner`` alive (the value would then never be dropped).
        """
        slot = self._values.get(id(owner))
        if slot is None:
            slot = self._values[id(owner)] = {}
            weakref.finalize(owner, self._values.pop, id(owner), None)
        if key not in slot:
            slot[key] = compute()
        return slot[key]

    def __len__(self) -> int:
        """Number of live owners with values."""
        return len(self._values)
