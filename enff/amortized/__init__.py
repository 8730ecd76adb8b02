"""Learned amortized posteriors trained by flow matching (FMPE, FMCPE).

>>> from enff.amortized import FMPE, FMCPE
>>> posterior = FMPE(prior).fit(theta, x)                 # simulations: theta (n, d), x (n, x_dim)
>>> corrected = FMCPE(posterior).fit(theta_c, x_c, y_c)   # calibration triples
>>> corrected.sample(1000, y_obs).shape                   # (1000, batch, d)
"""

from .c2st import c2st
from .calibration import expected_coverage, sbc_ranks
from .fmcpe import FMCPE, FMCPEPosterior
from .fmpe import FMPE, FMPEPosterior
from .networks import EmbeddingConfig, NetworkConfig
from ..integrate import SolverConfig
from .posterior import Posterior, load_posterior
from .training import TrainingConfig

__all__ = [
    "FMPE",
    "FMCPE",
    "FMPEPosterior",
    "FMCPEPosterior",
    "Posterior",
    "load_posterior",
    "NetworkConfig",
    "EmbeddingConfig",
    "TrainingConfig",
    "SolverConfig",
    "c2st",
    "sbc_ranks",
    "expected_coverage",
]
