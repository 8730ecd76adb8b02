"""Local ensemble transform Kalman filter: domain localization, all local analyses batched."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

from ._ensemble import ObservedEnsemble, square_root_update
from .base import register
from .etkf import ETKF
from .localization import check_radius, local_observations

__all__ = ["CHUNK_ELEMENTS", "LETKF"]

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
    inflation, rtps:
        See :class:`~enff.filters._ensemble.EnsembleFilter`.
    """

    radius: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_radius(self.radius, required=True)

    def _update(
        self,
        members: torch.Tensor,
        observed: ObservedEnsemble,
        obs: ObservationSpace,
        *,
        generator: torch.Generator,
        diagnostics: dict[str, float] | None,
    ) -> torch.Tensor:
        if math.isinf(check_radius(self.radius, required=True)):
            return super()._update(members, observed, obs, generator=generator, diagnostics=diagnostics)
        mean = members.mean(dim=0)
        anomalies = members - mean
        scaled = observed.anomalies.T  # (p, N)
        active, index, weight = local_observations(obs, self.radius).tensors(members.device, members.dtype)
        analysis = members.clone()
        step = max(1, CHUNK_ELEMENTS // max(1, index.shape[1] * members.shape[0]))
        for start in range(0, active.shape[0], step):
            rows = slice(start, start + step)
            local = index[rows]
            elements = active[rows]
            local_anomalies = anomalies[:, elements].T.unsqueeze(-1)  # (chunk, member, 1)
            update = square_root_update(scaled[local], observed.innovation[local], local_anomalies, weight[rows])
            analysis[:, elements] = mean[elements] + update.squeeze(-1).T
        return analysis
