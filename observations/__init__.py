"""Observation operators, observation error and observation sources."""

from .base import Compose, Elementwise, ObservationOperator
from .config import OPERATOR_KEYS, SELECTIONS, operator_from_config
from .error import GaussianError
from .operators import (
    OPERATORS,
    ATan,
    Identity,
    Indices,
    Patch,
    Power,
    RandomFraction,
    Selection,
    Subsample,
    Tanh,
    elementwise_operator,
)
from .sources import NetCDFObservations, ObservationSource, SyntheticObservations
from .space import ObservationSpace, Select

__all__ = [
    "OPERATORS",
    "OPERATOR_KEYS",
    "SELECTIONS",
    "ATan",
    "Compose",
    "Elementwise",
    "GaussianError",
    "Identity",
    "Indices",
    "NetCDFObservations",
    "ObservationOperator",
    "ObservationSource",
    "ObservationSpace",
    "Patch",
    "Power",
    "RandomFraction",
    "Select",
    "Selection",
    "Subsample",
    "SyntheticObservations",
    "Tanh",
    "elementwise_operator",
    "operator_from_config",
]
