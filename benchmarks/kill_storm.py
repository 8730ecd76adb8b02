"""Kill storm: SIGKILL small runs at random moments, the run file's creation window included, resume
after every kill, and check that every file ends resumable and equal to an uninterrupted run.

Writes ``results/kill_storm.json`` and ``.md``. Usage (one thread, about 5 minutes on 2 cores)::

    OMP_NUM_THREADS=1 python benchmarks/kill_storm.py --kills 60
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Lorenz-96, d = 40, 10 members, the stochastic EnKF (so every resume must restore its random streams).
CASE = """
[model]
name = "lorenz96"
dim = 40
forcing = 8.0
dt = 0.05

[observations]
operator = "identity"
every = 1
std = 1.0

[ensemble]
size = 10
initial_mean = "truth"
initial_std = 1.0

[filter]
name = "enkf"
inflation = 1.05

[run]
spinup = 50
cycles = {cycles}
seed = 7
"""
_POLL = 0.001  # seconds between looks at the folder while aiming at the creation window


@dataclass
class StormResult:
    """What a storm did: where each kill landed and whether every file ended equal to the reference."""

    kills: Counter = field(default_factory=Counter)  # "creation", "cycling", "startup" -> count
    files: int = 0
    equal: list[bool] = field(default_factory=list)
    resumable: list[bool] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # runs that ended on their own with an error
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"kills": sum(self.kills.values()), "kills_by_moment": dict(self.kills), "files": self.files,
                "all_resumable": all(self.resumable), "all_equal": all(self.equal), "failures": self.failures,
                "seconds": round(self.seconds, 1)}


def _command(case: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "enff.cli", "run", *([] if resume else [str(case)]), "--out", str(out),
            "--quiet", *(["--resume"] if resume else [])]


def _spawn(case: Path, out: Path) -> subprocess.Popen:
    """Start the run into ``out``: a fresh run when there is no file, else ``--resume``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_command(case, out, out.exists()), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def _temporaries(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.*.tmp"))


def _aim_at_creation(child: subprocess.Popen, out: Path, rng: random.Random) -> bool:
    """Wait for the child's temporary file, then a random few milliseconds; ``True`` if one was seen."""
    while child.poll() is None and not _temporaries(out) and not out.exists():
        time.sleep(_POLL)
    seen = bool(_temporaries(out))
    time.sleep(rng.uniform(0.0, 0.02))
    return seen


def _aim_at_cycling(child: subprocess.Popen, out: Path, rng: random.Random) -> None:
    """Wait until the child writes to ``out``, then a random time of up to a second."""
    before = out.stat().st_mtime_ns if out.exists() else None
    while child.poll() is None and (not out.exists() or out.stat().st_mtime_ns == before):
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 1.0))


def _kill(child: subprocess.Popen) -> bool:
    """SIGKILL the child if it still runs; ``True`` when it was killed (not finished on its own)."""
    if child.poll() is not None:
        return False
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return True


def _finish(case: Path, out: Path) -> None:
    """Run (or resume) ``out`` to its end; raises if that fails."""
    child = _spawn(case, out)
    _, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{out}: the run ended with status {child.returncode}: {err.decode()}")


def _same(a: Path, b: Path) -> bool:
    """Whether two run files hold bit-equal complete cycles (wall-clock seconds aside)."""
    from enff.runfile import open_run

    with open_run(a) as x, open_run(b) as y:
        if x.sizes != y.sizes or set(x.data_vars) != set(y.data_vars):
            return False
        return all(np.array_equal(x[n].values, y[n].values, equal_nan=True)
                   for n in x.data_vars if n != "analysis_seconds")


def _resumable(out: Path) -> bool:
    from enff.runfile import RunFileError, check_run

    try:
        check_run(out)
    except RunFileError:
        return False
    return True


def storm(kills: int, workdir: Path, cycles: int = 40, seed: int = 0, creation_share: float = 0.5) -> StormResult:
    """SIGKILL runs of :data:`CASE` ``kills`` times in the folder ``workdir``, aiming a share
    ``creation_share`` of the kills at the creation window of a new file, and resume after each; then
    finish every file and compare it with an uninterrupted run."""
    start = time.perf_counter()
    rng = random.Random(seed)
    case = workdir / "storm.toml"
    case.write_text(CASE.format(cycles=cycles))
    reference = workdir / "reference.nc"
    _finish(case, reference)
    result = StormResult()
    index, done = 0, 0
    out = workdir / "run_0.nc"
    while done < kills:
        if out.exists() and _complete(out, cycles):
            index += 1
            out = workdir / f"run_{index}.nc"
        fresh = not out.exists()
        child = _spawn(case, out)
        at_creation = fresh and rng.random() < creation_share
        seen = _aim_at_creation(child, out, rng) if at_creation else _aim_at_cycling(child, out, rng)
        if _kill(child):
            done += 1
            result.kills[_moment(out, fresh, at_creation and seen)] += 1
        elif child.returncode != 0:
            result.failures.append(f"{out}: status {child.returncode}: {child.stderr.read().decode().strip()}")
            index += 1
            out = workdir / f"run_{index}.nc"
    for path in sorted(workdir.glob("run_*.nc")):
        if not _complete(path, cycles):
            _finish(case, path)
        result.resumable.append(_resumable(path))
        result.equal.append(_same(reference, path))
    result.files = len(result.equal)
    result.seconds = time.perf_counter() - start
    return result


def _moment(out: Path, fresh: bool, temporary_seen: bool) -> str:
    """Where a kill landed: before the file was published ("creation" when its temporary existed,
    "startup" before), or while cycling."""
    if fresh and not out.exists():
        return "creation" if temporary_seen else "startup"
    return "cycling"


def _complete(out: Path, cycles: int) -> bool:
    """Whether ``out`` is a consistent run file holding all ``cycles`` cycles."""
    from enff.runfile import RunFileError, check_run

    try:
        return check_run(out).cycles_done >= cycles
    except RunFileError:
        return False


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=60)
    parser.add_argument("--cycles", type=int, default=40, help="cycles per run file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--creation-share", type=float, default=0.5,
                        help="share of the starts of a new file whose kill aims at its creation window")
    parser.add_argument("--name", default="kill_storm", help="results/<name>.json and .md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kill_storm_") as workdir:
        result = storm(args.kills, Path(workdir), args.cycles, args.seed, args.creation_share)
    summary = result.as_dict()
    write_results(args.name, {"case": CASE.format(cycles=args.cycles), "seed": args.seed,
                                 "creation_share": args.creation_share, **summary}, _markdown(summary, args.cycles))
    print(summary)


def _markdown(summary: dict, cycles: int) -> str:
    moments = ", ".join(f"{n} {where}" for where, n in sorted(summary["kills_by_moment"].items()))
    return (f"# Kill storm\n\n{summary['kills']} SIGKILLs of `enff run` (Lorenz-96 d = 40, EnKF, N = 10, "
            f"{cycles} cycles per file, one thread) at random moments: {moments} (creation: while the run "
            "file was being prepared under its temporary name; startup: before that). Each kill was followed "
            "by a fresh run (no file yet) or `--resume`.\n\n"
            f"| files | every file resumable | every file bit-equal to an uninterrupted run | seconds |\n"
            f"|---|---|---|---|\n| {summary['files']} | {summary['all_resumable']} | {summary['all_equal']} | "
            f"{summary['seconds']} |\n")


if __name__ == "__main__":
    main()
