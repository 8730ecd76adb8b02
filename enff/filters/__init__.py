"""Filters: a registry from name to a frozen dataclass of hyper-parameters with an ``analysis`` method."""

from .base import FILTERS, Filter, filter_names, get_filter, register
from .free import FreeRun

__all__ = ["FILTERS", "Filter", "FreeRun", "filter_names", "get_filter", "register"]

from .enkf import EnKF
from .etkf import ETKF
from .inflation import multiplicative_inflation, rtps
from .letkf import LETKF
from .particle import BootstrapPF

__all__ += ["BootstrapPF", "EnKF", "ETKF", "LETKF", "multiplicative_inflation", "rtps"]

from .ensemble_flow import EnFFF2P, EnFFOT
from .ensemble_score import EnSF

__all__ += ["EnFFF2P", "EnFFOT", "EnSF"]
