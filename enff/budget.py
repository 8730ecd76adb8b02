"""What a case will cost, estimated from its tables before anything is built: memory and model steps.

:func:`check_budget` refuses (``ValueError`` naming the keys and the estimate) a case whose ensemble
cannot fit in the memory of the machine, or whose spin-up, cycles or flow steps would run for longer
than any experiment here (:data:`MAX_MODEL_STEPS`, :data:`MAX_FILTER_STEPS`). It runs before the model is
constructed, because building a model of ``1e12`` values already allocates its grid.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ENSEMBLE_COPIES", "MAX_FILTER_STEPS", "MAX_MODEL_STEPS", "STATE_SIZE", "check_budget",
           "machine_memory", "memory_estimate", "state_size"]

#: Model steps one run may take: spin-up plus cycles x observations.every (the longest shipped case takes 12,000).
MAX_MODEL_STEPS = 10**9
#: Velocity or score evaluations of one analysis, ``filter.steps`` (the published settings use at most 99).
MAX_FILTER_STEPS = 10**6
#: Arrays of (member x state) a cycle holds at once: forecast, analysis, previous analysis, the model's
#: Runge-Kutta stages and the filter's work arrays. Peak memory measured here (Lorenz-96, N = 20,
#: d = 2e5) was 17 such arrays for ETKF, EnFF and the particle filter and 30 for the LETKF; the estimate
#: takes fewer, so that only a case that surely cannot fit is refused.
ENSEMBLE_COPIES = 16

#: Number of values in one state of each model, from a getter of its ``[model]`` keys (defaults filled in).
STATE_SIZE: dict[str, Callable[[Callable[[str], int]], int]] = {
    "lorenz63": lambda key: 3,
    "lorenz96": lambda key: key("dim"),
    "kuramoto_sivashinsky": lambda key: key("dim"),
    "navier_stokes2d": lambda key: key("n") ** 2,
    "navier_stokes2d_primitive": lambda key: 3 * key("n") ** 2,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def state_size(name: str, model: Mapping[str, Any], model_cls: type) -> tuple[int, list[str]] | None:
    """Values in one state of model ``name`` with keys ``model`` (others at ``model_cls``'s defaults), and
    the ``model.<key> = <value>`` texts it was computed from; ``None`` for a model without a formula."""
    if name not in STATE_SIZE:
        return None
    defaults = inspect.signature(model_cls.__init__).parameters
    used: list[str] = []

    def key(k: str) -> int:
        value = model.get(k, defaults[k].default)
        used.append(f"model.{k} = {value}")
        return int(value)

    return STATE_SIZE[name](key), used


def memory_estimate(n_members: int, n_values: int, itemsize: int) -> int:
    """Bytes a cycle needs at least: :data:`ENSEMBLE_COPIES` arrays ``(member, state)`` plus one
    ``(member, member)`` matrix (the global filters' weights and transforms)."""
    return itemsize * (ENSEMBLE_COPIES * n_members * n_values + n_members * n_members)


def machine_memory(device: str) -> int:
    """Bytes of memory of ``device``: the GPU's for an available CUDA device, else the host's RAM."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def _check_memory(tables: Mapping[str, Any], model_cls: type) -> None:
    model, ensemble, run = tables["model"], tables["ensemble"], tables.get("run", {})
    sized = state_size(str(model.get("name")), model, model_cls)
    members = ensemble.get("size")
    if sized is None or not _is_int(members) or sized[0] < 1 or members < 1:
        return  # the keys themselves are checked (and refused) by the case validation
    values, keys = sized
    dtype = "float32" if run.get("dtype") == "float32" else "float64"
    need = memory_estimate(members, values, 4 if dtype == "float32" else 8)
    device = str(run.get("device", "cpu"))
    have = machine_memory(device)
    if need > have:
        origin = f" ({', '.join(keys)})" if keys else ""
        raise ValueError(
            f"ensemble.size = {members} members of a state of {values} values{origin} in {dtype} "
            f"need at least {_bytes(need)} of memory (estimate: {ENSEMBLE_COPIES} arrays of member x state), "
            f"more than the {_bytes(have)} of this machine ({device}); reduce ensemble.size or the model size")


def _check_steps(tables: Mapping[str, Any]) -> None:
    run, every = tables.get("run", {}), tables["observations"].get("every", 1)
    spinup, cycles = run.get("spinup", 0), run.get("cycles", 1)
    for key, value in (("run.spinup", spinup), ("observations.every", every), ("run.cycles", cycles)):
        if _is_int(value) and value > MAX_MODEL_STEPS:
            raise ValueError(f"{key} = {value} is beyond the limit of {MAX_MODEL_STEPS:.0e} model steps of one run")
    if all(_is_int(v) for v in (spinup, cycles, every)) and spinup + cycles * every > MAX_MODEL_STEPS:
        raise ValueError(f"run.spinup + run.cycles x observations.every = {spinup} + {cycles} x {every} = "
                         f"{spinup + cycles * every} model steps is beyond the limit of {MAX_MODEL_STEPS:.0e} of one run")
    steps = tables["filter"].get("steps")
    if _is_int(steps) and steps > MAX_FILTER_STEPS:
        raise ValueError(f"filter.steps = {steps} is beyond the limit of {MAX_FILTER_STEPS:.0e} evaluations per analysis")


def check_budget(tables: Mapping[str, Any], model_cls: type) -> None:
    """Raise ``ValueError`` naming the keys if the case ``tables`` (model keys already type-checked) cannot
    fit in memory or would take more than :data:`MAX_MODEL_STEPS` / :data:`MAX_FILTER_STEPS` steps."""
    _check_steps(tables)
    _check_memory(tables, model_cls)
