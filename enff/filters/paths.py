"""Gaussian probability paths of the ensemble flow filter (EnFF).

A path moves a source ensemble at flow time ``t = 0`` to the forecast ensemble at ``t = 1`` through
conditional Gaussians ``N(mu_t[j], sigma_t^2 I)``, one per forecast member ``j``. Every path here has
a conditional mean that is linear in the paired end points,

    mu_t[j] = a(t) x1[j] + b(t) x0[j],

(``x1`` the forecast, ``x0`` the paired source member, ``b = 0`` when the path is not paired), so a path
is fully described by the scalar coefficients ``a, b``, the scalar standard deviation ``sigma_t`` and
their time derivatives. The Monte Carlo marginal velocity (:mod:`enff.filters.velocity`) uses the
coefficients directly and never materialises ``mu_t`` for the whole ensemble.

The flow time ``t`` is dimensionless, ``t in [0, 1]``; states are in model units.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["ProbabilityPath", "OTPath", "F2PPath"]


def _require_pair(x0: torch.Tensor | None, x1: torch.Tensor) -> torch.Tensor:
    """Return ``x0`` or raise ``ValueError`` unless it is shaped like ``x1``."""
    if x0 is None or x0.shape != x1.shape:
        raise ValueError(
            f"a paired path needs source members x0 shaped like x1 {tuple(x1.shape)}, "
            f"got {None if x0 is None else tuple(x0.shape)}"
        )
    return x0


def _check_sigma_min(sigma_min: float) -> None:
    if not 0.0 < float(sigma_min) < 1.0:
        raise ValueError(f"sigma_min must lie in (0, 1), got {sigma_min!r}")


class ProbabilityPath(ABC):
    """Conditional Gaussian path ``N(a(t) x1[j] + b(t) x0[j], sigma_t^2 I)`` from ``t = 0`` to ``t = 1``.

    Subclasses are frozen dataclasses with a ``sigma_min`` field.
    """

    #: Whether the conditional mean depends on a paired source member ``x0[j]`` (``b(t) != 0``).
    paired: ClassVar[bool] = False
    sigma_min: float

    @abstractmethod
    def mean_coefficients(self, t: float) -> tuple[float, float]:
        """``(a(t), b(t))`` with ``mu_t[j] = a x1[j] + b x0[j]``."""

    @abstractmethod
    def mean_coefficient_derivatives(self, t: float) -> tuple[float, float]:
        """``(da/dt, db/dt)`` at ``t``."""

    @abstractmethod
    def std(self, t: float) -> float:
        """Conditional standard deviation ``sigma_t`` (model units per unit of the source noise)."""

    @abstractmethod
    def std_derivative(self, t: float) -> float:
        """``d sigma_t / dt``."""

    @abstractmethod
    def sample_source(
        self, x1: torch.Tensor, x0: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Draw the source particles at ``t = 0``, shape ``(member, d)`` like ``x1``.

        Parameters
        ----------
        x1:
            Forecast ensemble, shape ``(member, d)`` (gives shape, dtype and device).
        x0:
            Paired source members, shape ``(member, d)``, for paired paths; ignored otherwise.
        generator:
            Source of the noise, on ``x1``'s device.
        """

    def mean(self, t: float, x0: torch.Tensor | None, x1: torch.Tensor) -> torch.Tensor:
        """Conditional means ``mu_t``, shape ``(member, d)`` like ``x1`` (``x0`` unused if not paired)."""
        a, b = self.mean_coefficients(t)
        return self._combine(a, b, x0, x1)

    def mean_derivative(self, t: float, x0: torch.Tensor | None, x1: torch.Tensor) -> torch.Tensor:
        """``d mu_t / dt``, shape ``(member, d)``."""
        da, db = self.mean_coefficient_derivatives(t)
        return self._combine(da, db, x0, x1)

    def conditional_velocity(
        self, x: torch.Tensor, t: float, x0: torch.Tensor | None, x1: torch.Tensor
    ) -> torch.Tensor:
        """``u_j(x) = (sigma_t' / sigma_t)(x - mu_t[j]) + mu_t'[j]`` for ``x``, ``x1`` of shape ``(member, d)``.

        Member ``i`` of ``x`` is paired with member ``i`` of ``x1`` (and ``x0``).
        """
        rate = self.std_derivative(t) / self.std(t)
        return rate * (x - self.mean(t, x0, x1)) + self.mean_derivative(t, x0, x1)

    def _combine(self, a: float, b: float, x0: torch.Tensor | None, x1: torch.Tensor) -> torch.Tensor:
        if not self.paired:
            return a * x1
        return torch.add(a * x1, _require_pair(x0, x1), alpha=b)


@dataclass(frozen=True)
class OTPath(ProbabilityPath):
    """Conditional optimal transport: source ``N(0, I)``, ``mu_t = t x1``, ``sigma_t = 1 - (1 - sigma_min) t``."""

    sigma_min: float = 1e-2

    def __post_init__(self) -> None:
        _check_sigma_min(self.sigma_min)

    def mean_coefficients(self, t: float) -> tuple[float, float]:
        return t, 0.0

    def mean_coefficient_derivatives(self, t: float) -> tuple[float, float]:
        return 1.0, 0.0

    def std(self, t: float) -> float:
        return 1.0 - (1.0 - self.sigma_min) * t

    def std_derivative(self, t: float) -> float:
        return -(1.0 - self.sigma_min)

    def sample_source(
        self, x1: torch.Tensor, x0: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        return torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)


@dataclass(frozen=True)
class F2PPath(ProbabilityPath):
    """Filtering-to-predictive path.

    Source ``x0[j] + sigma_min z``; ``mu_t = t x1[j] + (1 - t) x0[j]``; ``sigma_t = sigma_min``.
    ``x0`` is the previous analysis ensemble, member ``j`` paired with forecast member ``j`` (its own
    forecast), so the conditional paths follow the model's own transport of each member.
    """

    paired: ClassVar[bool] = True
    sigma_min: float = 1e-2

    def __post_init__(self) -> None:
        _check_sigma_min(self.sigma_min)

    def mean_coefficients(self, t: float) -> tuple[float, float]:
        return t, 1.0 - t

    def mean_coefficient_derivatives(self, t: float) -> tuple[float, float]:
        return 1.0, -1.0

    def std(self, t: float) -> float:
        return self.sigma_min

    def std_derivative(self, t: float) -> float:
        return 0.0

    def sample_source(
        self, x1: torch.Tensor, x0: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        return torch.add(_require_pair(x0, x1), noise, alpha=self.sigma_min)
