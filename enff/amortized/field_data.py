"""Training analyses by simulation, without writing files: cycle a case's model with a cheap filter.

:func:`simulate_cycles` runs the twin experiment of a case exactly as ``enff run`` does (the same spin-up,
the same seeded random streams of :class:`enff.cycle.Stream`, so seed ``s`` gives the truths, observations and
forecasts of ``enff run`` with ``run.seed = s`` and the same filter) and yields, per cycle, the truth, the
observation and the forecast ensemble that the analysis sees. :func:`simulated_training_set` gathers them
over seeds into a :class:`~enff.amortized.field_analysis.FieldTrainingSet`; give training and held-out
scoring disjoint seeds (other truths).

:func:`cycle_field_posterior` cycles a field posterior on its *own* analyses, many seeds at once (one batch),
and returns both the inputs of its analyses (training pairs from the forecasts it meets in cycling, the
distribution it is scored on: rounds of these are DAgger-style training) and its scores per seed and cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from enff.config import Case
from enff.filters.base import Filter

from .field_analysis import FieldContext, FieldPosterior, FieldTrainingSet, observation_field
from .field_network import FieldLayout

__all__ = ["CycledPosterior", "SimulatedCycle", "cycle_field_posterior", "simulate_cycles", "simulated_training_set"]


@dataclass(frozen=True)
class SimulatedCycle:
    """One analysis of a simulated twin experiment.

    Attributes
    ----------
    cycle:
        1-based cycle number.
    truth:
        True state at the analysis time, ``(*state_shape)``.
    observation:
        Observations, ``(n_obs,)`` (NaN where missing).
    forecast:
        Forecast ensemble, ``(member, *state_shape)``.
    """

    cycle: int
    truth: torch.Tensor
    observation: torch.Tensor
    forecast: torch.Tensor


def simulate_cycles(case: Case, seed: int, cycles: int, *, filter: Filter | None = None) -> Iterator[SimulatedCycle]:
    """Cycle ``case`` with run seed ``seed`` for ``cycles`` cycles, yielding every analysis's inputs.

    Parameters
    ----------
    case:
        A twin-experiment case (synthetic observations); its ensemble, spin-up, device and dtype are used.
    seed:
        Run seed: every random draw comes from the generators :class:`enff.cycle.Experiment` derives from it.
    cycles:
        Number of cycles (>= 1).
    filter:
        The filter that makes the analyses between forecasts (default: the case's ``[filter]``).

    Raises ``ValueError`` for a case with real observations and ``enff.cycle.Divergence`` when the forecast or
    the analysis becomes non-finite.
    """
    from enff.cycle import Divergence, Experiment, Stream

    if int(cycles) < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles!r}")
    exp = Experiment(case.with_tables(run={**case.tables["run"], "seed": int(seed)}))
    if not exp.has_truth:
        raise ValueError(f"{case.where}: training analyses need a twin experiment (synthetic observations)")
    analysis_filter = filter or exp.filter
    truth, ensemble = exp.initial_condition(progress=False)
    for k in range(1, int(cycles) + 1):
        forecast = exp.model.step(ensemble, exp.every)
        if not bool(torch.isfinite(forecast).all()):
            raise Divergence(k, "forecast")
        truth = exp.model.step(truth[None], exp.every)[0]
        y = exp.observations.observe(k, truth, exp.generator(Stream.OBSERVATION, k), dtype=exp.dtype,
                                     device=exp.device)
        yield SimulatedCycle(k, truth, y, forecast)
        ensemble = analysis_filter.analysis(forecast, y, exp.space, previous=ensemble,
                                            generator=exp.generator(Stream.FILTER, k)).ensemble
        if not bool(torch.isfinite(ensemble).all()):
            raise Divergence(k, "analysis")


def simulated_training_set(case: Case, seeds: Iterable[int], cycles: int, *, burn_in: int = 0,
                           filter: Filter | None = None) -> FieldTrainingSet:
    """The analyses of :func:`simulate_cycles` for each of ``seeds``, cycles ``burn_in + 1 .. cycles``,
    as a float32 :class:`FieldTrainingSet` on the case's device (``(seeds x kept cycles)`` analyses)."""
    if not 0 <= int(burn_in) < int(cycles):
        raise ValueError(f"burn_in must be in [0, cycles={cycles}), got {burn_in!r}")
    layout = FieldLayout.of(case.model.grid)
    space = case.observations.space(case.model.grid, dtype=case.run.torch_dtype, device=case.run.torch_device)
    parts = []
    for seed in seeds:
        truths, values, masks, forecasts = [], [], [], []
        for sim in simulate_cycles(case, seed, cycles, filter=filter):
            if sim.cycle <= burn_in:
                continue
            value, mask = observation_field(sim.observation, space, layout)
            truths.append(layout.to_channels(sim.truth[None])[0])
            values.append(value)
            masks.append(mask)
            forecasts.append(layout.to_channels(sim.forecast))
        truth, value, mask, forecast = (torch.stack(items).float() for items in (truths, values, masks, forecasts))
        parts.append(FieldTrainingSet(truth, FieldContext(value, mask, forecast), layout))
    if not parts:
        raise ValueError("simulated_training_set needs at least one seed")
    return FieldTrainingSet.concatenate(parts)


@dataclass(frozen=True)
class CycledPosterior:
    """A field posterior cycled on its own analyses (:func:`cycle_field_posterior`).

    Attributes
    ----------
    data:
        Truth, observation and forecast ensemble of the kept analyses (cycles ``burn_in + 1 .. cycles``),
        seed-major: ``seeds x kept cycles`` analyses, float32, on the case's device.
    rmse, spread:
        Analysis RMSE of the ensemble mean and ensemble spread (:func:`enff.scores.rmse`, :func:`~enff.scores.spread`)
        of every cycle, ``(seed, cycle)`` float64 on the CPU, the first cycle in column 0.
    """

    data: FieldTrainingSet
    rmse: torch.Tensor
    spread: torch.Tensor


def cycle_field_posterior(case: Case, posterior: FieldPosterior, seeds: Iterable[int], cycles: int, *,
                          generator: torch.Generator, burn_in: int = 0) -> CycledPosterior:
    """Cycle the learned analysis ``posterior`` on the twin experiments of ``case`` for every one of ``seeds`` at once.

    Truths, observations and initial ensembles are those of ``enff run`` with ``run.seed = s`` (the run's
    seeded streams, as in :func:`simulate_cycles`), so a classical filter's scores on the same seeds are on the
    same truths and observations. The analyses of all seeds are one batch of the network: each seed's
    ``N`` members are ``N`` draws of the posterior at that seed's context (the draws come from ``generator``,
    not from the run's filter stream, so they are not those of ``enff run --filter learned``; their law is).

    Parameters
    ----------
    case:
        A twin-experiment case of the posterior's field layout (its ensemble size, spin-up, device and dtype).
    posterior:
        The field posterior that makes every analysis.
    seeds:
        Run seeds (at least one).
    cycles:
        Cycles per seed (>= 1).
    generator:
        Source of the posterior's base draws, on the case's device.
    burn_in:
        Analyses of cycles ``1 .. burn_in`` are not kept in :attr:`CycledPosterior.data` (they are scored).

    Raises ``enff.cycle.Divergence`` when any seed's forecast or analysis becomes non-finite.
    """
    from enff.cycle import Divergence, Experiment, Stream
    from enff.scores import rmse, spread

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("cycle_field_posterior needs at least one seed")
    if int(cycles) < 1 or not 0 <= int(burn_in) < int(cycles):
        raise ValueError(f"need cycles >= 1 and 0 <= burn_in < cycles, got cycles={cycles!r}, burn_in={burn_in!r}")
    layout = FieldLayout.of(case.model.grid)
    if layout != posterior.layout:
        raise ValueError(f"the posterior was trained for a {posterior.layout.describe()}; {case.where} is a "
                         f"{layout.describe()}")
    runs = [Experiment(case.with_tables(run={**case.tables["run"], "seed": s})) for s in seeds]
    if not all(exp.has_truth for exp in runs):
        raise ValueError(f"{case.where}: cycling needs a twin experiment (synthetic observations)")
    model, space, every = runs[0].model, runs[0].space, runs[0].every
    starts = [exp.initial_condition(progress=False) for exp in runs]
    truth = torch.stack([t for t, _ in starts])  # (seed, *state)
    ensemble = torch.stack([e for _, e in starts])  # (seed, member, *state)
    members, state_shape = ensemble.shape[1], ensemble.shape[2:]
    kept: list[tuple[torch.Tensor, ...]] = []
    scores = torch.zeros(2, len(seeds), int(cycles), dtype=torch.float64)
    for k in range(1, int(cycles) + 1):
        forecast = model.step(ensemble.reshape(-1, *state_shape), every).reshape(ensemble.shape)
        if not bool(torch.isfinite(forecast).all()):
            raise Divergence(k, "forecast")
        truth = model.step(truth, every)
        fields = [observation_field(exp.observations.observe(k, t, exp.generator(Stream.OBSERVATION, k),
                                                             dtype=exp.dtype, device=exp.device), space, layout)
                  for exp, t in zip(runs, truth)]
        value, mask = (torch.stack(parts) for parts in zip(*fields))  # (seed, F, *spatial)
        context = FieldContext(value, mask, torch.stack([layout.to_channels(f) for f in forecast]))
        if k > burn_in:
            kept.append((layout.to_channels(truth).float(), value.float(), mask.float(), context.forecast.float()))
        draws = posterior.sample(members, context, generator=generator)  # (member, seed, F, *spatial)
        ensemble = draws.transpose(0, 1).reshape(ensemble.shape).to(dtype=ensemble.dtype)
        if not bool(torch.isfinite(ensemble).all()):
            raise Divergence(k, "analysis")
        for i, (member_states, t) in enumerate(zip(ensemble, truth)):
            scores[0, i, k - 1] = float(rmse(member_states, t))
            scores[1, i, k - 1] = float(spread(member_states))
    # seed-major order of the kept analyses
    truths, values, masks, forecasts = (torch.stack(items, dim=1).flatten(0, 1) for items in zip(*kept))
    data = FieldTrainingSet(truths, FieldContext(values, masks, forecasts), layout)
    return CycledPosterior(data, scores[0], scores[1])
