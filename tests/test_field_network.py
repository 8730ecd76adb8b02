"""The field network of the learned analysis: equivariance under grid shifts (1-D and 2-D), masked observations
without influence, any grid size, permutation invariance over members, and a small flow-matching fit that
reaches the Kalman analysis of a linear-Gaussian field problem."""

import math

import pytest
import torch

from enff.amortized import TrainingConfig
from enff.amortized.field_analysis import FieldContext, FieldFMPE, FieldTrainingSet
from enff.amortized.field_network import FieldLayout, FieldNetworkConfig, FieldVelocity
from enff.amortized.networks import EmbeddingConfig, NetworkConfig, seeded_init
from enff.models.base import Grid
from enff.registry import RegistryError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = FieldNetworkConfig(channels=8, dilations=(1, 2), kernel_size=3, set_channels=4, time_features=4,
                            correlation_offsets=(1, -3))


def _net(layout: FieldLayout, config: FieldNetworkConfig = CONFIG) -> FieldVelocity:
    """A randomly initialised network in float64 with non-trivial standardisation buffers."""
    net = seeded_init(0, lambda: FieldVelocity(layout, config)).double()
    gen = torch.Generator().manual_seed(1)
    for buffer in (net.state_mean, net.obs_mean):
        buffer.copy_(torch.randn(buffer.shape, generator=gen, dtype=torch.float64))
    for buffer in (net.state_std, net.obs_std):
        buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen, dtype=torch.float64))
    return net.eval()


def _inputs(layout: FieldLayout, spatial: tuple[int, ...], batch: int = 3, members: int = 5, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, layout.fields, *spatial)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    obs = torch.randn(shape, generator=gen, dtype=torch.float64)
    mask = (torch.rand(shape, generator=gen) < 0.3).double()
    forecast = torch.randn((batch, members, layout.fields, *spatial), generator=gen, dtype=torch.float64)
    t = torch.rand(batch, generator=gen, dtype=torch.float64)
    return z, t, obs, mask, forecast


def _velocity(net, z, t, obs, mask, forecast):
    with torch.no_grad():
        return net(z, t, net.encode(obs, mask, forecast))


@pytest.mark.parametrize("layout, spatial, shifts", [
    (FieldLayout(1, 1), (24,), (5,)),
    (FieldLayout(1, 1), (24,), (-11,)),
    (FieldLayout(1, 2), (12, 10), (3, -4)),
    (FieldLayout(3, 2), (9, 12), (1, 7)),
])
def test_velocity_commutes_with_cyclic_shifts_of_the_grid(layout, spatial, shifts):
    net = _net(layout)
    z, t, obs, mask, forecast = _inputs(layout, spatial)
    dims = tuple(range(-layout.spatial_dims, 0))
    roll = lambda x: torch.roll(x, shifts, dims)  # noqa: E731
    out = _velocity(net, z, t, obs, mask, forecast)
    shifted = _velocity(net, roll(z), t, roll(obs), roll(mask), roll(forecast))
    assert out.shape == z.shape
    assert torch.allclose(shifted, roll(out), rtol=0, atol=1e-12)
    assert not torch.allclose(shifted, out, atol=1e-3)  # the shift does matter: the test can fail


@pytest.mark.parametrize("layout, spatial", [(FieldLayout(1, 1), (20,)), (FieldLayout(2, 2), (8, 8))])
def test_unobserved_values_have_no_influence(layout, spatial):
    net = _net(layout)
    z, t, obs, mask, forecast = _inputs(layout, spatial)
    out = _velocity(net, z, t, obs, mask, forecast)
    hidden = mask == 0
    changed = torch.where(hidden, 100 * torch.randn_like(obs), obs)
    changed[hidden & (torch.rand_like(obs) < 0.5)] = float("nan")
    assert torch.equal(_velocity(net, z, t, changed, mask, forecast), out)
    observed = torch.where(hidden, obs, obs + 1.0)  # a change at an observed point moves the velocity
    assert not torch.allclose(_velocity(net, z, t, observed, mask, forecast), out, atol=1e-3)


def test_members_enter_permutation_invariantly():
    layout = FieldLayout(1, 1)
    net = _net(layout)
    z, t, obs, mask, forecast = _inputs(layout, (16,), members=6)
    permuted = forecast[:, torch.randperm(6, generator=torch.Generator().manual_seed(3))]
    assert torch.allclose(_velocity(net, z, t, obs, mask, permuted), _velocity(net, z, t, obs, mask, forecast),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout, sizes", [
    (FieldLayout(1, 1), [(8,), (40,), (128,)]),
    (FieldLayout(3, 2), [(8, 8), (16, 12)]),
])
def test_one_network_serves_any_grid_size(layout, sizes):
    net = _net(layout)
    for spatial in sizes:
        z, t, obs, mask, forecast = _inputs(layout, spatial)
        assert _velocity(net, z, t, obs, mask, forecast).shape == z.shape


def test_grids_too_small_and_wrong_shapes_are_refused():
    net = _net(FieldLayout(1, 1), FieldNetworkConfig(channels=4, dilations=(1, 8)))
    z, t, obs, mask, forecast = _inputs(FieldLayout(1, 1), (6,))
    with pytest.raises(ValueError, match="smaller than the 8 points"):
        net.encode(obs, mask, forecast)
    z, t, obs, mask, forecast = _inputs(FieldLayout(1, 1), (20,))
    with pytest.raises(ValueError, match=r"forecast must have shape \(batch, member, 1, n\)"):
        net.encode(obs, mask, forecast[:, 0])


def test_layout_of_model_grids():
    import numpy as np

    ring = Grid(axes=(np.arange(40.0),), lengths=(40.0,))
    plane = Grid(axes=(np.arange(8.0), np.arange(8.0)), lengths=(8.0, 8.0))
    fields = Grid(axes=(np.zeros(3), np.arange(8.0), np.arange(8.0)), lengths=(None, 8.0, 8.0))
    assert FieldLayout.of(ring) == FieldLayout(1, 1)
    assert FieldLayout.of(plane) == FieldLayout(1, 2)
    assert FieldLayout.of(fields) == FieldLayout(3, 2)
    with pytest.raises(ValueError, match="periodic 1-D or 2-D grid"):
        FieldLayout.of(Grid(axes=(np.arange(3.0),), lengths=(None,)))  # Lorenz-63
    x = torch.arange(2 * 3 * 8 * 8.0).reshape(2, 3, 8, 8)
    assert torch.equal(FieldLayout(3, 2).to_channels(x), x)
    assert FieldLayout(1, 1).to_channels(torch.zeros(5, 40)).shape == (5, 1, 40)


def test_config_options_are_typed():
    with pytest.raises(RegistryError, match="unknown activation 'swish'"):
        FieldNetworkConfig(activation="swish")
    with pytest.raises(RegistryError, match="unknown embedding kind 'conv'"):
        EmbeddingConfig(kind="conv")
    with pytest.raises(RegistryError, match="unknown activation"):
        NetworkConfig(activation="softplus")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        FieldNetworkConfig(kernel_size=4)
    with pytest.raises(ValueError, match="correlation_offsets must be non-zero"):
        FieldNetworkConfig(correlation_offsets=(1, 0))


def test_correlation_channels_are_the_ensemble_correlations_of_shifted_points():
    layout = FieldLayout(1, 1)
    net = _net(layout)
    _, _, obs, mask, forecast = _inputs(layout, (12,), batch=2, members=7)
    encoded = net.encode(obs, mask, forecast)
    assert encoded.shape == (2, net.context_channels, 12) and net.context_channels == 4 + 4 + 2
    for b in range(2):
        members = forecast[b, :, 0]  # (member, 12); the per-field standardisation does not change correlations
        for channel, j in zip((8, 9), CONFIG.correlation_offsets):
            for k in range(12):
                expected = torch.corrcoef(torch.stack([members[:, k], members[:, (k + j) % 12]]))[0, 1]
                assert torch.allclose(encoded[b, channel, k], expected, atol=1e-10)


OBS_STD, PRIOR_STD, MEMBERS, POINTS = 0.5, 1.0, 10, 16


def _linear_gaussian(n: int, seed: int) -> FieldTrainingSet:
    """Fields of 16 independent points: truth and the forecast members are draws of N(m, 1) around a random
    centre m; every second point is observed, y = truth + N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(seed)
    centre = 2 * torch.randn((n, 1, POINTS), generator=gen)
    truth = centre + PRIOR_STD * torch.randn((n, 1, POINTS), generator=gen)
    forecast = centre[:, None] + PRIOR_STD * torch.randn((n, MEMBERS, 1, POINTS), generator=gen)
    mask = torch.zeros((n, 1, POINTS))
    mask[..., ::2] = 1
    y = truth + OBS_STD * torch.randn(truth.shape, generator=gen)
    return FieldTrainingSet(truth, FieldContext(y * mask, mask, forecast), FieldLayout(1, 1))


def test_a_small_fit_approaches_the_kalman_analysis():
    """Trained on 3000 analyses, the learned posterior's mean is closer to the truth than the forecast mean,
    near the Kalman analysis (the prior N(member mean, (1 + 1/N)) and y), with a spread that matches its error."""
    estimator = FieldFMPE(network=FieldNetworkConfig(channels=16, dilations=(1,), time_features=4),
                          training=TrainingConfig(batch_size=64, max_epochs=25, patience=8, progress=False))
    posterior = estimator.fit(_linear_gaussian(3000, seed=0))
    held_out = _linear_gaussian(200, seed=1)
    draws = posterior.sample(MEMBERS * 4, held_out.context, generator=torch.Generator().manual_seed(2))
    mean = draws.mean(0)
    forecast_mean = held_out.context.forecast.mean(1)
    prior_var = PRIOR_STD**2 * (1 + 1 / MEMBERS)
    gain = prior_var / (prior_var + OBS_STD**2)
    y = held_out.context.observation
    kalman = torch.where(held_out.context.mask > 0, forecast_mean + gain * (y - forecast_mean), forecast_mean)

    def rmse(estimate: torch.Tensor) -> float:
        return float(((estimate - held_out.truth) ** 2).mean().sqrt())

    optimal = math.sqrt((prior_var + gain * OBS_STD**2) / 2)  # expected Kalman RMSE: half the points observed
    assert rmse(forecast_mean) > 1.0 and abs(rmse(kalman) - optimal) < 0.05
    assert rmse(mean) < rmse(kalman) + 0.06  # learned ~ Kalman, well below the prior's 1.05
    assert float(((mean - kalman) ** 2).mean().sqrt()) < 0.2
    observed = held_out.context.mask > 0
    spread = draws.std(0)
    assert abs(float(spread[observed].pow(2).mean().sqrt()) - math.sqrt(gain) * OBS_STD) < 0.1
    assert abs(float(spread[~observed].pow(2).mean().sqrt()) - math.sqrt(prior_var)) < 0.15
