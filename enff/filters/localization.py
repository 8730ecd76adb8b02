"""Gaspari-Cohn localization on the model's real grid geometry, with cached neighbour structures.

Distances are measured between grid coordinates (``Grid.points()``, observation ``locations``) with
periodic wrap on periodic axes and in as many dimensions as the grid has, never along the flattened
index. Neighbour searches use a k-d tree; pair distances come from :meth:`Grid.distance`. The
results depend only on the grid, the observation locations and the radius, so they are computed
once per geometry and kept in a small least-recently-used cache (a new observation mask is a new
geometry), as are their tensors on each device and dtype. A geometry is named by digests of the grid
and of the observed state indices, each computed once per grid and operator object
(:class:`~enff.memo.IdentityMemo`), so a cycle that reuses them hashes nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch
from scipy.spatial import cKDTree

from enff.memo import IdentityMemo
from enff.models.base import Grid
from enff.observations.space import ObservationSpace

__all__ = [
    "CovarianceTapers",
    "LocalDomains",
    "LocalObservations",
    "MAX_DENSE_TAPER_BYTES",
    "cached",
    "check_radius",
    "covariance_taper_tensors",
    "covariance_tapers",
    "gaspari_cohn",
    "grid_digest",
    "local_domains",
    "local_observation_tensors",
    "local_observations",
    "taper_pairs",
]

#: Number of entries (a geometry's neighbour structures, or their tensors on one device and dtype) kept.
CACHE_SIZE = 16


def check_radius(radius: float | None, *, required: bool = False, name: str = "radius") -> float:
    """Validate a Gaspari-Cohn half-width; ``None`` (when not ``required``) and ``inf`` mean no localization.

    Returns the radius as a float (``math.inf`` for no localization); raises ``ValueError`` naming
    ``name`` if it is missing while ``required``, not a number, or not positive.
    """
    if radius is None:
        if required:
            raise ValueError(f"{name} is required (Gaspari-Cohn half-width in model length units; inf = global)")
        return math.inf
    value = float(radius)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 (Gaspari-Cohn half-width in model length units), got {radius!r}")
    return value


def gaspari_cohn(distance: np.ndarray, radius: float) -> np.ndarray:
    """Gaspari and Cohn (1999, eq. 4.10) fifth-order compactly supported correlation.

    Parameters
    ----------
    distance:
        Non-negative distances, any shape, in model length units.
    radius:
        Half-width ``c`` in the same units: the taper is 1 at distance 0, 5/24 at ``c`` and 0 from ``2c`` on.

    Returns
    -------
    Taper values in [0, 1], same shape as ``distance`` (float64).
    """
    radius = check_radius(radius)
    z = np.asarray(distance, dtype=np.float64) / radius
    near = z <= 1.0
    far = (z > 1.0) & (z < 2.0)
    out = np.zeros_like(z)
    zn = z[near]
    out[near] = (((-0.25 * zn + 0.5) * zn + 0.625) * zn - 5.0 / 3.0) * zn**2 + 1.0
    zf = z[far]
    out[far] = ((((zf / 12.0 - 0.5) * zf + 0.625) * zf + 5.0 / 3.0) * zf - 5.0) * zf + 4.0 - 2.0 / (3.0 * zf)
    return out


def _tree(grid: Grid, points: np.ndarray, cutoff: float) -> cKDTree:
    """k-d tree of ``points`` with a toroidal box on periodic axes and no wrap within ``cutoff`` elsewhere."""
    coords = np.array(points, dtype=np.float64)
    box = np.empty(coords.shape[1])
    for axis, (values, length) in enumerate(zip(grid.axes, grid.lengths)):
        if length is None:
            low = float(np.min(values))
            coords[:, axis] -= low
            span = float(np.max(values)) - low
            box[axis] = 2.0 * (span + cutoff) + 1.0
        else:
            coords[:, axis] = np.mod(coords[:, axis], length)
            coords[coords[:, axis] >= length, axis] = 0.0
            box[axis] = length
    return cKDTree(coords, boxsize=box)


def taper_pairs(grid: Grid, a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of points of ``a`` and ``b`` with a positive Gaspari-Cohn taper.

    Parameters
    ----------
    grid:
        Geometry (periodic lengths) the points live on.
    a, b:
        Point coordinates, shapes ``(n_a, ndim)`` and ``(n_b, ndim)``, in model length units.
    radius:
        Gaspari-Cohn half-width (finite).

    Returns
    -------
    ``(ia, ib, weight)``: indices into ``a`` and ``b`` and the taper of each pair, each of shape
    ``(n_pairs,)``, sorted by ``ia`` then ``ib``.
    """
    return _tapered_pairs(grid, a, b, _tree(grid, b, 2.0 * radius), radius)


def _tapered_pairs(grid: Grid, a: np.ndarray, b: np.ndarray, b_tree: cKDTree, radius: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`taper_pairs` with the k-d tree of ``b`` built once by the caller (``_tree(grid, b, 2 * radius)``)."""
    cutoff = 2.0 * radius
    pairs = _tree(grid, a, cutoff).sparse_distance_matrix(b_tree, cutoff, output_type="ndarray")
    ia = pairs["i"].astype(np.int64)
    ib = pairs["j"].astype(np.int64)
    weight = gaspari_cohn(grid.distance(a[ia], b[ib]), radius)
    keep = weight > 0
    ia, ib, weight = ia[keep], ib[keep], weight[keep]
    order = np.lexsort((ib, ia))
    return ia[order], ib[order], weight[order]


def _tensors(arrays: tuple[np.ndarray, ...], device: torch.device | str, dtype: torch.dtype
             ) -> tuple[torch.Tensor, ...]:
    """``arrays`` as tensors on ``device``: floating arrays in ``dtype``, integer arrays as ``int64``."""
    return tuple(torch.as_tensor(a, device=device, dtype=dtype if a.dtype.kind == "f" else torch.int64) for a in arrays)


@dataclass(frozen=True, eq=False)
class LocalObservations:
    """For each state element with observations nearby, its local observations and their tapers.

    Attributes
    ----------
    active:
        Flat state indices that have at least one local observation, shape ``(n_active,)``.
    index:
        Observation indices per active element, padded, shape ``(n_active, max_local)``.
    weight:
        Gaspari-Cohn taper of each local observation (0 on padding), shape ``(n_active, max_local)``.
    """

    active: np.ndarray
    index: np.ndarray
    weight: np.ndarray

    @classmethod
    def from_pairs(cls, state: np.ndarray, observation: np.ndarray, weight: np.ndarray) -> "LocalObservations":
        """Pad pairs sorted by ``state`` into per-element rows."""
        active, first, counts = np.unique(state, return_index=True, return_counts=True)
        width = int(counts.max()) if counts.size else 0
        row = np.repeat(np.arange(active.size), counts)
        slot = np.arange(state.size) - np.repeat(first, counts)
        index = np.zeros((active.size, width), dtype=np.int64)
        padded = np.zeros((active.size, width), dtype=np.float64)
        index[row, slot] = observation
        padded[row, slot] = weight
        return cls(active.astype(np.int64), index, padded)


@dataclass(frozen=True, eq=False)
class LocalDomains:
    """The local analysis domains: the state elements at one grid location share its local observations.

    Fields stored at the same point (Navier-Stokes' pressure, u and v) see the same observations with the
    same tapers, so one local analysis serves all of them. Domains are ordered by their first element.

    Attributes
    ----------
    elements:
        Flat state indices of the elements at each location with observations nearby, ascending, padded
        with ``-1``, shape ``(n_domains, max_colocated)`` int64.
    index:
        Observation indices of each domain, ascending, padded, shape ``(n_domains, max_local)``.
    weight:
        Gaspari-Cohn taper of each local observation (0 on padding), shape ``(n_domains, max_local)``.
    """

    elements: np.ndarray
    index: np.ndarray
    weight: np.ndarray

    def per_element(self) -> LocalObservations:
        """The same neighbour lists with one row per active element (flat index order)."""
        valid = self.elements >= 0
        domain = np.broadcast_to(np.arange(self.elements.shape[0])[:, None], self.elements.shape)[valid]
        element = self.elements[valid]
        order = np.argsort(element, kind="stable")
        return LocalObservations(element[order], self.index[domain[order]], self.weight[domain[order]])


def _distinct_locations(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The distinct positions of the state elements and the one each element is at.

    Elements share a position only where an axis repeats a value (a field axis of zero extent), so the
    distinct positions are the mesh of each axis' distinct values. Returns their coordinates
    ``(n_locations, ndim)`` and each flat element's location ``(d,)`` int64.
    """
    distinct, ids = zip(*(np.unique(values, return_inverse=True) for values in grid.axes))
    located = Grid(tuple(distinct), grid.lengths)
    mesh = np.meshgrid(*(np.asarray(i).reshape(-1) for i in ids), indexing="ij")
    return located.points(), np.ravel_multi_index([m.reshape(-1) for m in mesh], located.shape).astype(np.int64)


def _csr(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Members of each group: ``order`` (indices sorted by group, stable) and ``starts`` ``(n_groups + 1,)``."""
    order = np.argsort(groups, kind="stable")
    starts = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=starts[1:])
    return order, starts


def _expand(pair_group: np.ndarray, order: np.ndarray, starts: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For pairs naming a group each, one row per (pair, member of its group).

    Returns ``(pair, member, slot)``: the pair's index, the member and its place within the group.
    """
    counts = starts[pair_group + 1] - starts[pair_group]
    pair = np.repeat(np.arange(pair_group.size), counts)
    slot = np.arange(pair.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return pair, order[starts[pair_group[pair]] + slot], slot


#: Pairs of a state location and an observation gathered at once while the local domains are built; bounds
#: the set-up's memory (about 100 bytes a pair) at large d.
PAIR_BLOCK = 1 << 23


def _location_rows(grid: Grid, state_at: np.ndarray, obs_at: np.ndarray, obs_row: np.ndarray, radius: float
                   ) -> LocalObservations:
    """Local observations (ascending) and tapers of each distinct state location ``state_at`` ``(n, ndim)``.

    ``obs_at`` are the distinct observation locations and ``obs_row`` ``(n_obs,)`` the one each observation
    is at. Blocks of state locations are paired with all observation locations in turn, each block about
    :data:`PAIR_BLOCK` pairs (sized by the pairs per location seen so far); ``active`` indexes ``state_at``.
    """
    obs_tree = _tree(grid, obs_at, 2.0 * radius)
    obs_order, obs_starts = _csr(obs_row, obs_at.shape[0])
    blocks: list[LocalObservations] = []
    start, size = 0, 1 << 12
    while start < state_at.shape[0]:
        stop = min(state_at.shape[0], start + size)
        ia, ib, taper = _tapered_pairs(grid, state_at[start:stop], obs_at, obs_tree, radius)
        pair, observation, _ = _expand(ib, obs_order, obs_starts)
        location = ia[pair] + start
        order = np.lexsort((observation, location))
        blocks.append(LocalObservations.from_pairs(location[order], observation[order], taper[pair][order]))
        size = max(1, int(PAIR_BLOCK * (stop - start) / max(pair.size, 1)))
        start = stop
    width = max(block.index.shape[1] for block in blocks)

    def padded(part: np.ndarray) -> np.ndarray:
        return np.pad(part, ((0, 0), (0, width - part.shape[1])))

    return LocalObservations(np.concatenate([block.active for block in blocks]),
                             np.concatenate([padded(block.index) for block in blocks]),
                             np.concatenate([padded(block.weight) for block in blocks]))


def _build_domains(grid: Grid, sources: np.ndarray, radius: float) -> LocalDomains:
    """:class:`LocalDomains` of the state on ``grid`` observed at flat state indices ``sources`` ``(n_obs,)``.

    Tapers are computed once per pair of distinct state and observation locations (co-located fields
    share them), then expanded to the observations at each location.
    """
    state_at, state_row = _distinct_locations(grid)
    seen, obs_row = np.unique(state_row[sources], return_inverse=True)
    obs_at, obs_row = state_at[seen], obs_row.reshape(-1).astype(np.int64)
    rows = _location_rows(grid, state_at, obs_at, obs_row, radius)
    element_order, element_starts = _csr(state_row, state_at.shape[0])
    counts = element_starts[rows.active + 1] - element_starts[rows.active]
    width = int(counts.max()) if counts.size else 0
    elements = np.full((rows.active.size, width), -1, dtype=np.int64)
    row, member, slot = _expand(rows.active, element_order, element_starts)
    elements[row, slot] = member
    first = np.argsort(elements[:, 0], kind="stable") if width else np.arange(0)
    return LocalDomains(elements[first], rows.index[first], rows.weight[first])


@dataclass(frozen=True, eq=False)
class CovarianceTapers:
    """Dense Gaspari-Cohn tapers for covariance localization.

    Attributes
    ----------
    state_obs:
        Taper between each state element and each observation, shape ``(n_state, n_obs)``.
    obs_obs:
        Taper between observations, shape ``(n_obs, n_obs)``.
    """

    state_obs: np.ndarray
    obs_obs: np.ndarray


_CACHE: OrderedDict[tuple, object] = OrderedDict()
#: Digests of grids and of operators' observed state indices, once per object.
_DIGESTS: IdentityMemo[str] = IdentityMemo()
T = TypeVar("T")


def grid_digest(grid: Grid) -> str:
    """A short digest of a grid's positions and periodic lengths (computed once per grid object)."""

    def compute() -> str:
        digest = hashlib.blake2b(digest_size=16)
        for axis in grid.axes:
            digest.update(np.ascontiguousarray(axis, dtype=np.float64).tobytes())
            digest.update(b"|")
        digest.update(repr(grid.lengths).encode())
        return digest.hexdigest()

    return _DIGESTS.get(grid, "grid", compute)


def _index_digest(obs: ObservationSpace) -> str:
    """A short digest of the observed flat state indices (computed once per operator object and state shape)."""
    operator, shape = obs.operator, tuple(obs.state_shape)

    def compute() -> str:
        index = np.ascontiguousarray(operator.source_index(shape), dtype=np.int64)
        return hashlib.blake2b(index.tobytes(), digest_size=16).hexdigest()

    return _DIGESTS.get(operator, ("index", shape), compute)


def _geometry_key(kind: str, obs: ObservationSpace, radius: float) -> tuple:
    return kind, float(radius), grid_digest(obs.grid), tuple(obs.state_shape), _index_digest(obs)


def cached(key: tuple, build: Callable[[], T]) -> T:
    """``build()``, kept in a small least-recently-used cache under ``key`` (a geometry and a radius)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
    else:
        _CACHE[key] = build()
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return _CACHE[key]  # type: ignore[return-value]


def local_observations(obs: ObservationSpace, radius: float) -> LocalObservations:
    """Local observations of every state element within ``2 * radius`` (cached per geometry).

    Parameters
    ----------
    obs:
        Observation space; its ``grid`` and ``locations`` define the geometry.
    radius:
        Finite Gaspari-Cohn half-width in model length units.
    """
    radius = check_radius(radius, required=True)
    if not math.isfinite(radius):
        raise ValueError("radius must be finite to build local observation lists (inf means global)")

    return cached(_geometry_key("local", obs, radius), lambda: local_domains(obs, radius).per_element())


def local_domains(obs: ObservationSpace, radius: float) -> LocalDomains:
    """Local observations of every grid location within ``2 * radius`` and the state elements there (cached).

    Parameters are those of :func:`local_observations`, which holds the same lists per element.
    """
    radius = check_radius(radius, required=True)
    if not math.isfinite(radius):
        raise ValueError("radius must be finite to build local observation lists (inf means global)")
    return cached(_geometry_key("domains", obs, radius),
                  lambda: _build_domains(obs.grid, np.asarray(obs.state_index, dtype=np.int64), radius))


def local_observation_tensors(obs: ObservationSpace, radius: float, device: torch.device | str, dtype: torch.dtype
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`local_observations` as tensors ``(active, index, weight)`` on ``device`` (``weight`` in ``dtype``),
    cached beside the arrays."""
    local = local_observations(obs, radius)

    def build() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        active, index, weight = _tensors((local.active, local.index, local.weight), device, dtype)
        return active, index, weight

    return cached((*_geometry_key("local", obs, radius), str(torch.device(device)), dtype), build)


#: Largest dense covariance-taper pair (state x obs plus obs x obs, float64) that is built, in bytes.
MAX_DENSE_TAPER_BYTES = 4 * 2**30


def covariance_tapers(obs: ObservationSpace, radius: float) -> CovarianceTapers:
    """Dense state-observation and observation-observation tapers (cached per geometry).

    Memory is ``8 * n_obs * (n_state + n_obs)`` bytes in float64: meant for covariance localization
    of moderate problems (thousands of elements), not for ``d = 1e6``.
    """
    radius = check_radius(radius, required=True)
    if not math.isfinite(radius):
        raise ValueError("radius must be finite to build covariance tapers (inf means global)")
    n_state, n_obs = int(np.prod(obs.state_shape)), obs.n_obs
    size = 8 * n_obs * (n_state + n_obs)
    if size > MAX_DENSE_TAPER_BYTES:
        raise ValueError(
            f"covariance localization with radius {radius} needs dense tapers of {size / 2**30:.1f} GiB for "
            f"{n_state:,} state elements and {n_obs:,} observations (limit {MAX_DENSE_TAPER_BYTES / 2**30:.0f} GiB); "
            "use the letkf filter (domain localization) or drop radius for the global EnKF"
        )

    def build() -> CovarianceTapers:
        points, locations = obs.grid.points(), obs.locations
        state_obs = np.zeros((points.shape[0], locations.shape[0]))
        obs_obs = np.zeros((locations.shape[0], locations.shape[0]))
        ia, ib, weight = taper_pairs(obs.grid, points, locations, radius)
        state_obs[ia, ib] = weight
        ia, ib, weight = taper_pairs(obs.grid, locations, locations, radius)
        obs_obs[ia, ib] = weight
        return CovarianceTapers(state_obs, obs_obs)

    return cached(_geometry_key("covariance", obs, radius), build)


def covariance_taper_tensors(obs: ObservationSpace, radius: float, device: torch.device | str, dtype: torch.dtype
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`covariance_tapers` as tensors ``(state_obs, obs_obs)`` on ``device`` in ``dtype``, cached beside the
    arrays."""
    tapers = covariance_tapers(obs, radius)

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        state_obs, obs_obs = _tensors((tapers.state_obs, tapers.obs_obs), device, dtype)
        return state_obs, obs_obs

    return cached((*_geometry_key("covariance", obs, radius), str(torch.device(device)), dtype), build)
