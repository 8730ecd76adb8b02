"""Bad inputs, as a hostile but fair user gives them: each ends with exit status 2 and one message naming
the file or the key, no traceback, no new file, and every file there byte-identical afterwards."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

from enff.amortized import FMPE, NetworkConfig, TrainingConfig
from enff.amortized.storage import FORMAT, LEGACY_FORMAT, TRUST_LEGACY_ENV
from enff.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

CASE = """
[model]
name = "lorenz96"
dim = 8
forcing = 8.0
dt = 0.05

[observations]
operator = "identity"
every = 1
std = 1.0

[ensemble]
size = 4
initial_mean = "truth"
initial_std = 1.0

[filter]
name = "etkf"
inflation = 1.02

[run]
spinup = 0
cycles = 3
seed = 0
"""

REAL_CASE = (CASE.replace('operator = "identity"\nevery = 1\nstd = 1.0', 'source = "file"\nfile = "obs.nc"\nevery = 1')
             .replace('initial_mean = "truth"', 'initial_mean = "zero"'))


class _Payload:
    """Pickled, it would create ``marker`` when read: the code a hostile file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def posterior_bytes(tmp_path_factory) -> tuple[bytes, bytes]:
    """A posterior file of a barely trained FMPE over d = 2, in the current and in the old pickled format."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn((32, 2), generator=gen)
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
    post = FMPE(prior, network=NetworkConfig(hidden_features=(4,), time_features=2),
                training=TrainingConfig(batch_size=16, max_epochs=1, progress=False)).fit(theta, theta)
    path = tmp_path_factory.mktemp("posterior") / "p.pt"
    post.save(path)
    legacy = path.with_name("legacy.pt")
    torch.save({"format": LEGACY_FORMAT, "class": "FMPEPosterior", "payload": post._payload()}, legacy)
    return path.read_bytes(), legacy.read_bytes()


class Workspace:
    """Files of one test in ``root``, made on first use: cases, observations, run files, posteriors."""

    def __init__(self, root: Path, posterior_bytes: tuple[bytes, bytes]) -> None:
        self.root = root
        self.marker = root / "pwned"
        self._posterior, self._legacy = posterior_bytes

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    @property
    def case(self) -> Path:
        return self.write("case.toml", CASE)

    @property
    def obs(self) -> Path:
        path = self.root / "obs.nc"
        if not path.exists():
            values = np.random.default_rng(0).normal(size=(3, 8))
            xr.Dataset({"observation": (("time", "obs"), values, {"std": 1.0}),
                        "obs_index": ("obs", np.arange(8))}).to_netcdf(path)
        return path

    @property
    def real_case(self) -> Path:
        self.obs
        return self.write("real.toml", REAL_CASE)

    def run(self, case: Path, name: str) -> Path:
        out = self.root / name
        if not out.exists():
            assert main(["run", str(case), "--out", str(out), "--quiet"]) == 0
        return out

    @property
    def run_file(self) -> Path:
        return self.run(self.case, "run.nc")

    @property
    def real_run(self) -> Path:
        return self.run(self.real_case, "real_run.nc")

    def posterior(self, kind: str) -> Path:
        """A posterior file of ``kind``: evil (torch archive or raw pickle), text, truncated, empty, legacy,
        foreign (a torch file of another format)."""
        hostile = {"format": FORMAT, "class": "FMPEPosterior", "payload": _Payload(self.marker)}
        path = self.root / f"{kind}.pt"
        if kind == "evil":
            torch.save(hostile, path)
        elif kind == "evil_pickle":
            path.write_bytes(pickle.dumps(hostile, protocol=2))
        elif kind == "foreign":
            torch.save({"format": "other", "weights": torch.zeros(3)}, path)
        else:
            content = {"text": b"posterior = 'not really'\n", "empty": b"", "legacy": self._legacy,
                       "truncated": self._posterior[: len(self._posterior) // 2]}[kind]
            path.write_bytes(content)
        return path

    def stored_case_with(self, run: Path, old: str, new: str) -> Path:
        """Tamper with the case stored in the run file ``run``: replace ``old`` by ``new``."""
        with netCDF4.Dataset(str(run), "a") as ds:
            ds.setncattr("case", ds.getncattr("case").replace(old, new))
        return run


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (``None`` for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


Builder = Callable[[Workspace], tuple[list[str], str]]


def _run(*extra: str) -> Builder:
    """``enff run case.toml`` with ``extra`` options; the message must name the first ``--set`` key."""
    keys = [e.split("=")[0] for e in extra if "=" in e and not e.startswith("-")]

    def build(ws: Workspace) -> tuple[list[str], str]:
        return ["run", str(ws.case), "--out", str(ws.root / "out.nc"), "--quiet", *extra], keys[0]

    return build


def _sets(*assignments: str) -> list[str]:
    return [item for a in assignments for item in ("--set", a)]


def _case_file(content: str | bytes) -> Builder:
    def build(ws: Workspace) -> tuple[list[str], str]:
        path = ws.write("bad.toml", content)
        return ["run", str(path), "--out", str(ws.root / "out.nc"), "--quiet"], str(path)

    return build


def _observations(content: Callable[[Workspace], bytes] | None) -> Builder:
    """The real-data case with ``obs.nc`` replaced by ``content`` (``None``: removed)."""

    def build(ws: Workspace) -> tuple[list[str], str]:
        case = ws.real_case
        if content is None:
            ws.obs.unlink()
        else:
            ws.obs.write_bytes(content(ws))
        return ["run", str(case), "--out", str(ws.root / "out.nc"), "--quiet"], "obs.nc"

    return build


def _posterior(kind: str) -> Builder:
    def build(ws: Workspace) -> tuple[list[str], str]:
        path = ws.posterior(kind) if kind != "missing" else ws.root / "missing.pt"
        return (["run", str(ws.case), "--filter", "learned", "--set", f"filter.posterior='{path}'",
                 "--out", str(ws.root / "out.nc"), "--quiet"], str(path))

    return build


def _read_only(path: Path) -> Path:
    path.chmod(0o444 if path.is_file() else 0o555)
    return path


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _out_in_read_only_folder(ws: Workspace) -> tuple[list[str], str]:
    folder = ws.root / "locked"
    folder.mkdir()
    return ["run", str(ws.case), "--out", str(_read_only(folder) / "o.nc"), "--quiet"], "locked"


def _obs_changed(ws: Workspace) -> tuple[list[str], str]:
    run = ws.real_run
    with netCDF4.Dataset(str(ws.obs), "a") as ds:
        ds["observation"][0, 0] = 5.0
    return ["run", "--resume", "--out", str(run), "--quiet"], "observation file"


not_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files and folders")

CASES = [
    # sizes that cannot fit, steps that would never end
    pytest.param(_run(*_sets("ensemble.size=1000000000")), id="ensemble-size-1e9"),
    pytest.param(_run(*_sets("ensemble.size=1e9")), id="ensemble-size-1e9-float"),
    pytest.param(_run(*_sets("model.dim=1000000000000")), id="model-dim-1e12"),
    pytest.param(_run(*_sets("model.dim=1e12")), id="model-dim-1e12-float"),
    pytest.param(_run("--filter", "enff-ot", *_sets("filter.steps=1000000000000")), id="filter-steps-1e12"),
    pytest.param(_run(*_sets("run.spinup=1000000000000")), id="spinup-1e12"),
    pytest.param(_run(*_sets("observations.every=1000000000")), id="every-1e9"),
    pytest.param(_run(*_sets("run.cycles=100000", "observations.every=100000")), id="cycles-times-every"),
    # seeds
    pytest.param(_run(*_sets("run.seed=18446744073709551616")), id="seed-2**64"),
    pytest.param(_run(*_sets("run.seed=1000000000000000000000000000000")), id="seed-1e30"),
    pytest.param(_run(*_sets("run.seed=-1")), id="seed-negative"),
    # non-finite numbers
    pytest.param(_run(*_sets("ensemble.initial_std=nan")), id="initial-std-nan"),
    pytest.param(_run(*_sets("ensemble.initial_std=inf")), id="initial-std-inf"),
    pytest.param(_run(*_sets("observations.std=inf")), id="std-inf"),
    pytest.param(_run(*_sets("observations.std=nan")), id="std-nan"),
    pytest.param(_run(*_sets("observations.std=[1, 1, 1, 1, 1, 1, 1, inf]")), id="std-list-inf"),
    pytest.param(_run(*_sets("model.forcing=nan")), id="forcing-nan"),
    pytest.param(_run(*_sets("filter.inflation=nan")), id="inflation-nan"),
    pytest.param(_run(*_sets("ensemble.size=1")), id="ensemble-size-1"),
    pytest.param(_run(*_sets('observations.file="obs.nc"')), id="file-without-source"),
    # case files
    pytest.param(_case_file(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"), id="case-binary"),
    pytest.param(_case_file("[model\nname = "), id="case-not-toml"),
    pytest.param(_case_file(""), id="case-empty"),
    pytest.param((lambda ws: (["run", str(ws.root / "nope.toml"), "--quiet"], "nope.toml")), id="case-missing"),
    # observation files
    pytest.param(_observations(lambda ws: b"time,obs,value\n0,0,1.5\n"), id="obs-text"),
    pytest.param(_observations(lambda ws: _half(ws.obs)), id="obs-truncated"),
    pytest.param(_observations(lambda ws: bytes(range(256)) * 8), id="obs-binary"),
    pytest.param(_observations(lambda ws: ws.run_file.read_bytes()), id="obs-other-netcdf"),
    pytest.param(_observations(None), id="obs-missing"),
    # posterior files
    pytest.param(_posterior("evil"), id="posterior-evil"),
    pytest.param(_posterior("evil_pickle"), id="posterior-evil-pickle"),
    pytest.param(_posterior("text"), id="posterior-text"),
    pytest.param(_posterior("truncated"), id="posterior-truncated"),
    pytest.param(_posterior("empty"), id="posterior-empty"),
    pytest.param(_posterior("legacy"), id="posterior-legacy"),
    pytest.param(_posterior("foreign"), id="posterior-foreign"),
    pytest.param(_posterior("missing"), id="posterior-missing"),
    # output files
    pytest.param((lambda ws: (["run", str(ws.case), "--out", str(ws.root), "--quiet"], str(ws.root))),
                 id="out-directory"),
    pytest.param((lambda ws: (["run", str(ws.case), "--out", str(ws.write("file", "x") / "sub" / "o.nc")],
                                   str(ws.root / "file"))), id="out-under-a-file"),
    pytest.param((lambda ws: (["run", str(ws.real_case), "--out", str(ws.obs), "--overwrite", "--quiet"],
                                   "observation file")), id="out-is-the-observation-file"),
    pytest.param((lambda ws: (["run", str(ws.case), "--out", str(ws.case), "--overwrite", "--quiet"],
                                   "case file")), id="out-is-the-case-file"),
    pytest.param((lambda ws: (["run", str(ws.case), "--out", str(ws.run_file), "--quiet"], str(ws.run_file))),
                 id="out-exists"),
    pytest.param((lambda ws: (["run", str(ws.case), "--out", str(_read_only(ws.write("ro.nc", "x"))),
                                    "--overwrite", "--quiet"], "ro.nc")), id="out-read-only", marks=not_root),
    pytest.param(_out_in_read_only_folder, id="out-read-only-folder", marks=not_root),
    # resuming
    pytest.param((lambda ws: (["run", "--resume", "--out", str(ws.write("t.nc", "text\n"))], "t.nc")),
                 id="resume-text-file"),
    pytest.param((lambda ws: (["run", "--resume", "--out", str(ws.obs)], "obs.nc")), id="resume-not-a-run-file"),
    pytest.param((lambda ws: (["run", "--resume", "--out", str(ws.root / "gone.nc")], "gone.nc")),
                 id="resume-missing"),
    pytest.param((lambda ws: (["run", "--resume", "--out", str(ws.run_file), "--filter", "enkf"], "--filter")),
                 id="resume-with-filter"),
    pytest.param((lambda ws: (["run", "--resume", "--out", str(ws.run_file), "--set", "run.cycles=9"], "--set")),
                 id="resume-with-set"),
    pytest.param((lambda ws: (["run", str(ws.write("other.toml", CASE.replace("seed = 0", "seed = 5"))),
                                    "--resume", "--out", str(ws.run_file)], str(ws.run_file))),
                 id="resume-another-case"),
    pytest.param(_obs_changed, id="resume-observations-changed"),
    pytest.param((lambda ws: (["run", "--resume", "--out", str(ws.stored_case_with(
        ws.run_file, 'name = "etkf"\ninflation = 1.02', f'name = "learned"\nposterior = "{ws.posterior("evil")}"'))],
        "evil.pt")), id="resume-tampered-posterior"),
    # burn-in
    pytest.param((lambda ws: (["run", str(ws.case), "--burn-in", "-1", "--out", str(ws.root / "o.nc")],
                                   "--burn-in")), id="burn-in-negative"),
    pytest.param((lambda ws: (["run", str(ws.case), "--burn-in", "3", "--out", str(ws.root / "o.nc")],
                                   "--burn-in")), id="burn-in-all-cycles"),
    pytest.param((lambda ws: (["run", str(ws.case), "--burn-in", "1000", "--out", str(ws.root / "o.nc")],
                                   "--burn-in")), id="burn-in-beyond"),
    # enff learn
    pytest.param((lambda ws: (["learn", str(ws.run_file), "--out", str(ws.root)], str(ws.root))),
                 id="learn-out-directory"),
    pytest.param((lambda ws: (["learn", str(ws.run_file), "--out", str(ws.write("f", "x") / "p.pt")],
                                   str(ws.root / "f"))), id="learn-out-under-a-file"),
    pytest.param((lambda ws: (["learn", str(ws.run_file), "--out", str(ws.run_file)], "run file")),
                 id="learn-out-is-the-input"),
    pytest.param((lambda ws: (["learn", str(ws.run_file), "--burn-in", "-2", "--out", str(ws.root / "p.pt")],
                                   "--burn-in")), id="learn-burn-in-negative"),
    pytest.param((lambda ws: (["learn", str(ws.write("t.nc", "text\n")), "--out", str(ws.root / "p.pt")],
                                   "t.nc")), id="learn-text-run-file"),
]


@pytest.mark.parametrize("build", CASES)
def test_bad_input_is_refused_cleanly(build: Builder, tmp_path, posterior_bytes, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(TRUST_LEGACY_ENV, raising=False)
    ws = Workspace(tmp_path, posterior_bytes)
    argv, named = build(ws)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (out, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("enff: error: "), err
    assert named in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # nothing created, nothing changed (the marker included)
    assert not ws.marker.exists()


def test_large_seed_is_stored_and_read_back_exactly(tmp_path):
    out = tmp_path / "seed.nc"
    case = tmp_path / "case.toml"
    case.write_text(CASE.replace("cycles = 3", "cycles = 1"))
    assert main(["run", str(case), "--set", "run.seed=3000000000", "--out", str(out), "--quiet"]) == 0
    with netCDF4.Dataset(str(out)) as ds:
        assert int(ds.getncattr("seed")) == 3_000_000_000
        assert "seed = 3000000000" in ds.getncattr("case")
    biggest = tmp_path / "max.nc"
    assert main(["run", str(case), "--set", f"run.seed={2**63 - 1}", "--out", str(biggest), "--quiet"]) == 0
    with netCDF4.Dataset(str(biggest)) as ds:
        assert int(ds.getncattr("seed")) == 2**63 - 1


def test_observation_checksum_is_recorded_and_resume_of_unchanged_files_works(tmp_path):
    from enff.preflight import OBSERVATION_CHECKSUM, sha256

    ws = Workspace(tmp_path, (b"", b""))
    run = ws.real_run
    with netCDF4.Dataset(str(run)) as ds:
        assert ds.getncattr(OBSERVATION_CHECKSUM) == sha256(ws.obs)
    assert main(["run", "--resume", "--out", str(run), "--quiet"]) == 0


def test_default_output_folder_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = tmp_path / "case.toml"
    case.write_text(CASE.replace("cycles = 3", "cycles = 1"))
    assert main(["run", str(case), "--quiet"]) == 0
    assert (tmp_path / "out" / "case_etkf.nc").is_file()
    assert main(["run", str(case), "--out", str(tmp_path / "new" / "deeper" / "o.nc"), "--quiet"]) == 0


def test_state_size_formulas_match_the_models():
    """The sizes :mod:`enff.budget` computes before a model is built are those of the built models."""
    from enff.budget import state_size
    from enff.casefile import load_case, shipped_cases
    from enff.models import MODELS

    seen = set()
    for name in shipped_cases():
        case = load_case(name)
        keys = case.tables["model"]
        assert state_size(keys["name"], keys, MODELS[keys["name"]])[0] == int(np.prod(case.model.state_shape)), name
        seen.add(keys["name"])
    assert seen >= {"lorenz63", "lorenz96", "kuramoto_sivashinsky", "navier_stokes2d_primitive"}
