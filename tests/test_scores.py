"""Scores against scoringrules (an independent, well-kept implementation) and direct formulas."""

import numpy as np
import pytest
import scoringrules as sr
import torch

from enff import scores


@pytest.fixture
def sample():
    gen = torch.Generator().manual_seed(3)
    ens = torch.randn(12, 7, 5, generator=gen, dtype=torch.float64)
    truth = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    return ens, truth


def test_crps_matches_scoringrules_fair_estimator(sample):
    ens, truth = sample
    expected = sr.crps_ensemble(truth.numpy(), np.moveaxis(ens.numpy(), 0, -1), estimator="fair").mean()
    assert float(scores.crps_fair(ens, truth)) == pytest.approx(expected, rel=1e-12)


def test_energy_score_matches_scoringrules_fair_estimator(sample):
    ens, truth = sample
    flat = ens.reshape(12, -1).numpy()
    expected = sr.es_ensemble(truth.reshape(-1).numpy(), flat, estimator="fair")
    assert float(scores.energy_score_fair(ens, truth)) == pytest.approx(float(expected), rel=1e-10)


def test_rmse_and_spread_direct(sample):
    ens, truth = sample
    e, t = ens.numpy(), truth.numpy()
    assert float(scores.rmse(ens, truth)) == pytest.approx(np.sqrt(np.mean((e.mean(0) - t) ** 2)))
    assert float(scores.spread(ens)) == pytest.approx(np.sqrt(np.mean(e.var(0, ddof=1))))


def test_rank_counts_sum_and_extremes():
    ens = torch.arange(5, dtype=torch.float64)[:, None].repeat(1, 4)  # members 0..4 at every point
    truth = torch.tensor([-1.0, 2.5, 10.0, 0.5], dtype=torch.float64)
    counts = scores.rank_counts(ens, truth)
    assert counts.tolist() == [1, 1, 0, 1, 0, 1]
    assert int(counts.sum()) == 4


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="disagree"):
        scores.rmse(torch.zeros(3, 4), torch.zeros(5))
