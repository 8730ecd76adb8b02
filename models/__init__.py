"""Dynamical models: batched torch ensembles with the member on the leading axis."""

from .base import Grid, Model

__all__ = ["Grid", "Model"]
