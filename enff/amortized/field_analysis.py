"""A learned analysis for fields: flow matching with the field network, its training set and its posterior.

The posterior ``p(x | y, forecast)`` of the true state ``x`` given the observation and the forecast ensemble
is learned by conditional flow matching (the optimal-transport path of :mod:`enff.amortized.flow_matching`)
in *forecast-error coordinates*: ``z = (x - forecast mean) / error_std`` with ``error_std`` one number per field,
the root-mean-square forecast error of the training set. The source is ``N(0, I)`` at every grid point, so
sampling starts close to the forecast's error scale and the network learns the correction. Every
standardisation is one number per field, so the posterior commutes with cyclic shifts of the grid and serves
any grid size of its layout (:class:`~enff.amortized.field_network.FieldLayout`).

Why ``N`` independent draws give the right spread: each draw integrates the learned flow from its own base
point, so the ``N`` analysis members are independent samples of the learned ``p(x | y, forecast)``. The truth
is one more sample of the same law when the posterior is right, so the spread of the members matches the
error of their mean (``E|mean - truth|^2 = (1 + 1/N) E[sample variance]``: spread / RMSE ``sqrt(N / (N + 1))``,
0.976 at ``N = 20``), as a calibrated ensemble's should. No inflation is needed: the training pairs are
(truth, forecast ensemble) of cycled runs, so the learned law already includes the error of an ``N``-member
forecast, sampling error and model error of the simulated cycles included. Two conditions: the posterior must
be accurate (checked on held-out truths by ``tests/test_learned_shipped.py``), and in cycling the forecasts
must resemble those it was trained on (forecasts of the filter that made the training cycles);
``benchmarks/results/learned_fields.md`` measures spread / RMSE in cycling on held-out truths.

Example
-------
>>> data = simulated_training_set(case, seeds=range(1, 9), cycles=500, burn_in=50)
>>> posterior = FieldFMPE().fit(data)
>>> posterior.save("analysis.pt")          # [filter] name = "learned", posterior = "analysis.pt"
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from enff.observations.space import ObservationSpace

from ..integrate import SolverConfig
from .divergence import flow_log_prob
from .field_network import FieldLayout, FieldNetworkConfig, FieldVelocity
from .flow_matching import flow_matching_loss, ot_path, sample_time
from .networks import seeded_init
from .posterior import Posterior, new_generator
from .storage import config_from_data
from .training import TrainingConfig, TrainingHistory, train

__all__ = ["FieldContext", "FieldFMPE", "FieldPosterior", "FieldTrainingSet", "observation_field"]


def observation_field(y: torch.Tensor, space: ObservationSpace,
                      layout: FieldLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The observations of one cycle placed on the grid: ``(value, mask)``, each ``(F, *spatial)``.

    ``y`` ``(n_obs,)`` in observation units; missing (non-finite) entries are unobserved. ``value`` is 0 and
    ``mask`` 0 at unobserved points, ``mask`` 1 at observed ones. Each observation must be a function of the
    one state value it is located at (``space.operator.pointwise()``); a point observed twice keeps the last.
    """
    if space.operator.pointwise() is None:
        raise ValueError(f"the field network places each observation at its grid point; the operator "
                         f"{space.operator!r} mixes state values")
    if y.shape != (space.n_obs,):
        raise ValueError(f"observation vector must have shape ({space.n_obs},), got {tuple(y.shape)}")
    size = math.prod(space.state_shape)
    finite = torch.isfinite(y)
    index = torch.as_tensor(space.state_index, device=y.device)[finite]
    value = torch.zeros(size, dtype=y.dtype, device=y.device).index_put_((index,), y[finite])
    mask = torch.zeros(size, dtype=y.dtype, device=y.device).index_put_((index,), torch.ones_like(y[finite]))
    shape = (layout.fields, *space.state_shape[len(space.state_shape) - layout.spatial_dims:])
    return value.reshape(shape), mask.reshape(shape)


@dataclass(frozen=True)
class FieldContext:
    """What a field analysis is conditioned on, for a batch of analyses.

    Attributes
    ----------
    observation:
        Observation values at their grid points, ``(batch, F, *spatial)``, observation units (see
        :func:`observation_field`).
    mask:
        1 where observed, 0 elsewhere, ``(batch, F, *spatial)``.
    forecast:
        Forecast members, ``(batch, member, F, *spatial)``, state units.
    """

    observation: torch.Tensor
    mask: torch.Tensor
    forecast: torch.Tensor

    def rows(self, index: torch.Tensor) -> FieldContext:
        """The analyses ``index`` (a 1-D long tensor) of this batch."""
        return FieldContext(self.observation[index], self.mask[index], self.forecast[index])

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> FieldContext:
        """This context on ``device`` in ``dtype``."""
        return FieldContext(*(t.to(device=device, dtype=dtype) for t in (self.observation, self.mask, self.forecast)))


@dataclass(frozen=True)
class FieldTrainingSet:
    """Training (or held-out) analyses: the truth and what the analysis sees.

    Attributes
    ----------
    truth:
        True states, ``(n, F, *spatial)``.
    context:
        The observations and forecasts of the same ``n`` analyses.
    layout:
        Their field layout.
    """

    truth: torch.Tensor
    context: FieldContext
    layout: FieldLayout

    def __post_init__(self) -> None:
        n = self.truth.shape[0]
        sizes = {t.shape[0] for t in (self.context.observation, self.context.mask, self.context.forecast)}
        if sizes != {n}:
            raise ValueError(f"truth and context must hold the same number of analyses, got {n} and {sorted(sizes)}")

    @property
    def size(self) -> int:
        """Number of analyses ``n``."""
        return int(self.truth.shape[0])

    @classmethod
    def concatenate(cls, parts: Iterable[FieldTrainingSet]) -> FieldTrainingSet:
        """One set of the analyses of ``parts`` (all of one layout)."""
        parts = list(parts)
        layouts = {p.layout for p in parts}
        if len(layouts) != 1:
            raise ValueError(f"training sets of different layouts cannot be joined: {sorted(map(str, layouts))}")
        context = FieldContext(*(torch.cat([getattr(p.context, name) for p in parts])
                                 for name in ("observation", "mask", "forecast")))
        return cls(torch.cat([p.truth for p in parts]), context, parts[0].layout)


def _per_field(values: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per field of ``values`` ``(n, F, *spatial)`` (where ``weights`` is 1)."""
    moved = values.transpose(0, 1).reshape(values.shape[1], -1)
    w = torch.ones_like(moved) if weights is None else weights.transpose(0, 1).reshape(values.shape[1], -1)
    moved = torch.where(w > 0, moved, torch.zeros_like(moved))  # values of weight 0 may be anything, NaN too
    count = w.sum(1).clamp_min(1)
    mean = (moved * w).sum(1) / count
    std = (((moved - mean[:, None]) ** 2 * w).sum(1) / count).sqrt()
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


@dataclass(frozen=True)
class FieldFMPE:
    """Flow matching estimator of a field analysis (the repr is the full configuration).

    Attributes
    ----------
    network:
        Architecture of the field network.
    training:
        Optimiser, batch size, validation split and early stopping.
    solver:
        ODE solver for sampling and ``log_prob``.
    sigma_min:
        Width of the OT path at ``t = 1``, in forecast-error units.
    time_prior_exponent:
        ``alpha`` of the power-law time prior (:mod:`enff.amortized.flow_matching`).
    seed:
        Seed of the initial weights and of the training generator (split, batches, path points).
    """

    network: FieldNetworkConfig = field(default_factory=FieldNetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(n_steps=10))
    sigma_min: float = 1e-3
    time_prior_exponent: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min!r}")
        if not self.time_prior_exponent > -1:
            raise ValueError(f"time_prior_exponent must be > -1, got {self.time_prior_exponent!r}")

    def fit(self, data: FieldTrainingSet, *, start: FieldPosterior | None = None) -> FieldPosterior:
        """Train on ``data`` (at least 2 analyses) and return the posterior; tensors on one device, any float dtype.

        ``start``: fine-tune a copy of this posterior's network (its architecture must be :attr:`network`, its
        layout that of ``data``) in its own coordinates (its standardisations and forecast-error scale are kept,
        not recomputed from ``data``), instead of training new weights; ``start`` itself is not changed.
        """
        if data.size < 2:
            raise ValueError(f"need at least 2 analyses to train, got {data.size}")
        context = data.context.to(data.truth.device)
        truth = data.truth.float()
        forecast_mean = context.forecast.mean(1)
        if start is not None:
            if start.net.config != self.network or start.layout != data.layout:
                raise ValueError(f"cannot fine-tune {start!r} with network {start.net.config!r} on a "
                                 f"{data.layout.describe()} as {self.network!r}")
            net = copy.deepcopy(start.net).to(truth.device)
            error_std = start.error_std.to(truth.device)
        else:
            net = seeded_init(self.seed, lambda: FieldVelocity(data.layout, self.network)).to(truth.device)
            mean, std = _per_field(truth)
            obs_mean, obs_std = _per_field(context.observation, context.mask)
            for buffer, value in ((net.state_mean, mean), (net.state_std, std), (net.obs_mean, obs_mean),
                                  (net.obs_std, obs_std)):
                buffer.copy_(value)
            error_std = (truth - forecast_mean).transpose(0, 1).reshape(data.layout.fields, -1).pow(2).mean(1).sqrt()
            error_std = error_std.clamp_min(1e-6)
        target = (truth - forecast_mean) / error_std.reshape(-1, *(1,) * data.layout.spatial_dims)
        generator = torch.Generator(device=truth.device).manual_seed(self.seed)

        def loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            rows = context.rows(idx)
            encoded = net.encode(rows.observation, rows.mask, rows.forecast)
            z1 = target[idx].reshape(len(idx), -1)
            t = sample_time(len(idx), self.time_prior_exponent, gen, device=z1.device)
            z0 = torch.randn(z1.shape, generator=gen, device=z1.device)
            z_t, u = ot_path(z1, z0, t, self.sigma_min)

            def velocity(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return net(z.reshape(len(idx), *target.shape[1:]), s, encoded).reshape(len(idx), -1)

            return flow_matching_loss(velocity, z_t, t, u) / z1.shape[1]  # mean over grid points

        history = train(net, loss, data.size, self.training, generator)
        return FieldPosterior(net, error_std, self.solver, history, repr(self))


class FieldPosterior(Posterior):
    """The learned field analysis ``p(x | y, forecast)`` (see the module docstring).

    States are ``(batch, F, *spatial)`` tensors of the posterior's :attr:`layout`, on any grid size;
    the context is a :class:`FieldContext`.
    """

    def __init__(self, net: FieldVelocity, error_std: torch.Tensor, solver: SolverConfig,
                 history: TrainingHistory | None = None, estimator: str = "") -> None:
        self.net = net.eval()
        self.error_std = error_std.detach().float().to(next(net.buffers()).device)
        self.solver = solver
        self.history = history
        self.estimator = estimator

    @property
    def layout(self) -> FieldLayout:
        """Fields and periodic dimensions of the states this posterior serves."""
        return self.net.layout

    def __repr__(self) -> str:
        return f"FieldPosterior({self.layout.describe()}, estimator={self.estimator})"

    def to(self, device: torch.device | str) -> FieldPosterior:
        """Move the network to ``device`` (in place) and return this posterior."""
        self.net.to(device)
        self.error_std = self.error_std.to(device)
        return self

    def _scale(self) -> torch.Tensor:
        return self.error_std.reshape(-1, *(1,) * self.layout.spatial_dims)

    def _velocity(self, encoded: torch.Tensor, shape: torch.Size):
        def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
            s = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
            return self.net(z.reshape(z.shape[0], *shape), s, encoded).reshape(z.shape[0], -1)
        return velocity

    def _encoded(self, context: FieldContext, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoded context and the forecast mean ``(batch, F, *spatial)``, on ``device`` in float32."""
        context = context.to(device)
        return self.net.encode(context.observation, context.mask, context.forecast), context.forecast.mean(1)

    @torch.no_grad()
    def sample(self, n: int, x: FieldContext, *, generator: torch.Generator | None = None,
               solver: SolverConfig | None = None) -> torch.Tensor:
        """Draw ``n`` states per analysis of the context ``x`` (batch ``B``); returns ``(n, B, F, *spatial)``
        float32 on the generator's device (the network is moved there). ``generator``: the base draws (fresh
        entropy when omitted)."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        generator = new_generator(generator, x.forecast.device)
        self.to(generator.device)
        encoded, mean = self._encoded(x, generator.device)
        shape = mean.shape[1:]
        rows = encoded.repeat(int(n), *(1,) * (encoded.ndim - 1))
        z0 = torch.randn((rows.shape[0], mean[0].numel()), generator=generator, device=generator.device)
        z1 = (solver or self.solver).solve(self._velocity(rows, shape), z0, 0.0, 1.0).state
        return z1.reshape(int(n), *mean.shape) * self._scale() + mean

    def log_prob(self, theta: torch.Tensor, x: FieldContext, *, generator: torch.Generator | None = None,
                 solver: SolverConfig | None = None) -> torch.Tensor:
        """Log-density of states ``theta`` ``(..., B, F, *spatial)`` given the context ``x`` of batch ``B``;
        returns ``(..., B)``. The divergence is Hutchinson's estimate (probes from ``generator``), so the value
        is an unbiased estimate of the log-density."""
        device = theta.device
        self.to(device)
        with torch.no_grad():
            encoded, mean = self._encoded(x, device)
        lead = theta.shape[:theta.ndim - mean.ndim]
        if tuple(theta.shape[len(lead):]) != tuple(mean.shape):
            raise ValueError(f"theta must have shape (..., {', '.join(map(str, mean.shape))}), "
                             f"got {tuple(theta.shape)}")
        reps = math.prod(lead)
        z = ((theta.float() - mean) / self._scale()).reshape(reps * mean.shape[0], -1)
        rows = encoded.repeat(reps, *(1,) * (encoded.ndim - 1))
        logp, _ = flow_log_prob(self._velocity(rows, mean.shape[1:]), z, solver or self.solver, hutchinson=True,
                                generator=new_generator(generator, device))
        spatial = mean[0, 0].numel()
        log_det = -spatial * torch.log(self.error_std).sum()
        return (logp + log_det).reshape(*lead, mean.shape[0])

    def _payload(self) -> dict[str, Any]:
        return {"state_dict": self.net.state_dict(), "network": self.net.config, "layout": self.layout,
                "error_std": self.error_std, "solver": self.solver, "history": self.history,
                "estimator": self.estimator}

    @classmethod
    def _from_payload(cls, payload: dict[str, Any]) -> FieldPosterior:
        net = FieldVelocity(config_from_data(FieldLayout, payload["layout"]),
                            config_from_data(FieldNetworkConfig, payload["network"]))
        net.load_state_dict(payload["state_dict"])
        history = None if payload["history"] is None else config_from_data(TrainingHistory, payload["history"])
        return cls(net, payload["error_std"], config_from_data(SolverConfig, payload["solver"]), history,
                   str(payload["estimator"]))
