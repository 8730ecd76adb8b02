"""Probability paths: conditional velocities against finite differences of the mean and std."""

import pytest
import torch

from enff.filters.paths import F2PPath, OTPath

PATHS = [OTPath(sigma_min=0.05), F2PPath(sigma_min=0.05)]
TIMES = [0.0, 0.3, 0.77, 1.0]


def _ends(seed: int = 0, m: int = 4, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(m, d, generator=g, dtype=torch.float64) * 2.0 + 1.0
    x0 = torch.randn(m, d, generator=g, dtype=torch.float64) - 3.0
    return x0, x1


def _central(f, t: float, h: float = 1e-6):
    lo, hi = max(t - h, 0.0), min(t + h, 1.0)
    return (f(hi) - f(lo)) / (hi - lo)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("t", TIMES)
def test_derivatives_match_finite_differences(path, t):
    x0, x1 = _ends()
    torch.testing.assert_close(
        path.mean_derivative(t, x0, x1), _central(lambda s: path.mean(s, x0, x1), t), rtol=1e-7, atol=1e-7
    )
    assert path.std_derivative(t) == pytest.approx(_central(path.std, t), abs=1e-8)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("t", TIMES)
def test_conditional_velocity_moves_conditional_samples(path, t):
    """``u(x_t) = d/dt x_t`` along the conditional sample ``x_t = mu_t + sigma_t z`` (fixed ``z``)."""
    x0, x1 = _ends(1)
    z = torch.randn(x1.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def sample(s: float) -> torch.Tensor:
        return path.mean(s, x0, x1) + path.std(s) * z

    torch.testing.assert_close(
        path.conditional_velocity(sample(t), t, x0, x1), _central(sample, t), rtol=1e-6, atol=1e-6
    )


def test_end_points():
    x0, x1 = _ends(3)
    ot, f2p = OTPath(sigma_min=0.01), F2PPath(sigma_min=0.01)
    torch.testing.assert_close(ot.mean(1.0, None, x1), x1)
    assert ot.std(0.0) == 1.0 and ot.std(1.0) == pytest.approx(0.01)
    torch.testing.assert_close(f2p.mean(0.0, x0, x1), x0)
    torch.testing.assert_close(f2p.mean(1.0, x0, x1), x1)
    assert f2p.std(0.4) == 0.01


def test_source_samplers():
    x0, x1 = _ends(4, m=3, d=20000)
    g = torch.Generator().manual_seed(5)
    ot = OTPath(sigma_min=0.01).sample_source(x1, None, g)
    assert ot.shape == x1.shape and ot.dtype == x1.dtype
    assert ot.mean().item() == pytest.approx(0.0, abs=0.02) and ot.std().item() == pytest.approx(1.0, abs=0.02)
    f2p = F2PPath(sigma_min=0.01).sample_source(x1, x0, g)
    assert (f2p - x0).std().item() == pytest.approx(0.01, rel=0.02)


def test_validation_names_the_problem():
    with pytest.raises(ValueError, match="sigma_min"):
        OTPath(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        F2PPath(sigma_min=1.5)
    _, x1 = _ends()
    with pytest.raises(ValueError, match="x0"):
        F2PPath().mean(0.5, None, x1)
    with pytest.raises(ValueError, match="x0"):
        F2PPath().sample_source(x1, x1[:2], torch.Generator())
