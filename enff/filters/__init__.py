"""Filters: a registry from name to a frozen dataclass of hyper-parameters with an ``analysis`` method."""

from .base import FILTERS, Analysis, Filter, filter_names, get_filter, register
from .enkf import EnKF
from .ensemble_flow import EnFFF2P, EnFFOT
from .ensemble_score import EnSF
from .etkf import ETKF
from .free import FreeRun
from .inflation import multiplicative_inflation, rtps
from .learned import LearnedAnalysis
from .letkf import LETKF
from .local_flow import LEnFFF2P, LEnFFOT
from .local_particle import LocalPF
from .local_tempering import LEnFFTempered
from .local_score import LEnSF
from .particle import BootstrapPF

__all__ = [
    "FILTERS",
    "Analysis",
    "BootstrapPF",
    "ETKF",
    "EnFFF2P",
    "EnFFOT",
    "EnKF",
    "EnSF",
    "Filter",
    "FreeRun",
    "LETKF",
    "LEnFFF2P",
    "LEnFFOT",
    "LEnFFTempered",
    "LEnSF",
    "LocalPF",
    "LearnedAnalysis",
    "filter_names",
    "get_filter",
    "multiplicative_inflation",
    "register",
    "rtps",
]
