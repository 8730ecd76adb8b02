"""The cycle runner and its run file: layout, divergence, and exact kill-and-resume."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

from enff.casefile import parse_case
from enff.cli import main
from enff.cycle import Divergence, run_case
from enff.filters import FILTERS, Analysis, Filter, register
from enff.runfile import open_run

if "test-nan-at-cycle-3" not in FILTERS:

    @register("test-nan-at-cycle-3")
    @dataclass(frozen=True)
    class _NanAtThirdCycle(Filter):
        """Counts calls and returns NaN on the third (a deliberately diverging filter for tests)."""

        calls: list = None  # type: ignore[assignment]

        def analysis(self, forecast, y, obs, *, previous=None, generator):
            _NanAtThirdCycle.count = getattr(_NanAtThirdCycle, "count", 0) + 1
            return Analysis(forecast * float("nan") if _NanAtThirdCycle.count == 3 else forecast.clone())


def test_run_file_layout(tmp_path, small_case_text):
    case = parse_case(small_case_text)
    out = tmp_path / "run.nc"
    summary = run_case(case, out, progress=False)
    assert summary.cycles_done == 12
    with netCDF4.Dataset(out) as raw:
        assert raw.data_model == "NETCDF3_64BIT_OFFSET"
        assert raw.dimensions["time"].isunlimited()
    ds = open_run(out)
    assert ds.sizes["time"] == 12 and ds.sizes["member"] == 10 and ds.sizes["x"] == 40
    assert ds["member"].attrs["standard_name"] == "realization"
    assert ds.attrs["Conventions"].startswith("CF-")
    for name in ("case", "enff_version", "seed", "device", "dtype", "threads"):
        assert name in ds.attrs
    assert parse_case(ds.attrs["case"]).tables == case.tables  # the file alone reproduces the run
    assert ds["truth"].dims == ("time", "x")
    assert ds["analysis"].dims == ("time", "member", "x")
    assert ds["observation"].dims == ("time", "obs") and "obs_x" in ds["observation"].coords
    for name in ("forecast_mean", "forecast_spread", "analysis_mean", "analysis_spread"):
        assert ds[name].dims == ("time", "x") and ds[name].attrs["long_name"]
    for name in ("rmse_forecast", "rmse_analysis", "spread_analysis", "crps_analysis", "analysis_seconds"):
        assert ds[name].dims == ("time",) and np.isfinite(ds[name]).all()
    np.testing.assert_allclose(ds["analysis_mean"], ds["analysis"].mean("member"), rtol=1e-12)
    np.testing.assert_allclose(ds["time"], 0.05 * np.arange(1, 13))
    # the observation is the truth plus noise of the stated std (identity operator)
    resid = (ds["observation"].values - ds["truth"].values).ravel()
    assert 0.7 < resid.std() < 1.3


def test_instance_diagnostics_are_written_per_cycle(tmp_path, small_case_text):
    # adaptive observation error inflation adds the diagnostic only when it is switched on
    case = parse_case(small_case_text, filter_name="etkf", overrides=["filter.adaptive_obs_error=0.5"])
    run_case(case, tmp_path / "aoei.nc", progress=False)
    inflated = open_run(tmp_path / "aoei.nc")["diag_inflated_obs"].values
    assert inflated.shape == (12,) and np.all((inflated >= 0) & (inflated <= 1)) and inflated.max() > 0
    run_case(parse_case(small_case_text, filter_name="etkf"), tmp_path / "plain.nc", progress=False)
    assert "diag_inflated_obs" not in open_run(tmp_path / "plain.nc")


def test_divergence_stops_with_status_3_keeping_good_cycles(tmp_path, small_case_text, capsys):
    case_file = tmp_path / "nan.toml"
    case_file.write_text(small_case_text.replace('name = "none"', 'name = "test-nan-at-cycle-3"'))
    out = tmp_path / "nan.nc"
    FILTERS["test-nan-at-cycle-3"].count = 0
    assert main(["run", str(case_file), "--out", str(out), "--quiet"]) == 3
    assert "cycle 3" in capsys.readouterr().err
    assert open_run(out).sizes["time"] == 2
    FILTERS["test-nan-at-cycle-3"].count = 0
    with pytest.raises(Divergence):
        run_case(parse_case(case_file.read_text()), tmp_path / "again.nc", progress=False)


def test_existing_output_is_not_overwritten_silently(tmp_path, small_case_text):
    out = tmp_path / "run.nc"
    out.write_text("precious")
    with pytest.raises(FileExistsError):
        run_case(parse_case(small_case_text), out, progress=False)
    assert out.read_text() == "precious"


def _compare_runs(a, b):
    a, b = open_run(a), open_run(b)
    assert a.sizes == b.sizes
    for name in a.data_vars:
        if name != "analysis_seconds":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def _stochastic_filter():
    return "enkf" if "enkf" in FILTERS else "none"


def test_resume_after_a_clean_stop_equals_an_uninterrupted_run(tmp_path, small_case_text):
    text = small_case_text.replace('name = "none"', f'name = "{_stochastic_filter()}"')
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(text), full, progress=False)
    run_case(parse_case(text, overrides=["run.cycles=5"]), part, progress=False)
    # pretend the run had been asked for 12 cycles: rewrite the stored case, then resume
    with netCDF4.Dataset(part, "a") as raw:
        raw.setncattr("case", parse_case(text).to_toml())
    run_case(parse_case(text), part, resume=True, progress=False)
    _compare_runs(full, part)


def test_resume_ignores_edits_of_other_filters_tables_and_expected_scores(tmp_path, small_case_text):
    # the case file gained a table for another filter and an expected score after the run started: the run
    # (model, observations, ensemble, filter, run) is the same, so it resumes and equals an uninterrupted run
    text = small_case_text.replace('name = "none"', f'name = "{_stochastic_filter()}"')
    edited = text + '\n[filters.letkf]\nradius = 3.0\n\n[expected.letkf]\nrmse = 1.0\ntolerance = 0.1\n'
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(text), full, progress=False)
    run_case(parse_case(text, overrides=["run.cycles=5"]), part, progress=False)
    with netCDF4.Dataset(part, "a") as raw:
        raw.setncattr("case", parse_case(text).to_toml())  # as if asked for 12 cycles before the edit
    run_case(parse_case(edited), part, resume=True, progress=False)
    _compare_runs(full, part)
    # a change of the run's own filter table is another run: refused
    with pytest.raises(ValueError, match="written by a different case"):
        run_case(parse_case(text, overrides=["filter.inflation=1.3"]), part, resume=True, progress=False)


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, small_case_text):
    text = small_case_text.replace('name = "none"', f'name = "{_stochastic_filter()}"').replace(
        "cycles = 12", "cycles = 400")
    case_file = tmp_path / "kill.toml"
    case_file.write_text(text)
    killed, full = tmp_path / "killed.nc", tmp_path / "full.nc"
    cmd = [sys.executable, "-m", "enff.cli", "run", str(case_file), "--out", str(killed), "--quiet"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
        if killed.exists():
            try:
                with netCDF4.Dataset(killed) as raw:
                    done = int((np.asarray(raw["cycle_complete"][:]) == 1).sum())
            except (OSError, IndexError, KeyError, RuntimeError):
                continue
            if done >= 30:
                break
    assert child.poll() is None, f"child ended before it could be killed: {child.stderr.read().decode()}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    survived = open_run(killed).sizes["time"]
    assert 30 <= survived < 400
    status = subprocess.run([sys.executable, "-m", "enff.cli", "run", str(case_file), "--out", str(killed),
                             "--resume", "--quiet"], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    run_case(parse_case(text), full, progress=False)
    _compare_runs(full, killed)


def test_score_and_plot_commands(tmp_path, small_case_file, capsys):
    import json

    out = tmp_path / "run.nc"
    assert main(["run", str(small_case_file), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", str(out), "--burn-in", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("rmse", "spread", "crps", "spread_rmse_ratio", "analysis_seconds", "cycles"):
        assert key in result
    assert result["cycles"] == 10
    ds = open_run(out).isel(time=slice(2, None))
    assert result["rmse"] == pytest.approx(float(ds["rmse_analysis"].mean()))
    assert main(["plot", str(out), "--outdir", str(tmp_path / "png")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["run_hovmoller.png", "run_rank_histogram.png", "run_scores.png", "run_snapshots.png"]
    assert main(["score", str(tmp_path / "missing.nc")]) == 2


def test_run_and_score_share_one_default_burn_in(tmp_path, small_case_file, capsys):
    import json

    from enff.summary import default_burn_in, summarize

    out = tmp_path / "run.nc"
    assert main(["run", str(small_case_file), "--out", str(out), "--quiet"]) == 0
    printed_by_run = capsys.readouterr().out
    burn_in = default_burn_in(12)
    assert burn_in == 1  # the first tenth of the 12 cycles, rounded down
    assert f"scores after a burn-in of {burn_in} cycles:" in printed_by_run
    assert main(["score", str(out)]) == 0
    printed_by_score = capsys.readouterr().out
    assert f"scores after a burn-in of {burn_in} cycles:" in printed_by_score
    assert printed_by_run.split("cycles:\n", 1)[1] == printed_by_score.split("cycles:\n", 1)[1]  # one table
    assert main(["score", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cycles"] == 12 - burn_in
    assert result["rmse"] == summarize(out)["rmse"] == summarize(out, burn_in=burn_in)["rmse"]
    assert result["rmse"] == pytest.approx(float(open_run(out)["rmse_analysis"][burn_in:].mean()))


def test_spin_up_in_chunks_equals_one_model_call(small_case_text):
    from enff.cycle import Experiment, Stream

    exp = Experiment(parse_case(small_case_text, overrides=["run.spinup=250"]))  # 84 chunks of 3 steps, the last 1
    truth, _ = exp.initial_condition(progress=False)
    start = exp.model.initial_state(exp.generator(Stream.TRUTH), 1, dtype=exp.dtype, device=exp.device)
    assert torch.equal(truth, exp.model.step(start, 250)[0])


@pytest.mark.parametrize("flag", ["--progress", "--no-progress", "--quiet", None])
def test_progress_flags_of_enff_run(tmp_path, small_case_file, capsys, monkeypatch, flag):
    import enff.cycle

    monkeypatch.setattr(enff.cycle, "SPINUP_BAR_DELAY", 0.0)  # a spin-up bar without waiting for it
    out = tmp_path / "run.nc"
    assert main(["run", str(small_case_file), "--out", str(out), *([flag] if flag else [])]) == 0
    err = capsys.readouterr().err
    shown = flag == "--progress"  # pytest's stderr is no terminal: the default shows nothing
    assert ("spin-up" in err) == shown and ("12/12" in err) == shown, err


def test_real_observations_from_a_file_with_missing_values(tmp_path, small_case_text):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 20))
    values[rng.random(values.shape) < 0.3] = np.nan  # missing entries
    obs_file = tmp_path / "obs.nc"
    xr.Dataset(
        {"observation": (("time", "obs"), values, {"std": 1.0}), "obs_index": ("obs", np.arange(0, 40, 2))}
    ).to_netcdf(obs_file)
    text = small_case_text.replace('operator = "identity"\nevery = 1\nstd = 1.0',
                                   'source = "file"\nfile = "obs.nc"\nevery = 1')
    text = text.replace('initial_mean = "truth"', 'initial_mean = "zero"').replace("cycles = 12", "cycles = 6")
    text = text.replace('name = "none"', f'name = "{_stochastic_filter()}"')
    case_file = tmp_path / "real.toml"
    case_file.write_text(text)
    out = tmp_path / "real.nc"
    assert main(["run", str(case_file), "--out", str(out), "--quiet"]) == 0
    ds = open_run(out)
    assert "truth" not in ds and "rmse_analysis" not in ds
    assert ds.sizes["time"] == 6 and np.isfinite(ds["analysis"]).all()
    np.testing.assert_array_equal(np.isnan(ds["observation"].values), np.isnan(values))
    # asking for more cycles than the file holds is refused before any work
    bad = tmp_path / "too_long.toml"
    bad.write_text(text.replace("cycles = 6", "cycles = 7"))
    assert main(["run", str(bad), "--out", str(tmp_path / "x.nc"), "--quiet"]) == 2
    assert not (tmp_path / "x.nc").exists()


def test_two_dimensional_run_plots_snapshots(tmp_path):
    text = """
    [model]
    name = "navier_stokes2d"
    n = 32
    forcing_wavenumber = 4
    dt = 0.005
    [observations]
    operator = "atan"
    every = 2
    std = 0.1
    patches = [[0, 8, 0, 8], [16, 32, 10, 20]]
    [ensemble]
    size = 4
    [filter]
    name = "none"
    [run]
    cycles = 3
    """
    case_file = tmp_path / "ns.toml"
    case_file.write_text("\n".join(line.strip() for line in text.splitlines()))
    out = tmp_path / "ns.nc"
    assert main(["run", str(case_file), "--out", str(out), "--quiet"]) == 0
    ds = open_run(out)
    assert ds["truth"].dims == ("time", "y", "x") and ds.sizes["obs"] == 8 * 8 + 16 * 10
    assert set(ds["observation"].coords) >= {"obs_x", "obs_y", "obs_index"}
    assert main(["plot", str(out)]) == 0
    assert (tmp_path / "ns_snapshots.png").is_file()


if "test-record-draws" not in FILTERS:

    @register("test-record-draws")
    @dataclass(frozen=True)
    class _RecordDraws(Filter):
        """Records the first draw of its generator in every analysis and returns the forecast (tests only)."""

        draws = []

        def analysis(self, forecast, y, obs, *, previous=None, generator):
            _RecordDraws.draws.append(float(torch.rand((), generator=generator, dtype=torch.float64)))
            return Analysis(forecast.clone())


def test_the_filter_draws_from_its_own_stream(tmp_path, small_case_text):
    """The filter's random stream does not depend on how many observations were drawn before it."""
    from enff.cycle import Stream, seeded_generator

    draws = FILTERS["test-record-draws"].draws
    text = small_case_text.replace('name = "none"', 'name = "test-record-draws"').replace("cycles = 12", "cycles = 3")
    seen = []
    for stride in (1, 4):
        draws.clear()
        run_case(parse_case(text, overrides=[f"observations.stride={stride}"]), tmp_path / f"s{stride}.nc",
                 progress=False)
        seen.append(list(draws))
    expected = [float(torch.rand((), generator=seeded_generator(7, Stream.FILTER, k, torch.device("cpu")),
                                 dtype=torch.float64)) for k in (1, 2, 3)]
    assert seen[0] == seen[1] == expected
    # and the observations of a twin come from the observation stream: truth + std * N(0, 1)
    ds = open_run(tmp_path / "s1.nc")
    for k in (1, 2, 3):
        noise = torch.randn(40, generator=seeded_generator(7, Stream.OBSERVATION, k, torch.device("cpu")),
                            dtype=torch.float64).numpy()
        np.testing.assert_array_equal(ds["observation"].values[k - 1], ds["truth"].values[k - 1] + noise)
