"""The learned analysis: an amortized posterior as the analysis step of a cycling run.

The posterior file holds one of two kinds of posterior:

- a field posterior (:class:`~enff.amortized.field_analysis.FieldPosterior`, trained by
  :class:`~enff.amortized.field_analysis.FieldFMPE`): a translation-equivariant flow on the model's periodic
  grid, conditioned per grid point on the observation and its mask and on the forecast members. It serves any
  grid size of its layout (1-D or 2-D, number of fields) and any number of observations, missing ones included.
  The ``N`` members are ``N`` independent draws, each integrating the flow from its own base draw on the
  case's device (why that gives the right spread: :mod:`enff.amortized.field_analysis`);
- a vector posterior (FMPE or FMCPE, written by ``enff learn``): a flow over the flattened state conditioned
  on the observation and the forecast mean and spread, for one state size (see :mod:`enff.amortized.analysis`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from enff.observations.space import ObservationSpace

from .base import Analysis, Filter, register

if TYPE_CHECKING:
    from enff.amortized.field_analysis import FieldPosterior

__all__ = ["LearnedAnalysis"]


@register("learned")
@dataclass(frozen=True)
class LearnedAnalysis(Filter):
    """Analysis ensemble drawn from a trained amortized posterior.

    Attributes
    ----------
    posterior:
        Path of the posterior file (one named in a case file is relative to the case file, one given by
        ``--set`` relative to the working directory): tensors and plain data, read
        without running code (old pickled files are refused unless ``ENFF_TRUST_LEGACY_POSTERIORS=1``).
        It is read when the filter is built, so an unreadable file is refused before a run starts.
    flow:
        The :class:`~enff.amortized.Posterior` read from that file (on the CPU), once per filter (not a key).
    """

    posterior: str = ""
    flow: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from enff.amortized import load_posterior

        if not self.posterior:
            raise ValueError("the learned analysis needs posterior = '<file>' (train one with `enff learn`)")
        if not Path(self.posterior).is_file():
            raise ValueError(f"posterior file {self.posterior!r} does not exist (train one with `enff learn`)")
        object.__setattr__(self, "flow", load_posterior(self.posterior))

    def analysis(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        obs: ObservationSpace,
        *,
        previous: torch.Tensor | None = None,
        generator: torch.Generator,
    ) -> Analysis:
        from enff.amortized.field_analysis import FieldPosterior

        if isinstance(self.flow, FieldPosterior):
            return Analysis(self._field_draws(self.flow, forecast, y, obs, generator))
        return Analysis(self._vector_draws(forecast, y, generator))

    def _field_draws(self, posterior: FieldPosterior, forecast: torch.Tensor, y: torch.Tensor, obs: ObservationSpace,
                     generator: torch.Generator) -> torch.Tensor:
        """``N`` draws of the field posterior at this cycle's context, shaped and typed like ``forecast``."""
        from enff.amortized.field_analysis import FieldContext, observation_field
        from enff.amortized.field_network import FieldLayout

        try:
            layout = FieldLayout.of(obs.grid)
        except ValueError as err:
            raise ValueError(f"{self.posterior} holds a field posterior ({posterior.layout.describe()}): "
                             f"{err}") from None
        if layout != posterior.layout:
            raise ValueError(f"{self.posterior} was trained for a {posterior.layout.describe()}; this case's state "
                             f"of shape {tuple(forecast.shape[1:])} is a {layout.describe()}")
        value, mask = observation_field(y, obs, layout)
        context = FieldContext(value[None], mask[None], layout.to_channels(forecast)[None])
        draws = posterior.sample(forecast.shape[0], context, generator=generator)
        return draws.reshape(forecast.shape).to(dtype=forecast.dtype)

    def _vector_draws(
        self,
        forecast: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``N`` draws of the vector posterior at the context (observation, forecast mean and spread)."""
        from enff.amortized.analysis import analysis_context

        if not bool(torch.isfinite(y).all()):
            raise ValueError("the learned analysis was trained on complete observation vectors; this cycle has "
                             f"{int((~torch.isfinite(y)).sum())} missing observations")
        members, state_shape = forecast.shape[0], forecast.shape[1:]
        context = analysis_context(y, forecast.mean(0), forecast.std(0))
        posterior = self.flow
        if (posterior.theta_dim, posterior.x_dim) != (forecast[0].numel(), context.numel()):
            raise ValueError(
                f"{self.posterior} was trained for states of {posterior.theta_dim} values and contexts of "
                f"{posterior.x_dim} (observations + 2 x state); this case has {forecast[0].numel()} and "
                f"{context.numel()}")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        cpu_generator = torch.Generator().manual_seed(seed)
        draws = posterior.sample(members, context.reshape(1, -1).float().cpu(), generator=cpu_generator)
        return draws.reshape(members, *state_shape).to(device=forecast.device, dtype=forecast.dtype)
