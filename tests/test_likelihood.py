"""The written-out likelihood gradient of pointwise operators against the vector-Jacobian product through h."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enff.filters.likelihood import autograd_likelihood_gradient, likelihood_gradient
from enff.models.base import Grid
from enff.observations.base import Compose, ObservationOperator, flatten_members
from enff.observations.operators import ATan, Identity, Indices, Power, Subsample, Tanh
from enff.observations.space import ObservationSpace


def _space(operator: ObservationOperator, shape: tuple[int, ...]) -> ObservationSpace:
    axes = tuple(np.arange(n, dtype=np.float64) for n in shape)
    grid = Grid(axes, tuple(float(n) for n in shape))
    n_obs = operator.output_size(shape)
    std = torch.linspace(0.3, 1.1, n_obs, dtype=torch.float64)
    return ObservationSpace(operator, std, grid, shape)


OPERATORS = {
    "identity": (Identity(), (7,)),
    "atan": (ATan(), (7,)),
    "tanh": (Tanh(), (3, 4)),
    "power 1": (Power(1.0), (7,)),
    "power 2.5": (Power(2.5), (7,)),
    "subsample then atan": (Subsample(every=2) | ATan(), (4, 6)),
    "atan then power": (ATan() | Power(3.0), (7,)),
    "repeated indices then tanh": (Indices((5, 0, 5, 2)) | Tanh(), (7,)),
    "indices alone": (Indices((6, 1, 1)), (7,)),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_written_out_gradient_equals_autograd(name):
    operator, shape = OPERATORS[name]
    assert operator.pointwise_chain() is not None
    space = _space(operator, shape)
    gen = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(4, int(np.prod(shape)), generator=gen, dtype=torch.float64)
    x[0, 0] = 0.0  # the power's derivative at 0
    y = torch.randn(space.n_obs, generator=gen, dtype=torch.float64)
    written = likelihood_gradient(x, y, space)
    torch.testing.assert_close(written, autograd_likelihood_gradient(x, y, space), rtol=1e-12, atol=1e-12)
    assert written.dtype == x.dtype and written.shape == x.shape


def test_written_out_gradient_in_float32_and_with_masked_observations():
    space = _space(Subsample(every=3) | ATan(), (12,))
    x = torch.linspace(-2, 2, 24, dtype=torch.float32).reshape(2, 12)
    y = torch.tensor([0.1, float("nan"), -0.2, 0.4], dtype=torch.float32)
    y_obs, observed = space.observed(y)
    written = likelihood_gradient(x, y_obs, observed)
    assert written.dtype == torch.float32
    torch.testing.assert_close(written, autograd_likelihood_gradient(x, y_obs, observed))
    assert torch.all(written[:, 3] == 0)  # the masked observation's element has no force
    unobserved = [k for k in range(12) if k % 3]
    assert torch.all(written[:, unobserved] == 0)


def test_written_out_gradient_does_not_write_into_the_particles():
    space = _space(Identity(), (5,))
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    likelihood_gradient(x, torch.zeros(5, dtype=torch.float64), space)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


class _NeighbourSum(ObservationOperator):
    """``h(x)_j = x_j + x_{j+1}`` (periodic): mixes elements, so no pointwise form."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = flatten_members(x)
        return flat + torch.roll(flat, -1, dims=1)

    def source_index(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.arange(int(np.prod(shape)))


def test_operators_that_mix_elements_go_through_autograd():
    operator = _NeighbourSum()
    assert operator.pointwise_chain() is None and Compose(operator, ATan()).pointwise_chain() is None
    space = _space(operator, (6,))
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(6, dtype=torch.float64)
    residual = (x + torch.roll(x, -1, dims=1)) / space.std**2
    torch.testing.assert_close(likelihood_gradient(x, y, space), residual + torch.roll(residual, 1, dims=1))
