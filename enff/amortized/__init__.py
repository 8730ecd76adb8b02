"""Learned amortized posteriors trained by flow matching (FMPE, FMCPE).

>>> from enff.amortized import FMPE, FMCPE
>>> posterior = FMPE(prior).fit(theta, x)                 # simulations: theta (n, d), x (n, x_dim)
>>> corrected = FMCPE(posterior).fit(theta_c, x_c, y_c)   # calibration triples
>>> corrected.sample(1000, y_obs).shape                   # (1000, batch, d)

Fields on periodic grids: :class:`FieldFMPE` trains a translation-equivariant analysis posterior
(:mod:`enff.amortized.field_analysis`) on analyses simulated by :mod:`enff.amortized.field_data`.
"""

from .c2st import c2st
from .calibration import expected_coverage, sbc_ranks
from .field_analysis import FieldFMPE, FieldPosterior
from .field_network import FieldLayout, FieldNetworkConfig
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
    "FieldFMPE",
    "FieldPosterior",
    "FieldLayout",
    "FieldNetworkConfig",
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
