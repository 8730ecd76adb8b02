"""Flow matching posterior estimation (FMPE; Wildberger, Dax et al. 2023).

A conditional vector field ``v(theta_t, t | x)`` is regressed onto the optimal-transport path from
``N(0, I)`` to the z-scored posterior samples (pairs ``(theta, x)`` drawn from prior and simulator).
Sampling integrates the ODE from noise; ``log_prob`` integrates the divergence backwards.

Example
-------
>>> posterior = FMPE(prior).fit(theta, x)              # theta (n, d), x (n, x_dim)
>>> samples = posterior.sample(1000, x_obs)            # (1000, batch, d)
>>> logp = posterior.log_prob(samples, x_obs)          # (1000, batch)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributions import Distribution

from .divergence import flow_log_prob
from .flow_matching import flow_matching_loss, ot_path, sample_time
from .networks import ConditionalFlow, NetworkConfig, seeded_init
from ..integrate import SolverConfig
from .posterior import (Incomplete, Posterior, Standardizer, check_pairs, check_rows, new_generator,
                        sample_in_support)
from .storage import config_from_data, prior_from_data
from .training import TrainingConfig, TrainingHistory, train

__all__ = ["FMPE", "FMPEPosterior", "prior_dim"]


def prior_dim(prior: Distribution) -> int:
    """Dimension of a prior over vectors; raises ``ValueError`` unless its event shape is ``(d,)``."""
    if not isinstance(prior, Distribution):
        raise TypeError(f"prior must be a torch.distributions.Distribution, got {type(prior).__name__}")
    if len(prior.event_shape) != 1 or len(prior.batch_shape) != 0:
        raise ValueError(f"prior must have event_shape (d,) and batch_shape (), got event_shape "
                         f"{tuple(prior.event_shape)} and batch_shape {tuple(prior.batch_shape)}; wrap independent "
                         "priors in torch.distributions.Independent(..., 1)")
    return int(prior.event_shape[0])


@dataclass(frozen=True)
class FMPE:
    """Flow matching posterior estimator: its prior and hyper-parameters (the repr is the full configuration).

    Attributes
    ----------
    prior:
        Prior over ``theta``, a torch distribution with event shape ``(d,)``.
    network:
        Architecture of the vector field and of the embedding of ``x``.
    training:
        Optimiser, batch size, validation split and early stopping.
    solver:
        Default ODE solver for sampling and ``log_prob`` (each call can override it).
    sigma_min:
        Width of the OT path at ``t = 1`` in z-scored units.
    time_prior_exponent:
        ``alpha`` of the power-law time prior (see :mod:`enff.amortized.flow_matching`).
    hutchinson_above:
        ``log_prob`` uses Hutchinson's trace estimate when ``d`` exceeds this, the exact trace otherwise.
    max_rejection_rounds:
        Redraws of samples that fall outside a bounded prior's support before giving up (sampling also
        gives up once fewer than :data:`~enff.amortized.posterior.MIN_ACCEPTANCE` of the draws are accepted).
    seed:
        Seed of the training generator (split, batches, path points).
    """

    prior: Distribution
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    sigma_min: float = 1e-4
    time_prior_exponent: float = 1.0
    hutchinson_above: int = 16
    max_rejection_rounds: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        prior_dim(self.prior)
        if not 0 <= self.sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min!r}")
        if not self.time_prior_exponent > -1:
            raise ValueError(f"time_prior_exponent must be > -1, got {self.time_prior_exponent!r}")

    def fit(self, theta: torch.Tensor, x: torch.Tensor) -> FMPEPosterior:
        """Train on simulated pairs and return the posterior.

        Parameters
        ----------
        theta:
            Parameters drawn from the prior, shape ``(n, d)``.
        x:
            Simulations for those parameters, shape ``(n, x_dim)``. Rows with NaN or inf in ``theta``
            or ``x`` are dropped with a warning that gives their number.
        """
        d = prior_dim(self.prior)
        (theta, x), _ = check_pairs(("theta", "x"), (theta, x), (d, None))
        if theta.shape[0] < 2:
            raise ValueError(f"need at least 2 finite simulations to train, got {theta.shape[0]}")
        theta, x = theta.float(), x.float()
        theta_scaler, x_scaler = Standardizer.fit(theta), Standardizer.fit(x)
        z_theta, z_x = theta_scaler.forward(theta), x_scaler.forward(x)
        flow = seeded_init(self.seed, lambda: ConditionalFlow(d, x.shape[1], self.network)).to(theta.device)
        generator = torch.Generator(device=theta.device).manual_seed(self.seed)

        def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            z1, e = z_theta[idx], flow.embed(z_x[idx])
            t = sample_time(len(idx), self.time_prior_exponent, gen, device=z1.device)
            z0 = torch.randn(z1.shape, generator=gen, device=z1.device)
            z_t, u = ot_path(z1, z0, t, self.sigma_min)
            return flow_matching_loss(lambda z, s: flow(z, s, e), z_t, t, u)

        history = train(flow, loss, theta.shape[0], self.training, generator)
        return FMPEPosterior(flow, self.network, theta_scaler, x_scaler, self.prior, self.solver,
                             self.hutchinson_above, self.max_rejection_rounds, history, repr(self))


class FMPEPosterior(Posterior):
    """Posterior learned by :class:`FMPE`; see :class:`~enff.amortized.posterior.Posterior` for shapes."""

    def __init__(self, flow: ConditionalFlow, network: NetworkConfig, theta_scaler: Standardizer,
                 x_scaler: Standardizer, prior: Distribution, solver: SolverConfig, hutchinson_above: int,
                 max_rejection_rounds: int, history: TrainingHistory | None = None, estimator: str = "") -> None:
        self.flow = flow.eval()
        self.network = network
        self.theta_scaler, self.x_scaler = theta_scaler, x_scaler
        self.prior = prior
        self.solver = solver
        self.hutchinson_above = hutchinson_above
        self.max_rejection_rounds = max_rejection_rounds
        self.history = history
        self.estimator = estimator
        self.theta_dim = int(theta_scaler.mean.shape[0])
        self.x_dim = int(x_scaler.mean.shape[0])

    def __repr__(self) -> str:
        return f"FMPEPosterior(theta_dim={self.theta_dim}, x_dim={self.x_dim}, estimator={self.estimator})"

    def _field(self, e: torch.Tensor):
        return lambda z, t: self.flow(z, torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device), e)

    @torch.no_grad()
    def sample_rows(self, x: torch.Tensor, generator: torch.Generator, solver: SolverConfig | None = None,
                    reject: bool = True, incomplete: Incomplete = "raise") -> torch.Tensor:
        """One sample for each row of ``x`` ``(rows, x_dim)``, inside the prior support if ``reject``
        (``incomplete`` as in :func:`~enff.amortized.posterior.sample_in_support`); ``(rows, d)``."""
        e = self.flow.embed(self.x_scaler.forward(x.float()))
        solver = solver or self.solver

        def draw(index: torch.Tensor) -> torch.Tensor:
            z0 = torch.randn((len(index), self.theta_dim), generator=generator, device=e.device)
            return self.theta_scaler.inverse(solver.solve(self._field(e[index]), z0, 0.0, 1.0).state)

        if not reject:
            return draw(torch.arange(x.shape[0], device=e.device))
        return sample_in_support(draw, x.shape[0], self.prior, self.max_rejection_rounds, e.device, incomplete)

    def log_prob_rows(self, theta: torch.Tensor, x: torch.Tensor, generator: torch.Generator,
                      solver: SolverConfig | None = None) -> torch.Tensor:
        """Log-density of each row of ``theta`` ``(rows, d)`` given the same row of ``x``; returns ``(rows,)``."""
        out = torch.full((theta.shape[0],), -torch.inf, device=theta.device)
        inside = self.prior.support.check(theta)
        if bool(inside.any()):
            with torch.no_grad():
                e = self.flow.embed(self.x_scaler.forward(x[inside].float()))
            logp, _ = flow_log_prob(self._field(e), self.theta_scaler.forward(theta[inside].float()),
                                    solver or self.solver, hutchinson=self.theta_dim > self.hutchinson_above,
                                    generator=generator)
            out[inside] = logp + self.theta_scaler.log_abs_det()
        return out

    def sample(self, n: int, x: torch.Tensor, *, generator: torch.Generator | None = None,
               solver: SolverConfig | None = None, reject: bool = True, incomplete: Incomplete = "raise"
               ) -> torch.Tensor:
        """Draw ``n`` samples per observation.

        Parameters
        ----------
        n:
            Samples per observation.
        x:
            Observations, shape ``(batch, x_dim)``.
        generator:
            Source of the base noise (fresh entropy when omitted).
        solver:
            Overrides the solver chosen at training.
        reject:
            Redraw samples outside the prior support (``False`` returns the raw flow samples, e.g. to
            diagnose misspecified data for which the flow puts mass outside the prior).
        incomplete:
            When too few draws land inside the support (fewer than
            :data:`~enff.amortized.posterior.MIN_ACCEPTANCE` of them, or rows still outside after
            ``max_rejection_rounds`` redraws; typically an observation far from the simulations):
            ``"raise"`` a ``RuntimeError`` naming the acceptance rate, or ``"nan"``: return the accepted
            samples with NaN rows for the others.

        Returns
        -------
        Samples of shape ``(n, batch, theta_dim)``.
        """
        check_rows("x", x, self.x_dim)
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        rows = x.repeat(int(n), 1)
        flat = self.sample_rows(rows, new_generator(generator, x.device), solver, reject, incomplete)
        return flat.reshape(int(n), x.shape[0], self.theta_dim)

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor, *, generator: torch.Generator | None = None,
                 solver: SolverConfig | None = None) -> torch.Tensor:
        """Log-density of ``theta`` ``(..., batch, d)`` given ``x`` ``(batch | 1, x_dim)``; returns ``(..., batch)``.

        ``-inf`` outside the prior support. For ``d > hutchinson_above`` the divergence is Hutchinson's
        estimate (probes from ``generator``), so the value is then an unbiased estimate of the log-density.
        """
        theta_rows, x_rows, shape = self._broadcast(theta, x)
        return self.log_prob_rows(theta_rows, x_rows, new_generator(generator, x.device), solver).reshape(shape)

    def _payload(self) -> dict[str, Any]:
        return {"state_dict": self.flow.state_dict(), "network": self.network,
                "theta_scaler": (self.theta_scaler.mean, self.theta_scaler.std),
                "x_scaler": (self.x_scaler.mean, self.x_scaler.std), "prior": self.prior, "solver": self.solver,
                "hutchinson_above": self.hutchinson_above, "max_rejection_rounds": self.max_rejection_rounds,
                "history": self.history, "estimator": self.estimator}

    @classmethod
    def _from_payload(cls, payload: dict[str, Any]) -> FMPEPosterior:
        theta_scaler, x_scaler = Standardizer(*payload["theta_scaler"]), Standardizer(*payload["x_scaler"])
        network = config_from_data(NetworkConfig, payload["network"])
        flow = ConditionalFlow(int(theta_scaler.mean.shape[0]), int(x_scaler.mean.shape[0]), network)
        flow.load_state_dict(payload["state_dict"])
        history = None if payload["history"] is None else config_from_data(TrainingHistory, payload["history"])
        return cls(flow, network, theta_scaler, x_scaler, prior_from_data(payload["prior"]),
                   config_from_data(SolverConfig, payload["solver"]), int(payload["hutchinson_above"]),
                   int(payload["max_rejection_rounds"]), history, str(payload["estimator"]))
