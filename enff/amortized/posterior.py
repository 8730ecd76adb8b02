"""The ``Posterior`` interface shared by the learned estimators, with single-file save and load.

Shapes: parameters ``theta`` are ``(batch, theta_dim)``, observations ``x`` are ``(batch, x_dim)``.
``sample(n, x)`` returns ``(n, batch, theta_dim)``: ``n`` draws for each of the ``batch`` observations.
``log_prob(theta, x)`` accepts ``theta`` of shape ``(..., batch, theta_dim)`` with ``x`` of shape
``(batch, x_dim)`` or ``(1, x_dim)`` (one observation for all) and returns shape ``(..., batch)``.
Samples outside the support of a bounded prior are rejected and redrawn, within a bound on the work
(:func:`sample_in_support`: a clear error, or NaN rows on request, when too few are accepted); ``log_prob``
is ``-inf`` there. The reported density is the learned one restricted to the support, not renormalised by the
acceptance rate (which :meth:`Posterior.sample` reports through a warning when it is low).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from torch.distributions import Distribution

from ..config import check_value
from .storage import PosteriorFileError, read_posterior_file, write_posterior_file

__all__ = ["MIN_ACCEPTANCE", "UNPLACED", "Incomplete", "Posterior", "Standardizer", "check_pairs", "check_rows", "load_posterior",
           "new_generator", "sample_in_support"]

def new_generator(generator: torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """Return ``generator``, or a fresh one on ``device`` seeded from operating-system entropy."""
    if generator is not None:
        return generator
    fresh = torch.Generator(device=device)
    fresh.seed()
    return fresh


def check_rows(name: str, value: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a floating tensor ``(batch, dim)``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != 2 or value.shape[0] < 1 or (dim is not None and value.shape[1] != dim):
        want = f"(batch, {dim})" if dim is not None else "(batch, features)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {value.dtype}")
    return value


def check_pairs(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], dims: tuple[int | None, ...] | None = None,
                ) -> tuple[tuple[torch.Tensor, ...], int]:
    """Check paired training rows, drop rows with any non-finite entry, and warn with the count.

    Returns the cleaned tensors and the number of dropped rows.
    """
    dims = dims or (None,) * len(names)
    for name, value, dim in zip(names, tensors, dims):
        check_rows(name, value, dim)
    lengths = {name: value.shape[0] for name, value in zip(names, tensors)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{', '.join(names)} must have the same number of rows, got {lengths}")
    finite = torch.stack([torch.isfinite(v).all(dim=1) for v in tensors]).all(dim=0)
    dropped = int((~finite).sum())
    if dropped:
        warnings.warn(f"dropped {dropped} of {finite.numel()} rows of ({', '.join(names)}) with NaN or inf entries",
                      RuntimeWarning, stacklevel=3)
    return tuple(v[finite] for v in tensors), dropped


@dataclass
class Standardizer:
    """Affine z-scoring ``(v - mean) / std`` per feature; ``mean`` and ``std`` have shape ``(features,)``."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, data: torch.Tensor, min_std: float = 1e-8) -> Standardizer:
        """Mean and standard deviation of ``data`` ``(batch, features)``; constant features keep std 1."""
        std = data.std(dim=0) if data.shape[0] > 1 else torch.ones_like(data[0])
        return cls(data.mean(dim=0), torch.where(std > min_std, std, torch.ones_like(std)))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Standardize ``v`` of shape ``(..., features)``."""
        return (v - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`."""
        return z * self.std + self.mean

    def log_abs_det(self) -> torch.Tensor:
        """``log |d forward / d v|`` (a scalar): add to a log-density of ``z`` to get one of ``v``."""
        return -torch.log(self.std).sum()


#: Sampling gives up once fewer than this fraction of all draws so far fell inside the prior support, so it
#: costs at most about ``1 / MIN_ACCEPTANCE`` draws per sample; an observation far from the simulations
#: (acceptance near 0) ends after the first draw.
MIN_ACCEPTANCE = 0.05
#: What :func:`sample_in_support` does with samples it could not place inside the support.
Incomplete = Literal["raise", "nan"]


def sample_in_support(draw: Callable[[torch.Tensor], torch.Tensor], n_total: int, prior: Distribution,
                      max_rounds: int, device: torch.device | str, incomplete: Incomplete = "raise") -> torch.Tensor:
    """Draw ``n_total`` rows with ``draw(indices)`` and redraw those outside ``prior``'s support.

    ``draw`` takes a long tensor of flat row indices and returns one sample ``(len(indices), dim)`` for
    each. Warns when fewer than 10% of the first draws were accepted and it goes on. Stops redrawing after ``max_rounds``
    redraws, or as soon as fewer than :data:`MIN_ACCEPTANCE` of all draws so far were accepted; then rows
    still outside the support raise ``RuntimeError`` naming the acceptance rate (``incomplete="raise"``)
    or come back as NaN rows (``incomplete="nan"``: what was accepted, in place).
    """
    check_value("incomplete", incomplete, Incomplete)
    index = torch.arange(n_total, device=device)
    out = draw(index)
    inside = prior.support.check(out)
    first_rate = float(inside.float().mean())
    if MIN_ACCEPTANCE <= first_rate < 0.1:  # below MIN_ACCEPTANCE sampling stops at once
        warnings.warn(f"only {first_rate:.1%} of posterior samples fell inside the prior support; sampling is slow "
                      "and the posterior may be poorly trained", RuntimeWarning, stacklevel=3)
    drawn, rounds = n_total, 0
    while not bool(inside.all()) and rounds < max_rounds and int(inside.sum()) >= MIN_ACCEPTANCE * drawn:
        missing = index[~inside]
        redrawn = draw(missing)
        out[missing] = redrawn
        inside[missing] = prior.support.check(redrawn)
        drawn, rounds = drawn + missing.numel(), rounds + 1
    if bool(inside.all()):
        return out
    return UNPLACED[incomplete](out, inside, drawn, rounds, max_rounds)


def _fill_nan(out: torch.Tensor, inside: torch.Tensor, drawn: int, rounds: int, max_rounds: int) -> torch.Tensor:
    out[~inside] = float("nan")
    return out


def _refuse(out: torch.Tensor, inside: torch.Tensor, drawn: int, rounds: int, max_rounds: int) -> torch.Tensor:
    n_out = int((~inside).sum())
    accepted = int(inside.sum())
    why = (f"after max_rejection_rounds={max_rounds} redraws" if rounds >= max_rounds
           else f"because fewer than {MIN_ACCEPTANCE:.0%} of the draws were accepted")
    raise RuntimeError(f"{n_out} of {out.shape[0]} posterior samples are outside the prior support {why}: "
                       f"{accepted} of {drawn} draws accepted (acceptance rate {accepted / drawn:.2%}); the "
                       "observation may be far from the simulations. Pass incomplete='nan' to get the accepted "
                       "samples with NaN rows for the others, or reject=False for the raw flow samples")


#: What each :data:`Incomplete` does with the rows of ``out`` ``(rows, dim)`` not ``inside`` the support after
#: ``drawn`` draws in ``rounds`` redraws: NaN rows, or a ``RuntimeError`` naming the acceptance rate.
UNPLACED: Mapping[Incomplete, Callable[[torch.Tensor, torch.Tensor, int, int, int], torch.Tensor]] = (
    MappingProxyType({"nan": _fill_nan, "raise": _refuse}))


class Posterior(ABC):
    """A learned, amortized posterior ``q(theta | x)`` over many observations at once.

    Subclasses register themselves by class name for :func:`load_posterior` and implement
    :meth:`sample`, :meth:`log_prob`, :meth:`_payload` and :meth:`_from_payload`.
    """

    _registry: ClassVar[dict[str, type[Posterior]]] = {}
    prior: Distribution
    theta_dim: int
    x_dim: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Posterior._registry[cls.__name__] = cls

    @abstractmethod
    def sample(self, n: int, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples for each observation in ``x`` ``(batch, x_dim)``; returns ``(n, batch, theta_dim)``."""

    @abstractmethod
    def log_prob(self, theta: torch.Tensor, x: torch.Tensor, *, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Log-density of ``theta`` ``(..., batch, theta_dim)`` given ``x`` ``(batch | 1, x_dim)``; returns ``(..., batch)``."""

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """Everything needed to rebuild this posterior (configuration dataclasses, tensors, weights, prior),
        convertible to plain data by :func:`enff.amortized.storage.to_plain`."""

    @classmethod
    @abstractmethod
    def _from_payload(cls, payload: dict[str, Any]) -> Posterior:
        """Rebuild a posterior from :meth:`_payload`'s output converted to plain data (dataclasses as dicts,
        the prior as its plain description)."""

    def save(self, path: str | Path) -> None:
        """Write the posterior, its configuration and its prior to one file of tensors and plain data
        (format described in :mod:`enff.amortized.storage`), atomically."""
        write_posterior_file(path, type(self).__name__, self._payload())

    @staticmethod
    def load(path: str | Path, *, trust_legacy: bool | None = None) -> Posterior:
        """Read a posterior written by :meth:`save` (see :func:`load_posterior`)."""
        return load_posterior(path, trust_legacy=trust_legacy)

    def _broadcast(self, theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Flatten ``theta`` ``(..., batch, d)`` and broadcast ``x`` to match; returns rows and output shape."""
        check_rows("x", x, self.x_dim)
        if not isinstance(theta, torch.Tensor) or theta.ndim < 2 or theta.shape[-1] != self.theta_dim:
            shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"theta must have shape (..., batch, {self.theta_dim}), got {shape}")
        if x.shape[0] not in (1, theta.shape[-2]):
            raise ValueError(f"x must have 1 or theta.shape[-2]={theta.shape[-2]} rows, got x of shape {tuple(x.shape)}")
        out_shape = tuple(theta.shape[:-1])
        xs = x.expand(*out_shape, self.x_dim).reshape(-1, self.x_dim)
        return theta.reshape(-1, self.theta_dim), xs, out_shape


def load_posterior(path: str | Path, *, trust_legacy: bool | None = None) -> Posterior:
    """Read a posterior file written by :meth:`Posterior.save`; reading it never runs code.

    Files of the old pickled format are refused unless ``trust_legacy`` is true (``None``: the
    environment variable ``ENFF_TRUST_LEGACY_POSTERIORS=1``); reading one runs any code it holds.
    Raises :class:`~enff.amortized.storage.PosteriorFileError` (a ``ValueError``) naming ``path`` for a
    file that is missing, unreadable, refused, foreign or inconsistent.
    """
    name, payload = read_posterior_file(path, trust_legacy)
    if name not in Posterior._registry:
        raise PosteriorFileError(f"{path} holds an unknown posterior class {name!r}; known: {sorted(Posterior._registry)}")
    try:
        return Posterior._registry[name]._from_payload(payload)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise PosteriorFileError(f"{path}: inconsistent {name} posterior file ({type(err).__name__}: {err})") from None
