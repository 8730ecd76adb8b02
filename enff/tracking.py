"""Per-cycle detection of a filter that has lost track of the truth (twin experiments, where it is known).

Two symptoms are checked every cycle; a symptom present in each of the last :data:`WINDOW` cycles sets
its bit in the run file's ``lost_track(time)`` flag:

* :data:`OVERCONFIDENT` (1): the analysis RMSE exceeds :data:`RATIO_LIMIT` = 3 times the RMSE its
  spread predicts, ``sqrt(1 + 1/N) * spread`` (the error of an N-member mean when the truth is
  statistically one more member). For a consistent ensemble ``rmse^2 / ((1 + 1/N) spread^2)`` is
  distributed like ``chi^2_nu / nu``, nu being the number of effectively independent errors in the
  state; above 9 it has probability 0.3 % even for nu = 1 and 1e-4 for nu = 2, so ten cycles in a row
  do not happen by chance. Measured on Lorenz-96 (d = 40, 2,000 cycles each), tuned LETKF, ETKF and
  EnKF never exceed 2.3 and exceed 2 for at most one cycle in a row, while the README's ETKF with
  N = 20 (inflation tuned at N = 40) reaches 14-25 once lost. It covers both divergence from the truth
  and spread collapse (a spread far below the error).
* :data:`NO_SKILL` (2): the analysis RMSE exceeds the climatological standard deviation of the truth,
  i.e. the analysis is worse than the climatological mean, which needs no observation at all. The
  climatological std is estimated each cycle by the truth's std over the state: right for the
  statistically homogeneous models (Lorenz-96, Kuramoto-Sivashinsky, Navier-Stokes), too large, so
  the test is conservative, for states mixing variables of different means (Lorenz-63). A free-running
  ensemble sits at about this level, its mean tending to the climatological mean.

The flag of a cycle depends only on the scores of the cycles up to it, which the run file holds, so a
resumed run rebuilds the streaks from the file (:meth:`TrackMonitor.replay`) and writes the same flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["NO_SKILL", "OVERCONFIDENT", "RATIO_LIMIT", "TrackMonitor", "WINDOW", "describe", "truth_scale"]

OVERCONFIDENT, NO_SKILL = 1, 2
#: Analysis RMSE over the RMSE predicted by the spread above which a cycle is overconfident.
RATIO_LIMIT = 3.0
#: Consecutive cycles a symptom must last before it is flagged.
WINDOW = 10
_MEANINGS = {
    OVERCONFIDENT: f"analysis RMSE above {RATIO_LIMIT:g} x the RMSE its spread predicts (spread collapse or divergence)",
    NO_SKILL: "analysis RMSE above the climatological std of the truth (no better than climatology)",
}


def truth_scale(truth: np.ndarray) -> float:
    """Climatological std estimate of one truth state ``(*state)``: its population std over the state,
    computed in float64 (the same arithmetic on the live state and on the state read back from the file)."""
    return float(np.std(np.asarray(truth, dtype=np.float64).ravel()))


def describe(flags: int) -> str:
    """The symptoms set in ``flags``, in words."""
    return "; ".join(text for bit, text in _MEANINGS.items() if flags & bit)


@dataclass
class TrackMonitor:
    """Streaks of the two symptoms over the cycles seen so far, for an ensemble of ``members`` members."""

    members: int
    window: int = WINDOW
    ratio_limit: float = RATIO_LIMIT
    _streaks: dict[int, int] = field(default_factory=lambda: {OVERCONFIDENT: 0, NO_SKILL: 0})

    def symptoms(self, rmse: float, spread: float, truth_std: float) -> int:
        """Bits of the symptoms present in one cycle (analysis ``rmse`` and ``spread``, state units)."""
        bits = 0
        if rmse > self.ratio_limit * np.sqrt(1.0 + 1.0 / self.members) * spread:
            bits |= OVERCONFIDENT
        if rmse > truth_std:
            bits |= NO_SKILL
        return bits

    def update(self, rmse: float, spread: float, truth_std: float) -> int:
        """Add the next cycle; returns its ``lost_track`` flag (bits of the symptoms lasting ``window`` cycles)."""
        bits = self.symptoms(rmse, spread, truth_std)
        flags = 0
        for bit in self._streaks:
            self._streaks[bit] = self._streaks[bit] + 1 if bits & bit else 0
            if self._streaks[bit] >= self.window:
                flags |= bit
        return flags

    def replay(self, rmse: np.ndarray, spread: np.ndarray, truth_std: np.ndarray) -> None:
        """Rebuild the streaks from earlier cycles' scores ``(cycle,)``, oldest first (the last ``window``
        cycles are enough)."""
        for values in zip(rmse[-self.window:], spread[-self.window:], truth_std[-self.window:]):
            self.update(*(float(v) for v in values))
