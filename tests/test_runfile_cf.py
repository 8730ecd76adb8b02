"""Run files pass the CF checker (``cfchecker``, CF-1.8) with no errors, for a 1-D and a 2-D multi-field case.

Skipped where ``cfchecker`` cannot be imported (it needs the UDUNITS C library: ``libudunits2``). The checker
reads three XML tables that it would download; the run files use one standard name (``realization``) and
no area types or region names, so small local tables stand in for them and the test runs offline.
"""

import pytest

from enff.casefile import load_case
from enff.cycle import run_case
from enff.runfile import open_run

cfchecks = pytest.importorskip("cfchecker.cfchecks", reason="cfchecker (and the UDUNITS library) not installed")

TABLES = {
    "standard_names.xml": """<?xml version="1.0"?>
<standard_name_table><version_number>1</version_number><last_modified></last_modified>
<entry id="realization"><canonical_units>1</canonical_units><description>ensemble member</description></entry>
</standard_name_table>""",
    "area_types.xml": """<?xml version="1.0"?>
<area_type_table><version_number>1</version_number><date></date></area_type_table>""",
    "region_names.xml": """<?xml version="1.0"?>
<standardized_region_list><version_number>1</version_number><date></date></standardized_region_list>""",
}

CASES = {
    "l96_40": ["run.cycles=3", "run.spinup=10"],
    "ns64_atan": ["run.cycles=2", "ensemble.size=4", "model.n=32"],  # fields pressure, u, v on a 2-D grid
}


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A tiny run file of each case in :data:`CASES` and the checker's tables, in one folder."""
    folder = tmp_path_factory.mktemp("cf")
    for name, text in TABLES.items():
        (folder / name).write_text(text)
    for case, overrides in CASES.items():
        run_case(load_case(case, overrides=overrides), folder / f"{case}.nc", progress=False)
    return folder


def check(path, tables):
    """Run cfchecker on ``path``; returns ``(counts by category, messages)``."""
    checker = cfchecks.CFChecker(cfStandardNamesXML=str(tables / "standard_names.xml"),
                                 cfAreaTypesXML=str(tables / "area_types.xml"),
                                 cfRegionNamesXML=str(tables / "region_names.xml"), version="1.8", silent=True)
    checker.checker(str(path))
    return checker.get_total_counts(), checker.all_messages


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_file_has_no_cf_errors(run_files, case):
    counts, messages = check(run_files / f"{case}.nc", run_files)
    assert counts["FATAL"] + counts["ERROR"] == 0, "\n".join(map(str, messages))


def test_run_file_axes_and_field_labels(run_files):
    ds = open_run(run_files / "ns64_atan.nc")
    assert list(ds["field"].values) == ["pressure", "u", "v"]
    assert ds["truth"].sel(field="u").dims == ("time", "y", "x")
    assert (ds["x"].attrs["axis"], ds["y"].attrs["axis"]) == ("X", "Y")
    for name in ("time", "x", "y", "obs_x", "member", "obs", "rank", "rmse_analysis", "truth"):
        assert ds[name].attrs["units"] == "1" and ds[name].attrs["long_name"], name
    cf_xarray = pytest.importorskip("cf_xarray")
    assert cf_xarray and ds.cf.axes == {"X": ["x"], "Y": ["y"]}
