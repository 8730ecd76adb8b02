"""Monte Carlo marginal velocity: weights and velocity against a direct float64 computation."""

import pytest
import torch

from enff.filters.paths import F2PPath, OTPath
from enff.filters.velocity import (
    marginal_velocity,
    mixture_weights,
    squared_distances,
    weight_summary,
)

from helpers import CUDA


def _direct(path, t, x, x1, x0, log_prior=None):
    """Float64 reference: explicit P x M x d differences, softmax and weighted conditional velocities."""
    x, x1 = x.double(), x1.double()
    x0 = None if x0 is None else x0.double()
    mu, dmu = path.mean(t, x0, x1), path.mean_derivative(t, x0, x1)
    sigma, rate = path.std(t), path.std_derivative(t) / path.std(t)
    diff = x[:, None, :] - mu[None, :, :]
    logits = -(diff**2).sum(-1) / (2 * sigma**2)
    if log_prior is not None:
        logits = logits + log_prior.double()
    w = torch.softmax(logits, dim=1)
    u = rate * diff + dmu[None]
    return (w[..., None] * u).sum(1), w


def _ensembles(p, m, d, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(p, d, generator=g, dtype=dtype, device=device)
    x1 = 0.6 * torch.randn(m, d, generator=g, dtype=dtype, device=device) + 0.3
    x0 = 0.6 * torch.randn(m, d, generator=g, dtype=dtype, device=device) - 0.2
    return x, x1, x0


@pytest.mark.parametrize("path", [OTPath(sigma_min=0.05), F2PPath(sigma_min=0.8)], ids=["ot", "f2p"])
@pytest.mark.parametrize("t", [0.0, 0.45, 0.9])
@pytest.mark.parametrize("prior", [False, True])
def test_velocity_and_weights_match_direct_float64(path, t, prior):
    x, x1, x0 = _ensembles(p=7, m=5, d=8)
    log_prior = torch.linspace(-2.0, 1.0, 5, dtype=torch.float64) if prior else None
    estimate = marginal_velocity(path, t, x, x1, x0, log_prior=log_prior)
    velocity, weights = _direct(path, t, x, x1, x0, log_prior)
    assert estimate.velocity.shape == (7, 8) and estimate.weights.shape == (7, 5)
    torch.testing.assert_close(estimate.weights, weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(estimate.velocity, velocity, rtol=1e-10, atol=1e-10)


def test_weights_are_not_trivial_in_the_direct_comparison():
    """Guard: the comparison above is made where the weights are neither uniform nor one-hot."""
    x, x1, x0 = _ensembles(p=7, m=5, d=8)
    _, weights = _direct(OTPath(sigma_min=0.05), 0.45, x, x1, None)
    assert 0.3 < weights.max(dim=1).values.mean() < 0.95


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
def test_chunking_does_not_change_distances(chunk):
    x, x1, x0 = _ensembles(p=4, m=3, d=8)
    reference = ((x[:, None] - (0.3 * x1 + 0.7 * x0)[None]) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(x, x1, x0, a=0.3, b=0.7, chunk=chunk), reference)


def test_float32_distances_and_weights_are_accurate_at_one_million_dimensions():
    """Members with a large common offset (the hard case for ``|x|^2 + |mu|^2 - 2 x.mu``) at d = 1e6."""
    d, p, m = 1_000_000, 3, 4
    g = torch.Generator().manual_seed(11)
    offset = 50.0 * torch.randn(d, generator=g, dtype=torch.float64)
    x1 = offset + torch.randn(m, d, generator=g, dtype=torch.float64)
    x = offset + 0.9 * torch.randn(p, d, generator=g, dtype=torch.float64)
    a = 0.8
    reference = torch.stack([((x - a * x1[j]) ** 2).sum(dim=1) for j in range(m)], dim=1)
    x32, x132 = x.float(), x1.float()
    # reference from the float32-rounded inputs, so only the arithmetic is compared
    reference32 = torch.stack([((x32.double() - a * x132[j].double()) ** 2).sum(dim=1) for j in range(m)], dim=1)
    got = squared_distances(x32, x132, a=a)
    assert got.dtype == torch.float64
    relative = ((got - reference32).abs() / reference32).max().item()
    assert relative < 1e-6, relative
    # the naive float32 expansion without centring is far off on the same data: the test can fail
    mu = a * x132
    naive = (x32 * x32).sum(1)[:, None] + (mu * mu).sum(1)[None] - 2 * x32 @ mu.T
    assert ((naive.double() - reference32).abs() / reference32).max().item() > 100 * relative
    # weights with logit spreads of order one: sigma^2 set by the spread of the reference distances
    sigma = float((reference.max() - reference.min()).sqrt()) / 2
    torch.testing.assert_close(
        mixture_weights(got, sigma), torch.softmax(-reference / (2 * sigma**2), dim=1), rtol=0, atol=1e-4
    )
    weights = torch.softmax(-reference / (2 * sigma**2), dim=1)
    assert weights.max() < 0.999 and weights.min() > 1e-4


def test_float32_velocity_matches_float64():
    x, x1, x0 = _ensembles(p=6, m=6, d=4096, seed=3)
    path = F2PPath(sigma_min=0.5)
    x1 = x + 0.4 * torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
    v64 = marginal_velocity(path, 0.6, x, x1, x0).velocity
    v32 = marginal_velocity(path, 0.6, x.float(), x1.float(), x0.float()).velocity
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-4)


def test_weight_summary():
    weights = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1]], dtype=torch.float64)
    largest, distinct = weight_summary(weights)
    assert largest == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert distinct == 2


def test_shape_errors_name_the_argument():
    x, x1, x0 = _ensembles(p=3, m=2, d=5)
    with pytest.raises(ValueError, match="x1"):
        squared_distances(x, x1[:, :4])
    with pytest.raises(ValueError, match="x0"):
        squared_distances(x, x1, None, b=0.5)
    with pytest.raises(ValueError, match="log_prior"):
        mixture_weights(torch.zeros(3, 2), 1.0, torch.zeros(3))


@CUDA
def test_cuda_matches_cpu():
    x, x1, x0 = _ensembles(p=5, m=5, d=300, dtype=torch.float32)
    path = OTPath(sigma_min=0.05)
    cpu = marginal_velocity(path, 0.5, x, x1)
    gpu = marginal_velocity(path, 0.5, x.cuda(), x1.cuda())
    assert gpu.velocity.device.type == "cuda"
    torch.testing.assert_close(gpu.velocity.cpu(), cpu.velocity, rtol=1e-4, atol=1e-4)
