"""Typed configuration of an experiment and the one validator that builds it from TOML tables.

A case is five tables (``[model]``, ``[observations]``, ``[ensemble]``, ``[filter]``, ``[run]``, plus
optional ``[filters.<name>]``). :func:`case_from_tables` checks them against the annotations of the
classes they describe (models, filters, and the settings dataclasses below: types, ``Literal`` values and
the declared constraints), builds the model, the observation source and the filter once, and returns a
frozen :class:`Case` holding those objects and the typed settings. Every refusal is a :class:`CaseError`
naming the file (or ``where``) and the key.

A case is as easy to build in Python as from a file::

    case = Case.build(
        model={"name": "lorenz96", "dim": 40},
        observations=ObservationSetup(every=1, std=1.0, operator_keys={"operator": "atan"}),
        ensemble=EnsembleSettings(size=20),
        filter={"name": "etkf", "inflation": 1.02},
        run=RunSettings(cycles=100, spinup=500),
    )

:mod:`enff.casefile` reads case files, applies ``--set`` overrides and selects ``[filters.<name>]`` tables,
then calls :func:`case_from_tables`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Mapping

import tomli_w

if TYPE_CHECKING:
    import torch

    from enff.filters.base import Filter
    from enff.models.base import Model
    from enff.observations.sources import ObservationSource

__all__ = ["MAX_SEED", "SECTIONS", "AtLeast", "Between", "Case", "CaseError", "EnsembleSettings", "Finite",
           "ObservationSetup", "RunSettings", "accepted_types", "case_from_tables", "check_table", "check_value",
           "construct", "from_table", "union_arms"]

#: Largest run.seed: TOML integers are signed 64-bit, and the seed is stored in the case text of every run file.
MAX_SEED = 2**63 - 1
#: The tables of a case file.
SECTIONS = ("model", "observations", "ensemble", "filter", "run", "filters", "expected")
#: The tables that define a run, all required (``[filters.*]`` of the other filters and ``[expected.*]`` do not).
RUN_SECTIONS = ("model", "observations", "ensemble", "filter", "run")


class CaseError(ValueError):
    """A case (file, override or tables) is invalid; the message names the file and the key."""


# --------------------------------------------------------------------------------------------------
# Declared constraints (``Annotated[int, AtLeast(1)]``) and the value check that reads annotations
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AtLeast:
    """A number ``>= bound`` (``unit`` is appended in the message: ``" model step"``)."""

    bound: float
    unit: str = ""

    def problem(self, value: Any) -> str | None:
        return None if not _is_number(value) or value >= self.bound else f"must be >= {self.bound}{self.unit}"


@dataclass(frozen=True)
class Between:
    """A number in ``[low, high]``; ``text`` describes the range in the message."""

    low: float
    high: float
    text: str

    def problem(self, value: Any) -> str | None:
        return None if not _is_number(value) or self.low <= value <= self.high else f"must be {self.text}"


@dataclass(frozen=True)
class Finite:
    """Every number (one, or each of a list) finite; with ``positive``, also ``> 0``."""

    positive: bool = False

    def problem(self, value: Any) -> str | None:
        values = value if isinstance(value, (list, tuple)) else [value]
        ok = all(_is_number(v) and math.isfinite(v) and (v > 0 or not self.positive) for v in values)
        if ok:
            return None
        return "must be positive and finite (a number or a list)" if self.positive else "must be finite"


@dataclass(frozen=True)
class DeviceName:
    """A torch device name this toolkit runs on: ``"cpu"`` or ``"cuda"`` / ``"cuda:k"``."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?", value) else "must be 'cpu' or 'cuda[:k]'"


def accepted_types(annotation: Any) -> type | tuple[type, ...] | None:
    """Python types a TOML value may have for ``annotation`` (``None``: accept anything).

    ``float`` accepts ``int``; lists, tuples and sequences accept a TOML array (a ``list``) or a tuple; a ``Literal``
    accepts the types of its values; ``Annotated`` constraints are ignored here (see :func:`check_value`).
    """
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return accepted_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[type] = []
        for arg in typing.get_args(annotation):
            sub = accepted_types(arg)
            if sub is None:
                return None
            found.extend(sub if isinstance(sub, tuple) else (sub,))
        return tuple(dict.fromkeys(found))
    if origin is Literal:
        return tuple(dict.fromkeys(type(a) for a in typing.get_args(annotation)))
    if annotation is float:
        return (int, float)
    if annotation in (int, str, bool, type(None)):
        return annotation
    if origin in (list, tuple, Sequence) or annotation in (list, tuple, Sequence):
        return (list, tuple)
    return None


def union_arms(annotation: Any) -> list[Any]:
    """The alternatives of a union (``Annotated`` stripped), else ``[annotation]``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return union_arms(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in union_arms(arg)]
    return [annotation]


def _arm_accepts(arm: Any, value: Any) -> bool:
    if typing.get_origin(arm) is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(arm))
    found = accepted_types(arm)
    if found is None:
        return True
    kinds = found if isinstance(found, tuple) else (found,)
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _describe(arm: Any) -> str:
    if typing.get_origin(arm) is Literal:
        return ", ".join(repr(a) for a in typing.get_args(arm))
    found = accepted_types(arm)
    if found is None:
        return "any value"
    kinds = found if isinstance(found, tuple) else (found,)
    if kinds in ((int, float), (list, tuple)):
        return "number" if float in kinds else "list"
    return " or ".join(t.__name__ for t in kinds)


def check_value(label: str, value: Any, annotation: Any) -> None:
    """Raise ``ValueError`` (``"<label> must be ..., got <value>"``) unless ``value`` fits ``annotation``:
    its types, its ``Literal`` values and the constraints declared with ``Annotated``."""
    arms = [a for a in union_arms(annotation) if a is not type(None)] if value is not None else union_arms(annotation)
    if not any(_arm_accepts(arm, value) for arm in arms):
        literal = [a for a in arms if typing.get_origin(a) is Literal]
        if literal and len(literal) == len(arms):
            wanted = "one of " + ", ".join(_describe(a) for a in literal)
        else:
            wanted = " or ".join(_describe(a) for a in arms)
        raise ValueError(f"{label} must be {wanted}, got {value!r}")
    for constraint in _constraints(annotation) if value is not None else ():
        problem = constraint.problem(value)
        if problem:
            raise ValueError(f"{label} {problem}, got {value!r}")


def _constraints(annotation: Any) -> list[Any]:
    found = []
    if typing.get_origin(annotation) is Annotated:
        found.extend(m for m in typing.get_args(annotation)[1:] if hasattr(m, "problem"))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(_constraints(arg))
    return found


def _parameters(target: Any) -> dict[str, tuple[Any, bool]]:
    """Keyword name -> (annotation with its constraints, required) of a class or factory."""
    if isinstance(target, type):
        hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__,
                                      include_extras=True)
    else:
        hints = typing.get_type_hints(target, include_extras=True)
    found = {}
    for name, param in inspect.signature(target).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        found[name] = (hints.get(name, Any), param.default is param.empty)
    return found


def check_table(target: Any, table: Mapping[str, Any], where: str, section: str) -> None:
    """Check every key and value of ``table`` against the annotations of ``target`` (a class or factory).

    Raises :class:`CaseError` ``"<where>: ..."`` naming ``<section>.<key>`` for an unknown key (listing the
    allowed ones), a missing required key, or a value of the wrong type, ``Literal`` value or range.
    """
    params = _parameters(target)
    for key, value in table.items():
        if key not in params:
            raise CaseError(f"{where}: unknown key {section}.{key}; allowed keys are {', '.join(sorted(params))}")
        try:
            check_value(f"{section}.{key}", value, params[key][0])
        except ValueError as err:
            raise CaseError(f"{where}: {err}") from None
    for key, (_, required) in params.items():
        if required and key not in table:
            raise CaseError(f"{where}: missing key {section}.{key}")


def construct(target: Any, table: Mapping[str, Any], where: str, section: str) -> Any:
    """``target(**table)``, its ``ValueError`` / ``TypeError`` turned into :class:`CaseError` (prefixed by
    ``[<section>]`` unless it is one of the settings dataclasses, whose messages name their keys)."""
    try:
        return target(**table)
    except (ValueError, TypeError) as err:
        labelled = isinstance(target, type) and issubclass(target, _Settings)
        raise CaseError(f"{where}: {err}" if labelled else f"{where}: [{section}] {err}") from None


def from_table(target: Any, table: Mapping[str, Any], where: str, section: str) -> Any:
    """:func:`check_table`, then :func:`construct`: the object ``target(**table)`` or a :class:`CaseError`."""
    check_table(target, table, where, section)
    return construct(target, table, where, section)


# --------------------------------------------------------------------------------------------------
# The typed settings
# --------------------------------------------------------------------------------------------------


class _Settings:
    """Frozen settings dataclasses whose fields check themselves (:func:`check_value`) on construction;
    messages name ``<section>.<field>``."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self), include_extras=True)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_value(f"{self.section}.{f.name}", getattr(self, f.name), hints[f.name])

    def to_table(self) -> dict[str, Any]:
        """The TOML table of these settings: required fields and those that differ from their default."""
        table = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or value != f.default:
                table[f.name] = list(value) if isinstance(value, tuple) else value
        return table


@dataclass(frozen=True)
class ObservationSetup(_Settings):
    """The ``[observations]`` table.

    Parameters
    ----------
    every:
        Model steps between two observation times (the cycle length), ``>= 1``.
    source:
        ``"synthetic"``: a twin experiment observing the truth with ``operator_keys`` and ``std``;
        ``"file"``: real observations (operator, error and values) read from ``file``.
    std:
        Gaussian observation-error standard deviation in observation units: one number, or one per
        observation (synthetic observations only; required there).
    file:
        The netCDF observation file (``source = "file"`` only; relative paths of a case file are
        resolved against the case file's folder).
    operator_keys:
        The operator keys of :mod:`enff.observations.config` (``operator``, ``stride``, ...), written
        directly in the ``[observations]`` table of a case file.
    """

    section: ClassVar[str] = "observations"

    every: Annotated[int, AtLeast(1, " model step")]
    source: Literal["synthetic", "file"] = "synthetic"
    std: Annotated[float | tuple[float, ...], Finite(positive=True)] | None = None
    file: str | None = None
    operator_keys: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from enff.observations.config import OPERATOR_KEYS

        if isinstance(self.std, list):
            object.__setattr__(self, "std", tuple(self.std))
        object.__setattr__(self, "operator_keys", dict(self.operator_keys))
        super().__post_init__()
        unknown = sorted(set(self.operator_keys) - set(OPERATOR_KEYS))
        if unknown:
            raise ValueError(f"unknown key observations.{unknown[0]}; allowed keys are "
                             f"{', '.join(sorted({*self._runner_keys(), *OPERATOR_KEYS}))}")
        if self.source == "synthetic":
            if self.file is not None:
                raise ValueError("observations.file is given but observations.source is 'synthetic'; add source = "
                                 "\"file\" to read the file, or remove file for a synthetic twin")
            if self.std is None:
                raise ValueError("missing key observations.std")
        else:
            extra = sorted([*self.operator_keys, *(["std"] if self.std is not None else [])])
            if extra:
                raise ValueError(f"observations.{extra[0]} is read from the observation file; remove it")
            if self.file is None:
                raise ValueError("missing key observations.file (the observation file of source = \"file\")")

    @classmethod
    def _runner_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "operator_keys"]

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> "ObservationSetup":
        """The setup of the flat ``[observations]`` table ``table`` (operator keys beside the others)."""
        from enff.observations.config import OPERATOR_KEYS

        runner = {k: v for k, v in table.items() if k not in OPERATOR_KEYS}
        operator = {k: v for k, v in table.items() if k in OPERATOR_KEYS}
        for key in runner:
            if key not in cls._runner_keys():
                raise CaseError(f"{where}: unknown key observations.{key}; allowed keys are "
                                f"{', '.join(sorted({*cls._runner_keys(), *OPERATOR_KEYS}))}")
        return from_table(cls, {**runner, "operator_keys": operator}, where, "observations")

    def to_table(self) -> dict[str, Any]:
        table = super().to_table()
        table.pop("operator_keys", None)
        return {**table, **self.operator_keys}

    def build_source(self, model: "Model") -> "ObservationSource":
        """The observation source of this setup for ``model``'s state (a file source opens its file)."""
        from enff.observations.config import operator_from_config
        from enff.observations.error import GaussianError
        from enff.observations.sources import NetCDFObservations, SyntheticObservations

        if self.source == "file":
            return NetCDFObservations(str(self.file), model.state_shape)
        operator = operator_from_config(self.operator_keys, model.state_shape)
        n_obs = operator.output_size(model.state_shape)
        if isinstance(self.std, tuple) and len(self.std) != n_obs:
            raise ValueError(f"observations.std has {len(self.std)} entries but the operator gives {n_obs} observations")
        return SyntheticObservations(operator, GaussianError(self.std), model.state_shape)  # type: ignore[arg-type]


@dataclass(frozen=True)
class EnsembleSettings(_Settings):
    """The ``[ensemble]`` table: ``size`` members drawn around ``initial_mean`` (the truth after the
    spin-up, or zero) with independent Gaussian perturbations of std ``initial_std`` (state units)."""

    section: ClassVar[str] = "ensemble"

    size: Annotated[int, AtLeast(2)]
    initial_mean: Literal["truth", "zero"] = "truth"
    initial_std: Annotated[float, AtLeast(0), Finite()] = 1.0

    @property
    def centred_on_truth(self) -> bool:
        """Whether the initial members are centred on the true state (else on zero)."""
        return self.initial_mean == "truth"


@dataclass(frozen=True)
class RunSettings(_Settings):
    """The ``[run]`` table.

    Parameters
    ----------
    cycles:
        Assimilation cycles, ``>= 1``.
    spinup:
        Model steps the truth runs before the first cycle.
    seed:
        Seed of every random stream of the run (:class:`enff.cycle.Stream`).
    device, dtype:
        Where and in which precision the ensemble lives.
    save_analysis:
        Write the full analysis ensemble every cycle: ``true``, ``false`` or ``"auto"`` (for states of
        at most :data:`AUTO_SAVE_ANALYSIS_MAX_STATE` values).
    save_forecast:
        Write the full forecast ensemble every cycle.
    """

    section: ClassVar[str] = "run"
    #: Largest state size for which ``save_analysis = "auto"`` writes the full analysis ensemble.
    AUTO_SAVE_ANALYSIS_MAX_STATE: ClassVar[int] = 5000

    cycles: Annotated[int, AtLeast(1)]
    spinup: Annotated[int, AtLeast(0)] = 0
    seed: Annotated[int, Between(0, MAX_SEED, "from 0 to 2**63 - 1 (a TOML integer)")] = 0
    device: Annotated[str, DeviceName()] = "cpu"
    dtype: Literal["float32", "float64"] = "float64"
    save_analysis: bool | Literal["auto"] = "auto"
    save_forecast: bool = False

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> "torch.device":
        import torch

        return torch.device(self.device)

    def analysis_saved(self, state_size: int) -> bool:
        """Whether the full analysis ensemble of a state of ``state_size`` values is written."""
        if self.save_analysis == "auto":
            return state_size <= self.AUTO_SAVE_ANALYSIS_MAX_STATE
        return bool(self.save_analysis)


# --------------------------------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class Case:
    """A validated experiment: the built model, observation source and filter, and the typed settings.

    Make one with :func:`case_from_tables`, :meth:`build`, or from a file with
    :func:`enff.casefile.load_case`. ``tables`` holds the effective TOML tables (overrides applied) that
    :meth:`to_toml` writes into every run file; ``where`` names the case file (or ``"<python>"``).
    A case pickles as its tables and is rebuilt (and checked again) when unpickled.
    """

    tables: Mapping[str, Any]
    model: "Model"
    observations: "ObservationSource"
    filter: "Filter"
    observation_setup: ObservationSetup
    ensemble: EnsembleSettings
    run: RunSettings
    where: str = "<case>"

    def to_toml(self) -> str:
        """The effective case as TOML text (stored in every run file; :func:`enff.casefile.parse_case` reads it)."""
        return tomli_w.dumps(_plain(self.tables))

    def defines_same_run(self, text: str) -> bool:
        """Whether the case TOML ``text`` (as a run file stores it) has this case's :data:`RUN_SECTIONS`.

        The tables of the other filters and the expected scores may differ: they do not change the run, so
        a run still resumes after they were edited in the case file.
        """
        try:
            stored = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return False
        mine = tomllib.loads(self.to_toml())
        return all(stored.get(section) == mine.get(section) for section in RUN_SECTIONS)

    @classmethod
    def build(
        cls,
        *,
        model: Mapping[str, Any],
        observations: ObservationSetup | Mapping[str, Any],
        ensemble: EnsembleSettings | Mapping[str, Any],
        filter: Mapping[str, Any],
        run: RunSettings | Mapping[str, Any],
        filters: Mapping[str, Mapping[str, Any]] | None = None,
        where: str = "<python>",
    ) -> "Case":
        """A case made in code: ``model`` and ``filter`` are ``{"name": ..., **keys}`` as in a case file,
        the settings are dataclasses (or their tables). Checked exactly as a case file is."""
        tables: dict[str, Any] = {
            "model": dict(model),
            "observations": observations.to_table() if isinstance(observations, _Settings) else dict(observations),
            "ensemble": ensemble.to_table() if isinstance(ensemble, _Settings) else dict(ensemble),
            "filter": dict(filter),
            "run": run.to_table() if isinstance(run, _Settings) else dict(run),
        }
        if filters:
            tables["filters"] = {name: dict(table) for name, table in filters.items()}
        return case_from_tables(tables, where)

    def with_tables(self, **sections: Mapping[str, Any]) -> "Case":
        """A new case with whole tables replaced (``filter={"name": "enkf", "inflation": 1.05}``)."""
        return case_from_tables({**_plain(self.tables), **{k: _plain(v) for k, v in sections.items()}}, self.where)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return case_from_tables, (_plain(self.tables), self.where)


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


def _registered(where: str, key: str, registry: Any, name: Any) -> Any:
    if not isinstance(name, str) or name not in registry:
        raise CaseError(f"{where}: {key} must be one of {', '.join(registry.names())}, got {name!r}")
    return registry[name]


def case_from_tables(tables: Mapping[str, Any], where: str = "<case>") -> Case:
    """Check the case ``tables`` and build its :class:`Case` (model, source and filter built once).

    ``where`` names the file in every :class:`CaseError`. The ``[filters.<name>]`` tables are checked
    too (by building each filter), though only ``[filter]`` is used.
    """
    from enff.budget import check_budget
    from enff.filters import FILTERS
    from enff.models import MODELS

    tables = _plain(tables)
    for section in tables:
        if section not in SECTIONS:
            raise CaseError(f"{where}: unknown section [{section}]; sections are {', '.join(SECTIONS)}")
    for section in RUN_SECTIONS:
        if not isinstance(tables.get(section), dict):
            raise CaseError(f"{where}: missing section [{section}]")

    model_keys = dict(tables["model"])
    model_cls = _registered(where, "model.name", MODELS, model_keys.pop("name", None))
    check_table(model_cls, model_keys, where, "model")  # types first: the budget reads sizes from these keys
    _reject_nan(where, tables, "")
    try:
        check_budget(tables, model_cls)  # before the model is built: building it allocates its grid
    except ValueError as err:
        raise CaseError(f"{where}: {err}") from None
    model = construct(model_cls, model_keys, where, "model")

    setup = ObservationSetup.from_table(tables["observations"], where)
    ensemble = from_table(EnsembleSettings, tables["ensemble"], where, "ensemble")
    if setup.source == "file":
        if not Path(str(setup.file)).is_file():
            raise CaseError(f"{where}: observations.file {setup.file!r} does not exist")
        if ensemble.centred_on_truth:
            raise CaseError(f"{where}: ensemble.initial_mean cannot be 'truth' with real observations; use 'zero'")
    try:
        source = setup.build_source(model)
    except (ValueError, TypeError) as err:
        raise CaseError(f"{where}: {err}") from None  # the messages name the key or the observation file

    hyper = dict(tables["filter"])
    filt = from_table(_registered(where, "filter.name", FILTERS, hyper.pop("name", None)), hyper, where, "filter")
    for other, table in tables.get("filters", {}).items():
        if other not in FILTERS:
            raise CaseError(f"{where}: [filters.{other}] names no filter; filters are {', '.join(FILTERS.names())}")
        from_table(FILTERS[other], table, where, f"filters.{other}")  # checked by building it; [filter] is used

    if "expected" in tables:
        from enff.expected import parse_expected

        parse_expected(where, where, tables["expected"])  # the scores the tuned filters reach; read by enff.expected
    run = from_table(RunSettings, tables["run"], where, "run")
    if run.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CaseError(f"{where}: run.device is {run.device!r} but no CUDA device is available")
    times = source.n_times
    if times is not None and run.cycles > times:
        raise CaseError(f"{where}: run.cycles is {run.cycles} but {setup.file} holds {times} observation times")
    return Case(tables=tables, model=model, observations=source, filter=filt, observation_setup=setup,
                ensemble=ensemble, run=run, where=where)
