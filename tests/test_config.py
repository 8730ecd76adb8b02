"""The typed configuration (enff.config): cases built in code equal cases read from files, one validator
reads the annotations (types, Literal values, declared ranges), objects are built once."""

import pickle
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pytest
import xarray as xr

from enff.casefile import CaseError, parse_case
from enff.config import (
    AtLeast,
    Case,
    EnsembleSettings,
    ObservationSetup,
    RunSettings,
    check_value,
    from_table,
)
from enff.filters import FILTERS, ETKF, Filter, register
from enff.observations import ATan, Subsample


def _in_code(**changes) -> Case:
    settings = dict(
        model={"name": "lorenz96", "dim": 40, "forcing": 8.0, "dt": 0.05},
        observations=ObservationSetup(every=1, std=1.0, operator_keys={"operator": "identity"}),
        ensemble=EnsembleSettings(size=10, initial_mean="truth", initial_std=1.0),
        filter={"name": "none"},
        run=RunSettings(cycles=12, spinup=50, seed=7),
    )
    return Case.build(**{**settings, **changes})


def test_a_case_built_in_code_equals_the_same_case_read_from_a_file(small_case_text):
    from_file, in_code = parse_case(small_case_text), _in_code()
    assert parse_case(in_code.to_toml()).to_toml() == in_code.to_toml()  # its text reads back to itself
    assert repr(in_code.model) == repr(from_file.model) and repr(in_code.filter) == repr(from_file.filter)
    assert in_code.observations.operator == from_file.observations.operator
    assert in_code.run == from_file.run and in_code.ensemble == from_file.ensemble
    assert in_code.observation_setup == from_file.observation_setup
    # settings written as tables are the same settings
    assert _in_code(run={"cycles": 12, "spinup": 50, "seed": 7}).run == in_code.run


def test_the_built_objects_follow_the_tables():
    case = _in_code(observations=ObservationSetup(every=3, std=0.5, operator_keys={"stride": 2, "operator": "atan"}),
                    filter={"name": "etkf", "inflation": 1.02})
    assert case.observations.operator == Subsample(2) | ATan()
    assert case.observations.error.std == 0.5 and case.observation_setup.every == 3
    assert case.filter == ETKF(inflation=1.02)
    assert case.model.params.dim == 40 and case.model.state_shape == (40,)
    assert case.run.torch_dtype.is_floating_point and str(case.run.torch_device) == "cpu"
    assert case.run.analysis_saved(40) and not case.run.analysis_saved(RunSettings.AUTO_SAVE_ANALYSIS_MAX_STATE + 1)
    assert not RunSettings(cycles=1, save_analysis=False).analysis_saved(1)
    other = case.with_tables(filter={"name": "etkf", "inflation": 1.1})
    assert other.filter == ETKF(inflation=1.1) and case.filter == ETKF(inflation=1.02)


if "test-count-builds" not in FILTERS:

    @register("test-count-builds")
    @dataclass(frozen=True)
    class _CountBuilds(Filter):
        """Counts its constructions (a filter for this test only)."""

        width: float = 1.0
        builds = [0]

        def __post_init__(self):
            _CountBuilds.builds[0] += 1

        def analysis(self, forecast, y, obs, *, previous=None, generator):
            raise NotImplementedError


def test_the_filter_is_built_once_per_case(small_case_text):
    counter = FILTERS["test-count-builds"].builds
    counter[0] = 0
    case = parse_case(small_case_text.replace('name = "none"', 'name = "test-count-builds"\nwidth = 2.0'))
    assert counter[0] == 1 and case.filter.width == 2.0


def test_a_case_pickles_as_its_tables_and_is_rebuilt(small_case_text):
    case = parse_case(small_case_text, overrides=["filter.name=etkf", "filter.inflation=1.05"])
    again = pickle.loads(pickle.dumps(case))
    assert again.to_toml() == case.to_toml() and again.filter == ETKF(inflation=1.05)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"cycles": 3, "dtype": "float16"}, "run.dtype must be one of 'float32', 'float64', got 'float16'"),
        ({"cycles": 3, "save_analysis": "sometimes"}, "run.save_analysis must be bool or 'auto', got 'sometimes'"),
        ({"cycles": 3, "save_analysis": 1}, "run.save_analysis must be bool or 'auto', got 1"),
        ({"cycles": 0}, "run.cycles must be >= 1, got 0"),
        ({"cycles": True}, "run.cycles must be int, got True"),
        ({"cycles": 3, "seed": -1}, r"run.seed must be from 0 to 2\*\*63 - 1"),
        ({"cycles": 3, "device": "gpu"}, "run.device must be 'cpu' or 'cuda"),
        ({"spinup": 3}, "missing key run.cycles"),
        ({"cycles": 3, "spin_up": 3}, "unknown key run.spin_up; allowed keys are cycles, device"),
    ],
)
def test_the_validator_names_file_and_key(table, message):
    with pytest.raises(CaseError, match=message) as info:
        from_table(RunSettings, table, "my.toml", "run")
    assert str(info.value).startswith("my.toml: ") and str(info.value).count("\n") == 0


def test_settings_made_in_code_check_themselves():
    with pytest.raises(ValueError, match="ensemble.initial_mean must be one of 'truth', 'zero', got 'mean'"):
        EnsembleSettings(size=4, initial_mean="mean")
    with pytest.raises(ValueError, match="ensemble.size must be >= 2, got 1"):
        EnsembleSettings(size=1)
    with pytest.raises(ValueError, match=r"observations.std must be positive and finite"):
        ObservationSetup(every=1, std=(1.0, 0.0))
    with pytest.raises(ValueError, match="missing key observations.std"):
        ObservationSetup(every=1)
    with pytest.raises(ValueError, match="observations.every must be >= 1 model step, got 0"):
        ObservationSetup(every=0, std=1.0)
    with pytest.raises(ValueError, match="unknown key observations.strde"):
        ObservationSetup(every=1, std=1.0, operator_keys={"strde": 2})
    with pytest.raises(CaseError, match="<python>: filter.name must be one of .*etkf.*, got 'etfk'"):
        _in_code(filter={"name": "etfk"})


def test_check_value_reads_literals_inside_unions_and_declared_ranges():
    annotation = Annotated[int, AtLeast(2)] | Literal["all"]
    for good in (2, 7, "all"):
        check_value("k", good, annotation)
    for bad, text in ((1, "k must be >= 2, got 1"), ("some", "k must be int or 'all', got 'some'"),
                      (2.0, "k must be int or 'all', got 2.0"), (False, "k must be int or 'all', got False")):
        with pytest.raises(ValueError, match=text):
            check_value("k", bad, annotation)


def _real_case(tmp_path, small_case_text, every_line):
    xr.Dataset({"observation": (("time", "obs"), np.zeros((4, 40)), {"std": 1.0}),
                "obs_index": ("obs", np.arange(40))}).to_netcdf(tmp_path / "obs.nc")
    text = small_case_text.replace('operator = "identity"\nevery = 1\nstd = 1.0',
                                   f'source = "file"\nfile = "obs.nc"{every_line}')
    text = text.replace('initial_mean = "truth"', 'initial_mean = "zero"').replace("cycles = 12", "cycles = 4")
    path = tmp_path / "real.toml"
    path.write_text(text)
    return path


def test_observations_from_a_file_need_every(tmp_path, small_case_text):
    """`every` is the number of model steps between two observation times: a file source needs it as a
    twin does (it used to pass validation and then fail in the runner with a KeyError)."""
    from enff.cli import main

    path = _real_case(tmp_path, small_case_text, "")
    with pytest.raises(CaseError, match="real.toml: missing key observations.every"):
        parse_case(path.read_text(), str(path))
    assert main(["run", str(path), "--out", str(tmp_path / "o.nc"), "--quiet"]) == 2
    assert not (tmp_path / "o.nc").exists()
    good = _real_case(tmp_path, small_case_text, "\nevery = 2")
    case = parse_case(good.read_text(), str(good))
    assert case.observation_setup.every == 2 and not case.observations.needs_truth
    assert case.observations.n_times == 4
