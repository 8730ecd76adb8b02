"""The filter contract and the registry that maps names to filters.

A filter is a frozen dataclass of its own hyper-parameters (its ``repr`` is its full configuration)
with one essential method, :meth:`Filter.analysis`, a pure function on tensors that returns an
:class:`Analysis` (the analysis ensemble and its diagnostics). It never integrates the model. Case files
and the CLI select filters by registry name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, ClassVar, TypeVar

import torch

from enff.observations.space import ObservationSpace
from enff.registry import Registry

__all__ = ["Analysis", "Filter", "FILTERS", "register", "get_filter", "filter_names"]


@dataclass(frozen=True)
class Analysis:
    """What :meth:`Filter.analysis` returns.

    Attributes
    ----------
    ensemble:
        The analysis ensemble, a new tensor shaped like the forecast ``(member, *state_shape)``.
    diagnostics:
        Scalar diagnostics of this analysis, name -> value (read-only). The names are among the filter's
        :attr:`Filter.diagnostic_names`; an analysis with nothing to assimilate (every observation missing)
        may report fewer.
    """

    ensemble: torch.Tensor
    diagnostics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "diagnostics", MappingProxyType(dict(self.diagnostics)))


class Filter(ABC):
    """Base class of all filters.

    Subclasses are frozen dataclasses whose fields are the hyper-parameters (the case file's
    ``[filter]`` keys) and declare the per-cycle scalar diagnostics they report in two class variables:
    :attr:`reported` (every analysis) and :attr:`reported_when` (only when a hyper-parameter switches
    them on). :attr:`diagnostic_names` reads both.
    """

    #: Registry name, set by :func:`register`.
    name: ClassVar[str] = ""
    #: Names of the scalar diagnostics every analysis reports.
    reported: ClassVar[tuple[str, ...]] = ()
    #: Diagnostics reported only when a hyper-parameter is set (truthy): diagnostic name -> field name.
    reported_when: ClassVar[Mapping[str, str]] = MappingProxyType({})

    @property
    def diagnostic_names(self) -> tuple[str, ...]:
        """Names of the scalar diagnostics this filter, as configured, reports (the run file's variables)."""
        return self.reported + tuple(name for name, switch in self.reported_when.items() if getattr(self, switch))

    @abstractmethod
    def analysis(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        previous: torch.Tensor | None = None,
        generator: torch.Generator,
    ) -> Analysis:
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

        Returns
        -------
        :class:`Analysis`: the analysis ensemble, a new tensor shaped like ``forecast``, and the
        diagnostics named in :attr:`diagnostic_names`.
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
