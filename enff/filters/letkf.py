"""Local ensemble transform Kalman filter: domain localization, all local analyses batched."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal

import numpy as np
import torch

from enff.config import check_value
from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import ObservedEnsemble, square_root_update, square_root_update_and_weights
from .etkf import ETKF
from .localization import check_radius, local_domains, local_observation_tensors
from ._step_length_numba import PointwiseKind, pointwise_kind, step_lengths
from .step_length import STEP_HALVINGS, best_step_lengths

__all__ = ["CHUNK_ELEMENTS", "LETKF", "LineSearch", "LocalBackend", "letkf_update"]

#: Size (in numbers) of the gathered local observation anomalies per batch of local analyses.
CHUNK_ELEMENTS = 1 << 22

#: How the local analyses are computed: ``"numba"`` (CPU: the fused kernel of
#: :mod:`~enff.filters._letkf_numba`, one grid location at a time), ``"torch"`` (any device: batches of
#: ``torch.linalg.eigh``) or ``"auto"`` (``"numba"`` for CPU tensors, ``"torch"`` otherwise). Both give the
#: same analysis to round-off.
LocalBackend = Literal["auto", "numba", "torch"]


@register("letkf")
@dataclass(frozen=True)
class LETKF(ETKF):
    """LETKF (Hunt et al., 2007) with a Gaspari-Cohn taper of the observation-error weights.

    Every state element gets its own ETKF analysis from the observations within ``2 * radius`` on the
    model grid (periodic, multi-dimensional), each R^-1 entry multiplied by the taper of its distance.
    Fields stored at one point (Navier-Stokes' pressure, u and v) have the same local observations and so the
    same analysis weights. On the CPU the local problems are solved one grid location at a time, the
    co-located fields sharing one, by a fused numba kernel (a
    Householder tridiagonalization and implicit QR of the smaller of the ``N x N`` and local
    observation-space matrices, :mod:`~enff.filters._letkf_numba`); on other devices as batches of
    ``torch.linalg.eigh``, a chunk of elements at a time so that the gathered local anomalies hold about
    ``CHUNK_ELEMENTS`` numbers (see :data:`LocalBackend`). Elements without local observations keep
    their forecast. The neighbour lists are cached per geometry (see
    :func:`~enff.filters.localization.local_observations`).

    Attributes
    ----------
    radius:
        Gaspari-Cohn half-width in model length units (required); ``inf`` gives the global ETKF.
    line_search:
        Scale each local mean increment by the step length in ``1, 1/2, ..., 2^-10, 0`` that minimizes
        the local posterior cost (:mod:`~enff.filters.step_length`); the spread update is unchanged.
        For nonlinear observations (``atan``) whose linearized increments can overshoot; a no-op for
        linear ones. Needs a finite radius and a pointwise operator (every shipped one); the diagnostic
        ``shortened_steps`` is the fraction of local analyses whose step was shortened.
    inflation, rtps, adaptive_obs_error:
        See :class:`~enff.filters.kalman.EnsembleKalmanFilter`.
    """

    reported_when: ClassVar[Mapping[str, str]] = MappingProxyType({**ETKF.reported_when,
                                                                   "shortened_steps": "line_search"})

    radius: float | None = None
    line_search: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        radius = check_radius(self.radius, required=True)
        if not isinstance(self.line_search, bool):
            raise ValueError(f"line_search must be true or false, got {self.line_search!r}")
        if self.line_search and math.isinf(radius):
            raise ValueError("line_search needs a finite radius (it chooses one step per local analysis)")

    def _kalman_update(
        self, members: torch.Tensor, observed: ObservedEnsemble, obs: ObservationSpace, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        analysis, shortened = letkf_update(members, observed, obs, check_radius(self.radius, required=True),
                                           line_search=self.line_search)
        return analysis, ({"shortened_steps": shortened} if self.line_search else {})


@dataclass(frozen=True)
class LineSearch:
    """What the line search needs of the observation operator.

    Attributes
    ----------
    pointwise:
        ``g`` with ``h(x)_j = g(x at j's element)`` (:meth:`~enff.observations.base.ObservationOperator.pointwise`).
    sources:
        Flat state index of each observation, ``(p,)`` int64.
    kernel:
        ``g`` in the form the numba step kernel evaluates (:func:`~enff.filters._step_length_numba.pointwise_kind`),
        ``None`` where it has none (the torch search is used).
    """

    pointwise: Callable[[torch.Tensor], torch.Tensor]
    sources: torch.Tensor
    kernel: tuple[PointwiseKind, float] | None

    @classmethod
    def of(cls, obs: ObservationSpace, device: torch.device) -> LineSearch:
        """The line search's view of ``obs``; ``ValueError`` unless each observation sees one state element."""
        pointwise = obs.operator.pointwise()
        if pointwise is None:
            raise ValueError(f"line_search needs an observation operator whose observations are each a function "
                             f"of one state element (a chain of selections and pointwise maps), got {obs.operator!r}")
        return cls(pointwise, torch.as_tensor(obs.state_index, dtype=torch.long, device=device),
                   pointwise_kind(obs.operator))


def letkf_update(
    members: torch.Tensor,
    observed: ObservedEnsemble,
    obs: ObservationSpace,
    radius: float,
    *,
    line_search: bool = False,
    backend: LocalBackend = "auto",
    precision: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """One LETKF analysis of flat members ``(N, d)``, all local analyses batched (global ETKF for ``inf``).

    Parameters
    ----------
    members:
        Forecast members, shape ``(N, d)``.
    observed:
        The members seen through the observations (:func:`~enff.filters.ensemble_space.observe`); the error
        std it is scaled by is the one assimilated (``R / a`` for a tempering step of size ``a``: scale
        ``S`` and ``dy`` by ``sqrt(a)``).
    obs:
        Observation space of ``observed`` (gives the geometry of the local domains).
    radius:
        Gaspari-Cohn half-width in model length units; ``inf`` gives the global ETKF.
    line_search:
        Shorten each local mean step on the local posterior cost (finite radius only, a pointwise operator:
        :class:`LineSearch`; see :attr:`LETKF.line_search`).
    backend:
        How the local analyses are computed (:data:`LocalBackend`); ``"numba"`` needs CPU tensors.
    precision:
        Factor ``a > 0`` on the error precision: the analysis assimilates ``R / a`` (a tempering step of size
        ``a``) without a rescaled copy of ``observed``; 1 is the LETKF. Not with ``line_search``.

    Returns
    -------
    The analysis members ``(N, d)`` and the fraction of local analyses whose step was shortened (0 without
    line search).
    """
    if not (math.isfinite(precision) and precision > 0):
        raise ValueError(f"precision must be a finite number > 0, got {precision!r}")
    if line_search and precision != 1.0:
        raise ValueError("line_search assimilates R itself: precision must be 1")
    mean = members.mean(dim=0)
    if math.isinf(radius):
        weight = None if precision == 1.0 else torch.full_like(observed.innovation, precision)
        return mean + square_root_update(observed.anomalies.T, observed.innovation, members - mean, weight), 0.0
    solver = _solver(backend, members.device)
    search = LineSearch.of(obs, members.device) if line_search else None
    elements, index, weight = solver.neighbours(obs, radius, members.device, members.dtype)
    analysis = members.clone()
    anomalies = members - mean if search is not None else None  # the line search's (the solvers form their own)
    chunk = elements.shape[0] if solver.whole else _rows_per_chunk(index.shape[1], members.shape[0])
    shortened = 0
    for start in range(0, elements.shape[0], max(1, chunk)):
        rows = slice(start, start + max(1, chunk))
        wbar = solver.solve(analysis, members, mean, observed, elements[rows], index[rows], weight[rows],
                            precision, keep_wbar=search is not None)
        if search is not None:
            use_kernel = solver.step_kernel and search.kernel is not None
            shortened += _shorten_steps(analysis, anomalies, mean, observed, elements[rows], index[rows],
                                        weight[rows], wbar, search, use_kernel)
    return analysis, shortened / max(1, elements.shape[0])


def _rows_per_chunk(width: int, n_members: int) -> int:
    """Local problems per batch so that their gathered local anomalies hold about ``CHUNK_ELEMENTS`` numbers."""
    return max(1, CHUNK_ELEMENTS // max(1, width * n_members))


def _shorten_steps(analysis: torch.Tensor, anomalies: torch.Tensor, mean: torch.Tensor, observed: ObservedEnsemble,
                   elements: torch.Tensor | np.ndarray, index: torch.Tensor | np.ndarray,
                   weight: torch.Tensor | np.ndarray, wbar: torch.Tensor, search: LineSearch,
                   use_kernel: bool) -> int:
    """Scale the mean increment of each local problem by its best step length.

    ``elements`` holds the state elements of each local problem, ``(rows,)`` or ``(rows, group)`` padded with
    ``-1`` (co-located fields share the problem, so its cost and step length); ``index`` and ``weight`` its
    local observations ``(rows, width)``; ``wbar`` its mean weights ``(rows, N)`` float64. The step lengths
    come from the numba kernel (``use_kernel``, CPU, :mod:`~enff.filters._step_length_numba`) or from
    :func:`best_step_lengths`; ``analysis`` ``(N, d)`` is updated in place, batches of
    :func:`_rows_per_chunk` problems at a time. Returns how many steps were shortened.
    """
    device = analysis.device
    elements = torch.as_tensor(elements, device=device).reshape(wbar.shape[0], -1)
    index = torch.as_tensor(index, device=device)
    weight = torch.as_tensor(weight, device=device, dtype=analysis.dtype)  # the torch search's rounding too
    if use_kernel:
        all_lengths = torch.empty(wbar.shape[0], dtype=torch.float64)
        kind, exponent = search.kernel
        step_lengths(anomalies.detach().contiguous().numpy(), mean.detach().contiguous().numpy(), wbar.numpy(),
                     index.numpy(), weight.contiguous().numpy(), search.sources.numpy(),
                     observed.innovation.detach().contiguous().numpy(), observed.mean.detach().contiguous().numpy(),
                     observed.std.detach().contiguous().numpy(), int(kind), exponent, STEP_HALVINGS,
                     all_lengths.numpy())
    chunk = _rows_per_chunk(index.shape[1], analysis.shape[0])
    shortened = 0
    for start in range(0, wbar.shape[0], chunk):
        rows = slice(start, start + chunk)
        if use_kernel:
            length = all_lengths[rows]
        else:
            local_index = index[rows]
            source = search.sources[local_index]  # (chunk, width)
            increment = torch.einsum("ncp,cn->cp", anomalies[:, source].to(wbar.dtype), wbar[rows])
            length = best_step_lengths(wbar[rows], mean[source], increment, observed.innovation[local_index],
                                       observed.mean[local_index], observed.std[local_index], weight[rows],
                                       search.pointwise)
        shortened += int((length < 1).sum())
        valid = elements[rows] >= 0
        element = elements[rows][valid]
        element_length = length[:, None].expand(valid.shape)[valid].to(analysis.dtype)
        columns = analysis[:, element]
        analysis[:, element] = columns + (element_length - 1) * (columns.mean(dim=0) - mean[element])
    return shortened


def _torch_chunk(analysis: torch.Tensor, members: torch.Tensor, mean: torch.Tensor, observed: ObservedEnsemble,
                 elements: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, precision: float, *,
                 keep_wbar: bool) -> torch.Tensor:
    """The local analyses of ``elements`` as one batch of eigen-decompositions, written into ``analysis``.

    ``index`` and ``weight`` are the elements' local observations and tapers ``(chunk, max_local)``, the tapers
    multiplied by ``precision`` (:func:`letkf_update`); returns
    the mean weights ``wbar``, ``(chunk, N)`` float64 (always formed: ``keep_wbar`` is the numba kernel's
    saving).
    """
    local_anomalies = (members[:, elements] - mean[elements]).T.unsqueeze(-1)  # (chunk, member, 1)
    update, wbar = square_root_update_and_weights(observed.anomalies.T[index], observed.innovation[index],
                                                  local_anomalies, weight if precision == 1.0 else weight * precision)
    analysis[:, elements] = mean[elements] + update.squeeze(-1).T
    return wbar


def _numba_chunk(analysis: torch.Tensor, members: torch.Tensor, mean: torch.Tensor, observed: ObservedEnsemble,
                 elements: np.ndarray, index: np.ndarray, weight: np.ndarray, precision: float, *,
                 keep_wbar: bool) -> torch.Tensor:
    """The local analyses of ``elements`` by the numba kernel, written into ``analysis`` (CPU tensors; the
    tapers times ``precision``, :func:`letkf_update`).

    ``elements`` is ``(chunk, group)``: the elements of a row share its local analysis (``-1`` pads). Returns
    the mean weights ``wbar``, ``(chunk, N)`` float64 (``(0, N)`` unless ``keep_wbar``).
    """
    from ._letkf_numba import LANES, letkf_local_analyses

    n_members = analysis.shape[0]
    wbar = np.empty((elements.shape[0] if keep_wbar else 0, n_members))
    failed = letkf_local_analyses(
        members.detach().contiguous().numpy(), mean.detach().contiguous().numpy(),
        observed.anomalies.detach().contiguous().numpy(), observed.innovation.detach().contiguous().numpy(),
        elements, index, weight, float(precision), analysis.detach().numpy(), wbar, LANES)
    if failed:
        raise torch.linalg.LinAlgError(f"{failed} local LETKF eigenproblems did not converge")
    return torch.from_numpy(wbar)


def _numba_neighbours(obs: ObservationSpace, radius: float, device: torch.device, dtype: torch.dtype
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per grid location, its co-located elements side by side
    (:func:`~enff.filters.localization.local_domains`: one eigenproblem for all fields at a point); the
    kernel reads the cached NumPy lists directly (``device`` and ``dtype`` unused)."""
    domains = local_domains(obs, radius)
    return domains.elements, domains.index, domains.weight


def _torch_neighbours(obs: ObservationSpace, radius: float, device: torch.device, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per element (the batched eigh path solves every element's problem)."""
    return local_observation_tensors(obs, radius, device, dtype)


@dataclass(frozen=True)
class _LocalSolver:
    """How one backend finds the local observations and solves a chunk of local analyses.

    ``whole``: all local problems go to one ``solve`` call (no gathered copies; the line search then takes
    them in batches); otherwise ``solve`` takes batches of :func:`_rows_per_chunk` problems. ``step_kernel``:
    the line search's step lengths by the numba kernel where the operator has its form.
    """

    neighbours: Callable[..., tuple]
    solve: Callable[..., torch.Tensor]
    whole: bool
    cpu_only: bool
    step_kernel: bool


_SOLVERS: Mapping[str, _LocalSolver] = MappingProxyType({
    "numba": _LocalSolver(_numba_neighbours, _numba_chunk, whole=True, cpu_only=True, step_kernel=True),
    "torch": _LocalSolver(_torch_neighbours, _torch_chunk, whole=False, cpu_only=False, step_kernel=False),
})


def _solver(backend: LocalBackend, device: torch.device) -> _LocalSolver:
    """The solver of ``backend`` on ``device`` (``"auto"``: numba for CPU tensors, torch otherwise)."""
    check_value("backend", backend, LocalBackend)
    on_cpu = device.type == "cpu"
    solver = _SOLVERS.get(backend) or _SOLVERS["numba" if on_cpu else "torch"]
    if solver.cpu_only and not on_cpu:
        raise ValueError(f"backend {backend!r} needs CPU tensors, got members on {device}")
    return solver
