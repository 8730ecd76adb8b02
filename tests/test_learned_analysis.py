"""The learned analysis step: against the Kalman analysis on a linear-Gaussian problem, in a cycling run,
its training set from run files, the CLI, and bad input."""

import numpy as np
import pytest
import torch
import xarray as xr

from enff.amortized import FMPE, NetworkConfig, TrainingConfig
from enff.amortized.analysis import analysis_context, analysis_training_set, state_prior
from enff.casefile import CaseError, parse_case
from enff.cli import main
from enff.cycle import run_case
from enff.filters import get_filter
from enff.models.base import Grid
from enff.observations.operators import Identity
from enff.observations.space import ObservationSpace

pytestmark = pytest.mark.usefixtures("one_thread")

OBS_STD = 0.5


def _space(d: int) -> ObservationSpace:
    grid = Grid(axes=(np.arange(d, dtype=np.float64),), lengths=(float(d),))
    return ObservationSpace(Identity(), torch.full((d,), OBS_STD, dtype=torch.float64), grid, (d,))


def _kalman(y: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value Kalman analysis mean and std for prior N(mean, spread^2) and y = x + N(0, OBS_STD^2)."""
    gain = spread**2 / (spread**2 + OBS_STD**2)
    return mean + gain * (y - mean), (gain * OBS_STD**2).sqrt()


@pytest.fixture(scope="module")
def linear_gaussian(tmp_path_factory):
    """A learned analysis for d = 2: truth ~ N(forecast mean, forecast spread^2), y = truth + N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(0)
    n, d = 10000, 2
    mean = torch.randn((n, d), generator=gen)
    spread = 0.4 + 0.8 * torch.rand((n, d), generator=gen)
    truth = mean + spread * torch.randn((n, d), generator=gen)
    y = truth + OBS_STD * torch.randn((n, d), generator=gen)
    estimator = FMPE(state_prior(truth), network=NetworkConfig(hidden_features=(64, 64, 64)),
                     training=TrainingConfig(batch_size=128, max_epochs=150, patience=20, progress=False))
    path = tmp_path_factory.mktemp("learned") / "analysis.pt"
    estimator.fit(truth, analysis_context(y, mean, spread)).save(path)
    return path


def _forecast(mean: torch.Tensor, spread: torch.Tensor, members: int, gen: torch.Generator) -> torch.Tensor:
    """An ensemble whose mean and std (ddof 1) are exactly ``mean`` and ``spread``."""
    raw = torch.randn((members, mean.numel()), generator=gen, dtype=torch.float64)
    raw = (raw - raw.mean(0)) / raw.std(0)
    return mean + spread * raw


@pytest.mark.parametrize("mean, spread, y", [
    ([0.5, -1.0], [0.6, 1.0], [1.2, -0.4]),
    ([-0.3, 0.8], [1.1, 0.5], [-1.5, 0.9]),
])
def test_learned_analysis_matches_the_kalman_analysis(linear_gaussian, mean, spread, y):
    mean, spread, y = (torch.tensor(v, dtype=torch.float64) for v in (mean, spread, y))
    gen = torch.Generator().manual_seed(1)
    forecast = _forecast(mean, spread, 4000, gen)
    analysis = get_filter("learned", posterior=str(linear_gaussian)).analysis(forecast, y, _space(2),
                                                                               generator=gen).ensemble
    assert analysis.shape == forecast.shape and analysis.dtype == forecast.dtype
    kalman_mean, kalman_std = _kalman(y, mean, spread)
    assert torch.allclose(analysis.mean(0), kalman_mean, atol=0.06)
    assert torch.allclose(analysis.std(0), kalman_std, rtol=0.12)


def test_learned_analysis_is_reproducible_from_the_generator(linear_gaussian):
    forecast = _forecast(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 20,
                         torch.Generator().manual_seed(0))
    filt = get_filter("learned", posterior=str(linear_gaussian))
    y = torch.tensor([0.3, -0.2], dtype=torch.float64)
    a = filt.analysis(forecast, y, _space(2), generator=torch.Generator().manual_seed(5)).ensemble
    b = filt.analysis(forecast, y, _space(2), generator=torch.Generator().manual_seed(5)).ensemble
    assert torch.equal(a, b)


def test_learned_analysis_rejects_missing_observations_and_other_sizes(linear_gaussian):
    filt = get_filter("learned", posterior=str(linear_gaussian))
    forecast = torch.randn((10, 2), dtype=torch.float64)
    with pytest.raises(ValueError, match="missing observations"):
        filt.analysis(forecast, torch.tensor([0.1, float("nan")], dtype=torch.float64), _space(2),
                      generator=torch.Generator())
    with pytest.raises(ValueError, match="trained for states of 2 values"):
        filt.analysis(torch.randn((10, 3), dtype=torch.float64), torch.zeros(3, dtype=torch.float64), _space(3),
                      generator=torch.Generator())


def test_learned_filter_needs_an_existing_posterior_file(small_case_text, tmp_path):
    with pytest.raises(ValueError, match="needs posterior"):
        get_filter("learned")
    text = small_case_text.replace('name = "none"', f'name = "learned"\nposterior = "{tmp_path / "nope.pt"}"')
    with pytest.raises(CaseError, match="does not exist"):
        parse_case(text)


L63_CASE = """
[model]
name = "lorenz63"
dt = 0.05

[observations]
operator = "identity"
every = 2
std = 2.0

[ensemble]
size = 20

[filter]
name = "etkf"
inflation = 1.02

[run]
spinup = 500
cycles = 1000
seed = 1
"""


def test_training_set_from_run_files_and_a_cycling_run(tmp_path, capsys):
    """ETKF run files -> `enff learn` -> a Lorenz-63 cycling run with the learned analysis that tracks the truth."""
    runs = []
    for seed in (1, 2):
        runs.append(tmp_path / f"etkf_{seed}.nc")
        run_case(parse_case(L63_CASE, overrides=[f"run.seed={seed}"]), runs[-1], progress=False)
    theta, context = analysis_training_set(runs, burn_in=50)
    assert theta.shape == (1900, 3) and context.shape == (1900, 3 + 2 * 3)
    assert analysis_training_set(runs)[0].shape == (2 * (1000 - 1000 // 10), 3)  # default: enff score's burn-in
    assert torch.equal(theta[0], torch.as_tensor(xr.open_dataset(runs[0])["truth"][50].values, dtype=torch.float32))
    assert main(["learn", *map(str, runs), "--burn-in", "50", "--max-epochs", "60", "--progress",
                 "--out", str(tmp_path / "l63.pt")]) == 0
    printed = capsys.readouterr()
    assert "1900 pairs" in printed.out
    assert "training" in printed.err  # --progress shows the bar without a terminal too
    with pytest.raises(ValueError, match="no complete cycles after a burn-in of 1000"):
        analysis_training_set(runs, burn_in=1000)
    held_out = ["run.seed=0", "run.cycles=200"]
    learned = run_case(parse_case(L63_CASE, filter_name="learned",
                                  overrides=[*held_out, f"filter.posterior='{tmp_path / 'l63.pt'}'"]),
                       tmp_path / "learned.nc", progress=False)
    free = run_case(parse_case(L63_CASE, filter_name="none", overrides=held_out), tmp_path / "free.nc",
                    progress=False)

    def rmse(path):
        return float(xr.open_dataset(path)["rmse_analysis"][20:].mean())

    assert learned.cycles_done == 200
    # observation error std is 2; a free ensemble's error is the climatological spread (~7.4). The learned
    # analysis samples its members, so its RMSE depends on the filter's random stream: 1.04 when the filter
    # shared the observations' stream, 1.44 on its own stream (Stream.FILTER); tracking is below 0.75 x the
    # observation error and a quarter of the free run's
    assert rmse(learned.path) < 1.5 < 0.25 * rmse(free.path)


def test_learn_reports_bad_input(tmp_path, capsys):
    assert main(["learn", str(tmp_path / "missing.nc"), "--out", str(tmp_path / "a.pt")]) != 0
    assert "no such run file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one run file"):
        analysis_training_set([])
