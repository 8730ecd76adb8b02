"""A run file without the full ensembles (what large states write) still resumes exactly."""

import netCDF4
import numpy as np
import pytest

from enff.casefile import parse_case
from enff.cycle import run_case
from enff.runfile import open_run

#: A filter that reads the previous analysis (its source members) and draws noise every cycle, so a resume
#: that restored anything but the exact restart state, or re-seeded differently, would change every later cycle.
FILTER = ["filter.name=\"enff-f2p\"", "filter.steps=3"]
LEAN = ["run.save_analysis=false", "run.save_forecast=false"]


def _variables(path):
    with netCDF4.Dataset(path) as raw:
        return set(raw.variables)


@pytest.mark.parametrize("save_analysis, state_size, stored", [("auto", 5000, True), ("auto", 5001, False),
                                                                (True, 10**7, True), (False, 40, False)])
def test_auto_stores_the_full_analysis_only_for_small_states(small_case_text, save_analysis, state_size, stored):
    value = f'"{save_analysis}"' if save_analysis == "auto" else str(save_analysis).lower()
    case = parse_case(small_case_text, overrides=[f"run.save_analysis={value}"])
    assert case.run.analysis_saved(state_size) is stored


def test_a_run_that_stores_no_ensemble_resumes_bit_identically(tmp_path, small_case_text):
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(small_case_text, overrides=[*FILTER, *LEAN]), full, progress=False)
    run_case(parse_case(small_case_text, overrides=[*FILTER, *LEAN, "run.cycles=5"]), part, progress=False)
    with netCDF4.Dataset(part, "a") as raw:  # as if the run had been asked for 12 cycles and stopped after 5
        raw.setncattr("case", parse_case(small_case_text, overrides=[*FILTER, *LEAN]).to_toml())
    run_case(parse_case(small_case_text, overrides=[*FILTER, *LEAN]), part, resume=True, progress=False)

    assert not {"analysis", "forecast"} & (_variables(full) | _variables(part))
    a, b = open_run(full), open_run(part)
    assert a.sizes["time"] == b.sizes["time"] == 12
    for name in a.data_vars:
        if name != "analysis_seconds":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    with netCDF4.Dataset(full) as x, netCDF4.Dataset(part) as y:  # the restart slots too: the next resume's state
        np.testing.assert_array_equal(x["restart_cycle"][:], y["restart_cycle"][:])
        np.testing.assert_array_equal(x["restart_analysis"][:], y["restart_analysis"][:])
    # the filter moved the state: an analysis equal to the forecast would make the comparison vacuous
    assert float(np.abs(a["analysis_mean"] - a["forecast_mean"]).max()) > 1e-3
