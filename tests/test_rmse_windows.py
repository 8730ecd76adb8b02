"""benchmarks/rmse_windows.py: window means of analysis RMSE agree with `enff score` on the same cycles."""

import json
from pathlib import Path

import numpy as np
import pytest

from enff.cli import main
from enff.runfile import open_run
from enff.summary import summarize

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two filters, two seeds each, 12 cycles of Lorenz-96 (d = 40)."""
    folder = tmp_path_factory.mktemp("runs")
    for name in ("etkf", "letkf"):
        for seed in (0, 1):
            assert main(["run", "l96_40_quick", "--filter", name, "--set", "run.cycles=12", "--set",
                         f"run.seed={seed}", "--out", str(folder / f"{name}_{seed}.nc"), "--quiet"]) == 0
    return folder


def test_a_window_to_the_end_is_the_score_with_that_burn_in_and_a_bounded_one_is_a_plain_mean(runs, tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common
    import rmse_windows

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    rmse_windows.main([str(runs), "--windows", "2:6", "4:", "--at", "1", "12", "--name", "w"])
    written = json.loads((tmp_path / "w.json").read_text())
    assert "| letkf" in (tmp_path / "w.md").read_text()
    assert written["windows"] == ["cycles 3-6", "cycles 5-12"] and written["seeds"] == [0, 1]
    assert written["trajectory_seed"] == 0
    assert sorted(c["filter"] for c in written["configurations"]) == ["etkf", "letkf"]
    for config in written["configurations"]:
        for j, seed in enumerate((0, 1)):
            path = runs / f"{config['filter']}_{seed}.nc"
            bounded, to_end = config["window_rmse"][j]
            assert to_end == pytest.approx(summarize(path, burn_in=4)["rmse"], rel=1e-12)
            with open_run(path) as ds:
                series = ds["rmse_analysis"].values
            assert bounded == pytest.approx(np.mean(series[2:6]), rel=1e-12)
            if seed == 0:
                assert config["trajectory"] == {"1": pytest.approx(series[0]), "12": pytest.approx(series[11])}


def test_a_window_without_a_start_is_refused(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import rmse_windows

    with pytest.raises(SystemExit) as err:
        rmse_windows.main(["x", "--windows", ":80", "--name", "w"])
    assert err.value.code == 2


@pytest.mark.parametrize("arguments", [["--windows", "6:20"], ["--windows", "8:4"], ["--windows", "2:", "--at", "13"]])
def test_windows_and_cycles_outside_the_runs_are_refused_and_nothing_is_written(runs, tmp_path, monkeypatch, capsys,
                                                                                arguments):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common
    import rmse_windows

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    with pytest.raises(SystemExit) as err:
        rmse_windows.main([str(runs), *arguments, "--name", "w"])
    assert err.value.code == 2 and str(runs) in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
