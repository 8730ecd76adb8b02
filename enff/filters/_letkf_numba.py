"""Fused numba kernel of the LETKF's local analyses on the CPU, eight local problems side by side.

Every local problem is an ETKF analysis of one state element (Hunt et al., 2007) in the notation of
:mod:`~enff.filters.ensemble_space`: ``m`` local observations with tapers ``w``, ``B = diag(sqrt(w)) S``
(``m x N``), ``r = diag(sqrt(w)) dy`` and ``c = N - 1``. The analysis of element ``i`` with forecast
anomalies ``x = X'[:, i]`` is ``mean_i + (x . wbar) 1 + sqrt(c) A^{-1/2} x`` with ``A = c I + B^T B`` and
``wbar = A^{-1} B^T r``. Only matrix functions applied to a vector are needed, never ``A^{-1/2}``
itself, so the symmetric eigenproblem of the smaller of ``A`` (``N x N``) and ``K = B B^T`` (``m x m``;
the same push-through identities as :func:`~enff.filters.ensemble_space.square_root_update`) is solved as

1. Householder reduction to a tridiagonal matrix, ``M = H T H^T`` (the reflectors are kept, ``H`` is
   never formed);
2. implicit symmetric QR sweeps with Wilkinson shifts on ``T = Z diag(lambda) Z^T``, each Givens rotation
   applied to the vector ``x`` (or ``B x``) and recorded (``Z`` is never formed either);
3. the scaling by a function of ``lambda`` in that eigenbasis, then the recorded rotations and the
   reflectors applied backwards; the mean weights come from a tridiagonal solve with ``T``.

That is the eigen-decomposition the torch path (``torch.linalg.eigh``) computes, to round-off, at a
fraction of its flops and without the per-matrix overhead of a batched LAPACK call. ``LANES`` local
problems (consecutive elements) run in lockstep, every array with the lane as its last, contiguous axis:
LLVM vectorizes most loops over the lanes, and where it does not the lanes are independent chains of
square roots and divisions that the processor overlaps. They share one problem size (shorter ones are
padded with zero-taper observations, which change nothing) and one QR schedule: a lane's off-diagonal
that becomes negligible splits its matrix, and the sweep restarts below the split in that lane (the
rotation at the split is the identity), so the lanes need no common deflation. Everything is computed
in float64 whatever the dtype of the arrays (see the Notes of
:func:`~enff.filters.ensemble_space.square_root_update`). Compiled lazily per dtype and cached on disk
(``cache=True``).

Measured on the shared 2-core development machine (one thread, load average 3-8), per local problem
with N = 20: about 8 us with 15 local observations (observation space, d = 1e6 ring at radius 4: gather
and ``K`` 1.5 us, Householder 2 us, QR sweeps 3.3 us for about 220 rotations, back-transform 1 us) and
about 19 us with 129 (member space, 256 x 256 grid at radius 0.025, the Gram matrix the largest part),
with 8 lanes. On the 2-core Intel Xeon (AVX-512, 16 lanes, load 2) the d = 1e6 ring took 5.0 us per local problem
(``benchmarks/results/letkf_speed_lanes16_xeon.md``), and 4.1-4.2 us of CPU time with the loops over the lanes
innermost in the Householder sums and QR sweeps: 4.53 s per analysis at d = 1e6
(``benchmarks/results/letkf_speed_householder_xeon.md``). ``benchmarks/classical_speed.py --suite letkf`` times it
beside the torch path.
"""

from __future__ import annotations

import math

import llvmlite.binding
import numba
import numpy as np

__all__ = ["LANES", "host_lanes", "letkf_local_analyses"]

#: Relative size of an off-diagonal element of the tridiagonal matrix below which it is set to zero.
_EPS = 2.0**-52
#: Implicit QR sweeps allowed per eigenvalue (summed over the problem size) before giving up, as LAPACK.
_SWEEPS_PER_EIGENVALUE = 30
#: Let LLVM reorder sums and fuse multiply-adds (so that loops vectorize); no other fast-math flag.
_FASTMATH = {"reassoc", "contract"}


def host_lanes() -> int:
    """Local problems to solve side by side on this CPU: 16 where it has AVX-512 (two 512-bit vectors of
    float64), else 8 (two AVX2 vectors).

    Measured on the 2-core Intel Xeon (AVX-512), one thread, N = 20, bit-identical analyses: 16 lanes take
    about 20 % less time than 8 on a ring of 3e5 points at radius 4 (15 local observations, observation space),
    the same on ns256's state (member space); 32 lanes are no faster than 16, 4 are 40 % slower than 8.
    """
    return 16 if llvmlite.binding.get_host_cpu_features().get("avx512f", False) else 8


#: Local problems solved side by side (:func:`host_lanes`).
LANES = host_lanes()


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _tridiagonalize(m, n, beta, diag, off, work):
    """Reduce every lane of the symmetric ``m[:n, :n, :]`` to tridiagonal ``(diag, off)`` by Householder.

    Reflector ``k`` of a lane (``I - beta[k] v v^T`` on coordinates ``k + 1 .. n - 1``) is left in
    ``m[k, k + 1:n]``; only the upper triangle of ``m`` is read or written. ``off[j]`` couples ``j`` and
    ``j + 1``; ``work`` is scratch ``(n, lanes)``. Every loop over the lanes is innermost, also in the
    sums (per-lane accumulators), so that each one runs over contiguous memory (on the Intel Xeon 40 % less
    CPU time than with the sums over a lane's strided elements).
    """
    lanes = m.shape[2]
    norm2 = np.empty(lanes)
    acc = np.empty(lanes)
    for k in range(n - 2):
        for l in range(lanes):
            norm2[l] = 0.0
        for i in range(k + 1, n):
            for l in range(lanes):
                norm2[l] += m[k, i, l] * m[k, i, l]
        for l in range(lanes):
            x0 = m[k, k + 1, l]
            alpha = -math.copysign(math.sqrt(norm2[l]), x0)
            vv = norm2[l] - 2.0 * alpha * x0 + alpha * alpha  # |x - alpha e1|^2
            diag[k, l] = m[k, k, l]
            off[k, l] = alpha if vv > 0.0 else x0  # vv = 0: the column is already reduced (x = 0)
            m[k, k + 1, l] = x0 - alpha
            beta[k, l] = 2.0 / vv if vv > 0.0 else 0.0
        for i in range(k + 1, n):  # work = M22 v
            for l in range(lanes):
                work[i, l] = 0.0
        for j in range(k + 1, n):
            for l in range(lanes):
                acc[l] = m[j, j, l] * m[k, j, l]
            for i in range(j + 1, n):
                for l in range(lanes):
                    mji = m[j, i, l]
                    acc[l] += mji * m[k, i, l]
                    work[i, l] += mji * m[k, j, l]
            for l in range(lanes):
                work[j, l] += acc[l]
        for l in range(lanes):
            acc[l] = 0.0
        for i in range(k + 1, n):
            for l in range(lanes):
                acc[l] += m[k, i, l] * work[i, l]
        for l in range(lanes):
            acc[l] *= 0.5 * beta[k, l] * beta[k, l]
        for i in range(k + 1, n):
            for l in range(lanes):
                work[i, l] = beta[k, l] * work[i, l] - acc[l] * m[k, i, l]  # q = p - (b v^T p / 2) v, p = b M22 v
        for j in range(k + 1, n):  # M22 -= v q^T + q v^T
            for i in range(j, n):
                for l in range(lanes):
                    m[j, i, l] -= m[k, j, l] * work[i, l] + work[j, l] * m[k, i, l]
    for l in range(lanes):
        if n >= 2:
            diag[n - 2, l] = m[n - 2, n - 2, l]
            off[n - 2, l] = m[n - 2, n - 1, l]
        diag[n - 1, l] = m[n - 1, n - 1, l]
        off[n - 1, l] = 0.0  # padding: couples the last element to nothing


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _reflect(m, n, beta, vec, backwards):
    """``vec <- H^T vec`` (``backwards=False``) or ``vec <- H vec``, every lane, with the reflectors in ``m``."""
    lanes = m.shape[2]
    dot = np.empty(lanes)
    for step in range(n - 2):
        k = n - 3 - step if backwards else step
        for l in range(lanes):
            dot[l] = 0.0
        for i in range(k + 1, n):
            for l in range(lanes):
                dot[l] += m[k, i, l] * vec[i, l]
        for i in range(k + 1, n):
            for l in range(lanes):
                vec[i, l] -= beta[k, l] * dot[l] * m[k, i, l]


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _tridiagonal_eigen(n, diag, off, u, cos, sin, where):
    """Eigenvalues of every lane's tridiagonal ``(diag, off)`` into ``diag`` by implicit QR, in lockstep.

    Each sweep chases a bulge down ``0 .. top`` (``top`` the largest unreduced bottom over the lanes) with
    each lane's own Wilkinson shift; where an off-diagonal of a lane is negligible at the start of a sweep
    it is set to zero and that lane's rotation there is the identity, the chase restarting below it.
    Every rotation ``G`` (coordinates ``k, k + 1``) updates ``u <- G^T u`` and is recorded in ``cos, sin``
    (per lane) and ``where`` (shared). At each ``k`` the lanes' rotations are computed in one loop over
    the lanes, applied to ``T`` in a second and to ``u`` in a third: short loops over few arrays, which
    LLVM compiles better than one loop over all of them (about 15 % less CPU time in this function on the
    Intel Xeon). Returns the number of rotations, or ``-1`` if the sweeps exceed
    ``_SWEEPS_PER_EIGENVALUE * n``.
    """
    lanes = diag.shape[1]
    hi = np.full(lanes, n - 1, dtype=np.int64)
    split = np.empty((n, lanes), dtype=np.bool_)
    shift = np.empty(lanes)
    x = np.empty(lanes)
    z = np.empty(lanes)
    first = np.empty(lanes, dtype=np.bool_)
    norm = np.empty(lanes)
    count = 0
    for _ in range(_SWEEPS_PER_EIGENVALUE * max(n, 1)):
        top = 0
        for l in range(lanes):  # deflate at the bottom of each lane
            h = hi[l]
            while h > 0 and abs(off[h - 1, l]) <= _EPS * (abs(diag[h - 1, l]) + abs(diag[h, l])):
                off[h - 1, l] = 0.0
                h -= 1
            hi[l] = h
            top = max(top, h)
        if top == 0:
            return count
        for l in range(lanes):
            h = max(hi[l], 1)
            e = off[h - 1, l]
            delta = 0.5 * (diag[h - 1, l] - diag[h, l])
            root = math.copysign(math.sqrt(delta * delta + e * e), delta)
            shift[l] = diag[h, l] - (e * e / (delta + root) if delta + root != 0.0 else 0.0)
            x[l] = diag[0, l] - shift[l]
            z[l] = off[0, l]
            first[l] = True
        for k in range(top):
            for l in range(lanes):
                negligible = abs(off[k, l]) <= _EPS * (abs(diag[k, l]) + abs(diag[k + 1, l]))
                split[k, l] = negligible
                off[k, l] = 0.0 if negligible else off[k, l]
        for k in range(top):
            for l in range(lanes):  # the rotation of each lane at k
                xk, zk = x[l], z[l]
                r = math.sqrt(xk * xk + zk * zk)
                inverse = 1.0 / r if r > 0.0 else 0.0
                skip = split[k, l]
                cos[count, l] = 1.0 if skip or r == 0.0 else xk * inverse
                sin[count, l] = 0.0 if skip else zk * inverse
                norm[l] = r
            if k > 0:
                for l in range(lanes):
                    off[k - 1, l] = off[k - 1, l] if first[l] or split[k, l] else norm[l]
            for l in range(lanes):  # applied to T
                skip = split[k, l]
                c, s = cos[count, l], sin[count, l]
                a, f, g = diag[k, l], off[k, l], diag[k + 1, l]
                cs = c * s
                cf = 2.0 * cs * f
                diag[k, l] = c * c * a + cf + s * s * g
                diag[k + 1, l] = s * s * a - cf + c * c * g
                off[k, l] = cs * (g - a) + (c * c - s * s) * f
                nxt = off[k + 1, l]
                off[k + 1, l] = c * nxt
                x[l] = diag[k + 1, l] - shift[l] if skip else off[k, l]
                z[l] = nxt if skip else s * nxt
                first[l] = skip
            for l in range(lanes):  # and to u
                c, s = cos[count, l], sin[count, l]
                uk, uk1 = u[k, l], u[k + 1, l]
                u[k, l] = c * uk + s * uk1
                u[k + 1, l] = c * uk1 - s * uk
            where[count] = k
            count += 1
    return -1


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _tridiagonal_solve(n, diag, off, add, rhs, pivot):
    """``rhs <- (T + add I)^{-1} rhs`` for every lane's positive definite tridiagonal ``(diag, off)``.

    Gaussian elimination without pivoting (stable for positive definite matrices); ``pivot`` is scratch.
    """
    lanes = diag.shape[1]
    for k in range(n):
        for l in range(lanes):
            if k == 0:
                pivot[0, l] = diag[0, l] + add
            else:
                ratio = off[k - 1, l] / pivot[k - 1, l]
                pivot[k, l] = diag[k, l] + add - ratio * off[k - 1, l]
                rhs[k, l] -= ratio * rhs[k - 1, l]
    for step in range(n):
        k = n - 1 - step
        for l in range(lanes):
            above = off[k, l] * rhs[k + 1, l] if k + 1 < n else 0.0
            rhs[k, l] = (rhs[k, l] - above) / pivot[k, l]


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _rotate_back(count, cos, sin, where, vec):
    """``vec <- Z vec`` for every lane: the recorded rotations applied in reverse order."""
    lanes = vec.shape[1]
    for j in range(count - 1, -1, -1):
        k = where[j]
        for l in range(lanes):
            c, s = cos[j, l], sin[j, l]
            a, b = vec[k, l], vec[k + 1, l]
            vec[k, l] = c * a - s * b
            vec[k + 1, l] = s * a + c * b


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _rotate_forward(count, cos, sin, where, vec):
    """``vec <- Z^T vec`` for every lane: the recorded rotations in the order the QR sweeps applied them."""
    lanes = vec.shape[1]
    for j in range(count):
        k = where[j]
        for l in range(lanes):
            c, s = cos[j, l], sin[j, l]
            a, b = vec[k, l], vec[k + 1, l]
            vec[k, l] = c * a + s * b
            vec[k + 1, l] = c * b - s * a


@numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def letkf_local_analyses(members, mean, scaled, innovation, elements, index, weight, precision, out, wbar_out,
                         lanes):
    """The LETKF analysis of every element in ``elements``, written into ``out``, one local problem per row.

    Parameters
    ----------
    members:
        Forecast members, shape ``(N, d)``; the anomalies ``X' = members - mean`` are formed as they are read
        (no ``(N, d)`` copy of them).
    mean:
        Forecast mean, shape ``(d,)``.
    scaled:
        Scaled observation anomalies ``S``, shape ``(N, p)`` (the layout of
        :class:`~enff.filters.ensemble_space.ObservedEnsemble`, read in place: a local problem's observations are
        a window of consecutive columns, so its lanes share cache lines).
    innovation:
        Scaled innovation ``dy``, shape ``(p,)``.
    elements:
        Flat state indices to analyse, shape ``(n, group)`` int64: the elements of one row share its local
        observations (co-located fields, :class:`~enff.filters.localization.LocalDomains`) and so one
        eigenproblem, applied to each of their anomaly vectors; ``-1`` is padding.
    index, weight:
        Local observation indices and tapers of each row of ``elements``, shape ``(n, width)``
        (entries with zero taper are padding).
    precision:
        Factor on every taper: the assimilated error covariance is ``R / precision`` (1 for the LETKF; a
        tempering step of size ``a`` assimilates ``R / a``).
    out:
        Analysis members, shape ``(N, d)``: column ``elements[j]`` is overwritten, the others untouched.
    wbar_out:
        Mean weights ``wbar`` of each local problem (row), shape ``(n, N)`` float64, or shape ``(0, N)`` to skip.
    lanes:
        Local problems solved side by side (:data:`LANES`). A run-time argument on purpose: with a
        compile-time count LLVM unrolls the lane loops and, unable to rule out aliasing, leaves them scalar.

    Returns
    -------
    The number of local problems whose eigenvalues did not converge (their columns are left as they are).
    """
    n_members = members.shape[0]
    n_elements = elements.shape[0]
    group = elements.shape[1]
    width = max(index.shape[1], 1)
    size = max(n_members, 2)
    capacity = _SWEEPS_PER_EIGENVALUE * size * size
    rows = np.empty((width, n_members, lanes))  # B (m x N) of every lane, observation space
    columns = np.empty((lanes, n_members, width))  # B^T of each lane, member space
    roots = np.empty((lanes, width))  # r
    mat = np.empty((size, size, lanes))
    beta = np.empty((size, lanes))
    diag = np.empty((size, lanes))
    off = np.empty((size, lanes))
    u = np.empty((group, size, lanes))  # one vector per element of the row
    v = np.empty((size, lanes))
    u0 = np.empty((group, size, lanes))
    diag0 = np.empty((size, lanes))
    off0 = np.empty((size, lanes))
    x = np.empty((group, n_members, lanes))
    work = np.empty((size, lanes))
    cos = np.empty((capacity, lanes))
    sin = np.empty((capacity, lanes))
    where = np.empty(capacity, dtype=np.int64)
    shift = np.empty((group, lanes))
    keep_wbar = wbar_out.shape[0] > 0
    c = n_members - 1.0
    root_c = math.sqrt(c)
    failed = 0
    for start in range(0, n_elements, lanes):
        # gather: lane l solves element start + l (the last one again where the block runs past the end)
        m = 0
        for l in range(lanes):
            j = min(start + l, n_elements - 1)
            count = 0
            for a in range(index.shape[1]):
                count += weight[j, a] > 0.0
            m = max(m, count)
        member_space = m >= n_members
        n = n_members if member_space else m
        for l in range(lanes):
            j = min(start + l, n_elements - 1)
            for f in range(group):
                element = elements[j, f]
                for k in range(n_members):
                    x[f, k, l] = members[k, element] - mean[element] if element >= 0 else 0.0
            count = 0
            for a in range(index.shape[1]):
                w = weight[j, a] * precision
                if w > 0.0:
                    root = math.sqrt(w)
                    obs = index[j, a]
                    if member_space:  # B^T of the lane, for contiguous dot products over observations
                        for k in range(n_members):
                            columns[l, k, count] = root * scaled[k, obs]
                    else:
                        for k in range(n_members):
                            rows[count, k, l] = root * scaled[k, obs]
                    roots[l, count] = root * innovation[obs]
                    count += 1
            for a in range(count, m):  # zero-taper padding up to the block's size
                for k in range(n_members):
                    if member_space:
                        columns[l, k, a] = 0.0
                    else:
                        rows[a, k, l] = 0.0
                roots[l, a] = 0.0
        if member_space:  # A = c I + B^T B, u = x, v = B^T r, one lane at a time
            for l in range(lanes):
                for k in range(n):
                    for f in range(group):
                        u[f, k, l] = x[f, k, l]
                    acc = 0.0
                    for a in range(m):
                        acc += columns[l, k, a] * roots[l, a]
                    v[k, l] = acc
                    for i in range(k, n):
                        acc = 0.0
                        for a in range(m):
                            acc += columns[l, k, a] * columns[l, i, a]
                        mat[k, i, l] = acc
                    mat[k, k, l] += c
        else:  # K = B B^T, u = B x, v = r, the lanes side by side
            for a in range(n):
                for l in range(lanes):
                    v[a, l] = roots[l, a]
                for f in range(group):
                    for l in range(lanes):
                        u[f, a, l] = 0.0
                    for k in range(n_members):
                        for l in range(lanes):
                            u[f, a, l] += rows[a, k, l] * x[f, k, l]
                for b in range(a, n):
                    for l in range(lanes):
                        mat[a, b, l] = 0.0
                    for k in range(n_members):
                        for l in range(lanes):
                            mat[a, b, l] += rows[a, k, l] * rows[b, k, l]
        _tridiagonalize(mat, n, beta, diag, off, work)
        for f in range(group):
            _reflect(mat, n, beta, u[f], False)
        _reflect(mat, n, beta, v, False)
        for k in range(n):  # T and H^T u before the QR sweeps, for the solve below
            for l in range(lanes):
                diag0[k, l] = diag[k, l]
                off0[k, l] = off[k, l]
                for f in range(group):
                    u0[f, k, l] = u[f, k, l]
        count = _tridiagonal_eigen(n, diag, off, u[0], cos, sin, where)
        if count < 0:
            failed += min(lanes, n_elements - start)
            continue
        for f in range(1, group):  # the other elements' vectors through the same rotations
            _rotate_forward(count, cos, sin, where, u[f])
        # x . wbar = (H^T u)^T (T + a I)^{-1} H^T v (a = c in observation space, 0 when T is that of A)
        _tridiagonal_solve(n, diag0, off0, 0.0 if member_space else c, v, work)
        for f in range(group):
            for l in range(lanes):
                shift[f, l] = 0.0
            for k in range(n):
                for l in range(lanes):
                    shift[f, l] += u0[f, k, l] * v[k, l]
                    lam = diag[k, l]
                    if member_space:
                        u[f, k, l] *= root_c / math.sqrt(lam)
                    else:
                        total = math.sqrt(c + max(lam, 0.0))
                        u[f, k, l] *= -1.0 / (total * (total + root_c))
            _rotate_back(count, cos, sin, where, u[f])
            _reflect(mat, n, beta, u[f], True)
        if keep_wbar:
            _reflect(mat, n, beta, v, True)
        if not member_space:  # sqrt(c) A^{-1/2} x = x + B^T U g U^T B x, wbar = B^T (c I + K)^{-1} r
            for k in range(n_members):
                for l in range(lanes):
                    work[k, l] = 0.0
            for a in range(n):
                for k in range(n_members):
                    for l in range(lanes):
                        work[k, l] += rows[a, k, l] * v[a, l]
                    for f in range(group):
                        for l in range(lanes):
                            x[f, k, l] += rows[a, k, l] * u[f, a, l]
            for k in range(n_members):
                for l in range(lanes):
                    v[k, l] = work[k, l]
            for f in range(group):
                for k in range(n_members):
                    for l in range(lanes):
                        u[f, k, l] = x[f, k, l]
        for l in range(min(lanes, n_elements - start)):
            for f in range(group):
                element = elements[start + l, f]
                if element < 0:
                    continue
                centre = mean[element] + shift[f, l]
                for k in range(n_members):  # u: sqrt(c) A^{-1/2} x
                    out[k, element] = centre + u[f, k, l]
            if keep_wbar:
                for k in range(n_members):  # v: wbar
                    wbar_out[start + l, k] = v[k, l]
    return failed
