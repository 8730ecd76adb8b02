"""Observation operators, observation error and observation sources."""

from .base import Compose, Elementwise, ObservationOperator
from .space import ObservationSpace, Select

__all__ = ["Compose", "Elementwise", "ObservationOperator", "ObservationSpace", "Select"]
