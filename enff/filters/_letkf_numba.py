"""Fused numba kernel of the LETKF's local analyses on the CPU, one state element at a time.

Every local problem is an ETKF analysis of one state element (Hunt et al., 2007) in the notation of
:mod:`~enff.filters.ensemble_space`: ``m`` local observations with tapers ``w``, ``B = diag(sqrt(w)) S``
(``m x N``), ``r = diag(sqrt(w)) dy`` and ``c = N - 1``. The analysis of element ``i`` with forecast
anomalies ``x = X'[:, i]`` is ``mean_i + (x . wbar) 1 + sqrt(c) A^{-1/2} x`` with ``A = c I + B^T B`` and
``wbar = A^{-1} B^T r``. Only matrix functions applied to a few vectors are needed, never ``A^{-1/2}``
itself, so the symmetric eigenproblem of the smaller of ``A`` (``N x N``, when ``m >= N``) and
``K = B B^T`` (``m x m``, when ``m < N``; the same push-through identities as
:func:`~enff.filters.ensemble_space.square_root_update`) is solved as

1. Householder reduction to a tridiagonal matrix, ``M = H T H^T`` (the reflectors are kept, ``H`` is
   never formed);
2. implicit symmetric QR steps with Wilkinson shifts on ``T = Z diag(lambda) Z^T``, each Givens rotation
   applied to the two vectors at hand and recorded (``Z`` is never formed either);
3. the scaling by functions of ``lambda`` in that eigenbasis, then the recorded rotations and the reflectors
   applied backwards to the one vector that has to go back.

That is the eigen-decomposition the torch path (``torch.linalg.eigh``) computes, to round-off, at
about a third of its flops and without the per-matrix overhead of a batched LAPACK call. Everything is
computed in float64 whatever the dtype of the arrays (see the Notes of
:func:`~enff.filters.ensemble_space.square_root_update`). Compiled lazily per dtype and cached on disk
(``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["letkf_local_analyses"]

#: Relative size of an off-diagonal element of the tridiagonal matrix below which it is set to zero.
_EPS = 2.0**-52
#: Implicit QR sweeps allowed per eigenvalue before the local problem is reported unconverged (as LAPACK).
_SWEEPS_PER_EIGENVALUE = 30
#: Let LLVM reorder sums (so that dot products vectorize) and fuse multiply-adds; no other fast-math flag.
_FASTMATH = {"reassoc", "contract"}
#: Local problems whose implicit QR iterations are interleaved (independent chains the processor overlaps).
_LANES = 4


@numba.njit(cache=True, fastmath=_FASTMATH)
def _tridiagonalize(m, n, beta, diag, off, work):
    """Reduce the symmetric ``m[:n, :n]`` to tridiagonal ``(diag, off)`` by Householder reflectors.

    Reflector ``k`` (``I - beta[k] v v^T`` on coordinates ``k + 1 .. n - 1``) is left in ``m[k, k + 1:n]``;
    both triangles of ``m`` are read and updated (full rows keep the inner loops contiguous); ``work`` is
    scratch of length ``n``.
    """
    for k in range(n - 2):
        norm2 = 0.0
        for i in range(k + 1, n):
            norm2 += m[k, i] * m[k, i]
        x0 = m[k, k + 1]
        alpha = -math.copysign(math.sqrt(norm2), x0)
        vv = norm2 - 2.0 * alpha * x0 + alpha * alpha  # |x - alpha e1|^2
        diag[k] = m[k, k]
        if vv == 0.0:  # column already reduced
            beta[k] = 0.0
            off[k] = x0
            continue
        off[k] = alpha
        m[k, k + 1] = x0 - alpha
        b = 2.0 / vv
        beta[k] = b
        vp = 0.0
        for i in range(k + 1, n):  # work = M22 v
            acc = 0.0
            for j in range(k + 1, n):
                acc += m[i, j] * m[k, j]
            work[i] = acc
            vp += m[k, i] * acc
        half = 0.5 * b * b * vp
        for i in range(k + 1, n):
            work[i] = b * work[i] - half * m[k, i]  # q = p - (b v^T p / 2) v with p = b M22 v
        for i in range(k + 1, n):  # M22 -= v q^T + q v^T
            vi, qi = m[k, i], work[i]
            for j in range(k + 1, n):
                m[i, j] -= vi * work[j] + qi * m[k, j]
    if n >= 2:
        diag[n - 2] = m[n - 2, n - 2]
        off[n - 2] = m[n - 2, n - 1]
    if n >= 1:
        diag[n - 1] = m[n - 1, n - 1]


@numba.njit(cache=True, fastmath=_FASTMATH)
def _reflect(m, n, beta, vec, backwards):
    """``vec <- H^T vec`` (``backwards=False``) or ``vec <- H vec`` with the reflectors left in ``m``."""
    for step in range(n - 2):
        k = n - 3 - step if backwards else step
        b = beta[k]
        if b == 0.0:
            continue
        dot = 0.0
        for i in range(k + 1, n):
            dot += m[k, i] * vec[i]
        dot *= b
        for i in range(k + 1, n):
            vec[i] -= dot * m[k, i]


@numba.njit(cache=True, fastmath=_FASTMATH)
def _tridiagonal_eigen(lanes, sizes, diag, off, u, v, cos, sin, where, counts):
    """Eigenvalues of the tridiagonal ``(diag[l], off[l])`` of every lane ``l`` into ``diag[l]`` by implicit QR.

    Each lane is an independent problem of size ``sizes[l]``; the lanes advance one Givens rotation each in
    turn, so that the processor overlaps their (otherwise serial) chains of square roots and divisions.
    Every rotation ``G`` (on coordinates ``k, k + 1``) of lane ``l`` updates ``u[l] <- G^T u[l]`` and
    ``v[l] <- G^T v[l]`` and is recorded in ``cos[l], sin[l], where[l]``; ``counts[l]`` is set to the number of
    rotations, or ``-1`` if an eigenvalue took more than ``_SWEEPS_PER_EIGENVALUE`` implicit QR sweeps
    (Wilkinson shifts, deflation of off-diagonals below ``_EPS`` times their diagonal neighbours).
    """
    hi = np.empty(lanes, dtype=np.int64)
    lo = np.empty(lanes, dtype=np.int64)
    step = np.empty(lanes, dtype=np.int64)
    sweeps = np.zeros(lanes, dtype=np.int64)
    x = np.empty(lanes)
    z = np.empty(lanes)
    running = 0
    for l in range(lanes):
        hi[l] = sizes[l] - 1
        off[l, max(hi[l], 0)] = 0.0
        step[l] = hi[l]  # a new sweep is due
        counts[l] = 0
        running += hi[l] > 0
    while running > 0:
        for l in range(lanes):
            if hi[l] <= 0 or counts[l] < 0:
                continue
            if step[l] >= hi[l]:  # deflate, then start the next sweep
                h = hi[l]
                while h > 0 and abs(off[l, h - 1]) <= _EPS * (abs(diag[l, h - 1]) + abs(diag[l, h])):
                    off[l, h - 1] = 0.0
                    h -= 1
                    sweeps[l] = 0
                hi[l] = h
                if h == 0:
                    running -= 1
                    continue
                sweeps[l] += 1
                if sweeps[l] > _SWEEPS_PER_EIGENVALUE:
                    counts[l] = -1
                    running -= 1
                    continue
                b = h - 1
                while b > 0 and abs(off[l, b - 1]) > _EPS * (abs(diag[l, b - 1]) + abs(diag[l, b])):
                    b -= 1
                if b > 0:
                    off[l, b - 1] = 0.0
                e = off[l, h - 1]
                delta = 0.5 * (diag[l, h - 1] - diag[l, h])
                shift = diag[l, h] - e * e / (delta + math.copysign(math.sqrt(delta * delta + e * e), delta))
                lo[l] = b
                step[l] = b
                x[l] = diag[l, b] - shift
                z[l] = off[l, b]
            k = step[l]
            xk, zk = x[l], z[l]
            r = math.sqrt(xk * xk + zk * zk)
            inverse = 1.0 / r if r > 0.0 else 0.0  # selects, no branches: lanes stay overlapped
            c = xk * inverse if r > 0.0 else 1.0
            s = zk * inverse
            off[l, k - 1] = r if k > lo[l] else off[l, k - 1]  # off[l, -1] is unused padding
            a, f, g = diag[l, k], off[l, k], diag[l, k + 1]
            cs = c * s
            cf = 2.0 * cs * f
            diag[l, k] = c * c * a + cf + s * s * g
            diag[l, k + 1] = s * s * a - cf + c * c * g
            off[l, k] = cs * (g - a) + (c * c - s * s) * f
            nxt = off[l, k + 1]  # 0 at the end of the block (deflated, or the padding off[l, n - 1])
            z[l] = s * nxt
            off[l, k + 1] = c * nxt
            x[l] = off[l, k]
            uk, uk1 = u[l, k], u[l, k + 1]
            u[l, k] = c * uk + s * uk1
            u[l, k + 1] = c * uk1 - s * uk
            vk, vk1 = v[l, k], v[l, k + 1]
            v[l, k] = c * vk + s * vk1
            v[l, k + 1] = c * vk1 - s * vk
            j = counts[l]
            cos[l, j] = c
            sin[l, j] = s
            where[l, j] = k
            counts[l] = j + 1
            step[l] = k + 1


@numba.njit(cache=True, fastmath=_FASTMATH)
def _rotate_back(count, cos, sin, where, vec):
    """``vec <- Z vec``: the recorded rotations applied in reverse order."""
    for j in range(count - 1, -1, -1):
        k, c, s = where[j], cos[j], sin[j]
        a, b = vec[k], vec[k + 1]
        vec[k] = c * a - s * b
        vec[k + 1] = s * a + c * b


@numba.njit(cache=True, fastmath=_FASTMATH)
def letkf_local_analyses(anomalies, mean, scaled, innovation, elements, index, weight, out, wbar_out):
    """The LETKF analysis of every element in ``elements``, written into ``out``.

    Parameters
    ----------
    anomalies:
        Forecast anomalies ``X'``, shape ``(N, d)``.
    mean:
        Forecast mean, shape ``(d,)``.
    scaled:
        Scaled observation anomalies ``S^T``, shape ``(p, N)`` (one row per observation).
    innovation:
        Scaled innovation ``dy``, shape ``(p,)``.
    elements:
        Flat state indices to analyse, shape ``(n,)``, int64.
    index, weight:
        Local observation indices and tapers of each element in ``elements``, shape ``(n, width)``
        (entries with zero taper are padding).
    out:
        Analysis members, shape ``(N, d)``: column ``elements[j]`` is overwritten, the others untouched.
    wbar_out:
        Mean weights ``wbar`` of each local analysis, shape ``(n, N)`` float64, or shape ``(0, N)`` to skip.

    Returns
    -------
    The number of local problems whose eigenvalues did not converge (their columns are left as they are).
    """
    n_members = anomalies.shape[0]
    width = max(index.shape[1], 1)
    size = max(n_members, 2)
    capacity = _SWEEPS_PER_EIGENVALUE * size * size
    rows = np.empty((_LANES, max(width, n_members), max(width, n_members)))  # B (or B^T) of each lane
    roots = np.empty((_LANES, width))  # r of each lane
    mat = np.empty((_LANES, size, size))
    beta = np.empty((_LANES, size))
    diag = np.empty((_LANES, size))
    off = np.empty((_LANES, size))
    u = np.empty((_LANES, size))
    v = np.empty((_LANES, size))
    x = np.empty((_LANES, n_members))
    cos = np.empty((_LANES, capacity))
    sin = np.empty((_LANES, capacity))
    where = np.empty((_LANES, capacity), dtype=np.int64)
    sizes = np.empty(_LANES, dtype=np.int64)
    counts = np.empty(_LANES, dtype=np.int64)
    members = np.empty(_LANES, dtype=np.bool_)
    work = np.empty(size)
    spread = np.empty(n_members)
    failed = 0
    for start in range(0, elements.shape[0], _LANES):
        lanes = min(_LANES, elements.shape[0] - start)
        for l in range(lanes):
            sizes[l], members[l] = _local_problem(anomalies, scaled, innovation, elements[start + l],
                                                  index[start + l], weight[start + l], rows[l], roots[l],
                                                  mat[l], x[l], u[l], v[l])
            _tridiagonalize(mat[l], sizes[l], beta[l], diag[l], off[l], work)
            _reflect(mat[l], sizes[l], beta[l], u[l], False)
            _reflect(mat[l], sizes[l], beta[l], v[l], False)
        _tridiagonal_eigen(lanes, sizes, diag, off, u, v, cos, sin, where, counts)
        for l in range(lanes):
            if counts[l] < 0:
                failed += 1
                continue
            j = start + l
            wbar = wbar_out[j] if wbar_out.shape[0] > 0 else wbar_out[0:0].ravel()
            shift = _finish(n_members, sizes[l], members[l], rows[l], mat[l], beta[l], diag[l], u[l], v[l],
                            cos[l], sin[l], where[l], counts[l], x[l], spread, wbar)
            element = elements[j]
            centre = mean[element] + shift
            for k in range(n_members):
                out[k, element] = centre + spread[k]
    return failed


@numba.njit(cache=True, fastmath=_FASTMATH)
def _local_problem(anomalies, scaled, innovation, element, index, weight, rows, roots, mat, x, u, v):
    """Gather the local problem of one element: ``B``, ``r``, ``x`` and the matrix of the smaller space.

    Fills ``mat`` with ``A = c I + B^T B`` (``u = x``, ``v = B^T r``, ``B^T`` in ``rows[:N, :m]``) when there
    are ``m >= N`` local observations, else with ``K = B B^T`` (``u = B x``, ``v = r``, ``B`` in
    ``rows[:m, :N]``). Returns its size and whether it is ``A``.
    """
    n_members = anomalies.shape[0]
    c = n_members - 1.0
    for k in range(n_members):
        x[k] = anomalies[k, element]
    m = 0
    for a in range(index.shape[0]):
        m += weight[a] > 0.0
    member_space = m >= n_members
    m = 0
    for a in range(index.shape[0]):
        w = weight[a]
        if w > 0.0:
            root = math.sqrt(w)
            obs = index[a]
            if member_space:  # B^T in rows[:N, :m]
                for k in range(n_members):
                    rows[k, m] = root * scaled[obs, k]
            else:
                for k in range(n_members):
                    rows[m, k] = root * scaled[obs, k]
            roots[m] = root * innovation[obs]
            m += 1
    if member_space:
        for k in range(n_members):
            u[k] = x[k]
            acc = 0.0
            for a in range(m):
                acc += rows[k, a] * roots[a]
            v[k] = acc
            for l in range(k, n_members):
                acc = 0.0
                for a in range(m):
                    acc += rows[k, a] * rows[l, a]
                mat[k, l] = acc
                mat[l, k] = acc
            mat[k, k] += c
        return n_members, True
    for a in range(m):
        acc = 0.0
        for k in range(n_members):
            acc += rows[a, k] * x[k]
        u[a] = acc
        v[a] = roots[a]
        for b in range(a, m):
            acc = 0.0
            for k in range(n_members):
                acc += rows[b, k] * rows[a, k]
            mat[a, b] = acc
            mat[b, a] = acc
    return m, False


@numba.njit(cache=True, fastmath=_FASTMATH)
def _finish(n_members, n, member_space, rows, mat, beta, lam, u, v, cos, sin, where, count, x, spread, wbar):
    """From the eigen-coordinates ``u, v`` of one local problem: ``spread = sqrt(c) A^{-1/2} x``, ``wbar``.

    Returns ``x . wbar``; ``wbar`` (length ``N``, or empty to skip it) is overwritten.
    """
    c = n_members - 1.0
    root_c = math.sqrt(c)
    keep_wbar = wbar.shape[0] > 0
    shift = 0.0
    for k in range(n):
        if member_space:
            shift += u[k] * v[k] / lam[k]
            v[k] = v[k] / lam[k]
            u[k] *= root_c / math.sqrt(lam[k])
        else:
            total2 = c + max(lam[k], 0.0)
            shift += u[k] * v[k] / total2
            v[k] = v[k] / total2
            total = math.sqrt(total2)
            u[k] *= -1.0 / (total * (total + root_c))
    _rotate_back(count, cos, sin, where, u)
    _reflect(mat, n, beta, u, True)
    if keep_wbar:
        _rotate_back(count, cos, sin, where, v)
        _reflect(mat, n, beta, v, True)
    if member_space:
        for k in range(n_members):
            spread[k] = u[k]
            if keep_wbar:
                wbar[k] = v[k]
        return shift
    for k in range(n_members):  # sqrt(c) A^{-1/2} x = x + B^T U g U^T B x, wbar = B^T (c I + K)^{-1} r
        spread[k] = x[k]
        if keep_wbar:
            wbar[k] = 0.0
    for a in range(n):
        ua, va = u[a], v[a]
        for k in range(n_members):
            spread[k] += rows[a, k] * ua
            if keep_wbar:
                wbar[k] += rows[a, k] * va
    return shift
