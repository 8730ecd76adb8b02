"""What a filter knows about the observations of one cycle: operator, error std and locations."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from enff.models.base import Grid

from .base import ObservationOperator
from .operators import Indices

__all__ = ["ObservationSpace", "Select"]

#: Keep the given flat entries (the selection used to drop missing observations).
Select = Indices


@dataclass(frozen=True)
class ObservationSpace:
    """The ``obs`` argument of every filter's ``analysis``.

    Attributes
    ----------
    operator:
        ``h``, mapping ``(member, *state_shape)`` to ``(member, n_obs)``.
    std:
        Gaussian observation-error standard deviation per observation, shape ``(n_obs,)``,
        in observation units.
    grid:
        The model grid (positions and periodic lengths) used for localization.
    state_shape:
        Shape of one member's state.
    """

    operator: ObservationOperator
    std: torch.Tensor
    grid: Grid
    state_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        n = self.operator.output_size(self.state_shape)
        if self.std.ndim != 1 or self.std.shape[0] != n:
            raise ValueError(f"std must have shape ({n},) for this operator, got {tuple(self.std.shape)}")
        if not bool(torch.all(self.std > 0)):
            raise ValueError("observation error std must be positive everywhere")

    @property
    def n_obs(self) -> int:
        """Number of observations."""
        return int(self.std.shape[0])

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` of shape ``(member, *state_shape)``; returns ``(member, n_obs)``."""
        return self.operator(x)

    @property
    def state_index(self) -> np.ndarray:
        """Flat state index each observation is located at, shape ``(n_obs,)``."""
        return self.operator.source_index(self.state_shape)

    @property
    def locations(self) -> np.ndarray:
        """Grid coordinates of each observation, shape ``(n_obs, ndim)``, in model length units."""
        return self.grid.points()[self.state_index]

    def observed(self, y: torch.Tensor) -> tuple[torch.Tensor, "ObservationSpace"]:
        """Drop missing (non-finite) entries of ``y`` (shape ``(n_obs,)``).

        Returns the finite observations and the space restricted to them, so a filter that calls
        this first never sees a missing value: masked entries have no influence at all.
        """
        if y.shape != (self.n_obs,):
            raise ValueError(f"observation vector must have shape ({self.n_obs},), got {tuple(y.shape)}")
        valid = torch.isfinite(y)
        if bool(valid.all()):
            return y, self
        index = torch.nonzero(valid).squeeze(-1).cpu().numpy()
        return y[valid], replace(self, operator=self.operator | Indices(index), std=self.std[valid])

    def neg_log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``E(x) = |y - h(x)|^2 / (2 s^2)`` summed over finite observations; shape ``(member,)``."""
        y, space = self.observed(y)
        r = (y - space.h(x)) / space.std
        return 0.5 * (r * r).sum(dim=-1)
