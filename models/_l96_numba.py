"""Fused numba RK4 kernels for Lorenz-96 on ``(member, dim)`` arrays (CPU).

One RK4 step is four passes over a member's row; each pass evaluates the tendency of one stage
and immediately folds it into the running RK4 sum and the next stage's input, so no stage
derivative is stored. A member needs three scratch rows. The serial kernel loops over members;
the parallel kernel splits the members over up to ``numba.get_num_threads()`` lanes, each with its
own scratch rows, so its memory overhead is ``3 * threads * dim`` values whatever the ensemble size.

Both kernels compile lazily for float32 and float64 and are cached on disk (``cache=True``).
Arithmetic stays in the dtype of the arrays: pass ``forcing`` and ``dt`` as scalars of that dtype.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["l96_rk4_parallel", "l96_rk4_serial"]


@numba.njit(cache=True, inline="always")
def _stage(src, forcing, base1, w1, out1, base2, w2, out2, second):
    """``k = f(src)``; ``out1 = base1 + w1 k``; if ``second``: ``out2 = base2 + w2 k`` (one row)."""
    n = src.shape[0]
    for i in (0, 1, n - 1):
        k = (src[(i + 1) % n] - src[(i - 2) % n]) * src[(i - 1) % n] - src[i] + forcing
        out1[i] = base1[i] + w1 * k
        if second:
            out2[i] = base2[i] + w2 * k
    if second:
        for i in range(2, n - 1):
            k = (src[i + 1] - src[i - 2]) * src[i - 1] - src[i] + forcing
            out1[i] = base1[i] + w1 * k
            out2[i] = base2[i] + w2 * k
    else:
        for i in range(2, n - 1):
            k = (src[i + 1] - src[i - 2]) * src[i - 1] - src[i] + forcing
            out1[i] = base1[i] + w1 * k


@numba.njit(cache=True)
def _integrate_member(x, y, a, b, c, forcing, dt, n_steps):
    """Integrate one member row ``x`` for ``n_steps`` steps into ``y``; ``a, b, c`` are scratch rows."""
    weights = np.empty(3, dtype=x.dtype)  # dt/2, dt/3, dt/6 rounded to the arrays' dtype
    weights[0] = dt / 2
    weights[1] = dt / 3
    weights[2] = dt / 6
    half, third, sixth = weights[0], weights[1], weights[2]
    s = x
    for _ in range(n_steps):
        # The RK4 sum accumulates in c; a and b hold the stage inputs. Stage 4 reads only a and c,
        # so it may write y even when s is y.
        _stage(s, forcing, s, sixth, c, s, half, a, True)
        _stage(a, forcing, c, third, c, s, half, b, True)
        _stage(b, forcing, c, third, c, s, dt, a, True)
        _stage(a, forcing, c, sixth, y, c, sixth, y, False)
        s = y


@numba.njit(cache=True)
def l96_rk4_serial(x: np.ndarray, y: np.ndarray, forcing: np.floating, dt: np.floating, n_steps: int) -> None:
    """Write ``n_steps`` RK4 steps of Lorenz-96 from ``x`` into ``y``, one member after another.

    ``x`` and ``y`` are C-contiguous arrays of shape ``(member, dim)`` with ``dim >= 4``, the same
    dtype, and distinct memory; ``x`` is read only.
    """
    scratch = np.empty((3, x.shape[1]), dtype=x.dtype)
    for m in range(x.shape[0]):
        _integrate_member(x[m], y[m], scratch[0], scratch[1], scratch[2], forcing, dt, n_steps)


@numba.njit(cache=True, parallel=True)
def _rk4_parallel(x, y, forcing, dt, n_steps, width):
    """Kernel of :func:`l96_rk4_parallel`: lane ``t`` integrates members ``t, t + width, ...`` with its own scratch."""
    n_members = x.shape[0]
    scratch = np.empty((width, 3, x.shape[1]), dtype=x.dtype)
    for t in numba.prange(width):
        for m in range(t, n_members, width):
            _integrate_member(x[m], y[m], scratch[t, 0], scratch[t, 1], scratch[t, 2], forcing, dt, n_steps)


def l96_rk4_parallel(x: np.ndarray, y: np.ndarray, forcing: np.floating, dt: np.floating, n_steps: int) -> None:
    """As :func:`l96_rk4_serial`, with up to ``numba.get_num_threads()`` members integrated concurrently."""
    _rk4_parallel(x, y, forcing, dt, n_steps, max(1, min(numba.get_num_threads(), x.shape[0])))
