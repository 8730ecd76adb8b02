"""`enff sweep` on dask.distributed and `enff compare`: runs, resume, failures, killed workers, bad specs."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from enff.cli import main
from enff.compare import DEFAULT_BURN_IN_NOTE, compare, format_comparison
from enff.cycle import run_case
from enff.runfile import open_run, open_runs
from enff.runset import read_run_info
from enff.runstatus import read_failure
from enff.summary import summarize
from enff.sweep import EXIT_SOME_FAILED, execute_run, local_cluster, run_sweep
from enff.sweepspec import SpecError, SweepSpec, load_spec, plan, run_name

distributed = pytest.importorskip("distributed")

TINY = ["run.cycles=20", "run.spinup=100", "ensemble.size=10"]
SPEC = textwrap.dedent(
    """
    [sweep]
    cases = ["l96_40"]
    filters = ["etkf", "letkf"]
    seeds = [0, 1]
    out = "runs"
    set = ["run.cycles=20", "run.spinup=100", "ensemble.size=10"]

    [grid]
    "filter.inflation" = [1.01, 1.05]
    """
)


def write_spec(folder: Path, text: str = SPEC, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of two process workers with one thread each (as `enff sweep` starts)."""
    with local_cluster(2, dashboard=None) as cluster, distributed.Client(cluster) as c:
        yield c


def same_series(a: Path, b: Path) -> None:
    with open_run(a) as x, open_run(b) as y:
        for name in ("rmse_analysis", "spread_analysis", "analysis_mean"):
            np.testing.assert_array_equal(x[name].values, y[name].values)


def test_plan_expands_product_and_zipped_lists(tmp_path):
    spec = load_spec(write_spec(tmp_path, SPEC + textwrap.dedent(
        """
        [grid.letkf]
        "filter.radius" = [5.0, 10.0]
        [zip.etkf]
        "filter.rtps" = [0.0, 0.5, 0.9]
        "observations.std" = [1.0, 1.5, 2.0]
        """)))
    runs = plan(spec)
    # etkf: 2 inflations x 3 zipped pairs x 2 seeds; letkf: 2 inflations x 2 radii x 2 seeds
    assert len(runs) == 12 + 8
    assert len({r.path for r in runs}) == len(runs)
    first = runs[0]
    assert first.name == "l96_40__etkf__filter.inflation=1.01__filter.rtps=0.0__observations.std=1.0__seed0"
    assert first.path == (tmp_path / "runs" / f"{first.name}.nc").resolve()
    assert {(dict(r.values)["filter.rtps"], dict(r.values)["observations.std"]) for r in runs if r.filter == "etkf"} \
        == {(0.0, 1.0), (0.5, 1.5), (0.9, 2.0)}
    assert first.case.run.seed == 0 and first.case.filter.inflation == 1.01
    # the printed command rebuilds the same case
    words = shlex.split(first.command())
    assert words[:5] == ["enff", "run", "l96_40", "--filter", "etkf"] and words[-1] == "--overwrite"


def test_zipped_lists_may_repeat_a_value_of_one_key(tmp_path):
    # the published table's rows share sigma_min across step counts: one zipped point per row
    spec = load_spec(write_spec(tmp_path, BASE + textwrap.dedent(
        """
        [zip.letkf]
        "filter.radius" = [5.0, 5.0, 8.0]
        "filter.inflation" = [1.0, 1.02, 1.02]
        """)))
    points = spec.points("letkf")
    assert points == [(("filter.inflation", 1.0), ("filter.radius", 5.0)), (("filter.inflation", 1.02), ("filter.radius", 5.0)),
                      (("filter.inflation", 1.02), ("filter.radius", 8.0))]


def test_a_complete_run_is_reused_only_while_the_case_defines_the_same_run(tmp_path):
    case = tmp_path / "case.toml"
    case.write_text((Path(__file__).resolve().parents[1] / "cases" / "l96_40.toml").read_text())
    spec = write_spec(tmp_path, textwrap.dedent(
        f"""
        [sweep]
        cases = ["{case}"]
        filters = ["etkf"]
        seeds = [0]
        out = "runs"
        set = ["run.cycles=4", "run.spinup=50", "ensemble.size=10"]
        """))
    (run,) = plan(load_spec(spec))
    run.path.parent.mkdir()
    assert execute_run(run).status == "complete"
    # another filter's table edited: the stored run is still this configuration's
    case.write_text(case.read_text().replace("[filters.enkf]\ninflation = 1.04", "[filters.enkf]\ninflation = 1.05", 1))
    assert "inflation = 1.05" in case.read_text()
    (run,) = plan(load_spec(spec))
    assert execute_run(run).status == "skipped"
    # the run's own filter table edited: the file is of another run, reported instead of reused
    case.write_text(case.read_text().replace("[filters.etkf]", "[filters.etkf]\nrtps = 0.3", 1))
    (run,) = plan(load_spec(spec))
    assert run.case.filter.rtps == 0.3
    outcome = execute_run(run)
    assert outcome.status == "failed" and "different case" in outcome.message


def test_run_names_are_stable_and_filesystem_safe():
    name = run_name("ks1024_atan", "enff-ot", (("filter.guidance", "mc"), ("filter.scale", 0.5)), 3)
    assert name == "ks1024_atan__enff-ot__filter.guidance=mc__filter.scale=0.5__seed3"
    odd = run_name("c", "etkf", (("observations.patches", [[0, 4, 0, 4]]),), 0)
    assert "/" not in odd and " " not in odd and "[" not in odd
    long = run_name("c", "etkf", tuple((f"filter.k{i}", 1.0 * i) for i in range(40)), 0)
    assert len(long) <= 160 and long.startswith("c__etkf__grid-") and long.endswith("__seed0")
    assert long == run_name("c", "etkf", tuple((f"filter.k{i}", 1.0 * i) for i in range(40)), 0)


def test_sweep_on_local_cluster_skips_finished_runs_and_compare_equals_score(tmp_path, client, capsys):
    spec = load_spec(write_spec(tmp_path))
    result = run_sweep(spec, client, progress=False)
    assert [o.status for o in result.outcomes] == ["complete"] * 8
    assert len(result.paths) == 8 and all(p.parent == tmp_path / "runs" for p in result.paths)
    # running it again is no work
    again = run_sweep(spec, client, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped"] * 8

    # compare: numbers equal `enff score` on each file, with the same burn-in
    ds = compare([tmp_path / "runs"], burn_in=5)
    assert ds.sizes == {"configuration": 4, "seed": 2, "time": 20}
    for i in range(4):
        for j in range(2):
            score = summarize(ds["path"].values[i, j], burn_in=5)
            assert ds["rmse"].values[i, j] == score["rmse"]
            assert ds["crps"].values[i, j] == score["crps"]
    # no --burn-in: each run's default_burn_in (cycles // 10 = 2 of 20), as `enff score` without one
    default = compare([tmp_path / "runs"])
    assert default.attrs["burn_in"] == DEFAULT_BURN_IN_NOTE
    for i in range(4):
        for j in range(2):
            assert default["rmse"].values[i, j] == summarize(default["path"].values[i, j])["rmse"]
            assert default["rmse"].values[i, j] != summarize(default["path"].values[i, j], burn_in=0)["rmse"]
    assert main(["compare", str(tmp_path / "runs"), "--burn-in", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {r["filter"] for r in rows} == {"etkf", "letkf"}
    for row in rows:
        assert set(row["overrides"]) == {"filter.inflation"} and row["seeds"] == 2 and row["diverged"] == 0
        paths = [p for p in result.paths
                 if f"__{row['filter']}__filter.inflation={row['overrides']['filter.inflation']}__" in p.name]
        scores = []
        for path in paths:
            assert main(["score", str(path), "--burn-in", "5", "--json"]) == 0
            scores.append(json.loads(capsys.readouterr().out))
        for key in ("rmse", "spread", "crps", "spread_rmse_ratio", "analysis_seconds"):
            assert row[key] == pytest.approx(np.mean([s[key] for s in scores]), rel=1e-14, abs=0)
        assert row["rmse_se"] == pytest.approx(np.std([s["rmse"] for s in scores], ddof=1) / np.sqrt(2), rel=1e-12)
    for name in ("etkf", "letkf"):  # one best configuration per filter: the lowest mean RMSE
        group = [r for r in rows if r["filter"] == name]
        assert sum(r["best"] for r in group) == 1
        assert min(group, key=lambda r: r["rmse"])["best"]
    # table, CSV, netCDF and figures
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "runs"), "--netcdf", str(out / "c.nc"), "--csv", str(out / "c.csv"),
                 "--plots", str(out)]) == 0
    assert "*" in capsys.readouterr().out
    assert xr.open_dataset(out / "c.nc")["rmse"].dims == ("configuration", "seed")
    assert sorted(p.name for p in out.glob("*.png")) == ["rmse_time.png", "scores.png", "spread_rmse.png"]
    assert (out / "c.csv").read_text().count("\n") == 5


def test_open_runs_has_the_configuration_as_coordinates(tmp_path, client):
    spec = load_spec(write_spec(tmp_path))
    paths = run_sweep(plan(spec)[:4], client, progress=False).paths  # etkf, 2 inflations x 2 seeds
    ds = open_runs(paths)
    assert ds.sizes["run"] == 4
    assert list(ds["filter"].values) == ["etkf"] * 4
    assert list(ds["seed"].values) == [0, 1, 0, 1]
    assert list(ds["filter.inflation"].values) == [1.01, 1.01, 1.05, 1.05]
    assert list(ds["overrides"].values)[0] == "filter.inflation=1.01"
    assert "run.seed" not in ds.coords and set(ds["status"].values) == {"complete"}
    assert ds["rmse_analysis"].chunks is not None  # lazily loaded dask arrays
    assert "inflation = 1.05" in str(ds["case_toml"].values[2])


def test_failures_do_not_stop_the_others_and_are_reproducible(tmp_path, client, capsys):
    spec_path = write_spec(tmp_path, textwrap.dedent(
        """
        [sweep]
        cases = ["l96_40"]
        filters = ["etkf"]
        out = "runs"
        set = ["run.cycles=20", "run.spinup=100", "ensemble.size=10"]
        [grid.etkf]
        "ensemble.initial_std" = [1.0, 1e8]     # 1e8: the first analysis is not finite (Divergence)
        "filter.inflation" = [1.01, 1e300]      # 1e300: the eigensolver raises
        """))
    result = run_sweep(load_spec(spec_path), client, progress=False)
    by_point = {tuple(v for _, v in o_run.values): o for o_run, o in zip(plan(load_spec(spec_path)), result.outcomes)}
    assert by_point[(1.0, 1.01)].status == "complete"
    assert by_point[(1e8, 1.01)].status == "diverged" and "run diverged at cycle" in by_point[(1e8, 1.01)].message
    assert by_point[(1.0, 1e300)].status == "failed" and "LinAlgError" in by_point[(1.0, 1e300)].message
    assert len(result.failures) == 3
    failure = read_failure(by_point[(1e8, 1.01)].path)
    assert failure is not None and failure.kind == "diverged"
    # the printed command reproduces the divergence (exit 3 as `enff run` says)
    words = shlex.split(by_point[(1e8, 1.01)].command)
    assert main(words[1:] + ["--quiet"]) == 3
    capsys.readouterr()
    # compare counts the diverged and failed runs and never marks them best
    assert main(["compare", str(tmp_path / "runs"), "--json"]) == 0
    rows = {tuple(sorted(r["overrides"].items())): r for r in json.loads(capsys.readouterr().out)}
    diverged = rows[(("ensemble.initial_std", 1e8), ("filter.inflation", 1.01))]
    assert diverged["diverged"] == 1 and diverged["rmse"] is None and not diverged["best"]
    assert rows[(("ensemble.initial_std", 1.0), ("filter.inflation", 1.01))]["best"]


def test_sweep_cli_exit_status_lists_failures(tmp_path, capsys):
    spec_path = write_spec(tmp_path, textwrap.dedent(
        """
        [sweep]
        cases = ["l96_40"]
        filters = ["etkf"]
        out = "runs"
        set = ["run.cycles=10", "run.spinup=10", "ensemble.size=10"]
        [grid]
        "ensemble.initial_std" = [1.0, 1e8]
        """))
    assert main(["sweep", str(spec_path), "--workers", "1", "--quiet"]) == EXIT_SOME_FAILED
    out = capsys.readouterr().out
    assert "2 runs: 1 run to the end (0 resumed), 0 already complete, 1 diverged, 0 failed" in out
    assert "reproduce with: enff run l96_40 --filter etkf" in out and "dashboard:" in out


def test_sweep_against_a_scheduler_and_worker_started_apart(tmp_path, capsys):
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                       "--host", "127.0.0.1", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        spec = write_spec(tmp_path)
        assert main(["sweep", str(spec), "--scheduler", address, "--quiet"]) == 0
        assert "8 runs: 8 run to the end" in capsys.readouterr().out
        assert len(list((tmp_path / "runs").glob("*.nc"))) == 8
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow  # the client waits its 20 s connect timeout
def test_scheduler_that_is_not_there_is_an_input_error(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["sweep", str(spec), "--scheduler", "tcp://127.0.0.1:9", "--quiet"]) == 2
    assert "cannot connect to the scheduler" in capsys.readouterr().err


LONG = textwrap.dedent(
    """
    [sweep]
    cases = ["l96_40"]
    filters = ["etkf"]
    seeds = [0, 1]
    out = "runs"
    set = ["run.cycles=400", "run.spinup=100", "ensemble.size=10"]
    """
)


def test_a_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path, client):
    spec_path = write_spec(tmp_path, LONG)
    enff = str(Path(sys.executable).with_name("enff"))
    proc = subprocess.Popen([enff, "sweep", str(spec_path), "--workers", "2", "--quiet"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = plan(load_spec(spec_path))
    try:
        deadline = time.monotonic() + 300  # generous: the shared 2-core machine is often loaded
        while time.monotonic() < deadline:
            done = [read_run_info(r.path).cycles_done if r.path.is_file() else 0 for r in runs]
            if max(done) >= 20:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its scheduler and its workers at once
        proc.wait()
    partial = [read_run_info(r.path).cycles_done for r in runs if r.path.is_file()]
    assert partial and min(partial) < 400
    table = format_comparison(compare([r.path for r in runs if r.path.is_file()]))
    assert f"{len(partial)} ({sum(n < 400 for n in partial)} incomplete)" in table  # the means leave them out
    result = run_sweep(runs, client, progress=False)
    assert [o.status for o in result.outcomes] == ["complete", "complete"], result.outcomes
    assert any(o.cycles_before > 0 for o in result.outcomes)
    reference = tmp_path / "reference.nc"
    run_case(runs[1].case, reference, progress=False)
    same_series(runs[1].path, reference)


@pytest.mark.slow  # about 35 s on 2 shared cores: the nanny restarts the worker, the task runs again
def test_a_killed_worker_is_retried_and_the_run_resumes(tmp_path, client):
    run = plan(load_spec(write_spec(tmp_path, LONG)))[0]
    run.path.parent.mkdir(parents=True)
    future = client.submit(execute_run, run, retries=2, pure=False)
    deadline = time.monotonic() + 120
    while not (run.path.is_file() and read_run_info(run.path).cycles_done >= 20):
        assert time.monotonic() < deadline and not future.done()
        time.sleep(0.1)
    (worker,) = [w for w, keys in client.processing().items() if future.key in keys]
    pid = client.run(os.getpid, workers=[worker])[worker]
    os.kill(pid, signal.SIGKILL)
    outcome = future.result(timeout=180)
    assert outcome.status == "complete" and 0 < outcome.cycles_before < 400
    reference = tmp_path / "reference.nc"
    run_case(run.case, reference, progress=False)
    same_series(run.path, reference)


BASE = '[sweep]\ncases = ["l96_40"]\nfilters = ["etkf", "letkf"]\nout = "runs"\n'
BAD_SPECS = {
    "not TOML": ("[sweep\n", "not valid TOML"),
    "unknown section": (BASE + "[grids]\n", "unknown section [grids]"),
    "missing [sweep]": ('[grid]\n"filter.radius" = [1.0]\n', "missing section [sweep]"),
    "unknown key": (BASE + "seed = 1\n", "unknown key sweep.seed"),
    "missing cases": ('[sweep]\nfilters = ["etkf"]\n', "missing key sweep.cases"),
    "no such filter": ('[sweep]\ncases = ["l96_40"]\nfilters = ["etkff"]\n', "sweep.filters: 'etkff' names no filter"),
    "no such case": ('[sweep]\ncases = ["l96_4"]\nfilters = ["etkf"]\n', "sweep.cases: 'l96_4'"),
    "negative seed": (BASE + "seeds = [-1]\n", "sweep.seeds must be >= 0"),
    "repeated seed": (BASE + "seeds = [1, 1]\n", "sweep.seeds lists a value twice"),
    "seed of the wrong type": (BASE + 'seeds = ["0"]\n', "sweep.seeds entries must be ints"),
    "set is not a list": (BASE + 'set = "run.cycles=3"\n', "sweep.set must be a list"),
    "set entry without =": (BASE + 'set = ["run.cycles"]\n', "sweep.set entries are 'section.key=value'"),
    "bad set value": (BASE + 'set = ["run.cycles=0"]\n', "sweep.set (case l96_40, filter etkf)"),
    "grid key without section": (BASE + '[grid.letkf]\nradius = [1.0]\n', "[grid.letkf] radius: grid keys are"),
    "grid sets the seed": (BASE + '[grid]\n"run.seed" = [1, 2]\n', "set run.seed with sweep.seeds"),
    "grid of another filter": (BASE + '[grid.enkf]\n"filter.inflation" = [1.0]\n', "[grid.enkf] names a filter"),
    "grid value not a list": (BASE + '[grid.letkf]\n"filter.radius" = 5.0\n', "must be a list of values"),
    "empty grid list": (BASE + '[grid.letkf]\n"filter.radius" = []\n', "must be a non-empty list"),
    "repeated grid value": (BASE + '[grid.letkf]\n"filter.radius" = [5.0, 5.0]\n', "lists a value twice"),
    "repeated zipped point": (BASE + '[zip.letkf]\n"filter.radius" = [5.0, 6.0, 5.0]\n"filter.inflation" = [1.0, 1.0, 1.0]\n',
                              "[zip.letkf] lists point 1 twice (again as point 3): filter.radius=5.0, filter.inflation=1.0"),
    "zip lengths differ": (BASE + '[zip.letkf]\n"filter.radius" = [5.0, 6.0]\n"filter.inflation" = [1.0]\n',
                           "must have one length"),
    "key in grid and zip": (BASE + '[grid.letkf]\n"filter.radius" = [5.0]\n[zip.letkf]\n"filter.radius" = [6.0]\n',
                            "filter.radius is in both [grid.letkf] and [zip.letkf]"),
    "bad grid value": (BASE + '[grid.letkf]\n"filter.radius" = [5.0, "wide"]\n',
                       '[grid.letkf] filter.radius = "wide" (case l96_40, filter letkf)'),
    "key the filter lacks": (BASE + '[grid]\n"filter.radius" = [5.0]\n', "[grid] filter.radius = 5.0 (case l96_40, filter etkf)"),
}


@pytest.mark.parametrize("kind", list(BAD_SPECS))
def test_bad_specs_name_the_file_and_key_and_run_nothing(tmp_path, capsys, kind):
    text, expected = BAD_SPECS[kind]
    spec = write_spec(tmp_path, text)
    assert main(["sweep", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"enff: error: {spec}:") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SpecError):
        plan(load_spec(spec))


def test_spec_as_a_dataclass(tmp_path):
    spec = SweepSpec(cases=["l96_40"], filters=["letkf"], seeds=[3], out=tmp_path / "r", common=TINY,
                     grid={"letkf": {"filter.radius": [5.0, 10.0]}})
    runs = plan(spec)
    assert [r.name for r in runs] == ["l96_40__letkf__filter.radius=5.0__seed3", "l96_40__letkf__filter.radius=10.0__seed3"]
    assert runs[0].path.parent == tmp_path / "r"


def test_sweep_table_scores_specs_that_share_an_out_folder_once(tmp_path, monkeypatch):
    """One spec per seed into one folder makes one table, not one copy of the same table per spec."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sweep_table import specs_by_out_dir

    paths = [write_spec(tmp_path, SPEC.replace("seeds = [0, 1]", f"seeds = [{seed}]"), f"seed{seed}.toml")
             for seed in (0, 1)]
    paths.append(write_spec(tmp_path, SPEC.replace('out = "runs"', 'out = "other"'), "other.toml"))
    groups = specs_by_out_dir(paths, [load_spec(path) for path in paths])
    assert list(groups) == [(tmp_path / "runs").resolve(), (tmp_path / "other").resolve()]
    assert [path.name for path, _ in groups[(tmp_path / "runs").resolve()]] == ["seed0.toml", "seed1.toml"]
