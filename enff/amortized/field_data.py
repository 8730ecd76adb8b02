"""Training analyses by simulation, without writing files: cycle a case's model with a cheap filter.

:func:`simulate_cycles` runs the twin experiment of a case exactly as ``enff run`` does (the same spin-up,
the same seeded random streams of :class:`enff.cycle.Stream`, so seed ``s`` gives the truths, observations and
forecasts of ``enff run`` with ``run.seed = s`` and the same filter) and yields, per cycle, the truth, the
observation and the forecast ensemble that the analysis sees. :func:`simulated_training_set` gathers them
over seeds into a :class:`~enff.amortized.field_analysis.FieldTrainingSet`; give training and held-out
scoring disjoint seeds (other truths).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from enff.config import Case
from enff.filters.base import Filter

from .field_analysis import FieldContext, FieldTrainingSet, observation_field
from .field_network import FieldLayout

__all__ = ["SimulatedCycle", "simulate_cycles", "simulated_training_set"]


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
