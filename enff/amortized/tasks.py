"""Inference tasks: sbibm benchmark tasks (observations and reference posteriors) and Lorenz-96 parameters.

The sbibm package ships ten observations and 10,000 reference posterior samples per observation for
each task inside its wheel; :func:`load_reference` reads them offline. Its simulators draw from the
global random state, so the three tasks used here are re-implemented as vectorised simulators with an
explicit ``torch.Generator`` (definitions of Lueckmann et al. 2021, checked against sbibm in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Protocol, get_args

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Uniform

from ..checks import check_choices
from ..integrate import rk4_steps, tendency_field
from ..models.lorenz96 import lorenz96_tendency

__all__ = ["DEFINITIONS", "SBIBM_TASKS", "SBIBMName", "SBIBMTask", "Reference", "sbibm_task", "load_reference", "Lorenz96Task",
           "ShiftedGaussianTask"]


#: Names of the sbibm tasks with a simulator here.
SBIBMName = Literal["two_moons", "gaussian_linear", "slcp"]
#: The sbibm tasks with a simulator here.
SBIBM_TASKS: tuple[str, ...] = get_args(SBIBMName)


@dataclass(frozen=True)
class Reference:
    """One benchmark observation and its reference posterior samples.

    Attributes
    ----------
    observation:
        Observed data, shape ``(1, x_dim)``.
    samples:
        Reference posterior samples, shape ``(n, theta_dim)``.
    """

    observation: torch.Tensor
    samples: torch.Tensor


class _Definition(Protocol):
    """Prior and simulator of one sbibm task (see :class:`SBIBMTask`)."""

    def prior(self) -> Distribution: ...

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


class _TwoMoons:
    """Prior uniform on ``[-1, 1]^2``; ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
    ``x = (r cos a + 0.25 - |theta_1 + theta_2| / sqrt 2, r sin a + (theta_2 - theta_1) / sqrt 2)``."""

    def prior(self) -> Distribution:
        return Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return 2 * torch.rand((n, 2), generator=generator) - 1

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = theta.shape[0]
        a = math.pi * (torch.rand(n, generator=generator, dtype=theta.dtype) - 0.5)
        r = 0.1 + 0.01 * torch.randn(n, generator=generator, dtype=theta.dtype)
        s = math.sqrt(0.5)
        return torch.stack([r * torch.cos(a) + 0.25 - torch.abs(theta[:, 0] + theta[:, 1]) * s,
                            r * torch.sin(a) + (theta[:, 1] - theta[:, 0]) * s], dim=1)


class _GaussianLinear:
    """Prior ``N(0, 0.1 I_10)``; ``x ~ N(theta, 0.1 I)``."""

    def prior(self) -> Distribution:
        return MultivariateNormal(torch.zeros(10), 0.1 * torch.eye(10))

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return math.sqrt(0.1) * torch.randn((n, 10), generator=generator)

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return theta + math.sqrt(0.1) * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)


class _SLCP:
    """Simple likelihood, complex posterior. Prior uniform on ``[-3, 3]^5``; four independent draws of a 2-d
    Gaussian with mean ``(theta_1, theta_2)``, standard deviations ``theta_3^2``, ``theta_4^2`` and
    correlation ``tanh(theta_5)``, flattened draw by draw to 8 numbers."""

    def prior(self) -> Distribution:
        return Independent(Uniform(-3 * torch.ones(5), 3 * torch.ones(5)), 1)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return 6 * torch.rand((n, 5), generator=generator) - 3

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = theta.shape[0]
        s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
        z = torch.randn((n, 4, 2), generator=generator, dtype=theta.dtype)
        first = s1[:, None] * z[..., 0]
        second = s2[:, None] * (rho[:, None] * z[..., 0] + (1 - rho[:, None] ** 2).sqrt() * z[..., 1])
        return (theta[:, None, :2] + torch.stack([first, second], dim=-1)).reshape(n, 8)


#: The definition of each sbibm task.
DEFINITIONS: Mapping[SBIBMName, _Definition] = MappingProxyType({
    "two_moons": _TwoMoons(),
    "gaussian_linear": _GaussianLinear(),
    "slcp": _SLCP(),
})


@dataclass(frozen=True)
class SBIBMTask:
    """Prior and simulator of an sbibm task, with explicit generators (each task's definition, in
    :data:`DEFINITIONS`, states its prior and simulator).

    Attributes
    ----------
    name:
        One of :data:`SBIBM_TASKS`.
    """

    name: SBIBMName

    def __post_init__(self) -> None:
        check_choices(self)

    @property
    def prior(self) -> Distribution:
        """The task's prior over ``theta``."""
        return DEFINITIONS[self.name].prior()

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` parameters from the prior, shape ``(n, theta_dim)``."""
        return DEFINITIONS[self.name].sample_prior(n, generator)

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Simulate one data set per row of ``theta`` ``(n, theta_dim)``; returns ``(n, x_dim)``."""
        return DEFINITIONS[self.name].simulate(theta, generator)

    def simulations(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs ``(theta, x)`` from prior and simulator."""
        theta = self.sample_prior(n, generator)
        return theta, self.simulate(theta, generator)


def sbibm_task(name: SBIBMName) -> SBIBMTask:
    """The task of that sbibm name (one of :data:`SBIBM_TASKS`)."""
    return SBIBMTask(name)


def load_reference(name: str, observation: int) -> Reference:
    """Observation ``1..10`` of sbibm task ``name`` and its 10,000 reference posterior samples.

    Needs the ``sbibm`` package (installed without its dependencies, plus ``pyro-ppl`` and ``scikit-learn``).
    """
    if not 1 <= int(observation) <= 10:
        raise ValueError(f"sbibm observation must be in 1..10, got {observation!r}")
    import sbibm  # optional dependency, heavy import

    task = sbibm.get_task(name)
    return Reference(task.get_observation(num_observation=int(observation)).float(),
                     task.get_reference_posterior_samples(num_observation=int(observation)).float())


@dataclass(frozen=True)
class Lorenz96Task:
    """Infer the forcing ``F`` and the linear damping ``c`` of Lorenz-96 from a short noisy trajectory.

    Dynamics ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - c x_i + F`` on ``n_sites`` periodic sites,
    integrated by RK4 (:func:`enff.integrate.rk4_steps`) on the tendency of :mod:`enff.models.lorenz96`,
    vectorised over a batch in which every member has its own ``(F, c)``. All members start from the same
    known state ``x0_i = 2.5 + 2 sin(2 pi i / n) + sin(4 pi i / n)``. Observed: every site every
    ``obs_every`` steps, ``n_obs`` times (the first after ``obs_every`` steps), with Gaussian error
    ``obs_std``; the data vector is time-major, ``(batch, n_obs * n_sites)``, i.e. ``n_obs`` channels of
    ``n_sites`` sites.

    The "real" system (:meth:`simulate` with ``real=True``) differs from the simulator by stochastic
    forcing: white noise of intensity ``model_noise`` (per unit time) enters every RK4 step, and an
    unresolved, spatially varying forcing ``forcing_wave * sin(2 pi i / n)`` is added.

    Attributes
    ----------
    n_sites, dt, obs_every, n_obs, obs_std:
        Grid size (>= 4, the span of the Lorenz-96 stencil), time step (model time units), steps between
        observations, number of observation times, observation error standard deviation (state units).
    forcing_range, damping_range:
        Bounds of the uniform prior on ``F`` and ``c``.
    model_noise, forcing_wave:
        Strength of the misspecification of the real system.
    """

    n_sites: int = 8
    dt: float = 0.05
    obs_every: int = 2
    n_obs: int = 10
    obs_std: float = 0.5
    forcing_range: tuple[float, float] = (6.0, 10.0)
    damping_range: tuple[float, float] = (0.5, 1.5)
    model_noise: float = 1.0
    forcing_wave: float = 1.0

    def __post_init__(self) -> None:
        if self.n_sites < 4:
            raise ValueError(f"n_sites must be >= 4 (the Lorenz-96 stencil spans 4 sites), got {self.n_sites!r}")

    @property
    def prior(self) -> Distribution:
        """Independent uniform prior on ``(F, c)``."""
        low = torch.tensor([self.forcing_range[0], self.damping_range[0]])
        high = torch.tensor([self.forcing_range[1], self.damping_range[1]])
        return Independent(Uniform(low, high), 1)

    @property
    def x_dim(self) -> int:
        """Length of one data vector."""
        return self.n_obs * self.n_sites

    def initial_state(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The known initial state, shape ``(n_sites,)``."""
        phase = 2 * math.pi * torch.arange(self.n_sites, dtype=dtype) / self.n_sites
        return 2.5 + 2 * torch.sin(phase) + torch.sin(2 * phase)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` parameter rows ``(F, c)`` from the prior, shape ``(n, 2)``."""
        low = torch.tensor([self.forcing_range[0], self.damping_range[0]])
        high = torch.tensor([self.forcing_range[1], self.damping_range[1]])
        return low + (high - low) * torch.rand((n, 2), generator=generator)

    def simulate(self, theta: torch.Tensor, generator: torch.Generator, *, real: bool = False) -> torch.Tensor:
        """Noisy observed trajectories for parameters ``theta`` ``(batch, 2)``; returns ``(batch, x_dim)``."""
        if theta.ndim != 2 or theta.shape[1] != 2:
            raise ValueError(f"theta must have shape (batch, 2) = (F, c) rows, got {tuple(theta.shape)}")
        batch = theta.shape[0]
        forcing, damping = theta[:, :1], theta[:, 1:]
        if real:
            phase = 2 * math.pi * torch.arange(self.n_sites, dtype=theta.dtype) / self.n_sites
            forcing = forcing + self.forcing_wave * torch.sin(phase)
        x = self.initial_state(theta.dtype).expand(batch, self.n_sites).clone()
        field = tendency_field(lorenz96_tendency(self.n_sites, forcing, damping, device=x.device), x)
        # without model noise the RK4 runs uninterrupted between observations
        steps, repeats = (1, self.obs_every) if real else (self.obs_every, 1)
        observed = []
        for _ in range(self.n_obs):
            for _ in range(repeats):
                x = rk4_steps(field, x, self.dt, steps)
                if real:
                    x = x + self.model_noise * math.sqrt(self.dt) * torch.randn(x.shape, generator=generator,
                                                                                 dtype=x.dtype)
            observed.append(x)
        clean = torch.cat(observed, dim=1)
        return clean + self.obs_std * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)


@dataclass(frozen=True)
class ShiftedGaussianTask:
    """A linear-Gaussian task whose real data come from a different model, with analytic posteriors.

    Prior ``theta ~ N(0, I_d)``. Each observation holds ``repeats`` noisy measurements of ``theta``
    (``x_dim = repeats * d``, repeat-major). Simulator ``x_r = theta + noise * eps_r``. Real system
    ``y_r = scale * theta + shift + noise * eps_r``. The real-data posterior ``p(theta | y)`` is Gaussian
    with covariance ``(1 + repeats * scale^2 / noise^2)^-1 I`` and mean
    ``cov * scale * sum_r (y_r - shift) / noise^2``.

    Attributes
    ----------
    dim, noise, scale, shift:
        Dimension, observation noise std, gain and offset of the real system.
    repeats:
        Measurements per observation.
    """

    dim: int = 2
    noise: float = 0.3
    scale: float = 1.5
    shift: float = 0.5
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.dim < 1 or self.repeats < 1 or not self.noise > 0:
            raise ValueError(f"dim and repeats must be >= 1 and noise > 0, got {self.dim!r}, {self.repeats!r}, "
                             f"{self.noise!r}")

    @property
    def x_dim(self) -> int:
        """Length of one data vector."""
        return self.dim * self.repeats

    @property
    def prior(self) -> Distribution:
        """Standard normal prior over ``theta``."""
        return MultivariateNormal(torch.zeros(self.dim), torch.eye(self.dim))

    def simulate(self, theta: torch.Tensor, generator: torch.Generator, *, real: bool = False) -> torch.Tensor:
        """Simulated (``real=False``) or real observations for each row of ``theta``, shape ``(batch, x_dim)``."""
        signal = theta.repeat(1, self.repeats)
        eps = self.noise * torch.randn(signal.shape, generator=generator, dtype=theta.dtype)
        return self.scale * signal + self.shift + eps if real else signal + eps

    def true_posterior(self, y: torch.Tensor) -> MultivariateNormal:
        """Real-data posterior ``p(theta | y)`` for ``y`` of shape ``(batch, x_dim)`` (batch shape ``(batch,)``)."""
        var = 1.0 / (1.0 + self.repeats * self.scale**2 / self.noise**2)
        total = (y - self.shift).reshape(y.shape[0], self.repeats, self.dim).sum(dim=1)
        mean = var * self.scale * total / self.noise**2
        return MultivariateNormal(mean, var * torch.eye(self.dim, dtype=y.dtype))
