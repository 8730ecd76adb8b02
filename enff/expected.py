"""Expected scores that live with the cases, and the check that reproduces them through a sweep.

A case file ends with the RMSE its tuned filters reach, one table per filter::

    [expected.letkf]            # the case's tuned [filters.letkf] table, run as below
    rmse = 0.0178               # mean over the seeds of the time-averaged analysis RMSE (state units)
    tolerance = 0.05            # |measured - rmse| <= tolerance * rmse passes
    seeds = [0, 1, 2]
    set = ["run.cycles=300"]    # overrides of these runs (``--set`` syntax), e.g. fewer cycles
    burn_in = 100               # cycles left out (default: cycles // 10, as ``enff score``)
    measured = "..."            # where the number comes from (free text: commit, result file, machine)

:func:`check_expected` runs those configurations as one sweep (:func:`enff.sweep.run_sweep` on a given
dask client) and scores them with :func:`enff.compare.compare`, so the numbers are ``enff score``'s.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["ExpectedCheck", "ExpectedScore", "check_expected", "expected_scores", "parse_expected"]

_KEYS: dict[str, type | tuple[type, ...]] = {"rmse": (int, float), "tolerance": (int, float), "seeds": list, "set": list,
                                             "burn_in": int, "measured": str}


@dataclass(frozen=True)
class ExpectedScore:
    """The RMSE one filter of one case reaches (see the module docstring for the keys)."""

    case: str
    filter: str
    rmse: float
    tolerance: float
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()
    burn_in: int | None = None
    measured: str = ""

    def spec(self, out: Path) -> Any:
        """The sweep of this entry's runs, its files in ``out``."""
        from enff.sweepspec import SweepSpec

        return SweepSpec(cases=(self.case,), filters=(self.filter,), seeds=self.seeds, out=out, common=self.overrides)


def parse_expected(where: str, case: str, table: Any) -> list[ExpectedScore]:
    """Validate a case file's ``[expected]`` table; a bad key or value raises ``CaseError`` naming
    ``where`` (the file) and the key."""
    from enff.casefile import CaseError
    from enff.filters import FILTERS, filter_names

    if not isinstance(table, Mapping):
        raise CaseError(f"{where}: [expected] must hold one table per filter, [expected.<filter>]")
    entries = []
    for name, entry in table.items():
        section = f"expected.{name}"
        if name not in FILTERS:
            raise CaseError(f"{where}: [{section}] names no filter; filters are {', '.join(filter_names())}")
        if not isinstance(entry, Mapping):
            raise CaseError(f"{where}: [{section}] must be a table")
        for key, value in entry.items():
            if key not in _KEYS:
                raise CaseError(f"{where}: unknown key {section}.{key}; allowed keys are {', '.join(sorted(_KEYS))}")
            if not isinstance(value, _KEYS[key]) or isinstance(value, bool):
                raise CaseError(f"{where}: {section}.{key} has the wrong type: {value!r}")
        for key in ("rmse", "tolerance"):
            if key not in entry:
                raise CaseError(f"{where}: missing key {section}.{key}")
            if not 0 < entry[key] < math.inf:
                raise CaseError(f"{where}: {section}.{key} must be positive and finite, got {entry[key]!r}")
        seeds = entry.get("seeds", [0, 1, 2])
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise CaseError(f"{where}: {section}.seeds must be a non-empty list of integers >= 0, got {seeds!r}")
        overrides = entry.get("set", [])
        if not all(isinstance(s, str) and "=" in s for s in overrides):
            raise CaseError(f"{where}: {section}.set entries are 'section.key=value', got {overrides!r}")
        if entry.get("burn_in", 0) < 0:
            raise CaseError(f"{where}: {section}.burn_in must be >= 0, got {entry['burn_in']!r}")
        entries.append(ExpectedScore(case=case, filter=name, rmse=float(entry["rmse"]), tolerance=float(entry["tolerance"]),
                                     seeds=tuple(seeds), overrides=tuple(overrides), burn_in=entry.get("burn_in"),
                                     measured=entry.get("measured", "")))
    return entries


def expected_scores(case: str | Path) -> list[ExpectedScore]:
    """The ``[expected.*]`` entries of a shipped case name or case file (empty when it has none)."""
    from enff.casefile import resolve_case_path

    path = resolve_case_path(case)
    tables = tomllib.loads(path.read_text(encoding="utf-8"))
    label = str(case) if not Path(str(case)).is_file() else str(path)
    return parse_expected(str(path), label, tables.get("expected", {}))


@dataclass(frozen=True)
class ExpectedCheck:
    """An entry and what the sweep measured: the mean RMSE over seeds, its standard error, failures."""

    expected: ExpectedScore
    rmse: float
    rmse_se: float
    failed: int

    @property
    def ok(self) -> bool:
        """Every seed finished and the mean is within the stated relative tolerance."""
        return self.failed == 0 and abs(self.rmse - self.expected.rmse) <= self.expected.tolerance * self.expected.rmse

    def describe(self) -> str:
        e = self.expected
        return (f"{e.case} {e.filter}: RMSE {self.rmse:.4g} ± {self.rmse_se:.2g} over {len(e.seeds)} seeds, expected "
                f"{e.rmse:.4g} ± {100 * e.tolerance:.0f} % ({'ok' if self.ok else 'FAILED'}"
                f"{f', {self.failed} runs failed' if self.failed else ''})")


def check_expected(entries: list[ExpectedScore], out: Path, client: "Client") -> list[ExpectedCheck]:
    """Run every entry as a sweep on ``client`` (files under ``out``, resumed when there) and score it."""
    from enff.compare import compare
    from enff.sweep import run_sweep

    checks = []
    for entry in entries:
        folder = Path(out) / f"{Path(entry.case).stem}__{entry.filter}"
        run_sweep(entry.spec(folder), client)
        ds = compare([folder], burn_in=entry.burn_in)
        failed = int(ds["diverged"].values.sum() + ds["failed"].values.sum() + ds["incomplete"].values.sum())
        checks.append(ExpectedCheck(entry, float(ds["rmse_mean"].values[0]), float(ds["rmse_se"].values[0]), failed))
    return checks
