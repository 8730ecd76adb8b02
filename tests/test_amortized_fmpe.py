"""FMPE: posterior accuracy against analytic and sbibm reference posteriors, save/load, bad input."""

import time
import warnings

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

from enff.amortized import FMPE, NetworkConfig, Posterior, SolverConfig, TrainingConfig, c2st, expected_coverage
from enff.amortized.tasks import ShiftedGaussianTask, sbibm_task

SMALL = NetworkConfig(hidden_features=(64, 64, 64))


@pytest.fixture(scope="module")
def gaussian():
    """FMPE on the linear-Gaussian simulator x = theta + 0.3 eps, prior N(0, I_2): analytic posterior."""
    task = ShiftedGaussianTask()
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn((3000, 2), generator=gen)
    estimator = FMPE(task.prior, network=SMALL, time_prior_exponent=0.0,
                     training=TrainingConfig(batch_size=128, max_epochs=80, patience=15, progress=False))
    return task, estimator.fit(theta, task.simulate(theta, gen))


def analytic(task, x):
    var = 1 / (1 + 1 / task.noise**2)
    return torch.distributions.MultivariateNormal(var * x / task.noise**2, var * torch.eye(task.dim))


def test_samples_and_log_prob_match_the_analytic_posterior(gaussian):
    task, post = gaussian
    x = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.0]])
    samples = post.sample(2000, x, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (2000, 3, 2)
    truth = analytic(task, x)
    assert torch.allclose(samples.mean(dim=0), truth.mean, atol=0.04)
    assert torch.allclose(samples.std(dim=0), torch.full((3, 2), truth.variance[0, 0].sqrt().item()), rtol=0.12)
    points = samples[:100]
    logp = post.log_prob(points, x, generator=torch.Generator().manual_seed(2))
    assert logp.shape == (100, 3)
    assert float((logp - truth.log_prob(points)).abs().mean()) < 0.15


def test_coverage_of_the_learned_posterior(gaussian):
    task, post = gaussian
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn((150, 2), generator=gen)
    samples = post.sample(100, task.simulate(theta, gen), generator=gen, solver=SolverConfig(n_steps=8))
    coverage = expected_coverage(samples, theta, torch.tensor([0.5, 0.9]))
    assert torch.allclose(coverage, torch.tensor([[0.5], [0.9]]).expand(2, 2), atol=0.12)


def test_fixed_step_and_adaptive_sampling_agree(gaussian):
    _, post = gaussian
    x = torch.tensor([[0.5, -1.0]])
    a = post.sample(200, x, generator=torch.Generator().manual_seed(4), solver=SolverConfig(n_steps=30))
    b = post.sample(200, x, generator=torch.Generator().manual_seed(4),
                    solver=SolverConfig(method="dopri5", rtol=1e-6, atol=1e-6))
    assert float((a - b).abs().max()) < 1e-3


def test_save_load_roundtrip(gaussian, tmp_path):
    _, post = gaussian
    path = tmp_path / "post.pt"
    post.save(path)
    loaded = Posterior.load(path)
    x = torch.tensor([[0.1, 0.2]])
    a = post.sample(50, x, generator=torch.Generator().manual_seed(5))
    b = loaded.sample(50, x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.allclose(post.log_prob(a, x), loaded.log_prob(a, x))
    assert loaded.solver == post.solver and loaded.network == post.network
    (tmp_path / "bad.pt").write_bytes(b"")
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an enff amortized posterior"):
        Posterior.load(tmp_path / "bad.pt")


def test_bad_input_is_named(gaussian):
    task, post = gaussian
    estimator = FMPE(task.prior, network=SMALL, training=TrainingConfig(max_epochs=1, progress=False))
    with pytest.raises(ValueError, match=r"theta must have shape \(batch, 2\)"):
        estimator.fit(torch.zeros(10, 3), torch.zeros(10, 2))
    with pytest.raises(ValueError, match="same number of rows"):
        estimator.fit(torch.zeros(10, 2), torch.zeros(9, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        post.sample(5, torch.zeros(2))
    with pytest.raises(ValueError, match="theta must have shape"):
        post.log_prob(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="event_shape"):
        FMPE(torch.distributions.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="at least 2 finite"), pytest.warns(RuntimeWarning, match="dropped 5 of 5"):
        estimator.fit(torch.full((5, 2), float("nan")), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="validation_repeats must be >= 1"):
        TrainingConfig(validation_repeats=0)


def test_nan_simulations_are_dropped_and_counted():
    task = ShiftedGaussianTask()
    gen = torch.Generator().manual_seed(6)
    theta = torch.randn((40, 2), generator=gen)
    x = task.simulate(theta, gen)
    x[[3, 7, 11], 1] = float("nan")
    estimator = FMPE(task.prior, network=SMALL, training=TrainingConfig(max_epochs=1, progress=False))
    with pytest.warns(RuntimeWarning, match="dropped 3 of 40 rows"):
        post = estimator.fit(theta, x)
    assert torch.isfinite(post.x_scaler.mean).all()


@pytest.fixture(scope="module")
def two_moons():
    task = sbibm_task("two_moons")
    theta, x = task.simulations(3000, torch.Generator().manual_seed(7))
    estimator = FMPE(task.prior, network=SMALL, time_prior_exponent=0.0,
                     training=TrainingConfig(batch_size=64, max_epochs=60, patience=15, progress=False))
    return estimator.fit(theta, x)


def test_bounded_prior_rejects_and_log_prob_is_minus_inf_outside(two_moons):
    x = torch.tensor([[0.0, 0.0], [0.3, 0.3]])
    samples = two_moons.sample(500, x, generator=torch.Generator().manual_seed(8))
    assert bool((samples.abs() <= 1).all())
    logp = two_moons.log_prob(torch.tensor([[1.5, 0.0], [0.0, 0.0]]), x[:1])
    assert logp[0] == -torch.inf and torch.isfinite(logp[1])


@pytest.fixture(scope="module")
def tiny_box():
    """A tiny FMPE on x = theta + 0.1 eps with the prior U([-1, 1]^2), trained for a few epochs (seconds)."""
    prior = torch.distributions.Independent(torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1)
    gen = torch.Generator().manual_seed(0)
    theta = 2 * torch.rand(400, 2, generator=gen) - 1
    estimator = FMPE(prior, network=NetworkConfig(hidden_features=(16, 16)),
                     training=TrainingConfig(max_epochs=5, progress=False))
    return estimator.fit(theta, theta + 0.1 * torch.randn(400, 2, generator=gen))


def test_sampling_far_from_the_simulations_stops_at_once_naming_the_acceptance_rate(tiny_box):
    absurd = torch.tensor([[1e3, -1e3]])
    gen = torch.Generator().manual_seed(1)
    assert not bool(tiny_box.prior.support.check(tiny_box.sample(200, absurd, generator=gen, reject=False)).any())
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"0 of 200 draws accepted \(acceptance rate 0.00%\).*incomplete='nan'"):
        tiny_box.sample(200, absurd, generator=gen)
    assert time.perf_counter() - start < 5  # one draw, no redraw loop


def test_incomplete_nan_returns_what_was_accepted(tiny_box):
    x = torch.tensor([[0.2, -0.3], [1e3, -1e3]])  # near the simulations, absurd
    samples = tiny_box.sample(100, x, generator=torch.Generator().manual_seed(2), incomplete="nan")
    assert samples.shape == (100, 2, 2)
    assert bool(tiny_box.prior.support.check(samples[:, 0]).all())
    assert bool(samples[:, 1].isnan().all())
    with pytest.raises(ValueError, match="incomplete must be"):
        tiny_box.sample(10, x, incomplete="partial")


def test_two_moons_c2st_against_sbibm_reference(two_moons):
    pytest.importorskip("sbibm")
    pytest.importorskip("sklearn")
    from enff.amortized.tasks import load_reference

    ref = load_reference("two_moons", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn convergence chatter
        samples = two_moons.sample(500, ref.observation, generator=torch.Generator().manual_seed(9),
                                   solver=SolverConfig(n_steps=10))[:, 0]
        score = c2st(samples, ref.samples[:500])
        prior_score = c2st(2 * torch.rand((500, 2), generator=torch.Generator().manual_seed(10)) - 1,
                           ref.samples[:500])
    assert prior_score > 0.9  # the test can fail: the prior is easy to tell from the posterior
    assert score < 0.75


def test_training_is_reproducible_from_the_seed_alone():
    # weights are initialised from FMPE.seed, not from the global torch generator
    task = ShiftedGaussianTask()
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn((200, 2), generator=gen)
    x = task.simulate(theta, gen)
    estimator = FMPE(task.prior, network=SMALL, seed=5, training=TrainingConfig(max_epochs=2, progress=False))
    posts = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        posts.append(estimator.fit(theta, x))
    for a, b in zip(posts[0].flow.parameters(), posts[1].flow.parameters()):
        assert torch.equal(a, b)
    other = FMPE(task.prior, network=SMALL, seed=6, training=TrainingConfig(max_epochs=2, progress=False)).fit(theta, x)
    assert not all(torch.equal(a, b) for a, b in zip(posts[0].flow.parameters(), other.flow.parameters()))
