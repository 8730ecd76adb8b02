"""A learned analysis step: an amortized posterior of the true state given the observation and the forecast.

The posterior is an :class:`~enff.amortized.FMPE` flow over the state ``x`` (flattened, ``d`` numbers)
conditioned on the *analysis context*: the observation ``y`` ``(n_obs,)``, the forecast ensemble mean
``(d,)`` and the forecast ensemble standard deviation ``(d,)``, concatenated into ``n_obs + 2 d`` numbers.
Training pairs come from twin-experiment run files, which store exactly these per cycle (``truth``,
``observation``, ``forecast_mean``, ``forecast_spread``), so any filter's runs teach the analysis.
The filter ``learned`` (:mod:`enff.filters.learned`) draws the analysis ensemble from the posterior at
the current context.

Why the ensemble summary and not each member: one draw per member from ``p(x | y, member i)`` carries the
forecast spread twice (once in the spread of the members, once in each conditional), so the analysis
ensemble would be too wide; ``N`` draws from ``p(x | y, mean, spread)`` do not.

Example
-------
>>> theta, context = analysis_training_set(["etkf_seed1.nc", "etkf_seed2.nc"], burn_in=100)
>>> posterior = fit_learned_analysis(theta, context)
>>> posterior.save("analysis.pt")                     # [filter] name = "learned", posterior = "analysis.pt"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.distributions import Distribution, Independent, Normal

from .fmpe import FMPE, FMPEPosterior
from .training import TrainingConfig

__all__ = ["analysis_context", "analysis_training_set", "fit_learned_analysis", "state_prior"]


def analysis_context(y: torch.Tensor, forecast_mean: torch.Tensor, forecast_spread: torch.Tensor) -> torch.Tensor:
    """Concatenate the observation and the forecast summary into the posterior's conditioning vector.

    Parameters
    ----------
    y:
        Observations, shape ``(..., n_obs)``.
    forecast_mean, forecast_spread:
        Ensemble mean and standard deviation (ddof 1) of the forecast, shape ``(..., *state)``.

    Returns
    -------
    Shape ``(..., n_obs + 2 d)`` with ``d`` the number of state values.
    """
    lead = y.shape[:-1]
    return torch.cat([y, forecast_mean.reshape(*lead, -1), forecast_spread.reshape(*lead, -1)], dim=-1)


def analysis_training_set(paths: Sequence[str | Path], burn_in: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(truth, context)`` from twin-experiment run files, one per complete cycle.

    Parameters
    ----------
    paths:
        Run files written by ``enff run`` with synthetic observations (they hold the truth). All must
        have the same state and observation sizes.
    burn_in:
        Cycles left out at the start of each file (the filter's transient); ``None`` (the default): each
        file's :func:`enff.summary.default_burn_in`, the first tenth of its complete cycles, as ``enff score``.

    Returns
    -------
    ``theta`` ``(cycles, d)`` float32 (the true states) and ``context`` ``(cycles, n_obs + 2 d)``
    (see :func:`analysis_context`). Cycles with missing observations keep their NaN entries, which
    :meth:`FMPE.fit` drops with a count.
    """
    from enff.runfile import open_run
    from enff.summary import resolve_burn_in

    if not paths:
        raise ValueError("analysis_training_set needs at least one run file")
    thetas, contexts = [], []
    for path in paths:
        try:
            run = open_run(path)
        except (OSError, ValueError, KeyError) as err:  # not netCDF, truncated, or no cycle_complete
            reason = str(err).partition("\n")[0].split(". ")[0][:200]
            raise ValueError(f"{path}: not a readable run file ({type(err).__name__}: {reason})") from None
        with run as ds:
            if "truth" not in ds:
                raise ValueError(f"{path}: no truth in this run file; learned analyses train on twin experiments")
            skip = resolve_burn_in(burn_in, ds.sizes["time"])
            ds = ds.isel(time=slice(skip, None))
            n = ds.sizes["time"]
            if n == 0:
                raise ValueError(f"{path}: no complete cycles after a burn-in of {skip}")

            def rows(name: str) -> torch.Tensor:
                return torch.as_tensor(np.asarray(ds[name].values, dtype=np.float32).reshape(n, -1))

            thetas.append(rows("truth"))
            contexts.append(analysis_context(rows("observation"), rows("forecast_mean"), rows("forecast_spread")))
    sizes = {(t.shape[1], c.shape[1]) for t, c in zip(thetas, contexts)}
    if len(sizes) != 1:
        raise ValueError(f"the run files disagree on (state size, context size): {sorted(sizes)}")
    return torch.cat(thetas), torch.cat(contexts)


def state_prior(theta: torch.Tensor, widen: float = 10.0) -> Distribution:
    """An unbounded Gaussian over states for :class:`~enff.amortized.FMPE`: the training states' mean and
    ``widen`` times their standard deviation per value. Only its support (all of R^d, so no sample is
    rejected) and its dimension are used by the learned analysis. ``theta``: ``(n, d)``."""
    scale = theta.std(0).clamp_min(1e-6) * widen
    return Independent(Normal(theta.mean(0), scale), 1)


def fit_learned_analysis(theta: torch.Tensor, context: torch.Tensor, training: TrainingConfig | None = None,
                         seed: int = 0) -> FMPEPosterior:
    """Train the learned analysis, an :class:`FMPE` posterior with the default network, on pairs from
    :func:`analysis_training_set` (``theta`` ``(n, d)``, ``context`` ``(n, n_obs + 2 d)``); ``training``
    defaults to ``TrainingConfig()``; ``seed`` seeds the weights, the split and the batches."""
    return FMPE(state_prior(theta), training=training or TrainingConfig(), seed=seed).fit(theta, context)
