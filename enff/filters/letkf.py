"""Local ensemble transform Kalman filter: domain localization, all local analyses batched."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch

from enff.observations.space import ObservationSpace

from .base import register
from .ensemble_space import ObservedEnsemble, square_root_update, square_root_update_and_weights
from .etkf import ETKF
from .localization import check_radius, local_observation_tensors
from .step_length import best_step_lengths

__all__ = ["CHUNK_ELEMENTS", "LETKF", "letkf_update"]

#: Size (in numbers) of the gathered local observation anomalies per batch of local analyses.
CHUNK_ELEMENTS = 1 << 22


@register("letkf")
@dataclass(frozen=True)
class LETKF(ETKF):
    """LETKF (Hunt et al., 2007) with a Gaspari-Cohn taper of the observation-error weights.

    Every state element gets its own ETKF analysis from the observations within ``2 * radius`` on the
    model grid (periodic, multi-dimensional), each R^-1 entry multiplied by the taper of its distance.
    The local problems are solved as batches of ``N x N`` eigen-decompositions (torch, any device), a
    chunk of elements at a time so that the gathered local anomalies hold about ``CHUNK_ELEMENTS``
    numbers; elements without local observations keep their forecast. The neighbour lists are cached
    per geometry (see :func:`~enff.filters.localization.local_observations`).

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
        pointwise, sources = self._line_search_inputs(obs, members.device)
        analysis, shortened = letkf_update(members, observed, obs, check_radius(self.radius, required=True),
                                           pointwise=pointwise, sources=sources)
        return analysis, ({} if pointwise is None else {"shortened_steps": shortened})

    def _line_search_inputs(self, obs: ObservationSpace, device: torch.device
                            ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, torch.Tensor | None]:
        """The operator's pointwise map and each observation's flat state index, or ``None`` without line search."""
        if not self.line_search:
            return None, None
        pointwise = obs.operator.pointwise()
        if pointwise is None:
            raise ValueError(f"line_search needs an observation operator whose observations are each a function "
                             f"of one state element (a chain of selections and pointwise maps), got {obs.operator!r}")
        return pointwise, torch.as_tensor(obs.state_index, dtype=torch.long, device=device)


def letkf_update(
    members: torch.Tensor,
    observed: ObservedEnsemble,
    obs: ObservationSpace,
    radius: float,
    *,
    pointwise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sources: torch.Tensor | None = None,
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
    pointwise, sources:
        For the line search (finite radius only): the operator's pointwise map and each observation's flat
        state index (see :meth:`LETKF._line_search_inputs`); ``None`` for the plain update.

    Returns
    -------
    The analysis members ``(N, d)`` and the fraction of local analyses whose step was shortened (0 without
    line search).
    """
    mean = members.mean(dim=0)
    anomalies = members - mean
    if math.isinf(radius):
        return mean + square_root_update(observed.anomalies.T, observed.innovation, anomalies), 0.0
    scaled = observed.anomalies.T  # (p, N)
    active, index, weight = local_observation_tensors(obs, radius, members.device, members.dtype)
    analysis = members.clone()
    shortened = 0
    chunk = max(1, CHUNK_ELEMENTS // max(1, index.shape[1] * members.shape[0]))
    for start in range(0, active.shape[0], chunk):
        rows = slice(start, start + chunk)
        local = index[rows]
        elements = active[rows]
        local_anomalies = anomalies[:, elements].T.unsqueeze(-1)  # (chunk, member, 1)
        update, wbar = square_root_update_and_weights(scaled[local], observed.innovation[local],
                                                      local_anomalies, weight[rows])  # wbar: (chunk, member)
        update = update.squeeze(-1).T  # (member, chunk)
        if pointwise is not None:
            source = sources[local]  # (chunk, max_local)
            increment = torch.einsum("ncp,cn->cp", anomalies[:, source].to(wbar.dtype), wbar)
            length = best_step_lengths(wbar, mean[source], increment, observed.innovation[local],
                                       observed.mean[local], observed.std[local], weight[rows], pointwise)
            shortened += int((length < 1).sum())
            update = update + (length.to(update.dtype) - 1) * update.mean(dim=0)
        analysis[:, elements] = mean[elements] + update
    return analysis, shortened / max(1, active.shape[0])
