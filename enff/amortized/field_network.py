"""The field network: a translation-equivariant conditional vector field of the analysis on a periodic grid.

A model state of shape ``state_shape`` is read as ``F`` fields on a periodic grid of 1 or 2 dimensions
(:class:`FieldLayout`): ``(n,)`` or ``(ny, nx)`` is one field, ``(F, ny, nx)`` (a leading non-periodic axis,
as the primitive Navier-Stokes state ``(field, y, x)``) is ``F`` fields. Tensors the network sees are
*channel-major*: ``(batch, channels, *spatial)``.

Per grid point the network reads

- the transported state ``z_t`` at flow time ``t`` (``F`` channels),
- the observation value (``F`` channels, 0 where unobserved) and a mask (``F`` channels, 1 where observed),
- the forecast ensemble mean and spread (``F`` channels each) and, when ``set_channels > 0``, a learned
  permutation-invariant embedding of the members (a circular convolution of each member, averaged over members),
- when ``correlation_offsets`` is not empty, the ensemble correlation of each point with the point ``j`` grid
  points away along each periodic axis, for every offset ``j`` (``F`` channels per offset and axis): the
  forecast covariance an ensemble Kalman filter spreads observed increments with,

and the flow time through Fourier features that scale and shift every residual block (FiLM; the same at every
grid point). Every layer is a circular convolution (``padding_mode="circular"``) or acts point by point, and every
standardisation is one number per field, so the velocity commutes with cyclic shifts of the grid and one network
serves any grid size and any number or placement of observations. The velocity has ``F`` channels per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from enff.models.base import Grid

from .networks import ACTIVATIONS, Activation, make_activation

__all__ = ["FieldLayout", "FieldNetworkConfig", "FieldVelocity", "SpatialDims"]

#: Number of periodic grid dimensions a field network serves.
SpatialDims = Literal[1, 2]

#: Convolution class per number of spatial dimensions.
_CONVOLUTIONS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}


@dataclass(frozen=True)
class FieldLayout:
    """How a model state is read as fields on a periodic grid.

    Attributes
    ----------
    fields:
        Number of fields ``F`` (state values per grid point).
    spatial_dims:
        Number of periodic grid dimensions, 1 or 2.
    """

    fields: int
    spatial_dims: SpatialDims

    def __post_init__(self) -> None:
        if self.spatial_dims not in _CONVOLUTIONS:
            raise ValueError(f"a field layout has 1 or 2 periodic dimensions, got {self.spatial_dims!r}")
        if isinstance(self.fields, bool) or int(self.fields) != self.fields or self.fields < 1:
            raise ValueError(f"a field layout has at least one field, got {self.fields!r}")

    @classmethod
    def of(cls, grid: Grid) -> FieldLayout:
        """The layout of a model grid: all axes periodic (one field), or one leading non-periodic axis of fields
        followed by periodic axes; 1 or 2 periodic axes. ``ValueError`` for any other grid (Lorenz-63's)."""
        periodic = [length is not None for length in grid.lengths]
        fields, spatial = (1, len(periodic)) if all(periodic) else (grid.shape[0], len(periodic) - 1)
        if not all(periodic[1:]) or spatial not in _CONVOLUTIONS:
            raise ValueError(f"a field network needs a state of fields on a periodic 1-D or 2-D grid (optionally "
                             f"a leading axis of fields); this state of shape {grid.shape} has periodic axes "
                             f"{periodic}")
        return cls(int(fields), spatial)  # type: ignore[arg-type]

    def describe(self) -> str:
        """``"1-D grid, 1 field"`` and the like, for messages."""
        return f"{self.spatial_dims}-D grid, {self.fields} field{'s' if self.fields > 1 else ''}"

    def to_channels(self, x: torch.Tensor) -> torch.Tensor:
        """States ``(batch, *state_shape)`` as ``(batch, F, *spatial)`` (a view when possible)."""
        spatial = x.shape[x.ndim - self.spatial_dims:]
        return x.reshape(x.shape[0], self.fields, *spatial)


@dataclass(frozen=True)
class FieldNetworkConfig:
    """Architecture of the field network.

    Attributes
    ----------
    channels:
        Hidden channels per grid point.
    dilations:
        One residual block per entry, each two circular convolutions with this dilation (in grid points);
        the receptive field spans ``1 + 2 (kernel_size - 1) sum(dilations)`` points per axis.
    kernel_size:
        Odd kernel width in grid points.
    set_channels:
        Channels of the learned set embedding of the forecast members (0: the members enter through their mean
        and spread only).
    correlation_offsets:
        Offsets ``j`` (non-zero, in grid points) of the ensemble correlation channels ``corr(x_k, x_{k+j})``
        along each periodic axis (empty: none).
    time_features:
        Number of Fourier features of the flow time (even); ``t`` itself is always included.
    activation:
        Registered activation (:data:`~enff.amortized.networks.ACTIVATIONS`).
    """

    channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)
    kernel_size: int = 3
    set_channels: int = 0
    correlation_offsets: tuple[int, ...] = ()
    time_features: int = 8
    activation: Activation = "gelu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(self.dilations))
        object.__setattr__(self, "correlation_offsets", tuple(self.correlation_offsets))
        if any(isinstance(j, bool) or int(j) != j or j == 0 for j in self.correlation_offsets):
            raise ValueError(f"correlation_offsets must be non-zero integers, got {self.correlation_offsets!r}")
        if self.channels < 1 or self.set_channels < 0:
            raise ValueError(f"channels must be >= 1 and set_channels >= 0, got {self.channels!r}, "
                             f"{self.set_channels!r}")
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be non-empty positive integers, got {self.dilations!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size!r}")
        if self.time_features < 0 or self.time_features % 2:
            raise ValueError(f"time_features must be even and >= 0, got {self.time_features!r}")
        ACTIVATIONS.get_entry(self.activation)

    def min_points(self) -> int:
        """Fewest grid points per axis the circular padding allows (the widest padding)."""
        return max(self.dilations) * (self.kernel_size // 2)


def _circular(spatial_dims: int, c_in: int, c_out: int, kernel_size: int, dilation: int = 1) -> nn.Module:
    """A circular convolution that keeps the grid size."""
    return _CONVOLUTIONS[spatial_dims](c_in, c_out, kernel_size, dilation=dilation,
                                       padding=dilation * (kernel_size // 2), padding_mode="circular")


class _Block(nn.Module):
    """``h + conv2(act(film(conv1(act(h)))))`` with ``film(r) = r (1 + scale(t)) + shift(t)``."""

    def __init__(self, layout: FieldLayout, config: FieldNetworkConfig, dilation: int, time_width: int) -> None:
        super().__init__()
        c, k = config.channels, config.kernel_size
        self.act1, self.act2 = make_activation(config.activation), make_activation(config.activation)
        self.conv1 = _circular(layout.spatial_dims, c, c, k, dilation)
        self.conv2 = _circular(layout.spatial_dims, c, c, k, dilation)
        self.film = nn.Linear(time_width, 2 * c)
        self.spatial_dims = layout.spatial_dims

    def forward(self, h: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(time).reshape(h.shape[0], 2, -1, *(1,) * self.spatial_dims).unbind(1)
        r = self.conv1(self.act1(h)) * (1 + scale) + shift
        return h + self.conv2(self.act2(r))


class FieldVelocity(nn.Module):
    """The conditional velocity ``v(z_t, t | context)`` on a periodic grid, and the encoding of its context.

    Parameters
    ----------
    layout:
        Fields and periodic dimensions of the states.
    config:
        Architecture.

    The buffers ``state_mean``, ``state_std`` (state units) and ``obs_mean``, ``obs_std`` (observation units),
    each ``(F,)``, standardise the context per field; they are set from the training data and saved with the weights.
    """

    def __init__(self, layout: FieldLayout, config: FieldNetworkConfig) -> None:
        super().__init__()
        self.layout, self.config = layout, config
        f, c, d = layout.fields, config.channels, layout.spatial_dims
        for name in ("state_mean", "obs_mean"):
            self.register_buffer(name, torch.zeros(f))
        for name in ("state_std", "obs_std"):
            self.register_buffer(name, torch.ones(f))
        self.register_buffer("frequencies", math.pi * torch.arange(1, config.time_features // 2 + 1,
                                                                   dtype=torch.float32))
        if config.set_channels:
            self.members = nn.Sequential(_circular(d, f, config.set_channels, config.kernel_size),
                                         make_activation(config.activation),
                                         _circular(d, config.set_channels, config.set_channels, 1))
        time_width = 1 + config.time_features
        self.time = nn.Sequential(nn.Linear(time_width, c), make_activation(config.activation))
        self.inp = _circular(d, self.context_channels + f, c, config.kernel_size)
        self.blocks = nn.ModuleList(_Block(layout, config, dilation, c) for dilation in config.dilations)
        self.out = nn.Sequential(make_activation(config.activation), _circular(d, c, f, 1))

    @property
    def context_channels(self) -> int:
        """Channels of :meth:`encode`'s output: observation, mask, mean, spread (``F`` each), the set embedding and
        the correlation channels (``F`` per offset and periodic axis)."""
        correlations = self.layout.fields * len(self.config.correlation_offsets) * self.layout.spatial_dims
        return 4 * self.layout.fields + self.config.set_channels + correlations

    def _field_view(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, *(1,) * self.layout.spatial_dims)

    def _check(self, name: str, x: torch.Tensor, lead: int) -> None:
        want = lead + 1 + self.layout.spatial_dims
        if x.ndim != want or x.shape[lead] != self.layout.fields:
            raise ValueError(f"{name} must have shape ({', '.join(['batch', 'member'][:lead])}, "
                             f"{self.layout.fields}, {', '.join(['n'] * self.layout.spatial_dims)}) for a "
                             f"{self.layout.describe()}, got {tuple(x.shape)}")
        small = [n for n in x.shape[lead + 1:] if n < self.config.min_points()]
        if small:
            raise ValueError(f"{name}: a grid of {tuple(x.shape[lead + 1:])} points is smaller than the "
                             f"{self.config.min_points()} points per axis this network's widest circular padding needs")

    def encode(self, observation: torch.Tensor, mask: torch.Tensor, forecast: torch.Tensor) -> torch.Tensor:
        """The context channels of each analysis.

        Parameters
        ----------
        observation:
            Observation values at their grid points, ``(batch, F, *spatial)`` in observation units; entries
            where ``mask`` is 0 are ignored (any value, NaN included).
        mask:
            1 where observed, 0 elsewhere, ``(batch, F, *spatial)``.
        forecast:
            Forecast members, ``(batch, member, F, *spatial)`` in state units (at least 2 members).

        Returns
        -------
        ``(batch, context_channels, *spatial)``.
        """
        self._check("observation", observation, 1)
        self._check("mask", mask, 1)
        self._check("forecast", forecast, 2)
        if forecast.shape[1] < 2:
            raise ValueError(f"forecast needs at least 2 members for a spread, got {tuple(forecast.shape)}")
        view = self._field_view
        observed = mask > 0
        value = torch.where(observed, (observation - view(self.obs_mean)) / view(self.obs_std),
                            torch.zeros((), dtype=observation.dtype, device=observation.device))
        members = (forecast - view(self.state_mean)) / view(self.state_std)
        parts = [value, observed.to(value.dtype), members.mean(1), members.std(1)]
        if self.config.set_channels:
            batch, n = members.shape[:2]
            embedded = self.members(members.reshape(batch * n, *members.shape[2:]))
            parts.append(embedded.reshape(batch, n, *embedded.shape[1:]).mean(1))
        if self.config.correlation_offsets:
            anomalies = members - members.mean(1, keepdim=True)  # (batch, member, F, *spatial)
            scale = members.shape[1] - 1
            std = (anomalies.pow(2).sum(1) / scale).sqrt().clamp_min(1e-6)  # (batch, F, *spatial)
            for axis in range(self.layout.spatial_dims):
                for j in self.config.correlation_offsets:
                    cov = (anomalies * torch.roll(anomalies, -j, 3 + axis)).sum(1) / scale
                    parts.append(cov / (std * torch.roll(std, -j, 2 + axis)))
        return torch.cat(parts, dim=1)

    def forward(self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Velocity at ``z`` ``(batch, F, *spatial)``, flow times ``t`` ``(batch,)`` and encoded context
        ``(batch, context_channels, *spatial)``; returns ``(batch, F, *spatial)``."""
        angles = t[:, None] * self.frequencies
        time = self.time(torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1))
        h = self.inp(torch.cat([z, context], dim=1))
        for block in self.blocks:
            h = block(h, time)
        return self.out(h)
