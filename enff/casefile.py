"""Case files: TOML in, a validated, frozen :class:`Case` out.

A case has five tables::

    [model]         name plus the model's constructor keywords
    [observations]  operator, every (model steps between observations), std, operator keys
    [ensemble]      size, initial_mean ("truth" or "zero"), initial_std
    [filter]        name plus the filter's hyper-parameters
    [run]           spinup, cycles, seed, device, dtype, output options

and optionally ``[filters.<name>]`` tables with tuned hyper-parameters for other filters, used when
the filter is chosen on the command line. Everything is checked before any work: an unknown key, a
wrong type or an out-of-range value raises :class:`CaseError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import tomli_w

__all__ = ["Case", "CaseError", "MODELS", "load_case", "parse_case", "apply_override", "shipped_cases", "resolve_case_path"]

#: Registry name -> class name in :mod:`enff.models`.
MODELS: dict[str, str] = {
    "lorenz63": "Lorenz63",
    "lorenz96": "Lorenz96",
    "kuramoto_sivashinsky": "KuramotoSivashinsky",
    "navier_stokes2d": "NavierStokes2D",
    "navier_stokes2d_primitive": "NavierStokes2DPrimitive",
}

_SECTIONS = ("model", "observations", "ensemble", "filter", "run", "filters")
_OBS_RUNNER_KEYS: dict[str, Any] = {"every": int, "std": (int, float, list), "source": str, "file": str}
_ENSEMBLE_KEYS: dict[str, Any] = {"size": int, "initial_mean": str, "initial_std": (int, float)}
_RUN_KEYS: dict[str, Any] = {
    "spinup": int,
    "cycles": int,
    "seed": int,
    "device": str,
    "dtype": str,
    "save_analysis": (bool, str),
    "save_forecast": bool,
}
#: Largest run.seed: TOML integers are signed 64-bit, and the seed is stored in the case text of every run file.
MAX_SEED = 2**63 - 1
_RUN_DEFAULTS: dict[str, Any] = {
    "spinup": 0,
    "seed": 0,
    "device": "cpu",
    "dtype": "float64",
    "save_analysis": "auto",
    "save_forecast": False,
}


class CaseError(ValueError):
    """A case file (or an override) is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Case:
    """A validated experiment. ``tables`` holds the effective TOML tables (overrides applied)."""

    source: str
    tables: Mapping[str, Any]

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.tables["model"])

    @property
    def observations(self) -> dict[str, Any]:
        return dict(self.tables["observations"])

    @property
    def ensemble(self) -> dict[str, Any]:
        return dict(self.tables["ensemble"])

    @property
    def filter(self) -> dict[str, Any]:
        return dict(self.tables["filter"])

    @property
    def run(self) -> dict[str, Any]:
        return {**_RUN_DEFAULTS, **self.tables["run"]}

    def to_toml(self) -> str:
        """The effective case as TOML text (stored in every output file)."""
        return tomli_w.dumps(_plain(self.tables))

    def build_model(self) -> Any:
        """Instantiate the model named in ``[model]``."""
        import enff.models

        cfg = self.model
        return getattr(enff.models, MODELS[cfg.pop("name")])(**cfg)

    def build_filter(self) -> Any:
        """Instantiate the filter named in ``[filter]``."""
        from enff.filters import get_filter

        cfg = self.filter
        return get_filter(cfg.pop("name"), **cfg)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("number" if t is float else t.__name__ for t in types)


def _check_type(where: str, key: str, value: Any, types: Any) -> None:
    types = types if isinstance(types, tuple) else (types,)
    if float in types and int not in types:
        types = types + (int,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise CaseError(f"{where}: {key} must be {_type_name(types)}, got {value!r}")


def _check_keys(where: str, table: Mapping[str, Any], allowed: Mapping[str, Any], section: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise CaseError(
                f"{where}: unknown key {section}.{key}; allowed keys are {', '.join(sorted(allowed))}"
            )
        if allowed[key] is not None:
            _check_type(where, f"{section}.{key}", value, allowed[key])


def _annotation_types(annotation: Any) -> Any:
    """Python types accepted for a constructor/dataclass annotation (None = accept anything)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        found: list[type] = []
        for arg in typing.get_args(annotation):
            sub = _annotation_types(arg)
            if sub is None:
                return None
            found.extend(sub if isinstance(sub, tuple) else (sub,))
        return tuple(found)
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(annotation)})
    if annotation in (int, float, str, bool):
        return (int, float) if annotation is float else annotation
    if annotation is type(None):
        return type(None)
    if origin in (list, tuple) or annotation in (list, tuple):
        return list
    return None


def _signature_keys(func: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(func)
    keys: dict[str, Any] = {}
    for name, param in inspect.signature(func).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        keys[name] = _annotation_types(hints.get(name, Any))
    return keys


def _construct(where: str, section: str, build: Any, kwargs: Mapping[str, Any]) -> Any:
    try:
        return build(**kwargs)
    except (ValueError, TypeError) as err:
        raise CaseError(f"{where}: [{section}] {err}") from None


def _validate_filter(where: str, section: str, cls: type, hyper: Mapping[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    allowed = {f.name: _annotation_types(hints.get(f.name, Any)) for f in dataclasses.fields(cls)}
    _check_keys(where, hyper, allowed, section)
    _construct(where, section, cls, hyper)


def _reject_nan(where: str, value: Any, key: str) -> None:
    """Raise :class:`CaseError` naming the first NaN anywhere in ``value`` (a table, list or number)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            _reject_nan(where, item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nan(where, item, f"{key}[{index}]")
    elif isinstance(value, float) and math.isnan(value):
        raise CaseError(f"{where}: {key} is nan; give a number")


def _validate(where: str, tables: dict[str, Any]) -> None:
    import enff.models
    from enff.budget import check_budget
    from enff.filters import FILTERS, filter_names
    from enff.observations.config import OPERATOR_KEYS, operator_from_config

    for section in tables:
        if section not in _SECTIONS:
            raise CaseError(f"{where}: unknown section [{section}]; sections are {', '.join(_SECTIONS)}")
    for section in ("model", "observations", "ensemble", "filter", "run"):
        if not isinstance(tables.get(section), dict):
            raise CaseError(f"{where}: missing section [{section}]")

    model_cfg = dict(tables["model"])
    name = model_cfg.pop("name", None)
    if name not in MODELS:
        raise CaseError(f"{where}: model.name must be one of {', '.join(MODELS)}, got {name!r}")
    model_cls = getattr(enff.models, MODELS[name])
    _check_keys(where, model_cfg, _signature_keys(model_cls.__init__), "model")
    _reject_nan(where, tables, "")
    try:
        check_budget(tables, model_cls)  # before the model is built: building it allocates its grid
    except ValueError as err:
        raise CaseError(f"{where}: {err}") from None
    model = _construct(where, "model", model_cls, model_cfg)

    obs_cfg = tables["observations"]
    _check_keys(where, obs_cfg, {**_OBS_RUNNER_KEYS, **OPERATOR_KEYS}, "observations")
    for key in ("every", "std"):
        if key not in obs_cfg and obs_cfg.get("source", "synthetic") == "synthetic":
            raise CaseError(f"{where}: missing key observations.{key}")
    if obs_cfg.get("every", 1) < 1:
        raise CaseError(f"{where}: observations.every must be >= 1 model step, got {obs_cfg['every']!r}")
    source = obs_cfg.get("source", "synthetic")
    if source not in ("synthetic", "file"):
        raise CaseError(f"{where}: observations.source must be 'synthetic' or 'file', got {source!r}")
    if source != "file" and "file" in obs_cfg:
        raise CaseError(f"{where}: observations.file is given but observations.source is {source!r}; "
                        "add source = \"file\" to read the file, or remove file for a synthetic twin")
    if source == "file":
        extra = sorted(set(obs_cfg) - {"source", "file", "every"})
        if extra:
            raise CaseError(f"{where}: observations.{extra[0]} is read from the observation file; remove it")
        if not Path(str(obs_cfg.get("file", ""))).is_file():
            raise CaseError(f"{where}: observations.file {obs_cfg.get('file')!r} does not exist")
        if tables["ensemble"].get("initial_mean") == "truth":
            raise CaseError(f"{where}: ensemble.initial_mean cannot be 'truth' with real observations; use 'zero'")
    if source == "synthetic":
        try:
            operator = operator_from_config(obs_cfg, model.state_shape)
        except (ValueError, TypeError) as err:
            raise CaseError(f"{where}: [observations] {err}") from None
        std = obs_cfg["std"]
        stds = std if isinstance(std, list) else [std]
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < math.inf for s in stds):
            raise CaseError(f"{where}: observations.std must be positive and finite (a number or a list), got {std!r}")
        n_obs = operator.output_size(model.state_shape)
        if isinstance(std, list) and len(std) != n_obs:
            raise CaseError(f"{where}: observations.std has {len(std)} entries but the operator gives {n_obs} observations")

    ens = tables["ensemble"]
    _check_keys(where, ens, _ENSEMBLE_KEYS, "ensemble")
    if not isinstance(ens.get("size"), int) or ens["size"] < 2:
        raise CaseError(f"{where}: ensemble.size must be an integer >= 2, got {ens.get('size')!r}")
    if ens.get("initial_mean", "truth") not in ("truth", "zero"):
        raise CaseError(f"{where}: ensemble.initial_mean must be 'truth' or 'zero', got {ens['initial_mean']!r}")
    if not 0 <= ens.get("initial_std", 1.0) < math.inf:
        raise CaseError(f"{where}: ensemble.initial_std must be finite and >= 0, got {ens['initial_std']!r}")

    filt = dict(tables["filter"])
    fname = filt.pop("name", None)
    if fname not in FILTERS:
        raise CaseError(f"{where}: filter.name must be one of {', '.join(filter_names())}, got {fname!r}")
    _validate_filter(where, "filter", FILTERS[fname], filt)
    for other, table in tables.get("filters", {}).items():
        if other not in FILTERS:
            raise CaseError(f"{where}: [filters.{other}] names no filter; filters are {', '.join(filter_names())}")
        _validate_filter(where, f"filters.{other}", FILTERS[other], table)

    run = tables["run"]
    _check_keys(where, run, _RUN_KEYS, "run")
    if "cycles" not in run:
        raise CaseError(f"{where}: missing key run.cycles")
    if run["cycles"] < 1:
        raise CaseError(f"{where}: run.cycles must be >= 1, got {run['cycles']!r}")
    if run.get("spinup", 0) < 0:
        raise CaseError(f"{where}: run.spinup must be >= 0, got {run['spinup']!r}")
    if not 0 <= run.get("seed", 0) <= MAX_SEED:
        raise CaseError(f"{where}: run.seed must be from 0 to 2**63 - 1 (a TOML integer), got {run['seed']!r}")
    if run.get("dtype", "float64") not in ("float32", "float64"):
        raise CaseError(f"{where}: run.dtype must be 'float32' or 'float64', got {run['dtype']!r}")
    device = run.get("device", "cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise CaseError(f"{where}: run.device must be 'cpu' or 'cuda[:k]', got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CaseError(f"{where}: run.device is {device!r} but no CUDA device is available")
    if run.get("save_analysis", "auto") not in (True, False, "auto"):
        raise CaseError(f"{where}: run.save_analysis must be true, false or 'auto', got {run['save_analysis']!r}")


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
    ``overrides`` are ``section.key=value`` assignments applied afterwards.
    """
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CaseError(f"{where}: not valid TOML: {err}") from None
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
    _validate(where, tables)
    return Case(source=where, tables=tables)


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
