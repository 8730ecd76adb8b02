"""The filter contract and the registry that maps names to filters.

A filter is a frozen dataclass of its own hyper-parameters (its ``repr`` is its full configuration)
with one essential method, :meth:`Filter.analysis`, a pure function on tensors. It never integrates
the model. Case files and the CLI select filters by registry name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, TypeVar

import torch

from enff.observations.space import ObservationSpace
from enff.registry import Registry

__all__ = ["Filter", "FILTERS", "register", "get_filter", "filter_names"]


class Filter(ABC):
    """Base class of all filters.

    Subclasses are frozen dataclasses whose fields are the hyper-parameters (the case file's
    ``[filter]`` keys) and declare the names of the per-cycle scalar diagnostics they report.
    """

    #: Registry name, set by :func:`register`.
    name: ClassVar[str] = ""
    #: Names of the scalar diagnostics written into ``diagnostics`` by :meth:`analysis`.
    diagnostic_names: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`analysis` needs the previous analysis ensemble.
    needs_previous: ClassVar[bool] = False

    @abstractmethod
    def analysis(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        previous: torch.Tensor | None = None,
        generator: torch.Generator,
        diagnostics: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """Turn a forecast ensemble into an analysis ensemble.

        Parameters
        ----------
        forecast:
            Forecast ensemble, shape ``(member, *state_shape)``.
        y:
            Observations, shape ``(n_obs,)``; non-finite entries are missing and must have no influence
            (call ``obs.observed(y)`` first).
        obs:
            Operator, error std and locations of the observations.
        previous:
            The previous analysis ensemble, same shape as ``forecast`` (paths that need it).
        generator:
            The only source of randomness, on the forecast's device.
        diagnostics:
            If given, the filter stores its scalar diagnostics (``diagnostic_names``) in it.

        Returns
        -------
        The analysis ensemble, a new tensor shaped like ``forecast``.
        """


F = TypeVar("F", bound=type[Filter])

#: Registry name -> filter class.
FILTERS: Registry[type[Filter]] = Registry("filter")


def register(name: str) -> Callable[[F], F]:
    """Class decorator that adds a filter class to :data:`FILTERS` under ``name``."""

    def decorate(cls: F) -> F:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"filter {cls.__name__} must be a (frozen) dataclass of its hyper-parameters")
        FILTERS.register(name)(cls)
        cls.name = name
        return cls

    return decorate


def filter_names() -> list[str]:
    """Sorted names of all registered filters."""
    return FILTERS.names()


def get_filter(name: str, **hyper: Any) -> Filter:
    """Instantiate the filter registered as ``name`` with hyper-parameters ``hyper``.

    Raises ``ValueError`` (:class:`~enff.registry.RegistryError`) naming the unknown filter or the
    unknown hyper-parameter and listing the known ones.
    """
    return FILTERS.build(name, **hyper)
