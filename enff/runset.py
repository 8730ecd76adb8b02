"""Many run files as one lazily loaded Dataset with a ``run`` dimension (:func:`open_runs`).

Each run's configuration comes from the file alone: the case stored in its attributes. The
``overrides`` of a run are the case keys whose values differ between the runs of the same case and
filter (the seed aside), which for the files of one sweep are its grid keys.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import netCDF4
import numpy as np
import tomli_w
import xarray as xr

from enff.runstatus import Status, run_status

__all__ = ["RunInfo", "format_value", "open_runs", "override_keys", "read_run_info"]

_RESTART_VARIABLES = ("restart_analysis", "restart_truth", "restart_cycle")
#: Case keys that are not part of a run's configuration: the seed (runs of one configuration differ
#: in it) and the tuned values of the filters the run did not use.
_NOT_CONFIGURATION = ("run.seed",)
_NOT_CONFIGURATION_PREFIXES = ("filters.",)


@dataclass(frozen=True)
class RunInfo:
    """What one run file says about its run (read without loading any data)."""

    path: Path
    case: str  # the case file's stem, e.g. "l96_40"
    filter: str
    seed: int
    settings: Mapping[str, Any]  # flattened case keys ("filter.radius" -> 5.0) but the seed
    case_toml: str
    cycles_planned: int
    cycles_done: int
    status: Status
    complete: np.ndarray  # (time,) bool: which records are complete


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def format_value(value: Any) -> str:
    """A case value in the one-line TOML syntax ``--set`` reads back (``5.0``, ``true``, ``"mc"``, ``[1, 2]``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


def read_run_info(path: str | Path) -> RunInfo:
    """Configuration, cycle count and status of the run file ``path``.

    Raises :class:`~enff.runfile.RunFileError` naming the file if it is not a consistent run file (checked
    only when no run is writing it: a live file is between records at any moment).
    """
    from enff.runfile import check_run
    from enff.safefile import writer_of

    path = Path(path)
    if writer_of(path) is None:
        check_run(path)
    with netCDF4.Dataset(str(path), "r") as ds:
        attrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
        done = np.asarray(ds["cycle_complete"][:]) if ds.dimensions["time"].size else np.zeros(0)
    if "case" not in attrs:
        raise ValueError(f"{path}: not an enff run file (no stored case)")
    tables = tomllib.loads(attrs["case"])
    flat = _flatten(tables)
    settings = {k: v for k, v in flat.items()
                if k not in _NOT_CONFIGURATION and not k.startswith(_NOT_CONFIGURATION_PREFIXES)}
    cycles_done = int((done == 1).sum())
    planned = int(tables["run"]["cycles"])
    return RunInfo(
        path=path,
        case=Path(str(attrs.get("case_source", path))).stem,
        filter=str(tables["filter"]["name"]),
        seed=int(tables["run"].get("seed", 0)),
        settings=settings,
        case_toml=attrs["case"],
        cycles_planned=planned,
        cycles_done=cycles_done,
        status=run_status(path, cycles_done, planned),
        complete=done == 1,
    )


def override_keys(runs: Iterable[RunInfo]) -> tuple[str, ...]:
    """The sorted case keys whose values differ between runs of the same case and filter (any of them)."""
    members: dict[tuple[str, str], list[RunInfo]] = defaultdict(list)
    for info in runs:
        members[(info.case, info.filter)].append(info)
    keys: set[str] = set()
    for infos in members.values():
        for key in set().union(*(info.settings for info in infos)):
            seen = {format_value(info.settings[key]) if key in info.settings else "" for info in infos}
            if len(seen) > 1:
                keys.add(key)
    return tuple(sorted(keys))


def _override_coordinate(infos: list[RunInfo], key: str) -> np.ndarray:
    """One override key over the runs: integers, numbers as float (NaN where a run lacks the key), else TOML text."""
    present = [info.settings[key] for info in infos if key in info.settings]
    if len(present) == len(infos) and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return np.array(present, dtype=np.int64)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return np.array([float(info.settings.get(key, np.nan)) for info in infos])
    return np.array([format_value(info.settings[key]) if key in info.settings else "" for info in infos])


def _keep_complete_cycles(masks: Mapping[str, np.ndarray]) -> Callable[[xr.Dataset], xr.Dataset]:
    """The ``preprocess`` of :func:`open_runs`: drop the restart area and the records that are not
    complete (``masks``: source path -> complete-record mask, read beforehand), add the ``run`` dim."""

    def keep(ds: xr.Dataset) -> xr.Dataset:
        ds = ds.drop_vars([v for v in _RESTART_VARIABLES if v in ds.variables])
        if ds.sizes.get("time", 0):
            mask = masks[ds.encoding["source"]]  # records a live writer added since are not in it
            ds = ds.isel(time=slice(0, mask.size)).isel(time=mask)
        return ds.expand_dims("run")

    return keep


def open_runs(paths: Iterable[str | Path], **kwargs: Any) -> xr.Dataset:
    """Open many run files lazily (dask arrays) as one Dataset with a ``run`` dimension.

    Only complete cycles are kept (as :func:`enff.runfile.open_run` does); runs with fewer cycles are
    padded with NaN along ``time``, and variables a run lacks (another filter's diagnostics) are NaN.

    Parameters
    ----------
    paths:
        Run files, in the order of the ``run`` dimension.
    **kwargs:
        Passed to :func:`xarray.open_mfdataset` (for example ``chunks`` or ``parallel=True``).

    Returns
    -------
    xarray.Dataset
        The files' variables with a leading ``run`` dimension and, along ``run``, the coordinates
        ``path``, ``case`` (the case file's stem), ``filter``, ``seed``, ``status`` (``complete``,
        ``diverged``, ``failed`` or ``incomplete``, see :mod:`enff.runstatus`), ``cycles_done``,
        ``case_toml`` (each run's stored case), ``overrides`` (``"key=value ..."`` text of the run's
        values of the :func:`override_keys`) and one coordinate per override key named by the key
        (``filter.radius``: integers when every run has the key, else numbers as float with NaN
        where a run lacks the key, other values as TOML text, empty where a run lacks the key). Attributes common to all files are kept.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("open_runs needs at least one run file")
    infos = [read_run_info(p) for p in paths]
    keys = override_keys(infos)
    options: dict[str, Any] = {"combine": "nested", "concat_dim": "run", "join": "outer", "data_vars": "all",
                               "coords": "minimal", "compat": "override", "combine_attrs": "drop_conflicts",
                               "decode_times": False}  # model time as numbers (enff.runfile.TIME_ATTRS)
    sources = [str(p.resolve()) for p in paths]
    masks = {source: info.complete for source, info in zip(sources, infos)}
    ds = xr.open_mfdataset(sources, preprocess=_keep_complete_cycles(masks), **{**options, **kwargs})
    labels = [" ".join(f"{k}={format_value(info.settings[k])}" for k in keys if k in info.settings) for info in infos]
    coords: dict[str, Any] = {
        "path": ("run", [str(info.path) for info in infos]),
        "case": ("run", [info.case for info in infos]),
        "filter": ("run", [info.filter for info in infos]),
        "seed": ("run", np.array([info.seed for info in infos], dtype=np.int64)),
        "status": ("run", [info.status for info in infos]),
        "cycles_done": ("run", np.array([info.cycles_done for info in infos], dtype=np.int64)),
        "case_toml": ("run", [info.case_toml for info in infos]),
        "overrides": ("run", labels),
    }
    for key in keys:
        coords[key] = ("run", _override_coordinate(infos, key))
    return ds.assign_coords(coords)
