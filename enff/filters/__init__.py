"""Filters: a registry from name to a frozen dataclass of hyper-parameters with an ``analysis`` method."""

from .base import FILTERS, Filter, filter_names, get_filter, register
from .free import FreeRun

__all__ = ["FILTERS", "Filter", "FreeRun", "filter_names", "get_filter", "register"]
