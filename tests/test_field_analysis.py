"""The learned field analysis end to end: training analyses simulated without files (the same cycles as
``enff run``), the posterior file (round trip, refused files, another layout refused), the ``learned`` filter on
any grid size of its layout with missing observations, and a cycling run."""

import numpy as np
import pytest
import torch
import xarray as xr

from enff.amortized import SolverConfig, TrainingConfig, load_posterior
from enff.amortized.field_analysis import FieldContext, FieldFMPE, FieldPosterior, FieldTrainingSet, observation_field
from enff.amortized.field_data import cycle_field_posterior, simulate_cycles, simulated_training_set
from enff.amortized.field_network import FieldLayout, FieldNetworkConfig
from enff.amortized.storage import FORMAT, PosteriorFileError
from enff.casefile import CaseError, parse_case
from enff.cycle import run_case
from enff.filters import get_filter
from enff.models.base import Grid
from enff.observations.operators import ATan, Identity, Subsample
from enff.observations.space import ObservationSpace

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = FieldNetworkConfig(channels=8, dilations=(1, 2), set_channels=2, time_features=2)
#: Two RK4 steps: the file, the shapes and the filter are under test here, not the accuracy of the ODE solution.
COARSE = SolverConfig(n_steps=2)


def _l96_case(small_case_text: str, *extra: str) -> str:
    """The small Lorenz-96 case, every second point observed, cycled by the LETKF."""
    return (small_case_text.replace('operator = "identity"', 'operator = "identity"\nstride = 2')
            .replace('name = "none"', 'name = "letkf"\nradius = 5.0\ninflation = 1.05') + "\n".join(extra))


def test_simulated_cycles_are_those_of_enff_run(small_case_text, tmp_path):
    case = parse_case(_l96_case(small_case_text))
    run_case(case, tmp_path / "run.nc", progress=False)
    cycles = list(simulate_cycles(case, seed=case.run.seed, cycles=case.run.cycles))
    with xr.open_dataset(tmp_path / "run.nc") as ds:
        assert len(cycles) == ds.sizes["time"] == 12
        for sim in cycles:
            row = ds.isel(time=sim.cycle - 1)
            assert np.array_equal(sim.truth.numpy(), row["truth"].values)
            assert np.array_equal(sim.observation.numpy(), row["observation"].values)
            assert np.allclose(sim.forecast.mean(0).numpy(), row["forecast_mean"].values, rtol=0, atol=1e-12)
    other = next(simulate_cycles(case, seed=case.run.seed + 1, cycles=1))
    assert not torch.equal(other.truth, cycles[0].truth)  # another seed is another truth


def test_simulated_training_set_places_observations_on_the_grid(small_case_text):
    case = parse_case(_l96_case(small_case_text))
    data = simulated_training_set(case, seeds=[1, 2], cycles=5, burn_in=2)
    assert data.size == 2 * 3 and data.layout == FieldLayout(1, 1)
    assert data.truth.shape == (6, 1, 40) and data.context.forecast.shape == (6, 10, 1, 40)
    assert data.truth.dtype == torch.float32
    assert torch.equal(data.context.mask[0, 0], (torch.arange(40) % 2 == 0).float())
    assert torch.all(data.context.observation[:, :, 1::2] == 0)
    with pytest.raises(ValueError, match="burn_in must be in"):
        simulated_training_set(case, seeds=[1], cycles=5, burn_in=5)


def test_observation_field_masks_missing_values_and_refuses_mixing_operators():
    grid = Grid(axes=(np.arange(8.0),), lengths=(8.0,))
    space = ObservationSpace(Subsample(2) | ATan(), torch.ones(4, dtype=torch.float64), grid, (8,))
    value, mask = observation_field(torch.tensor([0.5, float("nan"), -1.0, 2.0], dtype=torch.float64), space,
                                    FieldLayout(1, 1))
    assert torch.equal(mask, torch.tensor([[1.0, 0, 0, 0, 1, 0, 1, 0]], dtype=torch.float64))
    assert torch.equal(value, torch.tensor([[0.5, 0, 0, 0, -1.0, 0, 2.0, 0]], dtype=torch.float64))

    class Sum(Identity):
        def pointwise(self):
            return None

    with pytest.raises(ValueError, match="mixes state values"):
        observation_field(torch.zeros(8), ObservationSpace(Sum(), torch.ones(8), grid, (8,)), FieldLayout(1, 1))


def _toy_set(n: int, points: int, seed: int) -> FieldTrainingSet:
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn((n, 1, points), generator=gen)
    forecast = truth[:, None] + torch.randn((n, 6, 1, points), generator=gen)
    mask = (torch.rand((n, 1, points), generator=gen) < 0.5).float()
    y = (truth + 0.5 * torch.randn(truth.shape, generator=gen)) * mask
    return FieldTrainingSet(truth, FieldContext(y, mask, forecast), FieldLayout(1, 1))


def test_training_ignores_the_values_of_unobserved_points():
    data = _toy_set(32, 12, 3)
    nan = FieldContext(torch.where(data.context.mask > 0, data.context.observation, torch.tensor(float("nan"))),
                       data.context.mask, data.context.forecast)
    training = TrainingConfig(batch_size=16, max_epochs=1, progress=False)
    a = FieldFMPE(network=TINY, training=training, solver=COARSE).fit(data)
    b = FieldFMPE(network=TINY, training=training, solver=COARSE).fit(FieldTrainingSet(data.truth, nan, data.layout))
    for key, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[key]), key


@pytest.fixture(scope="module")
def posterior_file(tmp_path_factory):
    """A barely trained 1-D field posterior (the file and the filter, not its accuracy, are under test)."""
    training = TrainingConfig(batch_size=16, max_epochs=2, progress=False)
    posterior = FieldFMPE(network=TINY, training=training, solver=COARSE).fit(_toy_set(64, 16, 0))
    path = tmp_path_factory.mktemp("field") / "field.pt"
    posterior.save(path)
    return path


def test_posterior_file_round_trip(posterior_file):
    blob = torch.load(posterior_file, weights_only=True)
    assert blob["format"] == FORMAT and blob["class"] == "FieldPosterior"
    posterior = load_posterior(posterior_file)
    again = load_posterior(posterior_file)
    assert isinstance(posterior, FieldPosterior) and posterior.layout == FieldLayout(1, 1)
    assert posterior.net.config == TINY and len(posterior.history.validation_loss) == 2
    held_out = _toy_set(3, 24, 1)  # another grid size than the training one
    draws = posterior.sample(5, held_out.context, generator=torch.Generator().manual_seed(4))
    assert draws.shape == (5, 3, 1, 24) and bool(torch.isfinite(draws).all())
    assert torch.equal(draws, again.sample(5, held_out.context, generator=torch.Generator().manual_seed(4)))
    logp = posterior.log_prob(draws, held_out.context, generator=torch.Generator().manual_seed(5))
    assert logp.shape == (5, 3) and bool(torch.isfinite(logp).all())
    assert torch.equal(logp, again.log_prob(draws, held_out.context, generator=torch.Generator().manual_seed(5)))


def test_bad_posterior_files_are_refused_naming_the_file(tmp_path, small_case_text):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a posterior at all")
    with pytest.raises(PosteriorFileError, match="garbage.pt"):
        load_posterior(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": FORMAT, "class": "FieldPosterior", "payload": {"layout": {"fields": 1}}}, foreign)
    with pytest.raises(PosteriorFileError, match="foreign.pt: inconsistent FieldPosterior"):
        load_posterior(foreign)
    text = _l96_case(small_case_text).replace('name = "letkf"\nradius = 5.0\ninflation = 1.05',
                                              f'name = "learned"\nposterior = "{garbage}"')
    with pytest.raises(CaseError, match="garbage.pt"):
        parse_case(text)


def _space(shape: tuple[int, ...], lengths: tuple[float | None, ...], every: int = 2) -> ObservationSpace:
    grid = Grid(axes=tuple(np.arange(float(n)) for n in shape), lengths=lengths)
    operator = Subsample(every)
    n_obs = operator.output_size(shape)
    return ObservationSpace(operator, torch.ones(n_obs, dtype=torch.float64), grid, shape)


def test_a_posterior_of_another_layout_is_refused(posterior_file):
    filt = get_filter("learned", posterior=str(posterior_file))
    gen = torch.Generator().manual_seed(0)
    plane = _space((3, 8, 8), (None, 8.0, 8.0))
    with pytest.raises(ValueError, match=r"field.pt was trained for a 1-D grid, 1 field; this case's state of "
                                         r"shape \(3, 8, 8\) is a 2-D grid, 3 fields"):
        filt.analysis(torch.randn((4, 3, 8, 8), dtype=torch.float64), torch.zeros(plane.n_obs, dtype=torch.float64),
                      plane, generator=gen)
    l63 = _space((3,), (None,), every=1)
    with pytest.raises(ValueError, match="field.pt holds a field posterior .* periodic 1-D or 2-D grid"):
        filt.analysis(torch.randn((4, 3), dtype=torch.float64), torch.zeros(3, dtype=torch.float64), l63, generator=gen)


@pytest.mark.parametrize("points", [16, 40, 100])
def test_the_learned_filter_runs_on_any_grid_size_with_missing_observations(posterior_file, points):
    filt = get_filter("learned", posterior=str(posterior_file))
    space = _space((points,), (float(points),), every=4)
    forecast = torch.randn((7, points), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(space.n_obs, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y[::3] = float("nan")
    a = filt.analysis(forecast, y, space, generator=torch.Generator().manual_seed(3)).ensemble
    b = filt.analysis(forecast, y, space, generator=torch.Generator().manual_seed(3)).ensemble
    assert a.shape == forecast.shape and a.dtype == forecast.dtype and bool(torch.isfinite(a).all())
    assert torch.equal(a, b)  # every draw from the filter's generator
    y[1] = float("nan")  # one more observation missing: another analysis
    assert not torch.equal(filt.analysis(forecast, y, space, generator=torch.Generator().manual_seed(3)).ensemble, a)


def test_a_cycling_run_with_the_learned_field_analysis(small_case_text, tmp_path):
    """Trained on LETKF cycles of two training truths, the learned analysis cycles on a held-out truth,
    writing a run file (the accuracy of a trained network is measured in benchmarks, not here)."""
    case = parse_case(_l96_case(small_case_text))
    data = simulated_training_set(case, seeds=[1, 2], cycles=12, burn_in=2)
    training = TrainingConfig(batch_size=8, max_epochs=2, progress=False)
    path = tmp_path / "l96.pt"
    FieldFMPE(network=TINY, training=training, solver=COARSE).fit(data).save(path)
    learned = parse_case(_l96_case(small_case_text, "[filters.learned]", f'posterior = "{path}"'),
                         filter_name="learned")
    summary = run_case(learned, tmp_path / "learned.nc", progress=False)
    assert summary.cycles_done == 12
    with xr.open_dataset(tmp_path / "learned.nc") as ds:
        assert bool(np.isfinite(ds["analysis_mean"].values).all())


def test_enff_learn_a_field_analysis_from_a_case_and_run_it(small_case_text, tmp_path, capsys):
    from enff.cli import main

    case_file = tmp_path / "l96.toml"
    case_file.write_text(_l96_case(small_case_text).replace("cycles = 12", "cycles = 4"))
    out = tmp_path / "field.pt"
    assert main(["learn", "--case", str(case_file), "--seeds", "1", "2", "--cycles", "6", "--burn-in", "1",
                 "--max-epochs", "1", "--out", str(out)]) == 0
    assert "field analysis for a 1-D grid, 1 field (any grid size), 10 analyses" in capsys.readouterr().out
    assert isinstance(load_posterior(out), FieldPosterior)
    assert main(["run", str(case_file), "--filter", "learned", "--set", f"filter.posterior='{out}'",
                 "--out", str(tmp_path / "run.nc"), "--quiet"]) == 0
    assert main(["learn", "--out", str(out)]) == 2
    assert "run files or --case" in capsys.readouterr().err



def test_cycling_a_posterior_on_its_own_analyses_keeps_each_seeds_truth_and_observations(small_case_text, posterior_file):
    """Seeds cycled together in one batch: each seed's truths, observations and first forecast are those of
    ``enff run`` with that seed (simulate_cycles), the kept analyses are seed-major, and scores are per seed."""
    case = parse_case(_l96_case(small_case_text))
    posterior = load_posterior(posterior_file)
    run = cycle_field_posterior(case, posterior, [1, 2], 6, burn_in=2, generator=torch.Generator().manual_seed(0))
    assert run.data.size == 2 * 4 and run.rmse.shape == run.spread.shape == (2, 6)
    assert bool((run.spread > 0).all()) and bool(torch.isfinite(run.rmse).all())
    for i, seed in enumerate([1, 2]):
        reference = list(simulate_cycles(case, seed=seed, cycles=6))
        for j, sim in enumerate(reference[2:]):
            row = i * 4 + j
            assert torch.allclose(run.data.truth[row, 0], sim.truth.float(), rtol=0, atol=1e-6)
            assert torch.equal(run.data.context.mask[row, 0], (torch.arange(40) % 2 == 0).float())
            assert torch.allclose(run.data.context.observation[row, 0, ::2], sim.observation.float(), rtol=0, atol=1e-6)
        first = cycle_field_posterior(case, posterior, [seed], 1, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(first.data.context.forecast[0, :, 0], reference[0].forecast.float(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="burn_in"):
        cycle_field_posterior(case, posterior, [1], 3, burn_in=3, generator=torch.Generator())


def test_fine_tuning_starts_from_a_posterior_in_its_own_coordinates(posterior_file):
    start = load_posterior(posterior_file)
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    data = _toy_set(32, 16, 7)
    data = FieldTrainingSet(data.truth * 3, FieldContext(data.context.observation, data.context.mask,
                                                         data.context.forecast * 3), data.layout)
    training = TrainingConfig(batch_size=16, max_epochs=1, progress=False)
    tuned = FieldFMPE(network=TINY, training=training, solver=COARSE).fit(data, start=start)
    assert torch.equal(tuned.error_std, start.error_std)  # the start's scale, not this data's (3 times larger)
    for key in ("state_mean", "state_std", "obs_mean", "obs_std"):
        assert torch.equal(tuned.net.state_dict()[key], before[key])
    assert any(not torch.equal(tuned.net.state_dict()[k], before[k]) for k in before)  # it trained
    assert all(torch.equal(start.net.state_dict()[k], before[k]) for k in before)  # the start is unchanged
    fresh = FieldFMPE(network=TINY, training=training, solver=COARSE).fit(data)
    assert not torch.equal(fresh.error_std, start.error_std)
    with pytest.raises(ValueError, match="cannot fine-tune"):
        FieldFMPE(network=FieldNetworkConfig(channels=4, dilations=(1,)), training=training).fit(data, start=start)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_learned_filter_runs_on_the_forecasts_device(posterior_file):
    filt = get_filter("learned", posterior=str(posterior_file))
    space = _space((32,), (32.0,), every=4)
    device = torch.device("cuda")
    space = ObservationSpace(space.operator, space.std.to(device), space.grid, space.state_shape)
    forecast = torch.randn((6, 32), dtype=torch.float64, device=device)
    y = torch.randn(space.n_obs, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    analysis = filt.analysis(forecast, y, space, generator=gen).ensemble
    assert analysis.device.type == "cuda" and analysis.shape == forecast.shape and analysis.dtype == forecast.dtype
