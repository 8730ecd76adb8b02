"""Case files: TOML in, a validated, frozen :class:`Case` out.

A case has five tables::

    [model]         name plus the model's constructor keywords
    [observations]  operator, every (model steps between observations), std, operator keys
    [ensemble]      size, initial_mean ("truth" or "zero"), initial_std
    [filter]        name plus the filter's hyper-parameters
    [run]           spinup, cycles, seed, device, dtype, output options

and optionally ``[filters.<name>]`` tables with tuned hyper-parameters for other filters, used when
the filter is chosen on the command line. This module reads the TOML, applies ``--set`` overrides and
the filter choice, and knows the shipped cases; :func:`enff.config.case_from_tables` checks the tables
(an unknown key, a wrong type or an out-of-range value raises :class:`CaseError` naming the file and the
key) and builds the :class:`~enff.config.Case`.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from enff.config import MAX_SEED, Case, CaseError, case_from_tables

__all__ = ["MAX_SEED", "Case", "CaseError", "apply_override", "load_case", "parse_case", "resolve_case_path",
           "shipped_cases"]


def shipped_cases() -> dict[str, Path]:
    """Names and paths of the cases shipped with the package (``enff.cases``)."""
    root = resources.files("enff.cases")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def resolve_case_path(name_or_path: str | Path) -> Path:
    """A path to an existing TOML file, or the name of a shipped case (``l96_40``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    cases = shipped_cases()
    if str(name_or_path) in cases:
        return cases[str(name_or_path)]
    raise CaseError(f"{name_or_path}: no such case file; shipped cases are {', '.join(sorted(cases))}")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(tables: dict[str, Any], assignment: str, where: str) -> None:
    """Apply ``section.key=value`` (value in TOML syntax, bare words as strings) to ``tables`` in place."""
    if "=" not in assignment:
        raise CaseError(f"{where}: --set needs section.key=value, got {assignment!r}")
    dotted, text = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise CaseError(f"{where}: --set needs section.key=value, got {assignment!r}")
    node = tables
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CaseError(f"{where}: --set {dotted}: {part} is not a table")
    node[parts[-1]] = _parse_value(text.strip())


def _posteriors_beside(tables: dict[str, Any], folder: Path) -> None:
    """Make the ``posterior`` of ``[filter]`` and of every ``[filters.*]`` table relative to ``folder`` (in place)."""
    filters = tables.get("filters")
    for table in [tables.get("filter"), *(filters.values() if isinstance(filters, dict) else ())]:
        if isinstance(table, dict) and isinstance(table.get("posterior"), str) and table["posterior"]:
            table["posterior"] = str((folder / table["posterior"]).resolve())


def parse_case(
    text: str,
    where: str = "<case>",
    *,
    overrides: list[str] | tuple[str, ...] = (),
    filter_name: str | None = None,
) -> Case:
    """Parse and validate case TOML ``text``; ``where`` names the file in error messages.

    ``filter_name`` selects another filter: its hyper-parameters come from ``[filters.<name>]`` when
    present (or from ``[filter]`` when it names the same filter), else the filter's defaults.
    ``overrides`` are ``section.key=value`` assignments applied afterwards. A filter ``posterior`` file named
    in ``text`` is relative to the case file (a shipped case's sits beside it); one set by an override stays
    relative to the working directory.
    """
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CaseError(f"{where}: not valid TOML: {err}") from None
    if Path(where).is_file():
        _posteriors_beside(tables, Path(where).parent)
    if filter_name is not None:
        current = tables.get("filter", {})
        if current.get("name") == filter_name:
            chosen = dict(current)
        else:
            chosen = {"name": filter_name, **tables.get("filters", {}).get(filter_name, {})}
        tables["filter"] = chosen
    for assignment in overrides:
        apply_override(tables, assignment, where)
    obs = tables.get("observations")
    if isinstance(obs, dict) and isinstance(obs.get("file"), str) and Path(where).is_file():
        obs["file"] = str((Path(where).parent / obs["file"]).resolve())  # relative to the case file
    return case_from_tables(tables, where)


def load_case(
    path: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    filter_name: str | None = None,
) -> Case:
    """Read and validate a case file (a path, or the name of a shipped case); see :func:`parse_case`."""
    resolved = resolve_case_path(path)
    try:
        text = resolved.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CaseError(f"{resolved}: not a text (UTF-8 TOML) case file: byte {err.start} is {err.object[err.start]:#04x}") from None
    except OSError as err:
        raise CaseError(f"{resolved}: cannot read the case file: {err.strerror}") from None
    return parse_case(text, str(resolved), overrides=overrides, filter_name=filter_name)
