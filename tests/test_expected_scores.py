"""The shipped cases' recorded scores: the [expected.*] tables parse, and (slow) a sweep reproduces them."""

from __future__ import annotations

import pytest
from dask.distributed import Client

from enff.casefile import CaseError, shipped_cases
from enff.expected import ExpectedScore, check_expected, expected_scores, parse_expected
from enff.sweep import local_cluster

WITH_EXPECTED = sorted(name for name in shipped_cases() if expected_scores(name))


def test_every_shipped_case_records_its_scores():
    assert set(shipped_cases()) == set(WITH_EXPECTED)


@pytest.mark.parametrize("table, message", [
    ({"letkff": {"rmse": 1.0, "tolerance": 0.1}}, "[expected.letkff] names no filter"),
    ({"letkf": {"rmse": 1.0}}, "missing key expected.letkf.tolerance"),
    ({"letkf": {"rmse": -1.0, "tolerance": 0.1}}, "expected.letkf.rmse must be positive"),
    ({"letkf": {"rmse": 1.0, "tolerance": 0.1, "seed": 1}}, "unknown key expected.letkf.seed"),
    ({"letkf": {"rmse": "1", "tolerance": 0.1}}, "expected.letkf.rmse has the wrong type"),
    ({"letkf": {"rmse": 1.0, "tolerance": 0.1, "seeds": []}}, "expected.letkf.seeds must be a non-empty list"),
    ({"letkf": {"rmse": 1.0, "tolerance": 0.1, "set": ["run.cycles"]}}, "expected.letkf.set entries are"),
])
def test_bad_expected_tables_name_the_file_and_key(table, message):
    with pytest.raises(CaseError, match="^case.toml: ") as err:
        parse_expected("case.toml", "l96_40", table)
    assert message in str(err.value)


def test_a_wrong_expectation_fails_the_check(tmp_path):
    # the check can fail: the same runs against a recorded RMSE twice the true one
    entry = ExpectedScore(case="l96_40_quick", filter="etkf", rmse=1.0, tolerance=0.05, seeds=(0,),
                          overrides=("run.cycles=30",), burn_in=10)
    with local_cluster(workers=1, dashboard=None) as cluster, Client(cluster) as client:
        (check,) = check_expected([entry], tmp_path, client)
        good = ExpectedScore(**{**entry.__dict__, "rmse": check.rmse})
        (again,) = check_expected([good], tmp_path, client)  # resumed: the finished run is reused
    assert not check.ok and 0 < check.rmse < 1.0 / 1.05
    assert again.ok and again.rmse == check.rmse


@pytest.mark.slow
@pytest.mark.parametrize("case", WITH_EXPECTED)
def test_shipped_case_reaches_its_expected_scores(case, tmp_path):
    with local_cluster(workers=2, dashboard=None) as cluster, Client(cluster) as client:
        checks = check_expected(expected_scores(case), tmp_path, client)
    failures = [c.describe() for c in checks if not c.ok]
    assert not failures, "\n".join(failures)
