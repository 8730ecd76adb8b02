"""One integrator module: the field convention, a registry of steppers, and the SDE sampler.

Every integrator here solves ``dx/dt = field(x, t)`` for a state ``x`` of any shape (an ensemble
``(member, ...)``, a batch ``(batch, dim)``) from ``start`` to ``end``; ``end < start`` integrates
backwards. A field is called with a tensor shaped like ``x`` and a Python float time and returns a
tensor shaped like ``x``. A returned value is used (and may be modified) only until the field has been
called twice more, so a field may write its results into two buffers in turn (:func:`tendency_field`
uses one buffer, which only :class:`RK4` allows).

The steppers of :data:`STEPPERS` (build one with ``STEPPERS.build(name, **keys)`` or call
:func:`integrate`) and their cost in field evaluations:

- ``euler`` (``evaluations = S``): ``S`` steps on the uniform grid from ``start`` to ``end``.
- ``heun`` (``evaluations = S``): Heun (explicit trapezoidal, two evaluations) steps on a uniform grid,
  except that the last step is an Euler step, and so is the first one when ``S`` is even:
  ``(S - 1) // 2`` Heun steps and one or two Euler steps, ``floor(S / 2) + 1`` steps in all. The field is
  thus never evaluated at ``end``: on the optimal-transport path the velocity is stiff there (rate
  ``(1 - sigma_min) / sigma_min``), and a Heun corrector at ``t = 1`` is unstable once the step exceeds
  about ``2 sigma_min``. A fixed number of Euler steps keeps the global error second order.
- ``rk4`` (``n_steps``): classic fourth-order Runge-Kutta, ``4 n_steps`` evaluations, with preallocated
  in-place buffers (fresh full-size tensors page-fault on every allocation, which dominated the run time
  of an out-of-place RK4 on large ensembles). The models step with :func:`rk4_steps` directly.
- ``dopri5`` (``rtol``, ``atol``, ``max_steps``): adaptive Dormand-Prince 5(4) with FSAL and the standard
  step-size controller; one step size for the whole state.

:func:`euler_maruyama` integrates a stochastic differential equation with scalar diffusion (the score
filters' reverse process). :class:`SolverConfig` is the stored, typed choice of a solver of the amortized
flows (posterior files hold its fields).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from .checks import check_choices, check_positive_int
from .registry import Registry

__all__ = [
    "Field",
    "Tendency",
    "ODEResult",
    "Stepper",
    "STEPPERS",
    "Method",
    "Sampler",
    "Euler",
    "Heun",
    "RK4",
    "Dopri5",
    "integrate",
    "rk4_steps",
    "tendency_field",
    "euler_maruyama",
    "SolverConfig",
]

#: A vector field ``f(x, t)`` returning ``dx/dt``, a tensor shaped like ``x`` (see the module docstring
#: for how long a returned value is used).
Field = Callable[[torch.Tensor, float], torch.Tensor]

#: An autonomous in-place right-hand side: ``tendency(x, out)`` writes ``dx/dt`` into ``out`` (same
#: shape, dtype and device as ``x``) and does not modify ``x``.
Tendency = Callable[[torch.Tensor, torch.Tensor], None]

#: Names of the registered steppers.
Method = Literal["euler", "heun", "rk4", "dopri5"]

#: The fixed-evaluation-count samplers of the generative filters (cost counted as ``S`` evaluations), a
#: subset of :data:`Method`.
Sampler = Literal["euler", "heun"]


@dataclass(frozen=True)
class ODEResult:
    """Final state of an integration and its cost.

    Attributes
    ----------
    state:
        State at ``end``, a new tensor shaped like the initial state.
    n_evals:
        Number of field evaluations spent.
    """

    state: torch.Tensor
    n_evals: int


class Stepper(Protocol):
    """A configured integrator: :meth:`solve` integrates a field over ``[start, end]``."""

    def solve(self, field: Field, x: torch.Tensor, start: float, end: float) -> ODEResult:
        """Integrate ``dx/dt = field(x, t)`` from ``start`` to ``end``; ``x`` is not modified."""
        ...


#: Registered steppers, by the name a configuration gives (:data:`Method`).
STEPPERS: Registry[type] = Registry("ODE sampler")


def _check_tolerances(rtol: float, atol: float) -> None:
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"solver rtol and atol must be > 0, got rtol={rtol!r}, atol={atol!r}")


@dataclass(frozen=True)
class _Trapezoidal:
    """Explicit trapezoidal (Heun) or Euler steps on a uniform grid, ``evaluations`` (``S``) field calls."""

    evaluations: int

    def __post_init__(self) -> None:
        evaluations = check_positive_int("the number of field evaluations S", self.evaluations)
        object.__setattr__(self, "evaluations", evaluations)

    def corrected(self) -> list[bool]:
        """Per step of the uniform grid: Heun (``True``, two evaluations) or Euler (``False``, one)."""
        raise NotImplementedError

    def solve(self, field: Field, x: torch.Tensor, start: float, end: float) -> ODEResult:
        """See :class:`Stepper`; exactly ``evaluations`` field calls."""
        corrected = self.corrected()
        n_steps = len(corrected)
        x = x.clone()
        for k, heun in enumerate(corrected):
            t = start + (end - start) * k / n_steps
            t_next = start + (end - start) * (k + 1) / n_steps
            dt = t_next - t
            slope = field(x, t)
            if not heun:
                x.add_(slope, alpha=dt)
                continue
            corrector = field(torch.add(x, slope, alpha=dt), t_next)
            x.add_(slope.add_(corrector), alpha=0.5 * dt)
        return ODEResult(x, self.evaluations)


@STEPPERS.register("euler")
@dataclass(frozen=True)
class Euler(_Trapezoidal):
    """Forward Euler with ``evaluations`` (``S``) steps of equal length."""

    def corrected(self) -> list[bool]:
        """``S`` Euler steps."""
        return [False] * self.evaluations


@STEPPERS.register("heun")
@dataclass(frozen=True)
class Heun(_Trapezoidal):
    """Heun steps with an Euler step last (and first for even ``S``); the field is never evaluated at ``end``."""

    def corrected(self) -> list[bool]:
        """``(S - 1) // 2`` Heun steps between one or two Euler steps (see the module docstring)."""
        s = self.evaluations
        return [False] * (1 - s % 2) + [True] * ((s - 1) // 2) + [False]


@torch.no_grad()
def rk4_steps(field: Field, x: torch.Tensor, dt: float, n_steps: int, start: float = 0.0) -> torch.Tensor:
    """Advance ``x`` by ``n_steps`` classic RK4 steps of size ``dt`` from time ``start``.

    Parameters
    ----------
    field:
        Vector field ``f(x, t)``; each returned value is used only until the next call.
    x:
        State, any shape; it is not modified. Autograd does not flow through the result.
    dt:
        Step in the field's time units (negative integrates backwards).
    n_steps:
        Number of steps (>= 1; the caller validates it).
    start:
        Time of ``x``.

    Returns
    -------
    A new contiguous tensor of the shape, dtype and device of ``x``.
    """
    y = x.clone(memory_format=torch.contiguous_format)
    acc = torch.empty_like(y)
    stage = torch.empty_like(y)
    half, sixth = dt / 2.0, dt / 6.0
    for i in range(n_steps):
        t = start + i * dt
        k = field(y, t)  # k1
        acc.copy_(k)
        torch.add(y, k, alpha=half, out=stage)
        k = field(stage, t + half)  # k2
        acc.add_(k, alpha=2.0)
        torch.add(y, k, alpha=half, out=stage)
        k = field(stage, t + half)  # k3
        acc.add_(k, alpha=2.0)
        torch.add(y, k, alpha=dt, out=stage)
        k = field(stage, t + dt)  # k4
        acc.add_(k)
        y.add_(acc, alpha=sixth)
    return y


@STEPPERS.register("rk4")
@dataclass(frozen=True)
class RK4:
    """``n_steps`` classic RK4 steps of equal size (``4 n_steps`` evaluations), see :func:`rk4_steps`."""

    n_steps: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_steps", check_positive_int("solver n_steps", self.n_steps))

    def solve(self, field: Field, x: torch.Tensor, start: float, end: float) -> ODEResult:
        """See :class:`Stepper`."""
        return ODEResult(rk4_steps(field, x, (end - start) / self.n_steps, self.n_steps, start), 4 * self.n_steps)


# Dormand-Prince 5(4) Butcher tableau (Dormand & Prince 1980).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))


@STEPPERS.register("dopri5")
@dataclass(frozen=True)
class Dopri5:
    """Adaptive Dormand-Prince 5(4) with local extrapolation and FSAL.

    One step size serves the whole state; the error norm is the RMS over all elements of
    ``err / (atol + rtol * max(|x|, |x_new|))`` (the convention of common ODE libraries).

    Attributes
    ----------
    rtol, atol:
        Relative and absolute tolerances (> 0).
    max_steps:
        Accepted plus rejected steps before a ``RuntimeError``.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        _check_tolerances(self.rtol, self.atol)

    def solve(self, field: Field, x: torch.Tensor, start: float, end: float) -> ODEResult:
        """See :class:`Stepper`; the cost depends on the tolerances."""
        rtol, atol = self.rtol, self.atol
        span = end - start
        direction = 1.0 if span >= 0 else -1.0
        t, z = start, x
        k1 = field(z, t)
        n_evals = 1
        # Initial step from the size of the derivative (a simplified Hairer-Norsett-Wanner guess).
        scale = atol + rtol * z.abs()
        d0 = torch.sqrt(torch.mean((z / scale) ** 2)).item()
        d1 = torch.sqrt(torch.mean((k1 / scale) ** 2)).item()
        h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-3
        h = min(h, abs(span)) * direction
        for _ in range(self.max_steps):
            if direction * (end - t) <= 1e-12 * max(1.0, abs(span)):
                return ODEResult(z, n_evals)
            if direction * (t + h - end) > 0:
                h = end - t
            ks = [k1]
            for stage in range(1, 7):
                zi = z + h * sum(a * k for a, k in zip(_A[stage], ks) if a != 0.0)
                ks.append(field(zi, t + _C[stage] * h))
            n_evals += 6
            z_new = zi  # the seventh stage point is the fifth-order solution (FSAL)
            err = h * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
            tol = atol + rtol * torch.maximum(z.abs(), z_new.abs())
            err_norm = torch.sqrt(torch.mean((err / tol) ** 2)).item()
            if err_norm <= 1.0:
                t, z, k1 = t + h, z_new, ks[6]
            factor = 10.0 if err_norm == 0 else min(10.0, max(0.2, 0.9 * err_norm ** (-1 / 5)))
            h = h * factor
        raise RuntimeError(f"dopri5 did not reach t1={end} within max_steps={self.max_steps} (stopped at t={t})")


def integrate(
    field: Field,
    x: torch.Tensor,
    *,
    method: Method = "euler",
    start: float = 0.0,
    end: float = 1.0,
    **keys: int | float,
) -> torch.Tensor:
    """Integrate ``dx/dt = field(x, t)`` from ``start`` to ``end`` with the stepper ``method``.

    Parameters
    ----------
    field:
        The vector field (see the module docstring).
    x:
        Initial state at ``start``, any shape; not modified.
    method:
        A name in :data:`STEPPERS`.
    start, end:
        Initial and final time (dimensionless flow time for the filters and the amortized flows).
    keys:
        The stepper's settings: ``evaluations`` for ``euler`` and ``heun``, ``n_steps`` for ``rk4``,
        ``rtol``, ``atol``, ``max_steps`` for ``dopri5``; an unknown key is an error naming the known ones.

    Returns
    -------
    The state at ``end``, a new tensor shaped like ``x``.
    """
    stepper: Stepper = STEPPERS.build(method, **keys)
    return stepper.solve(field, x, start, end).state


def tendency_field(tendency: Tendency, like: torch.Tensor) -> Field:
    """The field of an autonomous in-place ``tendency``, writing every value into one buffer shaped like ``like``.

    Each call overwrites the previous value, which suits :func:`rk4_steps` (a value is used only until the
    next call) but not Heun's corrector.
    """
    out = torch.empty_like(like, memory_format=torch.contiguous_format)

    def field(x: torch.Tensor, t: float) -> torch.Tensor:
        tendency(x, out)
        return out

    return field


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
    evaluations = check_positive_int("the number of field evaluations S", evaluations)
    x = x.clone()
    for k in range(evaluations):
        t = start + (end - start) * k / evaluations
        dt = (end - start) / evaluations
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x.add_(drift(x, t), alpha=dt).add_(noise, alpha=diffusion(t) * math.sqrt(abs(dt)))
    return x


#: The solvers a :class:`SolverConfig` may name.
SolverMethod = Literal["rk4", "dopri5"]


@dataclass(frozen=True)
class SolverConfig:
    """How the amortized flows integrate (stored in posterior files field by field).

    Attributes
    ----------
    method:
        ``"rk4"`` (:class:`RK4`) or ``"dopri5"`` (:class:`Dopri5`).
    n_steps:
        Number of RK4 steps on ``[0, 1]`` (4 evaluations each); ignored by ``dopri5``.
    rtol, atol:
        Relative and absolute tolerances of ``dopri5`` (RMS error norm over the whole batch).
    max_steps:
        Accepted plus rejected ``dopri5`` steps before a ``RuntimeError``.
    """

    method: SolverMethod = "rk4"
    n_steps: int = 50
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive_int("solver n_steps", self.n_steps)  # every setting is checked, also those the method ignores
        _check_tolerances(self.rtol, self.atol)

    def stepper(self) -> Stepper:
        """The stepper :attr:`method` names, with the settings it takes from this config."""
        return STEPPERS.build(self.method, **{key: getattr(self, key) for key in STEPPERS.keys_of(self.method)})

    def solve(self, field: Field, x: torch.Tensor, start: float, end: float) -> ODEResult:
        """Integrate ``field`` from ``start`` to ``end`` with :meth:`stepper` (see :class:`Stepper`)."""
        return self.stepper().solve(field, x, start, end)
