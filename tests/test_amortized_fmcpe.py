"""FMCPE on a misspecified linear-Gaussian task with an analytic real-data posterior."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

from enff.amortized import FMCPE, FMPE, NetworkConfig, Posterior, SolverConfig, TrainingConfig
from enff.amortized.fmcpe import MIN_CALIBRATION, small_set_training, source_map
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


def test_widened_parameter_source_matches_the_real_posterior(fitted, tmp_path):
    """parameter_source_noise > 0: samples and the kernel log_prob estimate against the analytic posterior."""
    stage, _ = fitted
    gen = torch.Generator().manual_seed(0)
    tc = torch.randn((200, 1), generator=gen)
    widened = FMCPE(stage, network=NetworkConfig(hidden_features=(32, 32)), solver=FAST, n_source=16, n_monte_carlo=16,
                    parameter_source_noise=1.0).fit(tc, TASK.simulate(tc, gen), TASK.simulate(tc, gen, real=True))
    theta = torch.randn((200, 1), generator=gen)
    y = TASK.simulate(theta, gen, real=True)
    truth = TASK.true_posterior(y)
    s = widened.sample(100, y, generator=gen)
    assert float(((s.mean(dim=0) - truth.mean) ** 2).mean().sqrt()) < 0.1
    assert abs(float((s.std(dim=0).squeeze() / truth.stddev.squeeze()).mean()) - 1) < 0.15
    grid = torch.linspace(-3, 3, 241)[:, None]
    y1 = torch.tensor([[0.9]])
    density = widened.log_prob(grid, y1, generator=torch.Generator().manual_seed(2)).exp()
    true_density = TASK.true_posterior(y1).log_prob(grid).squeeze().exp()
    step = float(grid[1, 0] - grid[0, 0])
    assert abs(float(density.sum()) * step - 1) < 0.1
    assert 0.5 * float((density - true_density).abs().sum()) * step < 0.2  # total variation distance
    widened.save(tmp_path / "w.pt")
    loaded = Posterior.load(tmp_path / "w.pt")
    assert loaded.parameter_source_noise == 1.0
    assert torch.equal(widened.sample(5, y1, generator=torch.Generator().manual_seed(3)),
                       loaded.sample(5, y1, generator=torch.Generator().manual_seed(3)))


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
    for tau in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="parameter_source_noise"):
            FMCPE(stage, parameter_source_noise=tau)


def test_affine_source_recovers_a_linear_gaussian_p_x_given_y():
    gen = torch.Generator().manual_seed(4)
    y = torch.randn((4000, 3), generator=gen)
    x = torch.tensor([0.5, -1.0, 2.0]) * y + torch.tensor([1.0, 0.0, -0.5]) \
        + torch.tensor([0.1, 0.4, 1.0]) * torch.randn((4000, 3), generator=gen)
    slope, intercept, spread = source_map(x, y, "affine", None)
    assert torch.allclose(slope, torch.tensor([0.5, -1.0, 2.0]), atol=0.05)
    assert torch.allclose(intercept, torch.tensor([1.0, 0.0, -0.5]), atol=0.05)
    assert torch.allclose(spread, torch.tensor([0.1, 0.4, 1.0]), rtol=0.05)
    slope, intercept, spread = source_map(x, y, "identity", 0.3)
    assert torch.equal(slope, torch.ones(3)) and torch.equal(intercept, torch.zeros(3))
    assert torch.equal(spread, torch.full((3,), 0.3))


def test_small_set_training_counts_patience_in_steps():
    tiny, large = small_set_training(10), small_set_training(1000)
    assert tiny.patience == 600  # 8 training pairs: one step per epoch
    assert large.patience == 60  # 800 training pairs, 12 steps per epoch: 60 epochs already exceed 600 steps
    assert tiny.max_epochs >= 3000


def test_repeated_measurement_posterior_matches_gaussian_conditioning():
    task = ShiftedGaussianTask(dim=2, noise=0.7, scale=1.3, shift=0.2, repeats=4)
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn((3, 2), generator=gen)
    y = task.simulate(theta, gen, real=True)
    assert y.shape == (3, 8)
    # Joint Gaussian of (theta, y): y = A theta + shift + noise, A stacks scale * I four times.
    a = task.scale * torch.eye(2).repeat(4, 1)
    cov_yy = a @ a.T + task.noise**2 * torch.eye(8)
    gain = a.T @ torch.linalg.inv(cov_yy)
    mean = (gain @ (y - task.shift).T).T
    cov = torch.eye(2) - gain @ a
    post = task.true_posterior(y)
    assert torch.allclose(post.mean, mean, atol=1e-5)
    assert torch.allclose(post.covariance_matrix[0], cov, atol=1e-5)


@pytest.mark.parametrize("settings", [{"condition": "data", "parameter_source": "simulated",
                                       "observation_source": "identity", "source_noise": 0.1}])
def test_published_variant_runs_and_roundtrips(fitted, settings, tmp_path):
    stage, _ = fitted
    gen = torch.Generator().manual_seed(6)
    tc = torch.randn((40, 1), generator=gen)
    post = FMCPE(stage, network=NetworkConfig(hidden_features=(16,)), solver=FAST, n_source=4,
                 training=TrainingConfig(max_epochs=5, progress=False), **settings).fit(
        tc, TASK.simulate(tc, gen), TASK.simulate(tc, gen, real=True))
    y = torch.tensor([[0.3], [-0.5]])
    post.save(tmp_path / "p.pt")
    a = post.sample(10, y, generator=torch.Generator().manual_seed(1))
    b = Posterior.load(tmp_path / "p.pt").sample(10, y, generator=torch.Generator().manual_seed(1))
    assert a.shape == (10, 2, 1) and torch.equal(a, b)
    with pytest.raises(ValueError, match="condition"):
        FMCPE(stage, condition="other")
