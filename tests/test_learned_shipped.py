"""The learned analyses shipped with l96_40_sparse and ks128_sparse: ``enff run CASE --filter learned`` works from
any working directory with no training, its posterior file is read without unpickling (a tampered copy is refused
and its code never runs), and its draws are calibrated on a held-out truth (spread / RMSE in [0.8, 1.2]); the run
file records the posterior's sha256 and a resume refuses a changed posterior."""

import shutil
from pathlib import Path

import pytest
import torch

from enff.amortized import load_posterior
from enff.amortized.field_analysis import FieldPosterior
from enff.amortized.field_data import simulated_training_set
from enff.amortized.storage import PosteriorFileError
from enff.casefile import load_case, shipped_cases
from enff.cli import main
from enff.preflight import POSTERIOR_CHECKSUM, sha256
from enff.runfile import open_run

pytestmark = pytest.mark.usefixtures("one_thread")

CASE = "l96_40_sparse"
#: Every case that ships a trained posterior ([filters.learned]), with the seeds its training used (the held-out
#: truth of the calibration test is seed 0 for both).
SHIPPED = {"l96_40_sparse": range(1, 9), "ks128_sparse": range(3, 11)}


class _Payload:
    """A pickled object whose loading would create ``marker``: the code a tampered posterior file carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _shipped(case: str = CASE) -> Path:
    return Path(load_case(case, filter_name="learned").filter.posterior)


def test_every_case_with_a_learned_table_is_listed_here():
    assert {name for name in shipped_cases() if "learned" in load_case(name).tables.get("filters", {})} == set(SHIPPED)


@pytest.mark.parametrize("case", sorted(SHIPPED))
def test_the_case_names_a_posterior_shipped_beside_it(case):
    path = _shipped(case)
    assert path == (shipped_cases()[case].parent / "posteriors" / f"{case}.pt").resolve()
    assert path.stat().st_size < 5 * 2**20  # a few MB at most
    assert isinstance(load_posterior(path), FieldPosterior)


@pytest.mark.parametrize("case", sorted(SHIPPED))
def test_enff_run_with_the_shipped_posterior_from_another_directory(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the posterior is found relative to the case, not the working directory
    args = ["run", case, "--filter", "learned", "--out", "run.nc", "--quiet", "--set", "run.cycles=3",
            "--set", "run.spinup=10"]
    assert main(args) == 0
    with open_run(tmp_path / "run.nc") as ds:
        assert ds.sizes["time"] == 3 and ds.sizes["member"] == 20
        assert bool(ds["analysis_mean"].notnull().all())
        assert bool(ds["rmse_analysis"].notnull().all())
        assert float(ds["spread_analysis"].min()) > 0  # N distinct draws, not one repeated


def test_the_run_file_records_the_posterior_checksum_and_resume_refuses_a_changed_posterior(tmp_path, capsys):
    posterior, out = tmp_path / "copy.pt", tmp_path / "run.nc"
    shutil.copyfile(_shipped(), posterior)
    assert main(["run", CASE, "--filter", "learned", "--out", str(out), "--quiet", "--set",
                 f"filter.posterior='{posterior}'", "--set", "run.cycles=2", "--set", "run.spinup=10"]) == 0
    with open_run(out) as ds:
        assert ds.attrs[POSTERIOR_CHECKSUM] == sha256(posterior) == sha256(_shipped())
    with posterior.open("ab") as handle:
        handle.write(b"\0")  # another posterior file under the same name
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "copy.pt changed since the run started" in err and "filter.posterior" in err
    assert out.read_bytes() == before


def test_a_tampered_copy_of_the_shipped_posterior_is_refused_without_running_it(tmp_path, capsys):
    blob = torch.load(_shipped(), weights_only=True)  # the shipped file itself holds no pickled objects
    marker, path = tmp_path / "pwned", tmp_path / "tampered.pt"
    blob["payload"]["estimator"] = _Payload(marker)
    torch.save(blob, path)
    with pytest.raises(PosteriorFileError, match="tampered.pt"):
        load_posterior(path)
    status = main(["run", CASE, "--filter", "learned", "--out", str(tmp_path / "run.nc"), "--quiet",
                   "--set", f"filter.posterior='{path}'", "--set", "run.cycles=2", "--set", "run.spinup=10"])
    assert status != 0 and "tampered.pt" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run.nc").exists()


@pytest.mark.parametrize("case", sorted(SHIPPED))
def test_the_shipped_draws_are_calibrated_on_a_held_out_truth(case):
    """One-step calibration: the forecasts of the case's LETKF on seed 0 (not a training seed); for a
    calibrated posterior the truth is one more draw, so the members' spread matches their mean's error
    (expected ratio sqrt(N / (N + 1)) = 0.976 for N = 20)."""
    assert 0 not in SHIPPED[case]
    data = simulated_training_set(load_case(case), [0], 60, burn_in=20)  # the case's LETKF cycled on seed 0
    draws = load_posterior(_shipped(case)).sample(20, data.context, generator=torch.Generator().manual_seed(0))
    rmse = (draws.mean(0) - data.truth).pow(2).mean().sqrt()  # draws (20, 40 analyses, 1 field, grid points)
    spread = draws.var(0).mean().sqrt()
    assert 0.8 <= float(spread / rmse) <= 1.2, (float(spread), float(rmse))
    forecast_rmse = (data.context.forecast.mean(1) - data.truth).pow(2).mean().sqrt()
    assert rmse < forecast_rmse  # the analysis uses the observations
