"""Posterior files that cannot run code when read: tensors plus plain data.

A posterior file is a ``torch.save`` archive of one dictionary, read back with
``torch.load(weights_only=True)`` (which refuses every Python object but tensors and plain containers)::

    {"format": "enff.amortized.posterior/2",
     "class": "FMPEPosterior" | "FMCPEPosterior",
     "payload": {...}}

The payload holds only tensors (network weights, standardizer means and standard deviations, prior
parameters), dicts, lists, tuples, strings, numbers, booleans and ``None``. Configurations
(network, solver, training history, reader) are dicts of their dataclass fields; the prior is
``{"distribution": name, parameter: value, ...}`` for one of :data:`PRIOR_PARAMETERS`, nested for
``Independent``.

Files of the first format (``enff.amortized.posterior/1``, a pickle of arbitrary objects) are refused
unless the caller opts in with ``trust_legacy=True`` or the environment variable
``ENFF_TRUST_LEGACY_POSTERIORS=1``; reading one runs whatever code it holds, so opt in only for files
you wrote yourself, and save them again to convert them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import typing
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, Uniform

from ..registry import Registry

__all__ = ["FORMAT", "LEGACY_FORMAT", "PRIOR_PARAMETERS", "TRUST_LEGACY_ENV", "PosteriorFileError",
           "config_from_data", "prior_from_data", "read_posterior_file", "to_plain", "write_posterior_file"]

FORMAT = "enff.amortized.posterior/2"
LEGACY_FORMAT = "enff.amortized.posterior/1"
TRUST_LEGACY_ENV = "ENFF_TRUST_LEGACY_POSTERIORS"

#: Priors a posterior file can hold: name -> (class, {constructor keyword stored in the file: attribute}).
PRIOR_PARAMETERS: Registry[tuple[type[Distribution], dict[str, str]]] = Registry("prior")
for _name, _entry in (
    ("Normal", (Normal, {"loc": "loc", "scale": "scale"})),
    ("Uniform", (Uniform, {"low": "low", "high": "high"})),
    ("MultivariateNormal", (MultivariateNormal, {"loc": "loc", "scale_tril": "scale_tril"})),
    ("Independent", (Independent, {"base_distribution": "base_dist",
                                   "reinterpreted_batch_ndims": "reinterpreted_batch_ndims"})),
):
    PRIOR_PARAMETERS.register(_name)(_entry)
del _name, _entry

_LEAVES = (torch.Tensor, str, int, float, bool, type(None))
_Config = TypeVar("_Config")


class PosteriorFileError(ValueError):
    """A posterior file cannot be read (missing, truncated, foreign or refused); the message names it."""


def _prior_to_plain(prior: Distribution) -> dict[str, Any]:
    """``{"distribution": name, parameter: value}`` for a prior of :data:`PRIOR_PARAMETERS`."""
    name = type(prior).__name__
    if name not in PRIOR_PARAMETERS or type(prior) is not PRIOR_PARAMETERS[name][0]:
        raise TypeError(f"a posterior file can store priors of the kinds {', '.join(PRIOR_PARAMETERS)} "
                        f"(torch.distributions), not {type(prior).__module__}.{type(prior).__qualname__}")
    attributes = PRIOR_PARAMETERS[name][1]
    return {"distribution": name, **{key: to_plain(getattr(prior, attr)) for key, attr in attributes.items()}}


def prior_from_data(data: Mapping[str, Any]) -> Distribution:
    """Rebuild a prior from its plain-data description (see :data:`PRIOR_PARAMETERS`)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("distribution"), str):
        raise ValueError(f"a prior is stored as a dict with its distribution's name, got {data!r:.200}")
    cls, parameters = PRIOR_PARAMETERS.get_entry(data["distribution"])
    if set(data) != {"distribution", *parameters}:
        raise ValueError(f"a {data['distribution']} prior is stored as {', '.join(parameters)}; got {', '.join(data)}")
    values = {p: prior_from_data(v) if isinstance(v, Mapping) else v for p, v in data.items() if p != "distribution"}
    return cls(**values)


def to_plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts of their fields and priors as plain descriptions.

    Containers are converted recursively (mappings become ``dict``); tensors, strings, numbers, booleans
    and ``None`` stay as they are; anything else raises ``TypeError``.
    """
    if isinstance(value, Distribution):
        return _prior_to_plain(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    if isinstance(value, _LEAVES):
        return value.detach().cpu() if isinstance(value, torch.Tensor) else value
    raise TypeError(f"a posterior file stores only tensors and plain data, not {type(value).__name__}")


def config_from_data(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
    """Rebuild the dataclass ``cls`` from :func:`to_plain`'s dict of its fields (nested dataclasses too)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} must be stored as a dict of its fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {unknown[0]!r}")
    return cls(**{key: config_from_data(hints[key], value) if dataclasses.is_dataclass(hints[key]) else value
                  for key, value in data.items()})


def write_posterior_file(path: str | Path, class_name: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (converted by :func:`to_plain`) to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    blob = {"format": FORMAT, "class": class_name, "payload": to_plain(payload)}
    partial = path.with_name(f".{path.name}.partial")
    try:
        torch.save(blob, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _trusts_legacy(trust_legacy: bool | None) -> bool:
    return os.environ.get(TRUST_LEGACY_ENV, "") == "1" if trust_legacy is None else trust_legacy


def _refusal(path: Path) -> PosteriorFileError:
    return PosteriorFileError(
        f"{path}: refused: the file holds pickled Python objects (a posterior of the old format {LEGACY_FORMAT}, "
        "or not a posterior file at all), and reading it could run arbitrary code. If you wrote it yourself, "
        f"read it once with {TRUST_LEGACY_ENV}=1 (or load_posterior(path, trust_legacy=True)) and save it "
        f"again to convert it to {FORMAT}")


def _torch_load(path: Path, weights_only: bool) -> Any:
    """``torch.load`` on the CPU; every failure to parse becomes a :class:`PosteriorFileError` naming ``path``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and "weights only load failed" in str(err).lower():
            raise _refusal(path) from None
        raise PosteriorFileError(f"{path}: not a readable posterior file ({err})") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... on files it cannot parse
        raise PosteriorFileError(f"{path}: not a readable posterior file (truncated, or not written by enff: "
                                 f"{type(err).__name__}: {str(err)[:200]})") from None


def read_posterior_file(path: str | Path, trust_legacy: bool | None = None) -> tuple[str, dict[str, Any]]:
    """The class name and the plain-data payload of the posterior file ``path``.

    ``trust_legacy`` (``None``: the environment variable ``ENFF_TRUST_LEGACY_POSTERIORS=1``) allows reading
    a file of the old pickled format, which runs any code it holds; by default such a file is refused.
    Raises :class:`PosteriorFileError` naming ``path`` for a missing, unreadable, refused or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise PosteriorFileError(f"{path}: no such posterior file")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is foreign or truncated
        raise PosteriorFileError(f"{path}: not a readable posterior file (truncated, or not a torch.save archive)")
    try:
        blob, want = _torch_load(path, weights_only=True), FORMAT
    except PosteriorFileError:
        if not _trusts_legacy(trust_legacy):
            raise
        blob, want = _torch_load(path, weights_only=False), LEGACY_FORMAT
    if not isinstance(blob, dict) or blob.get("format") != want or not isinstance(blob.get("payload"), Mapping):
        raise PosteriorFileError(f"{path} is not an enff amortized posterior file (format {FORMAT})")
    return str(blob.get("class")), to_plain(blob["payload"])
