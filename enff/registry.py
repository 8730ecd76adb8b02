"""One registry mechanism for everything a case file names: models, filters, operators, guidance kinds,
integrators, samplers.

A :class:`Registry` maps names to classes (or factories). Classes join it with the :meth:`Registry.register`
decorator; :meth:`Registry.build` makes an instance from keyword arguments, naming an unknown name or an
unknown key and listing the known ones. A registry reads like a read-only mapping from name to class.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "RegistryError", "parameters"]

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name or unknown keyword; the message lists what is known."""


def parameters(target: Any) -> dict[str, Any]:
    """Keyword names a class or function accepts, mapped to their annotations (``Any`` when missing).

    Dataclasses contribute their ``init`` fields; other classes their ``__init__`` signature, without
    ``self`` and ``*args``/``**kwargs``.
    """
    if dataclasses.is_dataclass(target) and isinstance(target, type):
        hints = typing.get_type_hints(target)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(target) if f.init}
    func = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(func)
    found: dict[str, Any] = {}
    for name, param in inspect.signature(func).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        found[name] = hints.get(name, Any)
    return found


class Registry(Mapping[str, T], Generic[T]):
    """Names to classes of one kind (``kind`` is used in messages: "filter", "model", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a class (or factory) under ``name``; a name can be registered once."""

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} name {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return decorate

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def get_entry(self, name: str) -> T:
        """The class registered as ``name``; :class:`RegistryError` lists the known names otherwise."""
        if name not in self._entries:
            raise RegistryError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._entries[name]

    def keys_of(self, name: str) -> dict[str, Any]:
        """Keyword names (and annotations) the entry ``name`` accepts."""
        return parameters(self.get_entry(name))

    def build(self, name: str, **keys: Any) -> Any:
        """An instance of the entry ``name`` made from ``keys``.

        Raises :class:`RegistryError` naming an unknown name, or the unknown keys together with the
        keys the entry takes.
        """
        entry = self.get_entry(name)
        known = parameters(entry)
        unknown = sorted(set(keys) - set(known))
        if unknown:
            raise RegistryError(
                f"unknown key(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                f"it takes {', '.join(sorted(known)) or 'none'}"
            )
        return entry(**keys)  # type: ignore[operator]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
