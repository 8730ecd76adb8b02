"""Checks of the files a command will read and write, made before any work and before anything is written.

Each check raises ``ValueError`` with one message naming the file (and the option or case key):
output paths (:func:`check_output`), run files to resume (:func:`read_run_attributes`), the observation
and posterior files a run was made with (:func:`input_checksums`, :func:`check_inputs_unchanged`) and the
burn-in of the printed scores (:func:`check_burn_in`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from enff.config import Case

__all__ = ["OBSERVATION_CHECKSUM", "POSTERIOR_CHECKSUM", "check_burn_in", "check_inputs_unchanged", "check_output",
           "existing_inputs", "input_checksums", "input_files", "read_run_attributes", "sha256"]

#: Run-file attribute holding the sha256 of the observation file a run reads (runs with source = "file").
OBSERVATION_CHECKSUM = "observation_sha256"
#: Run-file attribute holding the sha256 of the posterior file the learned analysis reads (``filter.posterior``).
POSTERIOR_CHECKSUM = "posterior_sha256"


def sha256(path: str | Path) -> str:
    """Hexadecimal sha256 digest of the file ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_files(case: Case) -> dict[Path, str]:
    """The files a run of ``case`` reads, each with what it is: the case file, the observation file
    (``observations.file``) and the learned analysis' posterior (``filter.posterior``), where present."""
    found = {Path(case.where): "the case file", **dict(_checksummed_inputs(case).values())}
    return {path: what for path, what in found.items() if path.is_file()}


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _nearest_existing(path: Path) -> Path:
    """``path``'s closest ancestor (or ``path`` itself) that exists."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_output(out: Path, inputs: Mapping[Path, str], *, option: str = "--out", replace: bool = False) -> None:
    """Refuse an output file ``out`` that cannot be written or would destroy an input.

    ``inputs`` maps the files the command reads to what they are (see :func:`input_files`); ``replace``
    means that an existing ``out`` will be written to (``--overwrite`` or ``--resume``). A missing folder
    is fine when it can be created.
    """
    if out.is_dir():
        raise ValueError(f"{option} {out} is a directory; name the file to write")
    for path, what in inputs.items():
        if _same_file(out, path):
            raise ValueError(f"{option} {out} is {what} this command reads; write to another file")
    folder = _nearest_existing(out.parent)
    if not folder.is_dir():
        raise ValueError(f"{option} {out}: {folder} is a file, not a folder")
    if not out.parent.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: cannot create the folder {out.parent} ({folder} is not writable)")
    if out.exists() and replace and not os.access(out, os.W_OK):
        raise ValueError(f"{option} {out} is read-only")
    if not out.exists() and out.parent.exists() and not os.access(out.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: the folder {out.parent} is not writable")


def read_run_attributes(path: Path) -> dict[str, Any]:
    """The global attributes of the run file ``path``, read without opening it for writing; refuses a
    file that is not a netCDF run file written by ``enff run``."""
    import netCDF4

    if not path.is_file():
        raise ValueError(f"{path}: cannot resume, no such run file")
    try:
        with netCDF4.Dataset(str(path), "r") as ds:
            attrs = {key: ds.getncattr(key) for key in ds.ncattrs()}
            variables = set(ds.variables)
    except OSError as err:
        raise ValueError(f"{path}: cannot resume, not a readable netCDF run file ({err})") from None
    if "case" not in attrs or not {"restart_cycle", "cycle_complete"} <= variables:
        raise ValueError(f"{path}: cannot resume, not a run file written by enff run (no stored case or restart state)")
    return attrs


def _checksummed_inputs(case: Case) -> dict[str, tuple[Path, str]]:
    """Run-file attribute -> (file, what it is) of the inputs besides the case whose sha256 a run records."""
    found = {}
    if case.observations.input_file is not None:
        found[OBSERVATION_CHECKSUM] = (case.observations.input_file, "the observation file (observations.file)")
    if case.tables["filter"].get("posterior"):
        found[POSTERIOR_CHECKSUM] = (Path(case.tables["filter"]["posterior"]), "the posterior file (filter.posterior)")
    return found


def input_checksums(case: Case) -> dict[str, str]:
    """``{attribute: sha256}`` of the observation file and the posterior file a run of ``case`` reads, where it
    reads them (``{}`` for a synthetic twin with a non-learned filter)."""
    return {key: sha256(path) for key, (path, _) in _checksummed_inputs(case).items()}


def check_inputs_unchanged(path: Path, attrs: Mapping[str, Any], case: Case) -> None:
    """Refuse to resume the run file ``path`` (global attributes ``attrs``) if the observation or posterior file
    of ``case`` differs from the one it was started with (files written before a checksum was recorded are
    not checked for it)."""
    for key, (source, what) in _checksummed_inputs(case).items():
        stored = attrs.get(key)
        if stored is None:
            continue
        if not source.is_file():
            raise ValueError(f"{path}: cannot resume: {what} {source} is missing (the run started with sha256 {stored})")
        current = sha256(source)
        if stored != current:
            raise ValueError(f"{path}: cannot resume: {what} {source} changed since the run started (sha256 "
                             f"{current} against {stored} stored in the run file)")


def check_burn_in(burn_in: int | None, cycles: int | None, option: str = "--burn-in") -> None:
    """Refuse a burn-in below 0, or one that leaves none of the ``cycles`` cycles to score (``None``:
    the number of cycles is not known yet)."""
    if burn_in is None:
        return
    if burn_in < 0:
        raise ValueError(f"{option} must be >= 0, got {burn_in}")
    if cycles is not None and burn_in >= cycles:
        raise ValueError(f"{option} {burn_in} leaves none of the {cycles} cycles of run.cycles to score")


def existing_inputs(paths: Iterable[Path], what: str) -> dict[Path, str]:
    """``{path: what}`` for the existing files among ``paths`` (the inputs of a command, for :func:`check_output`)."""
    return {path: what for path in paths if path.is_file()}
