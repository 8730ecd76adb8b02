"""Observation operators, Gaussian error, synthetic and netCDF sources, and the case-file builder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import netCDF4
import numpy as np
import pytest
import torch

from enff.models.base import Grid
from enff.observations.base import Compose, ObservationOperator
from enff.observations import (
    OPERATOR_KEYS,
    ATan,
    GaussianError,
    Identity,
    Indices,
    NetCDFObservations,
    ObservationSpace,
    Patch,
    Power,
    RandomFraction,
    Subsample,
    SyntheticObservations,
    Tanh,
    elementwise_operator,
    operator_from_config,
)

from helpers import DEVICES

DTYPES = [torch.float32, torch.float64]


def grid_1d(n: int = 40) -> Grid:
    return Grid(axes=(np.arange(n) * 0.5,), lengths=(n * 0.5,))


def grid_2d(ny: int = 8, nx: int = 6) -> Grid:
    return Grid(axes=(np.arange(ny) * 2.0, np.arange(nx) * 3.0), lengths=(ny * 2.0, nx * 3.0))


def sample(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return 2.0 * torch.randn(shape, generator=gen, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Pointwise operators: values against numpy, gradients against finite differences and by hand
# --------------------------------------------------------------------------------------------------

POINTWISE = [
    (Identity(), lambda v: v, lambda v: np.ones_like(v)),
    (ATan(), np.arctan, lambda v: 1.0 / (1.0 + v**2)),
    (Tanh(), np.tanh, lambda v: 1.0 - np.tanh(v) ** 2),
    (Power(1.0), lambda v: v, lambda v: np.ones_like(v)),
    (Power(1.5), lambda v: np.sign(v) * np.abs(v) ** 1.5, lambda v: 1.5 * np.abs(v) ** 0.5),
    (Power(2.0), lambda v: v * np.abs(v), lambda v: 2.0 * np.abs(v)),
    (Power(3.0), lambda v: v**3, lambda v: 3.0 * v**2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("op", "f", "df"), POINTWISE, ids=repr)
def test_pointwise_values_and_derivative(op, f, df, dtype, device) -> None:
    x = sample((5, 4, 3), dtype, device).requires_grad_(True)
    with torch.no_grad():
        x[0, 0, :] = torch.tensor([0.0, -1e-3, 1e-3])  # around zero, where Power is delicate
    y = op(x)
    assert y.shape == (5, 12) and y.dtype == dtype and y.device == x.device
    ref = x.detach().cpu().double().numpy().reshape(5, 12)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(y.detach().cpu().double().numpy(), f(ref), rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.cpu().double().numpy().reshape(5, 12), df(ref), rtol=tol, atol=tol)


@pytest.mark.parametrize(("op", "f", "df"), POINTWISE, ids=repr)
def test_pointwise_gradcheck(op, f, df) -> None:
    # away from 0 for Power(1.5), whose derivative is not Lipschitz there (checked by hand above)
    x = (sample((3, 7)).abs() + 0.1) * torch.tensor([1.0, -1.0] * 3 + [1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(op, (x.requires_grad_(True),))
    assert torch.autograd.gradgradcheck(op, (x,))


def test_power_is_odd_and_rejects_bad_exponents() -> None:
    x = sample((2, 9))
    torch.testing.assert_close(Power(2.5)(-x), -Power(2.5)(x))
    for bad in (0.5, 0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="exponent"):
            Power(bad)


def test_power_under_torch_func_transforms() -> None:
    x = sample((4, 6))
    grads = torch.func.vmap(torch.func.grad(lambda v: Power(3.0).apply(v).sum()))(x)
    torch.testing.assert_close(grads, 3.0 * x**2)


def test_elementwise_operator_names() -> None:
    assert elementwise_operator("atan") == ATan()
    assert elementwise_operator("power", 3) == Power(3.0)
    with pytest.raises(ValueError, match="'identity', 'atan', 'tanh', 'power'"):
        elementwise_operator("cube")
    with pytest.raises(ValueError, match="exponent"):
        elementwise_operator("power")
    with pytest.raises(ValueError, match="exponent"):
        elementwise_operator("tanh", 2.0)


# --------------------------------------------------------------------------------------------------
# Selections: values, source_index and locations on 1-D and 2-D grids
# --------------------------------------------------------------------------------------------------


def check_selection(op, grid: Grid, expected_index: np.ndarray) -> None:
    """``op`` picks ``expected_index`` (flat C order) of a state on ``grid``: values, index, locations."""
    shape = grid.shape
    x = sample((3, *shape))
    flat = x.reshape(3, -1).numpy()
    np.testing.assert_array_equal(op.source_index(shape), expected_index)
    np.testing.assert_array_equal(op(x).numpy(), flat[:, expected_index])
    space = ObservationSpace(op, torch.ones(len(expected_index), dtype=torch.float64), grid, shape)
    mesh = np.stack(np.meshgrid(*grid.axes, indexing="ij"), axis=-1).reshape(-1, len(shape))
    np.testing.assert_array_equal(space.locations, mesh[expected_index])


def test_subsample_1d_and_2d() -> None:
    check_selection(Subsample(every=4, offset=1), grid_1d(18), np.arange(1, 18, 4))
    grid = grid_2d(8, 6)
    lattice = np.arange(48).reshape(8, 6)[1::3, 1::3].ravel()  # rows 1, 4, 7 and columns 1, 4
    check_selection(Subsample(every=3, offset=1), grid, lattice)
    np.testing.assert_array_equal(lattice, [7, 10, 25, 28, 43, 46])


def test_indices_keep_given_order() -> None:
    check_selection(Indices([5, 2, 2, 17]), grid_1d(18), np.array([5, 2, 2, 17]))
    check_selection(Indices(np.array([47, 0, 13])), grid_2d(), np.array([47, 0, 13]))


def test_random_fraction_is_seeded_sorted_and_fixed() -> None:
    op = RandomFraction(0.3, seed=7)
    index = op.source_index((40,))
    assert len(index) == 12 and np.all(np.diff(index) > 0) and 0 <= index[0] and index[-1] < 40
    check_selection(op, grid_1d(40), index)
    np.testing.assert_array_equal(RandomFraction(0.3, seed=7).source_index((40,)), index)
    assert not np.array_equal(RandomFraction(0.3, seed=8).source_index((40,)), index)
    np.testing.assert_array_equal(RandomFraction(1.0).source_index((8, 6)), np.arange(48))
    assert len(RandomFraction(1e-6).source_index((8, 6))) == 1
    check_selection(RandomFraction(0.5, seed=1), grid_2d(), RandomFraction(0.5, seed=1).source_index((8, 6)))


def test_patch_union_without_duplicates() -> None:
    boxes = [(0, 2, 0, 3), (1, 4, 2, 5), (6, 8, 5, 6)]  # the first two overlap at (1, 2)
    mask = np.zeros((8, 6), dtype=bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    expected = np.flatnonzero(mask)
    assert len(expected) == 6 + 9 + 2 - 1
    check_selection(Patch(boxes), grid_2d(), expected)
    assert Patch([list(b) for b in boxes]) == Patch(tuple(boxes))


def test_selection_follows_the_input_shape() -> None:
    op = Subsample(every=2)
    assert op(sample((2, 10))).shape == (2, 5)
    assert op(sample((2, 10, 4))).shape == (2, 10)
    assert op(sample((2, 5, 5))).shape == (2, 9)


@pytest.mark.parametrize(
    ("build", "shape", "match"),
    [
        (lambda: Subsample(every=0), (10,), "every"),
        (lambda: Subsample(every=3, offset=3), (10,), "offset"),
        (lambda: Subsample(every=4, offset=-1), (10,), "offset"),
        (lambda: Subsample(every=8, offset=5), (10, 4), "offset"),
        (lambda: Indices([0, 10]), (10,), "index 10 is out of range"),
        (lambda: Indices([0, -1]), (10,), "index"),
        (lambda: Indices([]), (10,), "index"),
        (lambda: Indices([0.5]), (10,), "index"),
        (lambda: RandomFraction(0.0), (10,), "fraction"),
        (lambda: RandomFraction(1.5), (10,), "fraction"),
        (lambda: RandomFraction(0.5, seed=-2), (10,), "seed"),
        (lambda: Patch([(0, 2, 0, 2)]), (10,), "2-D"),
        (lambda: Patch([(0, 2, 0, 9)]), (8, 6), r"slices\[0\].*out of range"),
        (lambda: Patch([(0, 2, 0, 2), (3, 3, 0, 2)]), (8, 6), r"slices\[1\]"),
        (lambda: Patch([(0, 2, 0)]), (8, 6), "slices"),
    ],
)
def test_selection_errors_name_the_parameter(build, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        build().source_index(shape)


@pytest.mark.parametrize("device", DEVICES)
def test_selection_gradient_and_device(device) -> None:
    x = sample((2, 8, 6), device=device).requires_grad_(True)
    op = Patch([(2, 5, 1, 3)])
    (grad,) = torch.autograd.grad(op(x).sum(), x)
    expected = torch.zeros(8, 6, dtype=x.dtype, device=device)
    expected[2:5, 1:3] = 1.0
    torch.testing.assert_close(grad, expected.expand(2, 8, 6))
    assert torch.autograd.gradcheck(Subsample(3, 1) | ATan(), (x.detach().cpu().requires_grad_(True),))


# --------------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------------


def test_composition_applies_left_to_right() -> None:
    x = sample((3, 20))
    h = Subsample(every=4) | ATan()
    torch.testing.assert_close(h(x), torch.atan(x[:, ::4]))
    # two selections do not commute: the right one indexes the output of the left one
    a, b = Subsample(every=2), Subsample(every=3, offset=1)
    np.testing.assert_array_equal((a | b).source_index((20,)), [2, 8, 14])
    np.testing.assert_array_equal((b | a).source_index((20,)), [1, 7, 13, 19])
    torch.testing.assert_close((a | b)(x), x[:, [2, 8, 14]])
    torch.testing.assert_close((b | a)(x), x[:, [1, 7, 13, 19]])
    # pointwise maps do not commute either: tanh(x^3) != tanh(x)^3
    torch.testing.assert_close((Power(3.0) | Tanh())(x), torch.tanh(x**3))
    torch.testing.assert_close((Tanh() | Power(3.0))(x), torch.tanh(x) ** 3)


def test_composed_locations_on_2d_grid() -> None:
    grid = grid_2d()
    h = Patch([(0, 4, 0, 6)]) | Subsample(every=5, offset=2) | Tanh()
    expected = np.arange(24)[2::5]  # the first four rows are the first 24 flat indices
    check_selection(Patch([(0, 4, 0, 6)]) | Subsample(every=5, offset=2), grid, expected)
    np.testing.assert_array_equal(h.source_index(grid.shape), expected)


# --------------------------------------------------------------------------------------------------
# Missing observations (NaN) are masked: no influence on h, the likelihood or observed()
# --------------------------------------------------------------------------------------------------


def test_missing_observations_have_no_influence() -> None:
    grid = grid_2d()
    h = Subsample(every=2) | ATan()  # 12 observations
    std = torch.linspace(0.5, 1.5, 12, dtype=torch.float64)
    space = ObservationSpace(h, std, grid, grid.shape)
    x = sample((4, 8, 6)).requires_grad_(True)
    y = h(sample((1, 8, 6), seed=1))[0]
    missing = torch.tensor([1, 4, 5, 11])
    keep = torch.tensor([i for i in range(12) if i not in missing.tolist()])
    y_nan = y.clone()
    y_nan[missing] = math.nan

    y_obs, sub = space.observed(y_nan)
    torch.testing.assert_close(y_obs, y[keep])
    torch.testing.assert_close(sub.std, std[keep])
    torch.testing.assert_close(sub.h(x), h(x)[:, keep])
    np.testing.assert_array_equal(sub.locations, space.locations[keep.numpy()])

    energy = space.neg_log_likelihood(x, y_nan)
    by_hand = 0.5 * (((y[keep] - h(x)[:, keep]) / std[keep]) ** 2).sum(-1)
    torch.testing.assert_close(energy, by_hand)
    # whatever sits in a missing entry, and whatever the state is at its location, nothing changes
    y_other = y_nan.clone()
    y_other[missing] = math.inf
    torch.testing.assert_close(space.neg_log_likelihood(x, y_other), energy)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    flat_grad = grad.reshape(4, -1)
    location = torch.as_tensor(space.state_index)
    assert torch.all(flat_grad[:, location[missing]] == 0)
    assert torch.all(flat_grad[:, location[keep]] != 0)


# --------------------------------------------------------------------------------------------------
# Gaussian error
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_error_statistics(dtype, device) -> None:
    n = 200_000
    error = GaussianError(0.7)
    gen = torch.Generator(device=device).manual_seed(3)
    y = error.perturb(torch.full((n,), 2.0, dtype=dtype, device=device), gen)
    assert y.dtype == dtype and y.device.type == device
    noise = (y - 2.0).double()
    assert abs(noise.mean().item()) < 4 * 0.7 / math.sqrt(n)
    assert abs(noise.std().item() / 0.7 - 1) < 4 / math.sqrt(2 * n)

    per_obs = GaussianError([0.5, 1.0, 2.0])
    gen = torch.Generator(device=device).manual_seed(4)
    y = per_obs.perturb(torch.zeros(n // 3, 3, dtype=dtype, device=device), gen).double()
    ratio = y.std(dim=0).cpu() / torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert torch.all((ratio - 1).abs() < 4 / math.sqrt(2 * n / 3))


def test_gaussian_error_is_reproducible_and_keeps_nan() -> None:
    error = GaussianError([1.0, 2.0, 3.0])
    y = torch.tensor([0.0, math.nan, 1.0], dtype=torch.float64)
    draws = [error.perturb(y, torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.testing.assert_close(draws[0], draws[1], equal_nan=True)
    expected = y + error.std_vector(3) * torch.randn(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(draws[0], expected, equal_nan=True)
    assert torch.isnan(draws[0][1])


def test_gaussian_error_std_vector_and_errors() -> None:
    torch.testing.assert_close(GaussianError(2).std_vector(3, torch.float32), torch.full((3,), 2.0))
    torch.testing.assert_close(GaussianError((1, 2)).std_vector(2), torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="std has 2 entries but there are 3"):
        GaussianError((1, 2)).std_vector(3)
    with pytest.raises(ValueError, match="n_obs"):
        GaussianError(1.0).std_vector(0)
    for bad in (0.0, -1.0, math.nan, math.inf, [1.0, 0.0], [], [[1.0]], "big"):
        with pytest.raises(ValueError, match="std"):
            GaussianError(bad)


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def test_synthetic_observations() -> None:
    source = SyntheticObservations(Subsample(every=3) | ATan(), GaussianError(0.1), (8, 6))
    truth = sample((8, 6))
    y = source.observe(1, truth, torch.Generator().manual_seed(11))
    noise = torch.randn(6, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    torch.testing.assert_close(y, torch.atan(truth[::3, ::3].reshape(-1)) + 0.1 * noise)
    space = source.space(grid_2d(), dtype=torch.float32)
    assert space.n_obs == 6 and space.std.dtype == torch.float32
    with pytest.raises(ValueError, match=r"truth must have shape \(8, 6\)"):
        source.observe(1, truth.reshape(1, 8, 6), torch.Generator())
    with pytest.raises(ValueError, match="std has 2 entries but there are 6"):
        SyntheticObservations(Subsample(every=3), GaussianError([1.0, 2.0]), (8, 6))


def write_obs_file(path, *, values, index, std=None, obs_std=None, time=None, dims=("time", "obs"), **attrs) -> None:
    values = np.asarray(values, dtype=np.float64)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", values.shape[0] if dims[0] == "time" else values.shape[1])
        ds.createDimension("obs", values.shape[1] if dims[0] == "time" else values.shape[0])
        var = ds.createVariable("observation", "f8", dims)
        var[:] = values
        if std is not None:
            var.std = std
        for key, value in attrs.items():
            var.setncattr(key, value)
        ds.createVariable("obs_index", "i8", ("obs",))[:] = np.asarray(index)
        if obs_std is not None:
            ds.createVariable("obs_std", "f8", ("obs",))[:] = np.asarray(obs_std)
        if time is not None:
            ds.createVariable("time", "f8", ("time",))[:] = np.asarray(time)


def test_netcdf_round_trip(tmp_path) -> None:
    values = np.array([[0.1, np.nan, 0.3], [np.nan, 0.5, 0.6]])
    path = tmp_path / "obs.nc"
    write_obs_file(path, values=values, index=[3, 0, 7], obs_std=[0.1, 0.2, 0.3], time=[0.5, 1.0],
                   operator="power", exponent=3.0)
    with NetCDFObservations(path, state_shape=(8,)) as source:
        np.testing.assert_array_equal(source.times, [0.5, 1.0])
        assert source.n_times == 2
        assert source.operator == Indices([3, 0, 7]) | Power(3.0)
        assert source.error == GaussianError([0.1, 0.2, 0.3])
        y = source.observation(1, dtype=torch.float32)
        assert y.dtype == torch.float32 and torch.isnan(y[0])  # missing stays NaN, never zero
        np.testing.assert_array_equal(y.numpy(), values[1].astype(np.float32))
        space = source.space(grid_1d(8))
        y0, sub = space.observed(source.observation(0))
        x = sample((2, 8))
        torch.testing.assert_close(y0, torch.tensor([0.1, 0.3], dtype=torch.float64))
        torch.testing.assert_close(sub.h(x), x[:, [3, 7]] ** 3)
        torch.testing.assert_close(sub.std, torch.tensor([0.1, 0.3], dtype=torch.float64))
        with pytest.raises(ValueError, match="k must be"):
            source.observation(2)

    path = tmp_path / "scalar_std.nc"
    write_obs_file(path, values=values, index=[0, 1, 2], std=0.4)
    with NetCDFObservations(path) as source:
        assert source.operator == Indices([0, 1, 2]) and source.error == GaussianError(0.4)
        np.testing.assert_array_equal(source.times, [0, 1])


@pytest.mark.parametrize(
    ("kwargs", "state_shape", "match"),
    [
        (dict(index=[0, 1, 2], std=0.4, dims=("obs", "time")), None, "'observation' must have dims"),
        (dict(index=[0, 1, 9], std=0.4), (8,), "obs_index: index 9 is out of range"),
        (dict(index=[0, 1, 8], std=0.4), (2, 4), "obs_index: index 8 is out of range"),
        (dict(index=[0, -1, 2], std=0.4), None, "obs_index"),
        (dict(index=[0, 1, 2]), None, "obs_std"),
        (dict(index=[0, 1, 2], obs_std=[1.0, -1.0, 1.0]), None, "obs_std"),
        (dict(index=[0, 1, 2], std=0.4, operator="cube"), None, "operator must be one of"),
    ],
)
def test_netcdf_errors(tmp_path, kwargs, state_shape, match) -> None:
    path = tmp_path / "bad.nc"
    dims = kwargs.get("dims", ("time", "obs"))
    values = np.zeros((2, 3)) if dims == ("time", "obs") else np.zeros((3, 2))
    write_obs_file(path, values=values, **kwargs)
    with pytest.raises(ValueError, match=match) as info:
        NetCDFObservations(path, state_shape=state_shape)
    assert str(path) in str(info.value)


def test_netcdf_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.nc"):
        NetCDFObservations(tmp_path / "nothing.nc")


# --------------------------------------------------------------------------------------------------
# Case-file [observations] table
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "shape", "expected"),
    [
        ({}, (40,), Identity()),
        ({"operator": "atan", "every": 5, "std": 1.0}, (40,), ATan()),
        ({"stride": 4, "operator": "atan"}, (40,), Subsample(4) | ATan()),
        ({"stride": 4, "offset": 2}, (8, 6), Subsample(4, 2)),
        ({"indices": [3, 1], "operator": "power", "exponent": 3}, (40,), Indices([3, 1]) | Power(3.0)),
        ({"fraction": 0.5, "fraction_seed": 2, "operator": "tanh"}, (40,), RandomFraction(0.5, 2) | Tanh()),
        ({"patches": [[0, 2, 0, 2]]}, (8, 6), Patch([(0, 2, 0, 2)])),
    ],
)
def test_operator_from_config(cfg, shape, expected) -> None:
    assert operator_from_config(cfg, shape) == expected


@pytest.mark.parametrize(
    ("cfg", "shape", "match"),
    [
        ({"operator": "cube"}, (40,), r"operator.*'identity', 'atan', 'tanh', 'power'"),
        ({"operator": 3}, (40,), r"\[observations\] operator must be str"),
        ({"operator": "power"}, (40,), "exponent"),
        ({"operator": "power", "exponent": 0.5}, (40,), "exponent"),
        ({"operator": "atan", "exponent": 2.0}, (40,), "exponent"),
        ({"stride": True}, (40,), r"\[observations\] stride must be int"),
        ({"stride": 2.0}, (40,), "stride"),
        ({"stride": 0}, (40,), "stride"),
        ({"stride": 4, "offset": 4}, (40,), "offset"),
        ({"offset": 1}, (40,), "offset is only used together with stride"),
        ({"indices": [0, 40]}, (40,), "indices"),
        ({"indices": 3}, (40,), "indices"),
        ({"fraction": 0}, (40,), "fraction"),
        ({"fraction_seed": 1}, (40,), "fraction_seed"),
        ({"patches": [[0, 2, 0, 2]]}, (40,), "patches"),
        ({"patches": [[0, 9, 0, 2]]}, (8, 6), "patches"),
        ({"stride": 2, "fraction": 0.5}, (40,), "at most one of"),
    ],
)
def test_operator_from_config_errors_name_the_key(cfg, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        operator_from_config(cfg, shape)


def test_operator_keys_cover_the_builder() -> None:
    assert set(OPERATOR_KEYS) == {"operator", "exponent", "stride", "offset", "indices", "fraction",
                                  "fraction_seed", "patches"}
    assert all(isinstance(t, (type, tuple)) for t in OPERATOR_KEYS.values())


def test_pointwise_map_reproduces_chains_of_selections_and_pointwise_maps():
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for operator in (ATan(), Subsample(every=2) | ATan(), Subsample(every=2) | Power(3.0) | Indices(np.array([4, 0]))):
        index = operator.source_index((4, 6))
        torch.testing.assert_close(operator.pointwise()(x.reshape(3, -1)[:, index]), operator(x), rtol=0, atol=0)

    @dataclass(frozen=True)
    class Mixing(ObservationOperator):
        """Sum of all elements, located at element 0: not pointwise."""

        def __call__(self, x):
            return x.reshape(x.shape[0], -1).sum(dim=1, keepdim=True)

        def source_index(self, shape):
            return np.zeros(1, dtype=np.int64)

    assert Mixing().pointwise() is None
    assert Compose(Mixing(), ATan()).pointwise() is None
