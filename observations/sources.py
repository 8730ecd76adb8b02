"""Where observations come from: a synthetic twin experiment or a netCDF file of real data.

Both sources expose ``operator`` and ``error``, give each cycle's observations with
:meth:`ObservationSource.observe` and build the :class:`ObservationSpace` a filter needs with
:meth:`ObservationSource.space`. Missing observations are NaN and reach the filters as NaN;
:meth:`ObservationSpace.observed` drops them.

netCDF layout read by :class:`NetCDFObservations`::

    dimensions: time, obs
    observation(time, obs)  float   observed values, NaN (or _FillValue) where missing
    obs_index(obs)          int     flat (C order) state index each observation is located at
    obs_std(obs)            float   optional per-observation error std; otherwise a scalar
                                    attribute ``std`` on ``observation``
    time(time)                      optional coordinate (cycle number when absent)

Optional attributes of ``observation``: ``operator`` (``"identity"``, ``"atan"``, ``"tanh"``,
``"power"``) and ``exponent`` (for ``"power"``), the pointwise function applied after the selection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr

from enff.models.base import Grid

from .base import ObservationOperator
from .error import GaussianError
from .operators import Indices, elementwise_operator
from .space import ObservationSpace

__all__ = ["NetCDFObservations", "ObservationSource", "SyntheticObservations"]


class ObservationSource(ABC):
    """Common part of the sources: an ``operator``, an ``error`` model and :meth:`observe`."""

    operator: ObservationOperator
    error: GaussianError
    #: Whether the runner keeps a true state for these observations (twin experiments do, real data does not).
    needs_truth: ClassVar[bool]

    @property
    def n_times(self) -> int | None:
        """Number of observation times available (``None``: as many as asked for)."""
        return None

    @property
    def input_file(self) -> Path | None:
        """The file the observations are read from (``None`` when they are made, not read)."""
        return None

    @abstractmethod
    def observe(
        self,
        cycle: int,
        truth: torch.Tensor | None,
        generator: torch.Generator,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """The observations of cycle ``cycle`` (1-based), shape ``(n_obs,)``, NaN where missing.

        Parameters
        ----------
        cycle:
            The cycle number, ``1 .. n_times``.
        truth:
            The true state ``(*state_shape)`` at the observation time when :attr:`needs_truth`, else ``None``.
        generator:
            The observation stream of the cycle: the only source of observation noise, on ``device``.
        dtype, device:
            Of the returned tensor.
        """

    def space(
        self, grid: Grid, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> ObservationSpace:
        """The :class:`ObservationSpace` of these observations on the model grid ``grid``.

        Raises ``ValueError`` if the operator does not fit the grid's state shape or the error std
        does not have one entry per observation.
        """
        n_obs = self.operator.output_size(grid.shape)
        return ObservationSpace(self.operator, self.error.std_vector(n_obs, dtype, device), grid, grid.shape)


@dataclass(frozen=True)
class SyntheticObservations(ObservationSource):
    """Twin-experiment observations: ``y = h(truth) + std * N(0, 1)``.

    Parameters
    ----------
    operator:
        ``h``, mapping ``(member, *state_shape)`` to ``(member, n_obs)``.
    error:
        The Gaussian error added to ``h(truth)``.
    state_shape:
        Shape of one state.
    """

    operator: ObservationOperator
    error: GaussianError
    state_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_shape", tuple(int(n) for n in self.state_shape))
        self.error.std_vector(self.operator.output_size(self.state_shape))

    needs_truth: ClassVar[bool] = True

    def observe(
        self,
        cycle: int,
        truth: torch.Tensor | None,
        generator: torch.Generator,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Observe the true state ``truth`` of shape ``state_shape``: ``h(truth) + std * N(0, 1)``, shape
        ``(n_obs,)`` (``cycle`` does not matter).

        The error is drawn from ``generator``, which lives on ``truth``'s device; the result has ``truth``'s
        dtype and device (the run's ``dtype`` and ``device``).
        """
        if truth is None or tuple(truth.shape) != self.state_shape:
            raise ValueError(f"truth must have shape {self.state_shape}, got {None if truth is None else tuple(truth.shape)}")
        return self.error.perturb(self.operator(truth.unsqueeze(0))[0], generator)


def _variable(dataset: xr.Dataset, name: str, dims: tuple[str, ...]) -> xr.DataArray:
    """The variable ``name`` of ``dataset``, checked to have dimensions ``dims``."""
    if name not in dataset.variables:
        raise ValueError(f"variable {name!r} with dims {dims} is missing")
    variable = dataset[name]
    if variable.dims != dims:
        raise ValueError(f"variable {name!r} must have dims {dims}, got {variable.dims}")
    return variable


class NetCDFObservations(ObservationSource):
    """Real observations read from a netCDF file (layout in the module docstring).

    The file stays open and each cycle's row is read on demand; call :meth:`close` (or use the object
    as a context manager) when done.

    Parameters
    ----------
    path:
        The netCDF file.
    state_shape:
        If given, ``obs_index`` is checked against it now rather than when the space is built.

    Attributes
    ----------
    operator:
        ``Indices(obs_index)``, composed with the pointwise function the file names, if any.
    error:
        From ``obs_std`` or the ``std`` attribute.
    """

    def __init__(self, path: str | PathLike[str], state_shape: tuple[int, ...] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"observation file not found: {self.path}")
        try:
            self._dataset = xr.open_dataset(self.path)
        except Exception as err:  # xarray and the netCDF libraries raise ValueError, OSError, ... for foreign files
            reason = str(err).partition("\n")[0].split(". ")[0][:200]
            raise ValueError(f"{self.path}: not a readable netCDF observation file (truncated, or another format: "
                             f"{type(err).__name__}: {reason})") from None
        try:
            self.operator, self.error = self._read_setup(state_shape)
        except Exception as err:
            self.close()
            if isinstance(err, ValueError):
                raise ValueError(f"{self.path}: {err}") from None
            raise

    def _read_setup(self, state_shape: tuple[int, ...] | None) -> tuple[ObservationOperator, GaussianError]:
        observation = _variable(self._dataset, "observation", ("time", "obs"))
        try:
            operator: ObservationOperator = Indices(_variable(self._dataset, "obs_index", ("obs",)).values)
            if state_shape is not None:
                operator.source_index(tuple(state_shape))
        except ValueError as err:
            raise ValueError(f"obs_index: {err}") from None
        name = observation.attrs.get("operator", "identity")
        if name != "identity":
            exponent = observation.attrs.get("exponent")
            operator = operator | elementwise_operator(str(name), None if exponent is None else float(exponent))
        if "obs_std" in self._dataset.variables:
            std: Any = _variable(self._dataset, "obs_std", ("obs",)).values
        elif "std" in observation.attrs:
            std = np.asarray(observation.attrs["std"], dtype=np.float64)
            if std.size != 1:
                raise ValueError(f"attribute 'std' of 'observation' must be a scalar, got shape {std.shape}")
            std = float(std.reshape(()))
        else:
            raise ValueError("give the error std as a variable obs_std(obs) or an attribute 'std' of 'observation'")
        try:
            return operator, GaussianError(std)
        except ValueError as err:
            raise ValueError(f"obs_std/std: {err}") from None

    @property
    def times(self) -> np.ndarray:
        """The ``time`` coordinate, shape ``(n_times,)`` (cycle numbers when the file has none)."""
        return self._dataset["time"].values

    needs_truth: ClassVar[bool] = False

    @property
    def n_times(self) -> int:
        """Number of observation times."""
        return int(self._dataset.sizes["time"])

    @property
    def input_file(self) -> Path:
        """:attr:`path`."""
        return self.path

    def observe(
        self,
        cycle: int,
        truth: torch.Tensor | None,
        generator: torch.Generator,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """The row of time index ``cycle - 1`` (:meth:`observation`); ``truth`` and ``generator`` are not used."""
        return self.observation(cycle - 1, dtype=dtype, device=device)

    def observation(
        self, k: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Observations at time index ``k`` (``0 <= k < n_times``), shape ``(n_obs,)``, NaN where missing."""
        if isinstance(k, bool) or int(k) != k or not 0 <= k < self.n_times:
            raise ValueError(f"k must be an integer time index in [0, {self.n_times}), got {k!r}")
        row = self._dataset["observation"][int(k)].values.astype(np.float64)
        return torch.as_tensor(row, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"NetCDFObservations({str(self.path)!r})"

    def close(self) -> None:
        """Close the file."""
        self._dataset.close()

    def __enter__(self) -> "NetCDFObservations":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
