"""The cycle runner: spin-up, then forecast -> observe -> analysis -> score -> write, cycle by cycle.

This is the only module that knows the model, the observations and the filter together. Every random
draw comes from a generator seeded from ``(run seed, stream, cycle)``, so a resumed run continues
exactly as if it had never stopped.
"""

from __future__ import annotations

import time as wallclock
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import enff
from enff import scores
from enff.casefile import Case
from enff.preflight import check_observations_unchanged, observation_checksum
from enff.runfile import CycleRecord, RunFile

__all__ = ["Divergence", "Experiment", "RunSummary", "run_case", "seeded_generator"]

_TRUTH_STREAM, _ENSEMBLE_STREAM, _CYCLE_STREAM = 0, 1, 2
#: Largest state size for which the full analysis ensemble is written by default.
AUTO_SAVE_ANALYSIS_MAX_STATE = 5000


class Divergence(RuntimeError):
    """The forecast or analysis became non-finite; ``cycle`` is the 1-based cycle number."""

    def __init__(self, cycle: int, what: str) -> None:
        super().__init__(f"run diverged at cycle {cycle}: the {what} ensemble has non-finite values")
        self.cycle = cycle


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run produced."""

    path: Path
    cycles_done: int
    scores: dict[str, float]


def seeded_generator(seed: int, stream: int, cycle: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, stream, cycle)`` by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(stream), int(cycle)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


class Experiment:
    """A case made concrete: model, observation space, error model and filter on one device."""

    def __init__(self, case: Case) -> None:
        from enff.observations.config import operator_from_config
        from enff.observations.error import GaussianError
        from enff.observations.sources import NetCDFObservations, SyntheticObservations

        self.case = case
        run = case.run
        self.device = torch.device(run["device"])
        self.dtype = torch.float64 if run["dtype"] == "float64" else torch.float32
        self.model = case.build_model()
        self.filter = case.build_filter()
        obs_cfg = case.observations
        self.every = int(obs_cfg["every"])
        self.source: SyntheticObservations | NetCDFObservations
        if obs_cfg.get("source", "synthetic") == "file":
            self.source = NetCDFObservations(obs_cfg["file"], self.model.state_shape)
        else:
            operator = operator_from_config(obs_cfg, self.model.state_shape)
            self.source = SyntheticObservations(operator, GaussianError(obs_cfg["std"]), self.model.state_shape)
        #: Twin experiments know the truth; real observations do not.
        self.has_truth = isinstance(self.source, SyntheticObservations)
        self.space = self.source.space(self.model.grid, dtype=self.dtype, device=self.device)
        ens = case.ensemble
        self.n_members = int(ens["size"])
        self.initial_mean = ens.get("initial_mean", "truth")
        self.initial_std = float(ens.get("initial_std", 1.0))
        self.seed = int(run["seed"])
        self.cycles = int(run["cycles"])
        if not self.has_truth and self.cycles > self.source.n_times:
            raise ValueError(f"run.cycles is {self.cycles} but {obs_cfg['file']} holds {self.source.n_times} observation times")
        self.spinup = int(run["spinup"])
        d = int(np.prod(self.model.state_shape))
        save = run["save_analysis"]
        self.save_analysis = d <= AUTO_SAVE_ANALYSIS_MAX_STATE if save == "auto" else bool(save)
        self.save_forecast = bool(run["save_forecast"])

    def generator(self, stream: int, cycle: int = 0) -> torch.Generator:
        return seeded_generator(self.seed, stream, cycle, self.device)

    def initial_condition(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Truth after the spin-up ``(*state)`` (``None`` for real observations) and the initial
        ensemble ``(member, *state)``."""
        truth = None
        if self.has_truth:
            truth = self.model.initial_state(self.generator(_TRUTH_STREAM), 1, dtype=self.dtype, device=self.device)
            if self.spinup:
                truth = self.model.step(truth, self.spinup)
        gen = self.generator(_ENSEMBLE_STREAM)
        noise = torch.randn((self.n_members, *self.model.state_shape), generator=gen, dtype=self.dtype,
                            device=self.device)
        centre = truth if self.initial_mean == "truth" and truth is not None else 0.0
        return (None if truth is None else truth[0]), centre + self.initial_std * noise

    def attributes(self) -> dict[str, Any]:
        """Global attributes that make the file alone enough to reproduce the run."""
        return {
            "title": f"enff cycling run: {self.model.__class__.__name__} with filter {self.filter.name}",
            "source": f"enff {enff.__version__}",
            "enff_version": enff.__version__,
            "case": self.case.to_toml(),
            "case_source": self.case.source,
            "model": repr(self.model.params),
            "filter": repr(self.filter),
            "seed": self.seed,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "observation_every_steps": self.every,
            **observation_checksum(self.case),
            "history": f"{wallclock.strftime('%Y-%m-%dT%H:%M:%SZ', wallclock.gmtime())} created by enff run",
        }

    def create_file(self, path: Path) -> RunFile:
        return RunFile.create(
            path,
            state_dims=self.model.state_dims,
            coords=self.model.coords(),
            state_attrs={"units": self.model.units},
            n_members=self.n_members,
            obs_index=self.space.state_index,
            obs_locations=self.space.locations,
            dtype=np.dtype("float64" if self.dtype == torch.float64 else "float32"),
            has_truth=self.has_truth,
            save_analysis=self.save_analysis,
            save_forecast=self.save_forecast,
            diagnostic_names=self.filter.diagnostic_names,
            attrs=self.attributes(),
        )

    def cycle(self, k: int, truth: torch.Tensor | None, ensemble: torch.Tensor
              ) -> tuple[torch.Tensor | None, torch.Tensor, CycleRecord, dict[str, float]]:
        """Run cycle ``k`` (1-based) from the previous truth ``(*state)`` (``None`` for real observations)
        and analysis ``(member, *state)``; returns the new truth and analysis, the record and diagnostics."""
        gen = self.generator(_CYCLE_STREAM, k)
        forecast = self.model.step(ensemble, self.every)
        if not bool(torch.isfinite(forecast).all()):
            raise Divergence(k, "forecast")
        if truth is not None:
            truth = self.model.step(truth[None], self.every)[0]
            y = self.source.observe(truth, gen)
        else:
            y = self.source.observation(k - 1, dtype=self.dtype, device=self.device)
        diagnostics: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = wallclock.perf_counter()
        analysis = self.filter.analysis(forecast, y, self.space, previous=ensemble, generator=gen,
                                        diagnostics=diagnostics)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = wallclock.perf_counter() - start
        if not bool(torch.isfinite(analysis).all()):
            raise Divergence(k, "analysis")
        record = self.record(k, truth, y, forecast, analysis, seconds)
        return truth, analysis, record, diagnostics

    def record(self, k: int, truth: torch.Tensor | None, y: torch.Tensor, forecast: torch.Tensor,
               analysis: torch.Tensor, seconds: float) -> CycleRecord:
        """Scores and ensemble statistics of cycle ``k`` as numpy arrays for the run file."""

        def cpu(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        values = {"spread_forecast": scores.spread(forecast), "spread_analysis": scores.spread(analysis)}
        if truth is not None:
            values.update({
                "rmse_forecast": scores.rmse(forecast, truth),
                "rmse_analysis": scores.rmse(analysis, truth),
                "crps_forecast": scores.crps_fair(forecast, truth),
                "crps_analysis": scores.crps_fair(analysis, truth),
                "energy_score_analysis": scores.energy_score_fair(analysis, truth),
            })
        scalars = {name: float(v) for name, v in values.items()}
        scalars["analysis_seconds"] = seconds
        return CycleRecord(
            time=k * self.every * self.model.dt,
            truth=None if truth is None else cpu(truth),
            observation=cpu(y),
            forecast_mean=cpu(forecast.mean(0)),
            forecast_spread=cpu(forecast.std(0)),
            analysis_mean=cpu(analysis.mean(0)),
            analysis_spread=cpu(analysis.std(0)),
            scalars=scalars,
            rank_counts=None if truth is None else cpu(scores.rank_counts(analysis, truth)),
            analysis=cpu(analysis) if self.save_analysis else None,
            forecast=cpu(forecast) if self.save_forecast else None,
        )


def run_case(
    case: Case,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> RunSummary:
    """Run (or resume) ``case``, writing the run file ``out`` cycle by cycle.

    Parameters
    ----------
    resume:
        Continue the run stored in ``out`` after its last complete cycle. The case must be the one stored
        in the file.
    overwrite:
        Replace an existing ``out``; without it (and without ``resume``) an existing file is an error.
    progress:
        Show a progress bar; ``None`` shows it only on a terminal.

    Raises
    ------
    Divergence
        When the forecast or analysis becomes non-finite; every earlier cycle is in the file.
    """
    out = Path(out)
    exp = Experiment(case)
    if resume:
        if not out.is_file():
            raise FileNotFoundError(f"{out}: cannot resume, no such run file")
        writer, point = RunFile.reopen(out)
        stored = point.attrs.get("case", "")
        if stored != case.to_toml():
            writer.close()
            raise ValueError(f"{out}: the file was written by a different case; resume with the case stored in it")
        try:
            check_observations_unchanged(out, point.attrs, case)
        except ValueError:
            writer.close()
            raise
        cycles_done = point.cycles_done
        truth = None if point.truth is None else torch.as_tensor(point.truth, device=exp.device, dtype=exp.dtype)
        ensemble = torch.as_tensor(point.analysis, device=exp.device, dtype=exp.dtype)
    else:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
        out.parent.mkdir(parents=True, exist_ok=True)
        truth, ensemble = exp.initial_condition()
        writer = exp.create_file(out)
        writer.write_restart(0, None if truth is None else truth.cpu().numpy(), ensemble.cpu().numpy())
        cycles_done = 0
    bar = tqdm(total=exp.cycles, initial=cycles_done, desc=f"{exp.filter.name}", unit="cycle",
               disable=None if progress is None else not progress)
    last: dict[str, float] = {}
    try:
        for k in range(cycles_done + 1, exp.cycles + 1):
            truth, ensemble, record, diagnostics = exp.cycle(k, truth, ensemble)
            writer.write_restart(k, record.truth, ensemble.detach().cpu().numpy())
            writer.write_cycle(k - 1, record, diagnostics)
            last = record.scalars
            cycles_done = k
            bar.set_postfix(rmse=f"{last.get('rmse_analysis', float('nan')):.4g}",
                            spread=f"{last['spread_analysis']:.4g}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    return RunSummary(out, cycles_done, last)
