"""Fixed-step samplers for flow and score filters: Euler, Heun, Euler-Maruyama.

The cost of a sampler is counted as ``S``, the number of evaluations of the vector field (the
"velocity evaluations" in every table). For a given ``S``:

- ``euler`` takes ``S`` steps on the uniform grid from ``start`` to ``end``;
- ``heun`` takes Heun (explicit trapezoidal, two evaluations) steps on a uniform grid, except that the
  last step is an Euler step, and so is the first one when ``S`` is even: ``(S - 1) // 2`` Heun steps
  and one or two Euler steps, ``floor(S / 2) + 1`` steps in all. The field is thus never evaluated at
  ``end``: on the optimal-transport path the velocity is stiff there (rate ``(1 - sigma_min) / sigma_min``),
  and a Heun corrector at ``t = 1`` is unstable once the step exceeds about ``2 sigma_min``. A fixed
  number of Euler steps keeps the global error second order.
- ``euler_maruyama`` takes ``S`` steps of a stochastic differential equation with scalar diffusion.

Times run from ``start`` to ``end`` in either direction (score filters integrate backwards).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["Field", "SAMPLERS", "integrate", "euler_maruyama"]

#: A vector field ``f(x, t)`` returning a new tensor shaped like ``x``.
Field = Callable[[torch.Tensor, float], torch.Tensor]

#: Names of the deterministic samplers accepted by :func:`integrate`.
SAMPLERS = ("euler", "heun")


def _check_evaluations(evaluations: int) -> int:
    if isinstance(evaluations, bool) or int(evaluations) != evaluations or evaluations < 1:
        raise ValueError(f"the number of field evaluations S must be a positive integer, got {evaluations!r}")
    return int(evaluations)


def integrate(
    field: Field,
    x: torch.Tensor,
    *,
    evaluations: int,
    method: str = "euler",
    start: float = 0.0,
    end: float = 1.0,
) -> torch.Tensor:
    """Integrate ``dx/dt = field(x, t)`` from ``start`` to ``end`` with exactly ``evaluations`` field calls.

    Parameters
    ----------
    field:
        The vector field; called with a tensor shaped like ``x`` and a float time. A returned value is
        used (and may be modified) only until the field has been called twice more, so a field may
        write its results into two buffers in turn.
    x:
        Initial state at ``start``, any shape; not modified.
    evaluations:
        ``S``, the number of field evaluations (see the module docstring for the step layout).
    method:
        ``"euler"`` or ``"heun"``.
    start, end:
        Initial and final time (dimensionless flow time).

    Returns
    -------
    The state at ``end``, a new tensor shaped like ``x``.
    """
    evaluations = _check_evaluations(evaluations)
    if method not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {method!r}")
    if method == "euler":
        heun = [False] * evaluations
    else:
        heun = [False] * (1 - evaluations % 2) + [True] * ((evaluations - 1) // 2) + [False]
    n_steps = len(heun)
    x = x.clone()
    for k, corrected in enumerate(heun):
        t = start + (end - start) * k / n_steps
        t_next = start + (end - start) * (k + 1) / n_steps
        dt = t_next - t
        slope = field(x, t)
        if not corrected:
            x.add_(slope, alpha=dt)
            continue
        corrector = field(torch.add(x, slope, alpha=dt), t_next)
        x.add_(slope.add_(corrector), alpha=0.5 * dt)
    return x


def euler_maruyama(
    drift: Field,
    diffusion: Callable[[float], float],
    x: torch.Tensor,
    *,
    evaluations: int,
    generator: torch.Generator,
    start: float = 0.0,
    end: float = 1.0,
) -> torch.Tensor:
    """Euler-Maruyama for ``dx = drift(x, t) dt + diffusion(t) dW`` from ``start`` to ``end``.

    With ``end < start`` this integrates a reverse-time SDE: ``dt`` is negative in the drift term and
    the noise is scaled by ``sqrt(|dt|)``.

    Parameters
    ----------
    drift:
        Drift ``f(x, t)``, shaped like ``x``.
    diffusion:
        Scalar diffusion coefficient ``g(t)``.
    x:
        Initial state at ``start``; not modified.
    evaluations:
        Number of steps (one drift evaluation each).
    generator:
        Source of the Brownian increments, on ``x``'s device.
    start, end:
        Initial and final time.

    Returns
    -------
    The state at ``end``, a new tensor shaped like ``x``.
    """
    evaluations = _check_evaluations(evaluations)
    x = x.clone()
    for k in range(evaluations):
        t = start + (end - start) * k / evaluations
        dt = (end - start) / evaluations
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x.add_(drift(x, t), alpha=dt).add_(noise, alpha=diffusion(t) * math.sqrt(abs(dt)))
    return x
