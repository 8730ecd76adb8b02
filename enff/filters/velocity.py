"""Monte Carlo marginal velocity of a Gaussian probability path, for all particles at once.

With forecast members ``x1[j]`` (and paired sources ``x0[j]``), the marginal velocity at a particle
``x_i`` is the posterior-weighted average of the conditional velocities,

    v(x_i) = sum_j w_ij u_j(x_i),   w_ij = softmax_j(-|x_i - mu_t[j]|^2 / (2 sigma_t^2) + l_j),
    u_j(x) = c (x - mu_t[j]) + mu_t'[j],   c = sigma_t' / sigma_t,

with optional member log-weights ``l_j`` (zero without Monte Carlo guidance). Because
``mu_t = a x1 + b x0`` is linear in the end points, all particles together need one ``P x M`` weight
matrix ``W`` and matrix products only:

    v = c x + (a' - c a) W x1 + (b' - c b) W x0.

Cost per evaluation is ``O(P M d)`` flops and ``O((P + M) d)`` memory; nothing of size ``P x M x d``
is ever formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .paths import ProbabilityPath

__all__ = [
    "VelocityEstimate",
    "squared_distances",
    "mixture_weights",
    "marginal_velocity",
    "weight_summary",
]

#: State elements per chunk of the squared-distance accumulation (a cache-sized working set).
DISTANCE_CHUNK = 1 << 15


def _check_ensemble(name: str, z: torch.Tensor, d: int | None = None) -> None:
    if z.ndim != 2 or z.shape[1] == 0 or (d is not None and z.shape[1] != d):
        want = "(n, d)" if d is None else f"(n, {d})"
        raise ValueError(f"{name} must have shape {want}, got {tuple(z.shape)}")


def squared_distances(
    x: torch.Tensor,
    x1: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    a: float = 1.0,
    b: float = 0.0,
    chunk: int = DISTANCE_CHUNK,
) -> torch.Tensor:
    """Squared distances ``D[i, j] = |x[i] - (a x1[j] + b x0[j])|^2``, accurate in float32 at large d.

    The state axis is processed in chunks: each chunk is centred on the mean of its centres (distances
    do not change under a common shift, and centring removes the cancellation of
    ``|x|^2 + |mu|^2 - 2 x.mu`` when the states share a large offset), its Gram matrix is one
    matrix product in the input precision, and the per-chunk results accumulate in float64.

    Parameters
    ----------
    x:
        Particles, shape ``(P, d)``.
    x1, x0:
        End points of the centres, shape ``(M, d)`` each; ``x0`` is only read when ``b != 0``.
    a, b:
        Coefficients of the centres ``mu[j] = a x1[j] + b x0[j]``.
    chunk:
        Number of state elements per chunk.

    Returns
    -------
    Float64 tensor of shape ``(P, M)`` on ``x``'s device, in squared state units.
    """
    _check_ensemble("x", x)
    d = x.shape[1]
    _check_ensemble("x1", x1, d)
    paired = b != 0.0
    if paired:
        if x0 is None:
            raise ValueError("x0 is required when b != 0")
        _check_ensemble("x0", x0, d)
        if x0.shape != x1.shape:
            raise ValueError(f"x0 must be shaped like x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    wide = torch.float64
    gram: torch.Tensor | None = None
    norm_x = torch.zeros(x.shape[0], dtype=wide, device=x.device)
    norm_mu = torch.zeros(x1.shape[0], dtype=wide, device=x.device)
    for start in range(0, d, chunk):
        part = slice(start, start + chunk)
        mu = a * x1[:, part]
        if paired:
            mu.add_(x0[:, part], alpha=b)
        centre = mu.mean(dim=0)
        xc = x[:, part] - centre
        mu.sub_(centre)
        product = xc @ mu.T
        gram = product.to(wide) if gram is None else gram.add_(product)
        norm_x += torch.linalg.vector_norm(xc, dim=1).to(wide).square_()
        norm_mu += torch.linalg.vector_norm(mu, dim=1).to(wide).square_()
    assert gram is not None  # d >= 1 was checked, so there is at least one chunk
    return gram.mul_(-2.0).add_(norm_x[:, None]).add_(norm_mu[None, :]).clamp_min_(0.0)


def mixture_weights(
    sq_dist: torch.Tensor, sigma: float, log_prior: torch.Tensor | None = None
) -> torch.Tensor:
    """Row-wise softmax ``w_ij = softmax_j(-D_ij / (2 sigma^2) + l_j)`` in float64.

    Parameters
    ----------
    sq_dist:
        Squared distances, shape ``(P, M)``.
    sigma:
        Standard deviation of every mixture component, same units as the states.
    log_prior:
        Optional log-weights of the components ``l``, shape ``(M,)``.

    Returns
    -------
    Float64 weights of shape ``(P, M)``, each row summing to one.
    """
    logits = sq_dist.to(torch.float64).mul(-0.5 / float(sigma) ** 2)
    if log_prior is not None:
        if log_prior.shape != (sq_dist.shape[1],):
            raise ValueError(f"log_prior must have shape ({sq_dist.shape[1]},), got {tuple(log_prior.shape)}")
        logits.add_(log_prior.to(torch.float64))
    return torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class VelocityEstimate:
    """One evaluation of the Monte Carlo marginal velocity.

    Attributes
    ----------
    velocity:
        ``v(x)``, shape ``(P, d)``, dtype of the particles, in state units per unit flow time.
    weights:
        Float64 weight matrix ``w``, shape ``(P, M)``: row ``i`` says which members particle ``i`` follows.
    """

    velocity: torch.Tensor
    weights: torch.Tensor


def marginal_velocity(
    path: ProbabilityPath,
    t: float,
    x: torch.Tensor,
    x1: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    log_prior: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> VelocityEstimate:
    """Monte Carlo marginal velocity of ``path`` at flow time ``t`` for all particles.

    Parameters
    ----------
    path:
        The probability path (gives ``mu_t``, ``sigma_t`` and their derivatives).
    t:
        Flow time in ``[0, 1]``.
    x:
        Particles, shape ``(P, d)``.
    x1:
        Forecast members, shape ``(M, d)``, same dtype and device as ``x``.
    x0:
        Paired source members, shape ``(M, d)`` (paired paths only).
    log_prior:
        Optional log-weights of the members, shape ``(M,)`` (Monte Carlo guidance).
    out:
        Optional preallocated result, shaped like ``x`` and not overlapping any input. Reusing it
        across evaluations saves mapping a fresh ``P x d`` block every time (at d = 1e6 on CPU that
        page-faulting cost more than the matrix product).

    Returns
    -------
    :class:`VelocityEstimate` with the velocity ``(P, d)`` and the weights ``(P, M)``.
    """
    a, b = path.mean_coefficients(t)
    da, db = path.mean_coefficient_derivatives(t)
    sigma = path.std(t)
    rate = path.std_derivative(t) / sigma
    b = b if path.paired else 0.0
    weights = mixture_weights(squared_distances(x, x1, x0, a=a, b=b), sigma, log_prior)
    w = weights.to(x.dtype)
    velocity = torch.addmm(x, w, x1, beta=rate, alpha=da - rate * a, out=out)
    coef0 = (db - rate * b) if path.paired else 0.0
    if coef0 != 0.0:
        velocity.addmm_(w, x0, alpha=coef0)
    return VelocityEstimate(velocity=velocity, weights=weights)


def weight_summary(weights: torch.Tensor) -> tuple[float, int]:
    """Collapse diagnostics of a weight matrix of shape ``(P, M)``.

    Returns
    -------
    The largest weight of each particle averaged over particles (1 means every particle follows a
    single member; ``1 / M`` means uniform weights), and the number of distinct members that are
    some particle's largest weight.
    """
    largest, follows = weights.max(dim=1)
    return float(largest.mean()), int(torch.unique(follows).numel())
