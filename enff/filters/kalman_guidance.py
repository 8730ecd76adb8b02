"""Covariance-aware ("kalman") guidance: the Gaussian-posterior guide of the optimal-transport flow.

Derivation. On the conditional-OT path ``x_t = t x1 + s_t z`` (``s_t = 1 - (1 - sigma_min) t``, ``z ~ N(0, I)``)
the marginal velocity is ``v(x) = (E[x1 | x_t = x] - (1 - sigma_min) x) / s_t``. Conditioning on the
observations ``y`` changes only the predicted end point ``E[x1 | x_t]``, so the velocity of the posterior
flow is the prior one plus

    g(x, t) = (E[x1 | x_t, y] - E[x1 | x_t]) / s_t.

For a Gaussian prior ``x1 ~ N(m, B)`` and linear observations ``y = H x1 + e``, ``e ~ N(0, R)``, the pair
``(x1, y)`` given ``x_t`` is Gaussian with ``x1 | x_t ~ N(xh, C_t)``, ``xh = E[x1 | x_t]`` and
``C_t = B - t^2 B (t^2 B + s_t^2 I)^{-1} B = s_t^2 B (t^2 B + s_t^2 I)^{-1}``, so the difference is one
Kalman update with the conditional covariance ``C_t``:

    E[x1 | x_t, y] - xh = C_t H^T (H C_t H^T + R)^{-1} (y - H xh).

The guided flow then transports ``N(0, I)`` exactly to the Gaussian posterior (the same argument as the
"Gaussian posterior" guidance of diffusion posterior sampling; Song et al. 2023, *Pseudoinverse-guided
diffusion models for inverse problems*, ICLR, and Boys et al. 2024, *Tweedie moment projected diffusions
for inverse problems*, TMLR). The schedule is ``C_t``: the full prior covariance at ``t = 0`` and about
``s_t^2`` on the ensemble directions near ``t = 1``, which keeps the stiff end of the flow stable.

In ensemble space (``M`` members, anomalies ``X`` of shape ``(M, d)``, ``B = X^T X / (M - 1)``),
``C_t = X^T Gamma_t X`` with ``Gamma_t = s_t^2 (t^2 G + (M - 1) s_t^2 I)^{-1}``, ``G = X X^T`` the member Gram
matrix, and by the Woodbury identity the update is ``X^T w`` with

    A_t w = S^T dy,     A_t = t^2 G / s_t^2 + (M - 1) I + S^T S,

``S`` the observation anomalies and ``dy`` the innovation, both scaled by the error std. At ``t = 0``
``A_0`` is the ETKF precision and ``w`` the ETKF mean weights. Localization (finite radius) is domain
localization as in the LETKF: every state element solves its own ``M x M`` problem with the Gaspari-Cohn
taper on R^-1 of its local observations, and ``G`` is the tapered local Gram matrix
``G_k = sum_l rho(k, l) X_l X_l^T`` (the global Gram with ``rho = 1``), so with ``t = 0`` the local
increments are the LETKF's mean increments. For nonlinear ``h`` the ensemble linearization ``S`` of the
forecast is kept and the innovation is taken at each particle's predicted end point, ``dy = (y - h(xh)) / s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from enff.observations.space import ObservationSpace

from .ensemble_space import observe
from .localization import local_observation_tensors
from .local_weights import BLOCK_ELEMENTS
from .spatial_taper import SpatialLayout, SpatialTaper

__all__ = ["KalmanGuide", "MAX_GRAM_BYTES", "tapered_gram"]

#: Largest per-point Gram array (points x M x M, float64) that is built, in bytes.
MAX_GRAM_BYTES = 4 * 2**30


def tapered_gram(layout: SpatialLayout, taper: SpatialTaper, anomalies: torch.Tensor) -> torch.Tensor:
    """``G_k[n, m] = sum_l rho(k, l) sum_f X_nfl X_mfl`` for every grid point ``k``.

    Parameters
    ----------
    anomalies:
        ``X``, shape ``(M, d)``.

    Returns
    -------
    Float64 tensor of shape ``(points, M, M)``.
    """
    m = anomalies.shape[0]
    size = 8 * layout.n_points * m * m
    if size > MAX_GRAM_BYTES:
        raise ValueError(f"kalman guidance needs local Gram matrices of {size / 2**30:.1f} GiB for {layout.n_points:,} "
                         f"points and {m} members (limit {MAX_GRAM_BYTES / 2**30:.0f} GiB); use guidance = \"local\"")
    split = layout.split(anomalies)
    gram = torch.empty(layout.n_points, m, m, dtype=torch.float64, device=anomalies.device)
    rows = max(1, BLOCK_ELEMENTS // max(1, anomalies.numel()))
    for start in range(0, m, rows):
        block = slice(start, start + rows)
        product = layout.reduce(split[block, None] * split[None])  # (b, M, points)
        gram[:, block] = taper.apply(product).to(torch.float64).permute(2, 0, 1)
    return gram


@dataclass(frozen=True)
class KalmanGuide:
    """The Gaussian-posterior guide of one analysis (forecast statistics prepared once).

    Attributes
    ----------
    anomalies:
        Forecast anomalies ``X``, shape ``(M, d)``, state dtype.
    gram:
        Member Gram matrices, float64: ``(1, M, M)`` global, ``(points, M, M)`` localized.
    scaled:
        Scaled observation anomalies ``S^T``, float64, shape ``(n_obs, M)``.
    y, obs:
        The finite observations and their space.
    local:
        ``None`` (global), or the LETKF domain: active elements ``(n_active,)``, their local observation
        indices and tapers ``(n_active, max_local)``, and each element's grid point ``(n_active,)``.
    """

    anomalies: torch.Tensor
    gram: torch.Tensor
    scaled: torch.Tensor
    y: torch.Tensor
    obs: ObservationSpace
    local: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None

    @classmethod
    def prepare(cls, x1: torch.Tensor, y: torch.Tensor, obs: ObservationSpace, layout: SpatialLayout,
                taper: SpatialTaper, radius: float) -> "KalmanGuide":
        """Statistics of the forecast ``x1`` ``(M, d)`` for finite observations ``y`` ``(n_obs,)``."""
        observed = observe(x1.reshape(x1.shape[0], *obs.state_shape), y, obs)
        anomalies = x1 - x1.mean(dim=0)
        scaled = observed.anomalies.T.to(torch.float64)
        if math.isinf(radius):
            flat = anomalies.to(torch.float64)
            return cls(anomalies, (flat @ flat.T)[None], scaled, y, obs, None)
        active, index, weight = local_observation_tensors(obs, radius, x1.device, torch.float64)
        point = torch.as_tensor(layout.point_of(active.cpu().numpy()), device=x1.device)
        return cls(anomalies, tapered_gram(layout, taper, anomalies), scaled, y, obs, (active, index, weight, point))

    def _innovation(self, endpoint: torch.Tensor) -> torch.Tensor:
        """``(y - h(xh)) / s`` for end points ``(P, d)``: float64, shape ``(P, n_obs)``."""
        with torch.no_grad():
            hx = self.obs.h(endpoint.reshape(endpoint.shape[0], *self.obs.state_shape))
        return ((self.y.to(hx.dtype) - hx) / self.obs.std.to(hx.dtype)).to(torch.float64)

    def shift(self, endpoint: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
        """``E[x1 | x_t, y] - E[x1 | x_t]`` for predicted end points ``xh`` of shape ``(P, d)``.

        Parameters
        ----------
        endpoint:
            ``xh``, shape ``(P, d)``.
        t:
            Flow time (the path mean is ``t x1``).
        sigma:
            The path standard deviation ``s_t`` (> 0).

        Returns
        -------
        The shift of the end points, shape ``(P, d)``, state dtype.
        """
        dy = self._innovation(endpoint)  # (P, p)
        m = self.anomalies.shape[0]
        eye = (m - 1) * torch.eye(m, dtype=torch.float64, device=dy.device)
        prior = (t / sigma) ** 2
        if self.local is None:
            precision = prior * self.gram[0] + eye + self.scaled.T @ self.scaled
            weights = torch.linalg.solve(precision, self.scaled.T @ dy.T)  # (M, P)
            return (weights.T.to(self.anomalies.dtype)) @ self.anomalies
        active, index, weight, point = self.local
        result = torch.zeros_like(endpoint)
        chunk = max(1, BLOCK_ELEMENTS // max(1, index.shape[1] * m + m * m + m * dy.shape[0]))
        for start in range(0, active.shape[0], chunk):
            rows = slice(start, start + chunk)
            local, taper = index[rows], weight[rows]
            s_local = self.scaled[local]  # (c, L, M)
            precision = prior * self.gram[point[rows]] + eye + s_local.transpose(1, 2) @ (taper[..., None] * s_local)
            rhs = torch.einsum("clm,cl,pcl->cmp", s_local, taper, dy[:, local])
            weights = torch.linalg.solve(precision, rhs)  # (c, M, P)
            elements = active[rows]
            result[:, elements] = torch.einsum("mc,cmp->pc", self.anomalies[:, elements].to(torch.float64),
                                               weights).to(result.dtype)
        return result
