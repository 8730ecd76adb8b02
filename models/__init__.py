"""Dynamical models: batched torch ensembles with the member on the leading axis."""

from .base import MODELS, Grid, Model
from .lorenz63 import Lorenz63
from .lorenz96 import Lorenz96
from .kuramoto_sivashinsky import KuramotoSivashinsky
from .navier_stokes import NavierStokes2D
from .navier_stokes_primitive import NavierStokes2DPrimitive

__all__ = ["MODELS", "Grid", "KuramotoSivashinsky", "Lorenz63", "Lorenz96", "Model", "NavierStokes2D", "NavierStokes2DPrimitive"]
