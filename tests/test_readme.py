"""README.md runs as written: every shell command and Python snippet in it is run here, in README order,
in one scratch folder that plays the repository root (it links the repository's ``cases/``).

What is shortened, and how, is all in this file, so anyone can see the difference between a README
command and the command the test runs:

* :data:`SHORTER`: README text replaced before it runs (each must still occur in the README);
* ``enff run`` without ``--resume`` gets ``--set run.cycles=30 --set run.spinup=100`` appended (the last
  ``--set`` wins) and ``enff learn`` gets ``--max-epochs 3``, through the shell function in :data:`PRELUDE`;
* ``make`` lines run as ``make -n`` in the repository (``make test`` is this suite);
* :data:`NOT_RUN`: lines or snippets that need what a test machine lacks, each with its reason;
* :data:`SETUP`: shell commands run just before a README line.

A ``toml`` block whose first line is a comment naming a path is written to that path first; any other
``toml`` block is a case file and must pass :func:`enff.casefile.parse_case`. Blocks of other
languages are not code. Every command must exit 0 and, except those in :data:`LOSES_TRACK_SHORTENED`,
print no lost-track warning; every shell command carries a comment saying about how long it takes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from enff.casefile import parse_case

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: Cycles and spin-up steps of every ``enff run`` here, and epochs of every ``enff learn``.
CYCLES, SPINUP, EPOCHS = 30, 100, 3
#: README text -> the text that runs.
SHORTER = {
    "run.cycles=500": f"run.cycles={CYCLES}",  # the sweep specs (TOML and Python)
    "--burn-in 100": "--burn-in 3",  # burn-ins of 500- and 2000-cycle runs
    "seeds = [0, 1, 2]": "seeds = [0]",  # the sweep spec: 14 runs instead of 42
    "for seed in 1 2 3 4 5 6 7 8;": "for seed in 1 2;",  # two training runs of the learned analysis
    "--seeds 1 2 3 4 5 6 7 8 --cycles 1000": "--seeds 1 --cycles 40",  # the field analysis: one short training run
    "ks128_learned.nc --burn-in 50": "ks128_learned.nc --burn-in 3",  # the score of a 200-cycle run, shortened
}
#: A bash function in front of the ``enff`` console script: the shortening of ``enff run`` and ``enff learn``.
PRELUDE = f"""
enff() {{
  case "$1" in
    run) if [[ " $* " == *" --resume "* ]]; then command enff "$@"; else command enff "$@" --set run.cycles={CYCLES} --set run.spinup={SPINUP}; fi ;;
    learn) command enff "$@" --max-epochs {EPOCHS} ;;
    *) command enff "$@" ;;
  esac
}}
"""
#: README lines (or a line of a Python snippet, which skips the snippet) not run here -> why.
NOT_RUN = {
    "enff sweep sweeps/l96.toml --scheduler tcp://10.0.0.1:8786": "needs a dask scheduler at that address",
    "from dask_jobqueue import SLURMCluster": "needs dask-jobqueue and a SLURM cluster",
}
#: README line -> shell commands run just before it.
SETUP = {
    "ENFF_TRUST_LEGACY_POSTERIORS=1": "cp corrected.pt old.pt",  # the posterior the FMCPE snippet wrote
}
#: README lines whose runs may lose track once shortened -> why.
LOSES_TRACK_SHORTENED = {
    "enff run l63 --filter learned": f"its posterior trained for {EPOCHS} epochs only",
    "--set filter.posterior='\"l96s_analysis.pt\"'": f"its posterior trained for {EPOCHS} epochs only",
}
_DURATION = re.compile(r"#.*\d\s*(s|min|h)\b")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block, in order."""
    return [(lang, code) for lang, code in _FENCE.findall(text)]


def _commands(code: str) -> list[str]:
    """The shell commands of a bash block: one per line, ``\\`` continuations joined, blank lines dropped."""
    return [line for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def _matching(table: dict[str, str], text: str) -> list[str]:
    return [key for key in table if key in text]


def _shorten(text: str) -> str:
    for old, new in SHORTER.items():
        text = text.replace(old, new)
    return text


def _run(args: list[str], cwd: Path, what: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README {what} failed (exit {done.returncode}):\n{output[-3000:]}"
    return output


def test_readme_tables_refer_to_the_readme():
    text = README.read_text()
    for table in (SHORTER, NOT_RUN, SETUP, LOSES_TRACK_SHORTENED):
        missing = [key for key in table if key not in text]
        assert not missing, f"no longer in README.md (update tests/test_readme.py): {missing}"


def test_every_readme_command_says_how_long_it_takes():
    lines = [line for lang, code in _blocks(README.read_text()) if lang == "bash" for line in _commands(code)]
    assert lines
    silent = [line for line in lines if not _DURATION.search(line) and not _matching(NOT_RUN, line)]
    assert not silent, f"README commands without a '# ... N s/min' comment: {silent}"


def test_shipped_sweep_spec_is_the_readme_one():
    blocks = [code for lang, code in _blocks(README.read_text()) if lang == "toml" and code.startswith("# sweeps/")]
    assert blocks
    for code in blocks:
        assert (REPO / code.splitlines()[0][2:].strip()).read_text() == code


def test_readme_runs_as_written(tmp_path):
    (tmp_path / "cases").symlink_to(REPO / "cases")
    blocks = _blocks(README.read_text())
    for lang, code in blocks:  # the files the README's commands read
        first = code.splitlines()[0]
        if lang == "toml" and re.fullmatch(r"# \S+\.toml", first.strip()):
            target = tmp_path / first[2:].strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_shorten(code))
    ran = 0
    for k, (lang, code) in enumerate(blocks):
        if lang == "toml" and not code.startswith("# "):
            parse_case(code, "README.md case example")
        elif lang == "python" and not _matching(NOT_RUN, code):
            snippet = tmp_path / f"snippet_{k}.py"
            snippet.write_text(_shorten(code))
            _run([sys.executable, snippet.name], tmp_path, f"Python snippet {k}:\n{code}")
            ran += 1
        elif lang == "bash":
            for line in _commands(code):
                if _matching(NOT_RUN, line):
                    continue
                if line.startswith("make "):
                    _run(["make", "-n", "-C", str(REPO), *line.split("#")[0].split()[1:]], tmp_path, line)
                    continue
                setup = "".join(f"{SETUP[key]}\n" for key in _matching(SETUP, line))
                output = _run(["bash", "-euo", "pipefail", "-c", PRELUDE + setup + _shorten(line)], tmp_path, line)
                if not _matching(LOSES_TRACK_SHORTENED, line):
                    assert "lost track" not in output, f"README command lost track: {line}\n{output[-2000:]}"
                ran += 1
    assert ran > 10
