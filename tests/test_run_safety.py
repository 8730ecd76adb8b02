"""Crash safety, concurrency and silent failure of runs: atomic creation, the writer's lock, consistency
checks of readers, full disks, deleted files, signals, refused resumes, lost-track flags, kill storms."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from enff.casefile import parse_case
from enff.cli import main
from enff.cycle import EXIT_IO, RunStopped, run_case
from enff.runfile import RunFile, RunFileError, check_run, open_run
from enff.safefile import WriterLock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _enff(*args: str) -> list[str]:
    return [sys.executable, "-m", "enff.cli", *args]


def _case_file(tmp_path, text, name="case.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _long_case(small_case_text, cycles=3000):
    return small_case_text.replace('name = "none"', 'name = "enkf"').replace("cycles = 12", f"cycles = {cycles}")


def _compare(a, b):
    a, b = open_run(a), open_run(b)
    assert a.sizes == b.sizes
    for name in a.data_vars:
        if name != "analysis_seconds":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def _start(case_file, out, *extra):
    return subprocess.Popen(_enff("run", str(case_file), "--out", str(out), "--quiet", *extra), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_cycles(out, n, child, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if check_run(out).cycles_done >= n:
                return
        except RunFileError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach {n} cycles: {child.poll()} {child.stderr.read() if child.poll() is not None else ''}")


# --- creation -------------------------------------------------------------------------------------------


def test_a_failed_creation_leaves_nothing_at_the_path(tmp_path, small_case_text, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunFile, "write_restart", fail)
    out = tmp_path / "run.nc"
    with pytest.raises(KeyboardInterrupt):
        run_case(parse_case(small_case_text), out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_kill_in_the_creation_window_does_not_block_a_fresh_run(tmp_path, small_case_text):
    # the child SIGKILLs itself just before the prepared file would be published
    out = tmp_path / "run.nc"
    case = _case_file(tmp_path, small_case_text)
    script = ("import os, signal, sys\nimport enff.runfile as rf\n"
              "rf.publish = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
              "from enff.cli import main\n"
              f"sys.exit(main(['run', {str(case)!r}, '--out', {str(out)!r}, '--quiet']))\n")
    child = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True)
    assert child.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".run.nc.*.tmp"))) == 1
    assert main(["run", str(case), "--out", str(out), "--quiet"]) == 0
    assert check_run(out).cycles_done == 12
    assert not list(tmp_path.glob(".run.nc.*.tmp"))  # the dead process' temporary file was removed


# --- one writer per file; readers refuse inconsistent files --------------------------------------------


def test_a_second_writer_is_refused_naming_the_file_and_the_holder(tmp_path, small_case_text, capsys):
    case = _case_file(tmp_path, _long_case(small_case_text))
    out = tmp_path / "run.nc"
    first = _start(case, out)
    try:
        _wait_for_cycles(out, 3, first)
        before = out.stat().st_ino
        for extra in (["--overwrite"], ["--resume"]):
            assert main(["run", str(case), "--out", str(out), "--quiet", *extra]) == 2
            err = capsys.readouterr().err
            assert str(out) in err and f"process {first.pid}" in err and "Traceback" not in err
        assert out.stat().st_ino == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    WriterLock.acquire(out).release()  # the lock died with its holder


def test_two_runs_started_together_on_one_out_the_later_is_refused(tmp_path, small_case_text, monkeypatch):
    import enff.runfile as runfile

    out = tmp_path / "run.nc"
    publish, held = runfile.publish, []

    def the_other_run_publishes_first(tmp, path, *, replace):
        publish(shutil.copy(tmp, tmp_path / "other.tmp"), path, replace=False)
        held.append(WriterLock.acquire(path))
        publish(tmp, path, replace=replace)

    monkeypatch.setattr(runfile, "publish", the_other_run_publishes_first)
    try:
        with pytest.raises(RunFileError, match=f"{out} is being written by process {os.getpid()}"):
            run_case(parse_case(small_case_text), out, progress=False)
    finally:
        held[0].release()
    assert not list(tmp_path.glob(".run.nc.*.tmp"))


def _finished_run(tmp_path, small_case_text, name="run.nc"):
    out = tmp_path / name
    run_case(parse_case(small_case_text), out, progress=False)
    return out


@pytest.mark.parametrize("damage, expected", [
    (lambda ds: ds["cycle_complete"].__setitem__(4, 0), "holes"),
    (lambda ds: ds["restart_cycle"].__setitem__(slice(None), [7, 3]), "restart slot"),
    (lambda ds: ds["cycle_complete"].__setitem__(slice(8, 12), 0), "truncated"),
])
def test_score_plot_compare_and_resume_refuse_an_inconsistent_file(tmp_path, small_case_text, capsys, damage, expected):
    out = _finished_run(tmp_path, small_case_text)
    with netCDF4.Dataset(out, "a") as ds:
        damage(ds)
    before = out.read_bytes()
    for command in (["score", str(out), "--json"], ["plot", str(out), "--outdir", str(tmp_path / "png")],
                    ["compare", str(out), "--json"], ["run", "--resume", "--out", str(out), "--quiet"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(out) in err and expected in err and "Traceback" not in err
    assert out.read_bytes() == before  # nothing refused is written to
    assert not (tmp_path / "png").exists()


def test_resume_of_a_file_being_written_reports_the_writer_not_its_half_written_cycle(tmp_path, small_case_text,
                                                                                       capsys):
    # a writer between its restart write and its cycle record leaves the file inconsistent for a moment;
    # a resume must take the lock before it reads, so it names the writer instead of judging the file
    out = _finished_run(tmp_path, small_case_text)
    with netCDF4.Dataset(out, "a") as ds:
        ds["restart_cycle"][0] = 14  # slot 0 already holds the next-but-one cycle, as mid-write
    held = WriterLock.acquire(out)
    try:
        before = out.read_bytes()
        assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"being written by process {os.getpid()}" in err and "inconsistent" not in err
        assert out.read_bytes() == before
    finally:
        held.release()
    assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 2  # unlocked, the damage is reported
    assert "restart slot 0 holds cycle 14" in capsys.readouterr().err


def test_resume_never_writes_to_a_truncated_file(tmp_path, small_case_text, capsys):
    out = _finished_run(tmp_path, small_case_text)
    with open(out, "r+b") as handle:
        handle.truncate(out.stat().st_size * 2 // 3)
    before = out.read_bytes()
    case = _case_file(tmp_path, small_case_text)
    assert main(["run", str(case), "--out", str(out), "--resume", "--quiet"]) == 2
    assert "truncated" in capsys.readouterr().err
    assert out.read_bytes() == before


# --- disk full, deleted file, signals ------------------------------------------------------------------


def test_disk_full_stops_cleanly_and_the_run_resumes_exactly(tmp_path, small_case_text, monkeypatch):
    text = small_case_text.replace('name = "none"', 'name = "enkf"')
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(text), full, progress=False)
    calls = []
    reserve = WriterLock.reserve

    def disk_full_at_cycle_6(self, nbytes):
        calls.append(nbytes)
        if len(calls) == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        reserve(self, nbytes)

    monkeypatch.setattr(WriterLock, "reserve", disk_full_at_cycle_6)
    with pytest.raises(RunStopped) as stop:
        run_case(parse_case(text), part, progress=False)
    assert stop.value.status == EXIT_IO == 5
    message = str(stop.value)
    assert "disk full" in message and "holds 5 of 12 cycles" in message and f"--resume --out {part}" in message
    monkeypatch.setattr(WriterLock, "reserve", reserve)
    run_case(parse_case(text), part, resume=True, progress=False)
    _compare(full, part)


def test_failed_netcdf_write_ends_with_a_message_not_a_crash(tmp_path, small_case_text):
    # the write path itself fails with ENOSPC (space taken by someone else after the reservation):
    # a real, full tmpfs when we may mount one
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        case = _case_file(tmp_path, _long_case(small_case_text, 400))
        out = mount / "run.nc"
        script = ("import sys\nfrom enff.safefile import WriterLock\nWriterLock.reserve = lambda self, n: None\n"
                  f"from enff.cli import main\nsys.exit(main(['run', {str(case)!r}, '--out', {str(out)!r}, '--quiet']))\n")
        child = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True)
        assert child.returncode == EXIT_IO, child.stderr
        assert "No space left" in child.stderr and "Traceback" not in child.stderr and "--resume" in child.stderr
        done = check_run(out).cycles_done
        assert 0 < done < 400
        planned = subprocess.run(_enff("run", str(case), "--out", str(out), "--quiet"), env=ENV, capture_output=True)
        assert planned.returncode == 2  # exists: not silently replaced
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_deleted_output_is_restored_and_resumes_exactly(tmp_path, small_case_text, monkeypatch):
    text = small_case_text.replace('name = "none"', 'name = "enkf"')
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(text), full, progress=False)
    write = RunFile._write_record

    def delete_after_cycle_4(self, index, record, diagnostics):
        write(self, index, record, diagnostics)
        if index == 3:
            part.unlink()

    monkeypatch.setattr(RunFile, "_write_record", delete_after_cycle_4)
    with pytest.raises(RunStopped) as stop:
        run_case(parse_case(text), part, progress=False)
    assert stop.value.status == 5 and "was deleted" in str(stop.value) and "holds 4 of 12" in str(stop.value)
    monkeypatch.setattr(RunFile, "_write_record", write)
    run_case(parse_case(text), part, resume=True, progress=False)
    _compare(full, part)


def test_replaced_output_stops_the_run(tmp_path, small_case_text, monkeypatch):
    out = tmp_path / "run.nc"
    write = RunFile._write_record

    def replace_after_cycle_2(self, index, record, diagnostics):
        write(self, index, record, diagnostics)
        if index == 1:
            os.replace(shutil.copy(out, tmp_path / "copy.nc"), out)

    monkeypatch.setattr(RunFile, "_write_record", replace_after_cycle_2)
    with pytest.raises(RunStopped, match="was replaced") as stop:
        run_case(parse_case(small_case_text), out, progress=False)
    assert stop.value.status == 5


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_with_one_message_and_a_resumable_file(tmp_path, small_case_text, signum, status):
    text = _long_case(small_case_text, 60)
    case = _case_file(tmp_path, text)
    out, full = tmp_path / "run.nc", tmp_path / "full.nc"
    child = _start(case, out)
    _wait_for_cycles(out, 5, child)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0] and "Traceback" not in err
    assert f"enff run --resume --out {out}" in lines[0]
    assert subprocess.run(_enff("run", "--resume", "--out", str(out), "--quiet"), env=ENV).returncode == 0
    run_case(parse_case(text), full, progress=False)
    _compare(full, out)


# --- lost track ----------------------------------------------------------------------------------------


def test_a_filter_that_loses_track_is_flagged(tmp_path, small_case_text, capsys):
    # ETKF, N = 10, no inflation: the ensemble collapses onto a wrong state within a few dozen cycles
    text = small_case_text.replace('name = "none"', 'name = "etkf"\ninflation = 1.0').replace("cycles = 12",
                                                                                            "cycles = 80")
    case = _case_file(tmp_path, text)
    out = tmp_path / "lost.nc"
    assert main(["run", str(case), "--out", str(out), "--quiet"]) == 0
    run_err = capsys.readouterr().err
    ds = open_run(out)
    flags = ds["lost_track"].values
    first = int(np.flatnonzero(flags)[0]) + 1
    assert flags[first - 1:].all() and first >= 10  # a symptom must last 10 cycles before it is flagged
    assert f"lost track at cycle {first}" in run_err and str(out) in run_err
    assert main(["score", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["lost_track"] == first
    assert f"lost track at cycle {first}" in captured.err
    assert ds["lost_track"].attrs["flag_meanings"] == "overconfident no_better_than_climatology"


def test_a_tracking_filter_is_not_flagged(tmp_path, small_case_text, capsys):
    text = small_case_text.replace('name = "none"', 'name = "letkf"\nradius = 4.0\ninflation = 1.05').replace(
        "cycles = 12", "cycles = 150")
    case = _case_file(tmp_path, text)
    out = tmp_path / "good.nc"
    assert main(["run", str(case), "--out", str(out), "--quiet"]) == 0
    assert "lost track" not in capsys.readouterr().err
    assert main(["score", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lost_track"] is None
    assert not open_run(out)["lost_track"].values.any()


def test_lost_track_flags_survive_a_resume_unchanged(tmp_path, small_case_text):
    text = small_case_text.replace('name = "none"', 'name = "etkf"\ninflation = 1.0').replace("cycles = 12",
                                                                                            "cycles = 40")
    full, part = tmp_path / "full.nc", tmp_path / "part.nc"
    run_case(parse_case(text), full, progress=False)
    run_case(parse_case(text.replace("cycles = 40", "cycles = 25")), part, progress=False)
    with netCDF4.Dataset(part, "a") as raw:  # cut in the middle of a symptom's streak
        raw.setncattr("case", parse_case(text).to_toml())
    run_case(parse_case(text), part, resume=True, progress=False)
    assert open_run(full)["lost_track"].values.any()
    _compare(full, part)


# --- kill storm ----------------------------------------------------------------------------------------


def _storm(kills, cycles, workdir):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kill_storm import storm

    return storm(kills, workdir, cycles=cycles, seed=3)


def test_short_kill_storm_ends_with_files_equal_to_an_uninterrupted_run(tmp_path):
    result = _storm(5, 40, tmp_path)
    assert sum(result.kills.values()) == 5 and not result.failures
    assert all(result.resumable) and all(result.equal)


@pytest.mark.slow
def test_kill_storm_of_60_kills(tmp_path):
    result = _storm(60, 40, tmp_path)
    assert sum(result.kills.values()) == 60 and result.kills["creation"] > 0 and not result.failures
    assert all(result.resumable) and all(result.equal)
