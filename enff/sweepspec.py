"""Sweep specifications: TOML in, a validated :class:`SweepSpec`, expanded into :class:`PlannedRun` s.

A spec names cases, filters and seeds, overrides for every run, and per-filter grids of overrides::

    [sweep]
    cases = ["l96_40"]                      # shipped names or paths (relative to the spec file)
    filters = ["etkf", "letkf"]
    seeds = [0, 1, 2]                       # or a count: seeds = 3 means 0, 1, 2
    out = "sweeps/l96"                      # relative to the spec file (default: the spec's name)
    set = ["run.cycles=2000"]               # overrides for every run (``--set`` syntax)

    [grid]                                  # lists directly under [grid] apply to every filter
    "ensemble.size" = [20, 40]
    [grid.letkf]                            # one filter's grid: the product of its lists
    "filter.radius" = [5.0, 10.0]
    [zip.letkf]                             # zipped lists: the i-th values go together
    "filter.inflation" = [1.01, 1.02]
    "filter.rtps" = [0.0, 0.5]

Every (case, filter, grid point, seed) is one run, written to ``out/<name>.nc`` with a name derived
from the configuration (:func:`run_name`). :func:`plan` validates every run's case before any run
starts; a bad key or value raises :class:`SpecError` naming the spec file and the key.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from enff.casefile import Case, CaseError, load_case, shipped_cases
from enff.runset import format_value

__all__ = ["ALL_FILTERS", "PlannedRun", "SpecError", "SweepSpec", "load_spec", "plan", "run_name"]

#: Scope of the grid and zipped lists that apply to every filter (the lists directly under ``[grid]``).
ALL_FILTERS = "*"
_SWEEP_KEYS = ("cases", "filters", "seeds", "out", "set")
_SECTIONS = ("sweep", "grid", "zip")
#: Case keys a grid may not set: the sweep's own ``filters`` and ``seeds`` choose them.
_RESERVED = {"filter.name": "sweep.filters", "run.seed": "sweep.seeds"}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_MAX_NAME = 160

Axes = Mapping[str, Mapping[str, tuple[Any, ...]]]


class SpecError(CaseError):
    """A sweep specification is invalid; the message names the spec file and the key."""


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep (construct it in code or with :func:`load_spec`).

    Parameters
    ----------
    cases:
        Shipped case names or case files (relative paths are relative to ``source``'s folder).
    filters:
        Filter names; each run uses the case's tuned ``[filters.<name>]`` values unless overridden.
    seeds:
        ``run.seed`` of the runs of each configuration.
    out:
        Folder of the run files (relative paths are relative to ``source``'s folder).
    common:
        ``section.key=value`` overrides applied to every run (the spec's ``set``).
    grid:
        Scope (a filter name, or :data:`ALL_FILTERS`) -> case key -> values; a filter's runs cover the
        product of the lists of its scope and of :data:`ALL_FILTERS`.
    zipped:
        Like ``grid``, but the lists of one scope have one length and their i-th values go together.
    source:
        The spec file (named in error messages; relative paths are resolved against its folder).
    """

    cases: tuple[str, ...]
    filters: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    out: Path = Path("sweep")
    common: tuple[str, ...] = ()
    grid: Axes = field(default_factory=dict)
    zipped: Axes = field(default_factory=dict)
    source: str = "<sweep>"

    def __post_init__(self) -> None:
        from enff.filters import FILTERS, filter_names

        where = self.source
        for name in ("cases", "filters", "seeds", "common"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("grid", "zipped"):
            axes = {scope: {key: tuple(v) if isinstance(v, list) else v for key, v in lists.items()}
                    for scope, lists in getattr(self, name).items()}
            object.__setattr__(self, name, axes)
        _check_list(where, "sweep.cases", self.cases, str)
        _check_list(where, "sweep.filters", self.filters, str)
        _check_list(where, "sweep.seeds", self.seeds, int)
        for name in self.filters:
            if name not in FILTERS:
                raise SpecError(f"{where}: sweep.filters: {name!r} names no filter; filters are {', '.join(filter_names())}")
        if any(s < 0 for s in self.seeds):
            raise SpecError(f"{where}: sweep.seeds must be >= 0, got {list(self.seeds)}")
        if not isinstance(self.common, tuple):
            raise SpecError(f"{where}: sweep.set must be a list of 'section.key=value', got {self.common!r}")
        for assignment in self.common:
            key = assignment.split("=", 1)[0].strip() if isinstance(assignment, str) else ""
            if not isinstance(assignment, str) or "=" not in assignment or not _KEY.match(key):
                raise SpecError(f"{where}: sweep.set entries are 'section.key=value', got {assignment!r}")
        for table, axes in (("grid", self.grid), ("zip", self.zipped)):
            for scope, lists in axes.items():
                if scope != ALL_FILTERS and scope not in self.filters:
                    raise SpecError(f"{where}: [{table}.{scope}] names a filter that is not in sweep.filters "
                                    f"({', '.join(self.filters)})")
                for key, values in lists.items():
                    _check_axis(where, f"{_scope_name(table, scope)} {key}", key, values, unique=table == "grid")
                lengths = {len(v) for v in lists.values()}
                if table == "zip" and len(lengths) > 1:
                    raise SpecError(f"{where}: the lists of {_scope_name(table, scope)} must have one length "
                                    f"to be zipped, got lengths {sorted(lengths)}")
                if table == "zip":
                    _check_zipped_points(where, _scope_name(table, scope), lists)
        for name in self.filters:
            seen: dict[str, str] = {}
            for table, scope, lists in self._scopes(name):
                for key in lists:
                    if key in seen:
                        raise SpecError(f"{where}: {key} is in both {seen[key]} and {_scope_name(table, scope)}")
                    seen[key] = _scope_name(table, scope)

    @property
    def folder(self) -> Path:
        """The folder relative paths are resolved against (the spec file's, else the working folder)."""
        source = Path(self.source)
        return source.parent.resolve() if source.is_file() else Path.cwd()

    @property
    def out_dir(self) -> Path:
        """The absolute folder of the run files."""
        return (self.folder / self.out).resolve()

    def _scopes(self, filter_name: str) -> list[tuple[str, str, Mapping[str, tuple[Any, ...]]]]:
        return [(table, scope, axes[scope]) for table, axes in (("grid", self.grid), ("zip", self.zipped))
                for scope in (ALL_FILTERS, filter_name) if axes.get(scope)]

    def points(self, filter_name: str) -> list[tuple[tuple[str, Any], ...]]:
        """The grid points of one filter: sorted ``(key, value)`` pairs, one tuple per point."""
        factors: list[list[tuple[tuple[str, Any], ...]]] = []
        for table, _, lists in self._scopes(filter_name):
            if table == "grid":
                factors.extend([((key, v),) for v in values] for key, values in lists.items())
            else:
                factors.append([tuple(zip(lists, combo)) for combo in zip(*lists.values())])
        return [tuple(sorted(itertools.chain.from_iterable(point))) for point in itertools.product(*factors)]


def _scope_name(table: str, scope: str) -> str:
    return f"[{table}]" if scope == ALL_FILTERS else f"[{table}.{scope}]"


def _check_list(where: str, key: str, values: Any, kind: type) -> None:
    if not isinstance(values, tuple) or not values:
        raise SpecError(f"{where}: {key} must be a non-empty list, got {values!r}")
    for value in values:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SpecError(f"{where}: {key} entries must be {kind.__name__}s, got {value!r}")
    if len(set(values)) != len(values):
        raise SpecError(f"{where}: {key} lists a value twice: {list(values)}")


def _check_axis(where: str, label: str, key: str, values: Any, *, unique: bool) -> None:
    """One list of a grid or zip table; ``unique``: a value may not repeat (a grid's list; a zipped list
    may repeat values, its points are checked together by :func:`_check_zipped_points`)."""
    if not _KEY.match(key):
        raise SpecError(f"{where}: {label}: grid keys are case keys 'section.key', got {key!r}")
    if key in _RESERVED:
        raise SpecError(f"{where}: {label}: set {key} with {_RESERVED[key]}, not in a grid")
    if not isinstance(values, tuple) or not values:
        raise SpecError(f"{where}: {label} must be a non-empty list of values, got {values!r}")
    texts = [format_value(v) for v in values]
    if unique and len(set(texts)) != len(texts):
        raise SpecError(f"{where}: {label} lists a value twice: {list(values)}")


def _check_zipped_points(where: str, label: str, lists: Mapping[str, tuple[Any, ...]]) -> None:
    """The i-th values of zipped lists form point i; two equal points would be one run twice."""
    points = [tuple(format_value(v) for v in combo) for combo in zip(*lists.values())]
    for i, point in enumerate(points):
        if point in points[:i]:
            raise SpecError(f"{where}: {label} lists point {points.index(point) + 1} twice (again as point {i + 1}): "
                            + ", ".join(f"{k}={v}" for k, v in zip(lists, point)))


def _parse_axes(where: str, table: str, raw: Any) -> dict[str, dict[str, tuple[Any, ...]]]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: [{table}] must be a table")
    axes: dict[str, dict[str, tuple[Any, ...]]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, values in value.items():
                if not isinstance(values, list):
                    raise SpecError(f"{where}: [{table}.{key}] {sub} must be a list of values, got {values!r}")
            axes[key] = {sub: tuple(values) for sub, values in value.items()}
        elif isinstance(value, list):
            axes.setdefault(ALL_FILTERS, {})[key] = tuple(value)
        else:
            raise SpecError(f"{where}: [{table}] {key} must be a list of values (or a filter's table), got {value!r}")
    return axes


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate the sweep specification file ``path`` (structure only; see :func:`plan`)."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise SpecError(f"{where}: cannot read the sweep spec: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{where}: not valid TOML: {err}") from None
    for section in raw:
        if section not in _SECTIONS:
            raise SpecError(f"{where}: unknown section [{section}]; sections are {', '.join(_SECTIONS)}")
    sweep = raw.get("sweep")
    if not isinstance(sweep, dict):
        raise SpecError(f"{where}: missing section [sweep]")
    for key in sweep:
        if key not in _SWEEP_KEYS:
            raise SpecError(f"{where}: unknown key sweep.{key}; allowed keys are {', '.join(_SWEEP_KEYS)}")
    for key in ("cases", "filters"):
        if key not in sweep:
            raise SpecError(f"{where}: missing key sweep.{key}")
    seeds = sweep.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SpecError(f"{where}: sweep.seeds as a count must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    out = sweep.get("out", path.stem)
    if not isinstance(out, str) or not out:
        raise SpecError(f"{where}: sweep.out must be a folder name, got {out!r}")
    common = sweep.get("set", [])
    filters = sweep["filters"]
    lists = {"sweep.cases": sweep["cases"], "sweep.filters": filters, "sweep.seeds": seeds, "sweep.set": common}
    for key, value in lists.items():
        if not isinstance(value, list):
            raise SpecError(f"{where}: {key} must be a list, got {value!r}")
    return SweepSpec(
        cases=tuple(sweep["cases"]),
        filters=tuple(filters),
        seeds=tuple(seeds),
        out=Path(out),
        common=tuple(common),
        grid=_parse_axes(where, "grid", raw.get("grid", {})),
        zipped=_parse_axes(where, "zip", raw.get("zip", {})),
        source=where,
    )


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its configuration, its file and the validated case."""

    name: str
    case_ref: str  # a shipped case name or an absolute path, as ``enff run`` takes it
    filter: str
    values: tuple[tuple[str, Any], ...]  # the grid point: sorted (case key, value) pairs
    seed: int
    assignments: tuple[str, ...]  # every override: the spec's set, the grid point, run.seed
    path: Path
    case: Case

    @property
    def cycles(self) -> int:
        return self.case.run.cycles

    def command(self) -> str:
        """The ``enff run`` command that runs this configuration from the start (shell-quoted)."""
        words = ["enff", "run", self.case_ref, "--filter", self.filter]
        for assignment in self.assignments:
            words += ["--set", assignment]
        return shlex.join([*words, "--out", str(self.path), "--overwrite"])


def _case_label(case_ref: str) -> str:
    return Path(case_ref).stem


def run_name(case_label: str, filter_name: str, values: tuple[tuple[str, Any], ...], seed: int) -> str:
    """A stable, filesystem-safe run name: ``<case>__<filter>__<key=value>...__seed<k>``.

    String values lose their quotes; characters other than letters, digits and ``._=+-`` become ``-``.
    Names longer than 160 characters keep the case, filter and seed and replace the grid point by a
    hash of it.
    """
    point = [f"{key}={format_value(value).strip(chr(34))}" for key, value in values]
    parts = [case_label, filter_name, *point, f"seed{seed}"]
    name = "__".join(_UNSAFE.sub("-", part) for part in parts)
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(repr([(k, format_value(v)) for k, v in values]).encode()).hexdigest()[:12]
        name = "__".join(_UNSAFE.sub("-", part) for part in (case_label, filter_name, f"grid-{digest}", f"seed{seed}"))
    return name


def _resolve_case(spec: SweepSpec, entry: str) -> str:
    candidate = spec.folder / entry
    if candidate.is_file():
        return str(candidate.resolve())
    if entry in shipped_cases():
        return entry
    raise SpecError(f"{spec.source}: sweep.cases: {entry!r} is no case file (relative to {spec.folder}) "
                    f"and no shipped case; shipped cases are {', '.join(sorted(shipped_cases()))}")


def _blame(spec: SweepSpec, case_ref: str, filter_name: str, values: tuple[tuple[str, Any], ...],
           err: CaseError) -> SpecError:
    """The spec key behind a case error: the shared ``set``, else the first grid value that fails alone."""
    try:
        load_case(case_ref, overrides=spec.common, filter_name=filter_name)
    except CaseError as base:
        return SpecError(f"{spec.source}: sweep.set (case {case_ref}, filter {filter_name}): {base}")
    for key, value in values:
        scope = next(_scope_name(table, scope) for table, scope, lists in spec._scopes(filter_name) if key in lists)
        try:
            load_case(case_ref, overrides=(*spec.common, f"{key}={format_value(value)}"), filter_name=filter_name)
        except CaseError as alone:
            return SpecError(f"{spec.source}: {scope} {key} = {format_value(value)} (case {case_ref}, "
                             f"filter {filter_name}): {alone}")
    point = " ".join(f"{k}={format_value(v)}" for k, v in values)
    return SpecError(f"{spec.source}: the grid point {point} (case {case_ref}, filter {filter_name}): {err}")


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of ``spec`` (case, filter, grid point, seed in that order), each case validated.

    Raises
    ------
    SpecError
        Naming the spec file and the key when a case, override or grid value is invalid, or when two
        runs would share a file name.
    """
    runs: list[PlannedRun] = []
    names: dict[str, PlannedRun] = {}
    out = spec.out_dir
    for entry in spec.cases:
        case_ref = _resolve_case(spec, entry)
        for filter_name in spec.filters:
            for values in spec.points(filter_name):
                grid = tuple(f"{k}={format_value(v)}" for k, v in values)
                for seed in spec.seeds:
                    assignments = (*spec.common, *grid, f"run.seed={seed}")
                    try:
                        case = load_case(case_ref, overrides=assignments, filter_name=filter_name)
                    except CaseError as err:
                        raise _blame(spec, case_ref, filter_name, values, err) from None
                    name = run_name(_case_label(case_ref), filter_name, values, seed)
                    if name in names:
                        raise SpecError(f"{spec.source}: two runs would both be written to {name}.nc "
                                        f"({names[name].case_ref} and {case_ref}); give the cases distinct names")
                    run = PlannedRun(name, case_ref, filter_name, values, seed, assignments, out / f"{name}.nc", case)
                    names[name] = run
                    runs.append(run)
    return runs
