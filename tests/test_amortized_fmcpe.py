"""FMCPE on a misspecified linear-Gaussian task with an analytic real-data posterior."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

from enff.amortized import FMCPE, FMPE, NetworkConfig, Posterior, SolverConfig, TrainingConfig
from enff.amortized.fmcpe import MIN_CALIBRATION
from enff.amortized.tasks import ShiftedGaussianTask

TASK = ShiftedGaussianTask(dim=1, noise=0.3, scale=1.5, shift=0.8)
FAST = SolverConfig(n_steps=10)


@pytest.fixture(scope="module")
def fitted():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn((2000, 1), generator=gen)
    stage = FMPE(TASK.prior, network=NetworkConfig(hidden_features=(32, 32)), solver=FAST, time_prior_exponent=0.0,
                 training=TrainingConfig(max_epochs=60, patience=10, progress=False)).fit(theta, TASK.simulate(theta, gen))
    tc = torch.randn((200, 1), generator=gen)
    corrected = FMCPE(stage, network=NetworkConfig(hidden_features=(32, 32)), solver=FAST, n_source=16,
                      n_monte_carlo=16).fit(tc, TASK.simulate(tc, gen), TASK.simulate(tc, gen, real=True))
    return stage, corrected


def test_correction_moves_samples_to_the_real_posterior(fitted):
    stage, corrected = fitted
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn((200, 1), generator=gen)
    y = TASK.simulate(theta, gen, real=True)
    truth = TASK.true_posterior(y)
    errors = {}
    for name, post in (("fmpe", stage), ("fmcpe", corrected)):
        s = post.sample(100, y, generator=gen)
        assert s.shape == (100, 200, 1)
        errors[name] = float(((s.mean(dim=0) - truth.mean) ** 2).mean().sqrt())
    assert errors["fmcpe"] < 0.5 * errors["fmpe"]
    assert errors["fmcpe"] < 0.1


def test_log_prob_estimate_integrates_to_one(fitted):
    _, corrected = fitted
    grid = torch.linspace(-3, 3, 241)[:, None]
    y = torch.tensor([[0.9]])
    logp = corrected.log_prob(grid, y, generator=torch.Generator().manual_seed(2))
    assert logp.shape == (241,)
    mass = float(torch.exp(logp).sum() * (grid[1, 0] - grid[0, 0]))
    assert abs(mass - 1) < 0.1


def test_save_load_roundtrip(fitted, tmp_path):
    _, corrected = fitted
    corrected.save(tmp_path / "c.pt")
    loaded = Posterior.load(tmp_path / "c.pt")
    y = torch.tensor([[0.3], [-0.5]])
    a = corrected.sample(20, y, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(20, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_calibration_input(fitted):
    stage, _ = fitted
    estimator = FMCPE(stage, training=TrainingConfig(max_epochs=1, progress=False))
    small = torch.zeros(MIN_CALIBRATION - 1, 1)
    with pytest.raises(ValueError, match="calibration set too small"):
        estimator.fit(small, small, small)
    with pytest.raises(ValueError, match=r"y must have shape \(batch, 1\)"):
        estimator.fit(torch.zeros(10, 1), torch.zeros(10, 1), torch.zeros(10, 2))
    y = torch.zeros(10, 1)
    y[:6] = float("nan")
    with pytest.raises(ValueError, match="too small"), pytest.warns(RuntimeWarning, match="dropped 6 of 10"):
        estimator.fit(torch.zeros(10, 1), torch.zeros(10, 1), y)
    with pytest.raises(TypeError, match="FMPEPosterior"):
        FMCPE(object())
