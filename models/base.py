"""The model contract: a batched, deterministic dynamical model on torch tensors.

Every model advances a batch of states with the ensemble member on the leading axis,
``x.shape == (member, *model.state_shape)``, on whatever device and floating dtype ``x`` has.
xarray appears only at the edges (:meth:`Model.to_dataarray`, :meth:`Model.nature_run`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from enff.checks import check_positive_int
from enff.registry import Registry

__all__ = ["MODELS", "Grid", "Model"]


@dataclass(frozen=True)
class Grid:
    """Positions of the state elements, used for localization and plotting.

    Attributes
    ----------
    axes:
        One 1-D array of positions per state dimension, in the model's length units
        (``len(axes) == len(state_shape)``, ``axes[i].shape == (state_shape[i],)``).
    lengths:
        Periodic length of each axis in the same units, or ``None`` for a non-periodic axis.
    """

    axes: tuple[np.ndarray, ...]
    lengths: tuple[float | None, ...]

    def __post_init__(self) -> None:
        if len(self.axes) != len(self.lengths):
            raise ValueError(f"Grid needs one length per axis, got {len(self.axes)} axes and {len(self.lengths)} lengths")

    @property
    def shape(self) -> tuple[int, ...]:
        """State shape the grid describes."""
        return tuple(len(a) for a in self.axes)

    def points(self) -> np.ndarray:
        """Coordinates of every state element in C (row-major) order, shape ``(prod(shape), ndim)``."""
        mesh = np.meshgrid(*self.axes, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=-1).astype(np.float64)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Euclidean distance between point sets with periodic wrap on periodic axes.

        ``a`` has shape ``(..., ndim)`` and ``b`` broadcasts against it; returns shape ``(...)``.
        """
        diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
        for axis, length in enumerate(self.lengths):
            if length is not None:
                diff[..., axis] = np.minimum(diff[..., axis], length - diff[..., axis])
        return np.sqrt(np.sum(diff**2, axis=-1))


class Model(ABC):
    """Base class of the dynamical models.

    Subclasses set ``params`` (a frozen dataclass), ``state_dims`` and ``grid``, and implement
    :meth:`step` and :meth:`initial_state`.
    """

    #: Names of the state dimensions, e.g. ``("x",)`` or ``("y", "x")``.
    state_dims: tuple[str, ...]
    #: Frozen dataclass of the model's parameters (``dt`` included).
    params: Any
    #: Name and attributes of the state variable for netCDF/xarray output.
    variable_name: str = "state"
    units: str = "1"
    long_name: str = "model state"

    @property
    @abstractmethod
    def grid(self) -> Grid:
        """Positions of the state elements (see :class:`Grid`)."""

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one member's state."""
        return self.grid.shape

    @property
    def dt(self) -> float:
        """Model time step in the model's time units."""
        return float(self.params.dt)

    def coords(self) -> dict[str, np.ndarray]:
        """Coordinate arrays of the state dimensions, keyed by dimension name."""
        return dict(zip(self.state_dims, self.grid.axes))

    def check_state(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a floating tensor of shape ``(member, *state_shape)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"state x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state x must be float32 or float64, got {x.dtype}")
        if x.ndim != 1 + len(self.state_shape) or tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(
                f"state x must have shape (member, {', '.join(map(str, self.state_shape))}), got {tuple(x.shape)}"
            )

    @abstractmethod
    def step(self, x: torch.Tensor, n_steps: int = 1) -> torch.Tensor:
        """Advance ``x`` of shape ``(member, *state_shape)`` by ``n_steps`` steps of ``dt``.

        Returns a new tensor of the same shape, dtype and device; ``x`` is not modified.
        """

    @abstractmethod
    def initial_state(
        self,
        generator: torch.Generator,
        n_members: int = 1,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Draw ``n_members`` initial states, shape ``(n_members, *state_shape)``, from ``generator``.

        ``generator`` must live on ``device`` (a CPU generator for CPU tensors).
        """

    def to_dataarray(self, x: torch.Tensor, name: str | None = None) -> xr.DataArray:
        """Label a batch ``(member, *state_shape)`` as an ``xarray.DataArray`` with dims ``member, *state_dims``."""
        self.check_state(x)
        data = x.detach().cpu().numpy()
        coords: dict[str, Any] = {"member": np.arange(data.shape[0])}
        coords.update(self.coords())
        return xr.DataArray(
            data,
            dims=("member", *self.state_dims),
            coords=coords,
            name=name or self.variable_name,
            attrs={"units": self.units, "long_name": self.long_name},
        )

    def nature_run(
        self,
        n_times: int,
        *,
        every: int = 1,
        spinup: int = 0,
        seed: int = 0,
        x0: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> xr.Dataset:
        """Integrate one truth trajectory and return it as an ``xarray.Dataset``.

        Parameters
        ----------
        n_times:
            Number of stored states (the initial state after spin-up included).
        every:
            Model steps between stored states.
        spinup:
            Model steps discarded before the first stored state.
        seed:
            Seed of the generator for the initial state (ignored when ``x0`` is given).
        x0:
            Optional initial state of shape ``state_shape`` or ``(1, *state_shape)``.

        Returns
        -------
        Dataset with the state variable of dims ``(time, *state_dims)``; ``time`` in model time units
        counted from the end of the spin-up.
        """
        n_times = check_positive_int("n_times", n_times)
        every = check_positive_int("every", every)
        if int(spinup) < 0:
            raise ValueError(f"spinup must be >= 0, got {spinup!r}")
        if x0 is None:
            gen = torch.Generator(device=device).manual_seed(int(seed))
            x = self.initial_state(gen, 1, dtype=dtype, device=device)
        else:
            x = x0.reshape(1, *self.state_shape).to(device=device, dtype=dtype)
        if spinup:
            x = self.step(x, int(spinup))
        states = [x[0].cpu().numpy()]
        for _ in range(n_times - 1):
            x = self.step(x, every)
            states.append(x[0].cpu().numpy())
        data = np.stack(states)
        time = np.arange(n_times) * every * self.dt
        coords: dict[str, Any] = {"time": time}
        coords.update(self.coords())
        da = xr.DataArray(data, dims=("time", *self.state_dims), coords=coords,
                          attrs={"units": self.units, "long_name": self.long_name})
        ds = xr.Dataset({self.variable_name: da})
        ds["time"].attrs.update(units="1", long_name="time since end of spin-up (dimensionless model time units)")
        ds.attrs.update(model=type(self).__name__, parameters=repr(self.params), dt=self.dt, every=every, spinup=int(spinup))
        return ds


#: Registry name (``model.name`` of a case file) -> model class; models join it with ``@MODELS.register(name)``.
MODELS: Registry[type[Model]] = Registry("model")
