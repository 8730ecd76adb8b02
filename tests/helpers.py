"""Shared test helpers: devices, dtypes, small grids and observation spaces, one CUDA skip marker.

Test modules import it as ``from helpers import ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enff.filters.base import Filter
from enff.models.base import Grid
from enff.observations.base import ObservationOperator
from enff.observations.operators import Identity
from enff.observations.space import ObservationSpace

__all__ = ["CUDA", "DEVICES", "DTYPES", "ring", "ring_space", "generator", "analysed"]

#: Skip marker of every test that needs a CUDA device.
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: Devices to parametrize over: the CPU, and CUDA (skipped without it).
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

#: The floating dtypes every filter and model supports.
DTYPES = (torch.float32, torch.float64)


def ring(d: int) -> Grid:
    """Positions ``0 .. d - 1`` on a periodic ring of length ``d``."""
    return Grid(axes=(np.arange(d, dtype=np.float64),), lengths=(float(d),))


def ring_space(d: int, operator: ObservationOperator | None = None, std: float | np.ndarray = 1.0) -> ObservationSpace:
    """An observation space on :func:`ring` ``(d)`` for a state of shape ``(d,)``.

    ``operator`` defaults to :class:`Identity`; ``std`` (a number or one value per observation, state
    units) sets the number of observations to that of the operator's outputs.
    """
    operator = Identity() if operator is None else operator
    n_obs = len(operator.source_index((d,)))
    std = torch.as_tensor(np.broadcast_to(np.asarray(std, dtype=np.float64), (n_obs,)).copy())
    return ObservationSpace(operator, std, ring(d), (d,))


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded generator on ``device``."""
    return torch.Generator(device=device).manual_seed(seed)


def analysed(
    filt: Filter,
    forecast: torch.Tensor,
    y: torch.Tensor,
    obs: ObservationSpace,
    seed: int = 0,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """The analysis ensemble of ``filt`` (shape of ``forecast``) with a generator seeded ``seed`` on its device."""
    return filt.analysis(forecast, y, obs, previous=previous, generator=generator(seed, forecast.device)).ensemble
