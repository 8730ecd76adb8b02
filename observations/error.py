"""Gaussian observation error: one standard deviation per observation, or one for all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from enff.checks import check_positive_int

__all__ = ["GaussianError"]


@dataclass(frozen=True)
class GaussianError:
    """Independent zero-mean Gaussian observation errors.

    Parameters
    ----------
    std:
        Standard deviation in observation units: a scalar shared by all observations, or one value per
        observation (shape ``(n_obs,)``, stored as a tuple). Every value must be finite and positive.
    """

    std: float | tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            values = np.asarray(self.std, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"std must be a number or a list of numbers, got {self.std!r}") from None
        if values.ndim > 1 or values.size == 0:
            raise ValueError(f"std must be a scalar or a non-empty 1-D sequence, got shape {values.shape}")
        if not (np.all(np.isfinite(values)) and np.all(values > 0)):
            raise ValueError(f"std must be finite and positive everywhere, got {self.std!r}")
        object.__setattr__(self, "std", float(values) if values.ndim == 0 else tuple(values.tolist()))

    def std_vector(
        self, n_obs: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The standard deviation of each of ``n_obs`` observations, shape ``(n_obs,)``.

        Raises ``ValueError`` if a per-observation ``std`` does not have ``n_obs`` entries.
        """
        n_obs = check_positive_int("n_obs", n_obs)
        if isinstance(self.std, float):
            return torch.full((n_obs,), self.std, dtype=dtype, device=device)
        if len(self.std) != n_obs:
            raise ValueError(f"std has {len(self.std)} entries but there are {n_obs} observations")
        return torch.tensor(self.std, dtype=dtype, device=device)

    def perturb(self, y_clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Add one error draw: ``y_clean + std * N(0, 1)``.

        Parameters
        ----------
        y_clean:
            Error-free observations, shape ``(..., n_obs)`` (floating dtype).
        generator:
            Source of the standard normal draws, on ``y_clean``'s device.

        Returns
        -------
        A new tensor shaped like ``y_clean``; missing (NaN) entries stay NaN.
        """
        std = self.std_vector(y_clean.shape[-1], y_clean.dtype, y_clean.device)
        noise = torch.randn(y_clean.shape, generator=generator, dtype=y_clean.dtype, device=y_clean.device)
        return y_clean + std * noise
