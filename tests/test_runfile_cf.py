"""Run files of every shipped case pass both CF checkers: no errors from ``cfchecks`` (CF-1.8) and no high- or
medium-priority message from the IOOS ``compliance-checker`` (``--test=cf:1.8``); ``cf_xarray`` finds their axes;
model time reads as numbers through enff and as datetimes through plain xarray; files of the earlier layout
(``time:units = "1"``) still read and resume.

Model time is dimensionless, but CF needs a time coordinate in time units since a reference date, and the IOOS
checker needs a dimension named ``time`` to carry standard_name ``time``: one model time unit is written as one
second after the arbitrary epoch :data:`enff.runfile.TIME_EPOCH`, and the variable's ``comment`` says so
(:data:`enff.runfile.TIME_ATTRS`). The grid coordinates carry ``cartesian_axis`` rather than CF's ``axis``,
which CF-1.8 reserves for longitude/latitude or map-projection axes.

Each checker is skipped where it cannot be imported (both need the UDUNITS C library, ``libudunits2``).
``cfchecks`` reads three XML tables that it would download; the run files use two standard names
(``realization``, ``time``) and no area types or region names, so small local tables stand in for them and
the test runs offline (the compliance checker ships its own table).

The files are tiny versions of the cases (a few members and cycles, small grids, few integration steps of a
generative filter): the CF attributes depend on the model (its dimensions, coordinates and units), the filter
(its ``diag_*`` variables) and the run settings (saved ensembles, precision), not on the sizes.
"""

import tomllib

import netCDF4
import numpy as np
import pytest
import xarray as xr

from enff.casefile import load_case, parse_case, shipped_cases
from enff.cycle import run_case
from enff.runfile import TIME_ATTRS, TIME_EPOCH, open_run

TABLES = {
    "standard_names.xml": """<?xml version="1.0"?>
<standard_name_table><version_number>1</version_number><last_modified></last_modified>
<entry id="realization"><canonical_units>1</canonical_units><description>ensemble member</description></entry>
<entry id="time"><canonical_units>s</canonical_units><description>time</description></entry>
</standard_name_table>""",
    "area_types.xml": """<?xml version="1.0"?>
<area_type_table><version_number>1</version_number><date></date></area_type_table>""",
    "region_names.xml": """<?xml version="1.0"?>
<standardized_region_list><version_number>1</version_number><date></date></standardized_region_list>""",
}

#: Smaller grids per model (``[model] name``); forcing wavenumber 2 survives dealiasing on n = 16.
SMALL_GRID = {"lorenz96": ["model.dim=40"], "kuramoto_sivashinsky": ["model.dim=64"],
              "navier_stokes2d": ["model.n=16", "model.forcing_wavenumber=2"],
              "navier_stokes2d_primitive": ["model.n=16", "model.forcing_wavenumber=2"]}
RUN = ["run.cycles=2", "run.spinup=2", "ensemble.size=4"]
#: Beside the shipped cases' own filters: a filter with diagnostics, both ensembles saved, in float32.
EXTRA = {"l96_40_quick-bpf": ("l96_40_quick", "bpf", ["run.save_forecast=true", 'run.dtype="float32"'])}
FILES = sorted(shipped_cases()) + sorted(EXTRA)


def _overrides(case: str) -> list[str]:
    tables = tomllib.loads(shipped_cases()[case].read_text())
    fewer_steps = ["filter.steps=3"] if "steps" in tables["filter"] else []
    return [*RUN, *SMALL_GRID.get(tables["model"]["name"], []), *fewer_steps]


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A tiny run file of each entry of :data:`FILES` and cfchecks' tables, in one folder."""
    folder = tmp_path_factory.mktemp("cf")
    for name, text in TABLES.items():
        (folder / name).write_text(text)
    for case in shipped_cases():
        run_case(load_case(case, overrides=_overrides(case)), folder / f"{case}.nc", progress=False)
    for name, (case, filter_name, extra) in EXTRA.items():
        run_case(load_case(case, filter_name=filter_name, overrides=[*RUN, *extra]), folder / f"{name}.nc",
                 progress=False)
    return folder


def cfchecks_counts(path, tables):
    """Run cfchecker on ``path``; returns ``(counts by category, messages)``."""
    cfchecks = pytest.importorskip("cfchecker.cfchecks", reason="cfchecker (and the UDUNITS library) not installed")
    checker = cfchecks.CFChecker(cfStandardNamesXML=str(tables / "standard_names.xml"),
                                 cfAreaTypesXML=str(tables / "area_types.xml"),
                                 cfRegionNamesXML=str(tables / "region_names.xml"), version="1.8", silent=True)
    checker.checker(str(path))
    return checker.get_total_counts(), checker.all_messages


@pytest.fixture(scope="module")
def compliance_suite():
    """The IOOS compliance checker's suite with its checkers loaded (skips where it is not installed)."""
    suite_module = pytest.importorskip("compliance_checker.suite",
                                       reason="compliance-checker (and the UDUNITS library) not installed")
    suite_module.CheckSuite.load_all_available_checkers()
    return suite_module.CheckSuite()


def compliance_failures(suite, path):
    """The IOOS compliance checker's failed high- and medium-priority results on ``path`` (``cf:1.8``), as
    ``(section, scored/possible points, messages)``."""
    from compliance_checker.base import BaseCheck

    ds = suite.load_dataset(str(path))
    try:
        groups, errors = suite.run_all(ds, ["cf:1.8"], skip_checks=[])["cf:1.8"]
    finally:
        ds.close()
    assert not errors, errors  # a check that raised
    failed = []
    for result in groups:
        scored, possible = result.value if isinstance(result.value, tuple) else (int(bool(result.value)), 1)
        if result.weight >= BaseCheck.MEDIUM and scored < possible:
            failed.append((result.name, f"{scored}/{possible}", sorted(set(result.msgs))))
    return failed


def layout(path) -> str:
    """Everything of run file ``path`` that the checkers read but its sizes and values: each variable's name,
    dimensions, type and attributes, and the names of the global attributes (their values: the stored case,
    seed, version)."""
    with netCDF4.Dataset(path) as raw:
        variables = [(name, var.dimensions, str(var.dtype), sorted((k, str(var.getncattr(k))) for k in var.ncattrs()))
                     for name, var in raw.variables.items()]
        return repr((variables, sorted(raw.ncattrs()), raw.getncattr("Conventions")))


@pytest.mark.parametrize("name", FILES)
def test_run_file_has_no_cfchecks_errors(run_files, name):
    counts, messages = cfchecks_counts(run_files / f"{name}.nc", run_files)
    assert counts["FATAL"] + counts["ERROR"] == 0, "\n".join(map(str, messages))


def test_run_files_have_no_high_or_medium_compliance_checker_message(run_files, compliance_suite):
    """Every file of :data:`FILES`, checked once per distinct :func:`layout` (the checker takes seconds per file;
    the KS and NS cases, for example, share one layout per model)."""
    by_layout: dict[str, list[str]] = {}
    for name in FILES:
        by_layout.setdefault(layout(run_files / f"{name}.nc"), []).append(name)
    assert 4 <= len(by_layout) < len(FILES)  # one per model at least; some cases share one
    failures = {tuple(names): compliance_failures(compliance_suite, run_files / f"{names[0]}.nc")
                for names in by_layout.values()}
    assert failures == {names: [] for names in failures}, failures


def test_a_misdeclared_time_fails_the_compliance_checker(run_files, compliance_suite, tmp_path):
    """The check can fail: the previous layout's dimensionless ``time`` (``units = "1"``, no standard_name)
    and a grid ``axis = "X"`` without longitude units are what the checker reported before."""
    path = tmp_path / "old.nc"
    path.write_bytes((run_files / "l96_40.nc").read_bytes())
    _to_previous_layout(path)
    sections = {section for section, _, _ in compliance_failures(compliance_suite, path)}
    assert sections == {"§4.2 Longitude Coordinate", "§5.1 Independent Latitude, Longitude, Vertical, and Time Axes"}


def test_axes_labels_and_model_time(run_files):
    ds = open_run(run_files / "ns64_atan.nc")
    assert list(ds["field"].values) == ["pressure", "u", "v"]
    assert ds["truth"].sel(field="u").dims == ("time", "y", "x")
    assert (ds["x"].attrs["cartesian_axis"], ds["y"].attrs["cartesian_axis"]) == ("X", "Y")
    for name in ("x", "y", "obs_x", "member", "obs", "rank", "rmse_analysis", "truth"):
        assert ds[name].attrs["units"] == "1" and ds[name].attrs["long_name"], name
    assert {k: ds["time"].attrs[k] for k in TIME_ATTRS} == TIME_ATTRS
    with netCDF4.Dataset(run_files / "ns64_atan.nc") as raw:  # the numbers are model time: dt times steps
        stored = np.asarray(raw["time"][:])
    case = load_case("ns64_atan", overrides=_overrides("ns64_atan"))
    np.testing.assert_allclose(stored, case.model.dt * case.observation_setup.every * np.arange(1, 3), rtol=1e-12)
    assert ds["time"].dtype == np.float64 and np.array_equal(ds["time"].values, stored)
    with xr.open_dataset(run_files / "ns64_atan.nc") as plain:  # plain xarray: epoch + t seconds
        seconds = (plain["time"].values - np.datetime64(TIME_EPOCH.replace(" ", "T"))) / np.timedelta64(1, "s")
        np.testing.assert_allclose(seconds, stored, rtol=1e-9)
    cf_xarray = pytest.importorskip("cf_xarray")
    assert cf_xarray and ds.cf.axes == {"T": ["time"], "X": ["x"], "Y": ["y"]}


def _to_previous_layout(path):
    """Give run file ``path`` the attributes of the layout before :data:`enff.runfile.TIME_ATTRS`."""
    with netCDF4.Dataset(path, "a") as raw:
        time = raw["time"]
        for name in set(TIME_ATTRS) - {"long_name", "units"}:
            time.delncattr(name)
        time.long_name, time.units = "model time since the end of the spin-up (dimensionless model time units)", "1"
        raw["x"].delncattr("cartesian_axis")
        raw["x"].axis = "X"


def test_a_file_of_the_previous_layout_reads_and_resumes(tmp_path, small_case_text):
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(small_case_text), full, progress=False)
    run_case(parse_case(small_case_text, overrides=["run.cycles=5"]), part, progress=False)
    _to_previous_layout(part)
    with netCDF4.Dataset(part, "a") as raw:  # pretend it had been asked for the 12 cycles of ``full``
        raw.setncattr("case", parse_case(small_case_text).to_toml())
    run_case(parse_case(small_case_text), part, resume=True, progress=False)
    a, b = open_run(full), open_run(part)
    assert b["time"].attrs["units"] == "1"  # resuming appends records; it does not rewrite the header
    np.testing.assert_array_equal(a["time"].values, b["time"].values)
    np.testing.assert_array_equal(a["analysis_mean"].values, b["analysis_mean"].values)
    with xr.open_dataset(part) as plain:
        assert plain["time"].dtype == np.float64
