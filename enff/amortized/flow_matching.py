"""Conditional flow matching: time prior, probability paths and the regression loss.

Flow time runs from ``t = 0`` (source) to ``t = 1`` (target, the posterior samples).

Time prior (Wildberger, Dax et al. 2023, sec. 3.3). The paper writes the power-law prior as
``p_alpha(t) ∝ t^(1/(1+alpha))`` on ``[0, 1]``; the authors' reference implementation draws it as
``t = u^(1/(1+alpha))`` with ``u ~ U(0, 1)``, whose density is ``(1 + alpha) t^alpha``. The two agree
only at ``alpha = 0``. We follow the implementation the published numbers were produced with:
:func:`sample_time` returns ``u^(1/(1+alpha))``, density ``(1 + alpha) t^alpha``; ``alpha = 0`` is
uniform and larger ``alpha`` puts more training weight near the target (``t -> 1``).

Paths. The optimal-transport path of Lipman et al. with ``sigma_min``:
``z_t = t z_1 + (1 - (1 - sigma_min) t) z_0`` with target velocity ``u = z_1 - (1 - sigma_min) z_0``.
The coupling path (used by FMCPE, whose source is a data-dependent sample rather than noise):
``z_t = t z_1 + (1 - t) z_0 + sigma_min eps`` with ``u = z_1 - z_0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["sample_time", "ot_path", "coupling_path", "flow_matching_loss"]


def sample_time(n: int, alpha: float, generator: torch.Generator, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw ``n`` flow times from the power-law prior with exponent ``alpha`` (> -1), shape ``(n,)``."""
    if not alpha > -1:
        raise ValueError(f"time_prior_exponent must be > -1, got {alpha!r}")
    u = torch.rand(n, generator=generator, dtype=dtype, device=device)
    return u ** (1.0 / (1.0 + alpha))


def ot_path(z1: torch.Tensor, z0: torch.Tensor, t: torch.Tensor, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Point and target velocity on the OT path from noise ``z0`` to data ``z1``.

    ``z1`` and ``z0`` have shape ``(batch, dim)``, ``t`` shape ``(batch,)``; returns ``(z_t, u)``.
    """
    t = t[:, None]
    return t * z1 + (1 - (1 - sigma_min) * t) * z0, z1 - (1 - sigma_min) * z0


def coupling_path(
    z1: torch.Tensor, z0: torch.Tensor, t: torch.Tensor, sigma_min: float, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point and target velocity on the straight path between coupled samples ``z0 -> z1``.

    ``noise`` is standard normal of the shape of ``z1``; returns ``(z_t, u)``.
    """
    t = t[:, None]
    return t * z1 + (1 - t) * z0 + sigma_min * noise, z1 - z0


def flow_matching_loss(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between ``field(z_t, t)`` and the target velocity ``u`` (mean over batch, sum over dim)."""
    return ((field(z_t, t) - u) ** 2).sum(dim=1).mean()
