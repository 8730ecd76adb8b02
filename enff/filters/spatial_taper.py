"""Tapered local sums on the model grid: ``(T f)[k] = sum_l rho(k, l) f[l]`` with a Gaspari-Cohn ``rho``.

The localized generative filters and the local particle filter compute, at every grid point ``k``, sums
of per-point quantities (squared distances, log-likelihood terms, products of anomalies) weighted by the
Gaspari-Cohn taper of the distance between ``k`` and ``l`` on the real grid geometry (periodic wrap,
1-D or 2-D). State axes whose positions are all equal (the field axis of a multi-field state such as
pressure and velocity) are *co-located*: every field at one grid point shares that point's taper, so
the quantities are first summed over those axes (:meth:`SpatialLayout.reduce`).

Three implementations of the same operator, chosen by :func:`spatial_taper`:

- :class:`GlobalTaper` for an infinite radius (``rho = 1``): the plain total, broadcast to every point;
- :class:`PeriodicTaper` for grids whose spatial axes are all periodic and uniformly spaced (every shipped
  model): a circular convolution with the taper of each offset, by shifted multiply-adds when the
  taper's support is narrow and by FFT otherwise;
- :class:`SparseTaper` for any other grid: a sparse matrix of the tapered pairs from the k-d tree search.

Cost per application to ``B`` fields of ``n`` points: ``O(B n w)`` with ``w`` the taper's support in
points (direct), ``O(B n log n)`` (FFT) or ``O(B nnz)`` (sparse); nothing of size ``n x n`` is formed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from enff.memo import IdentityMemo
from enff.models.base import Grid

from .localization import cached, check_radius, gaspari_cohn, grid_digest, taper_pairs

#: The direct route is taken while the taper has at most this many non-zero offsets per ``log2(points)``
#: (one multiply-add pass per offset against an FFT's few passes per ``log2`` level).
DIRECT_TAPS_PER_LOG2 = 4

#: The layout of each grid object (:meth:`SpatialLayout.of`).
_LAYOUTS: IdentityMemo[SpatialLayout] = IdentityMemo()

__all__ = ["DIRECT_TAPS_PER_LOG2", "SpatialLayout", "SpatialTaper", "GlobalTaper", "PeriodicTaper", "SparseTaper", "spatial_taper"]


@dataclass(frozen=True)
class SpatialLayout:
    """How a state ``(*state_shape)`` splits into co-located fields and spatial grid points.

    Attributes
    ----------
    fields:
        Number of co-located values per grid point (the product of the leading co-located axes).
    spatial:
        The grid of the spatial axes only (positions and periodic lengths).
    """

    fields: int
    spatial: Grid

    @classmethod
    def of(cls, grid: Grid) -> "SpatialLayout":
        """Split ``grid`` into leading co-located axes (all positions equal) and the spatial axes.

        The layout is made once per grid object, so its spatial grid, and the tapers cached for it, are
        found again without hashing the grid.
        """
        return _LAYOUTS.get(grid, cls, lambda: cls._split(grid))

    @classmethod
    def _split(cls, grid: Grid) -> "SpatialLayout":
        collocated = [bool(np.ptp(np.asarray(axis, dtype=np.float64)) == 0.0 and length is None)
                      for axis, length in zip(grid.axes, grid.lengths)]
        lead = 0
        while lead < len(collocated) - 1 and collocated[lead]:
            lead += 1
        if any(collocated[lead:]) and len(grid.axes) > 1:
            raise ValueError(f"co-located state axes must lead the state shape {grid.shape}; "
                             "reorder the model state so that field axes come first")
        fields = int(np.prod(grid.shape[:lead], dtype=np.int64))
        return cls(fields, Grid(axes=tuple(grid.axes[lead:]), lengths=tuple(grid.lengths[lead:])))

    @property
    def n_points(self) -> int:
        """Number of spatial grid points."""
        return int(np.prod(self.spatial.shape, dtype=np.int64))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """View ``(batch, *state_shape)`` or flat ``(batch, d)`` states as ``(batch, fields, n_points)``."""
        return x.reshape(x.shape[0], self.fields, self.n_points)

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``(..., fields, n_points)`` over the co-located fields: ``(..., n_points)``."""
        return values.sum(dim=-2)

    def point_of(self, state_index: np.ndarray) -> np.ndarray:
        """Spatial point of each flat state index (the field index dropped), shape like ``state_index``."""
        return np.asarray(state_index, dtype=np.int64) % self.n_points


class SpatialTaper(ABC):
    """``apply(f)[..., k] = sum_l rho(k, l) f[..., l]`` over the spatial points of one grid."""

    n_points: int

    @abstractmethod
    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """Tapered sums of ``values`` of shape ``(..., n_points)``; returns the same shape and dtype."""


@dataclass(frozen=True, eq=False)
class GlobalTaper(SpatialTaper):
    """``rho = 1`` everywhere (infinite radius): every point sees the total over the grid."""

    n_points: int

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(dim=-1, keepdim=True).expand(values.shape).contiguous()


@dataclass(frozen=True, eq=False)
class PeriodicTaper(SpatialTaper):
    """Circular convolution with the taper of every grid offset on a periodic, uniformly spaced grid.

    Attributes
    ----------
    shape:
        Spatial grid shape (one or two axes).
    kernel:
        Taper of each offset, float64, shape ``(2 w_0 + 1, ...)`` centred on offset 0 (``w_i`` the
        support half-width in points on axis ``i``); used directly when it fits in the grid.
    spectrum_kernel:
        The same taper laid out on the whole periodic grid (offset 0 at index 0), for the FFT route.
    direct:
        Whether the direct route is used: the support is narrower than the grid on every axis and has few
        enough non-zero offsets (:data:`DIRECT_TAPS_PER_LOG2`); otherwise the FFT route.
    """

    shape: tuple[int, ...]
    kernel: np.ndarray
    spectrum_kernel: np.ndarray
    direct: bool

    @property
    def n_points(self) -> int:  # type: ignore[override]
        return int(np.prod(self.shape, dtype=np.int64))

    @classmethod
    def build(cls, grid: Grid, radius: float) -> "PeriodicTaper":
        """Taper of each offset from the grid spacing and periodic lengths (``radius`` finite)."""
        spacing = [float(length) / len(axis) for axis, length in zip(grid.axes, grid.lengths)]
        shape = grid.shape
        offsets = [np.arange(n) for n in shape]  # offset o on a periodic axis is a distance of min(o, n - o)
        mesh = np.meshgrid(*[np.minimum(o, n - o) * h for o, n, h in zip(offsets, shape, spacing)], indexing="ij")
        full = gaspari_cohn(np.sqrt(sum(m**2 for m in mesh)), radius)
        half = [int(math.floor(2.0 * radius / h)) for h in spacing]  # the support ends at distance 2 radius
        fits = all(2 * w + 1 < n for w, n in zip(half, shape))
        half = [min(w, (n - 1) // 2) for w, n in zip(half, shape)]
        window = tuple(np.r_[np.arange(-w, 0) % n, np.arange(0, w + 1)] for w, n in zip(half, shape))
        kernel = full[np.ix_(*window)]
        taps = int(np.count_nonzero(kernel))
        direct = fits and taps <= DIRECT_TAPS_PER_LOG2 * math.log2(max(2, full.size))
        return cls(tuple(shape), kernel, full, direct)

    @cached_property
    def taps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The non-zero offsets on the first and second axes (``[0, n)``, periodic; 0 on a one-dimensional
        grid's missing second axis) and their taper, each ``(T,)``: ``apply(f)[k] = sum_t rho_t f[k + o_t]``."""
        nonzero = np.nonzero(self.spectrum_kernel)
        second = nonzero[1] if len(nonzero) > 1 else np.zeros_like(nonzero[0])
        return (nonzero[0].astype(np.int64), second.astype(np.int64),
                self.spectrum_kernel[nonzero].astype(np.float64))

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        lead = values.shape[:-1]
        fields = values.reshape(-1, *self.shape)
        out = self._shifted_sum(fields) if self.direct else self._spectral(fields)
        return out.reshape(*lead, self.n_points)

    def _shifted_sum(self, fields: torch.Tensor) -> torch.Tensor:
        """``sum_o rho(o) f[k + o]`` as one in-place multiply-add per non-zero offset of a circularly padded copy."""
        half = [w // 2 for w in self.kernel.shape]
        pad = [w for w in reversed(half) for _ in range(2)]
        padded = F.pad(fields[:, None], pad, mode="circular")[:, 0]
        out = torch.zeros_like(fields)
        for offset in zip(*np.nonzero(self.kernel)):
            window = padded[(slice(None), *(slice(o, o + n) for o, n in zip(offset, self.shape)))]
            out.add_(window, alpha=float(self.kernel[offset]))
        return out

    def _spectral(self, fields: torch.Tensor) -> torch.Tensor:
        """The circular convolution by FFT over the spatial axes."""
        axes = tuple(range(-len(self.shape), 0))
        kernel = torch.as_tensor(self.spectrum_kernel, dtype=fields.dtype, device=fields.device)
        spectrum = torch.fft.rfftn(kernel, dim=axes)
        return torch.fft.irfftn(torch.fft.rfftn(fields, dim=axes) * spectrum, s=self.shape, dim=axes)


@dataclass(frozen=True, eq=False)
class SparseTaper(SpatialTaper):
    """Sparse matrix of the tapered point pairs, for grids that are not periodic and uniform.

    Attributes
    ----------
    rows, cols, weight:
        The tapered pairs ``rho(rows[i], cols[i]) = weight[i] > 0``.
    """

    n_points: int
    rows: np.ndarray
    cols: np.ndarray
    weight: np.ndarray

    @classmethod
    def build(cls, grid: Grid, radius: float) -> "SparseTaper":
        """All pairs of grid points within ``2 radius`` (``radius`` finite)."""
        points = grid.points()
        rows, cols, weight = taper_pairs(grid, points, points, radius)
        return cls(points.shape[0], rows, cols, weight)

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        lead = values.shape[:-1]
        index = torch.as_tensor(np.stack([self.rows, self.cols]), device=values.device)
        matrix = torch.sparse_coo_tensor(index, torch.as_tensor(self.weight, dtype=values.dtype, device=values.device),
                                         (self.n_points, self.n_points), check_invariants=False)
        flat = values.reshape(-1, self.n_points)
        return torch.sparse.mm(matrix, flat.T).T.reshape(*lead, self.n_points)


def _periodic_uniform(grid: Grid) -> bool:
    if len(grid.axes) > 2:
        return False
    for axis, length in zip(grid.axes, grid.lengths):
        axis = np.asarray(axis, dtype=np.float64)
        if length is None or axis.size < 2:
            return False
        expected = axis[0] + np.arange(axis.size) * (float(length) / axis.size)
        if not np.allclose(axis, expected, rtol=0.0, atol=1e-9 * float(length)):
            return False
    return True


def _build_taper(layout: SpatialLayout, radius: float) -> SpatialTaper:
    if math.isinf(radius):
        return GlobalTaper(layout.n_points)
    if _periodic_uniform(layout.spatial):
        return PeriodicTaper.build(layout.spatial, radius)
    return SparseTaper.build(layout.spatial, radius)


def spatial_taper(layout: SpatialLayout, radius: float) -> SpatialTaper:
    """The tapered-sum operator of ``layout``'s spatial grid for a Gaspari-Cohn half-width ``radius``.

    Parameters
    ----------
    layout:
        Fields and spatial grid of the state.
    radius:
        Half-width in model length units (``inf``: no localization, every point sees the whole grid).
    """
    radius = check_radius(radius, required=True)
    key = ("spatial taper", radius, grid_digest(layout.spatial), layout.fields)
    return cached(key, lambda: _build_taper(layout, radius))
