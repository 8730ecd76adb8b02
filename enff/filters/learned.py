"""The learned analysis: an amortized posterior (FMPE or FMCPE) as the analysis step of a cycling run.

The posterior file is one written by ``enff learn`` (or by :meth:`enff.amortized.Posterior.save` on a
posterior trained on :func:`enff.amortized.analysis.analysis_training_set` pairs): a flow over the
flattened state conditioned on the observation and the forecast mean and spread. Each analysis draws the
``N`` members from it at the current context; the forecast members enter only through their mean and
spread (see :mod:`enff.amortized.analysis` for why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from enff.observations.space import ObservationSpace

from .base import Analysis, Filter, register

__all__ = ["LearnedAnalysis"]


@register("learned")
@dataclass(frozen=True)
class LearnedAnalysis(Filter):
    """Analysis ensemble drawn from a trained amortized posterior.

    Attributes
    ----------
    posterior:
        Path of the posterior file (relative to the working directory): tensors and plain data, read
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
        return Analysis(draws.reshape(members, *state_shape).to(device=forecast.device, dtype=forecast.dtype))
