"""The line search's numba step-length kernel against the torch search, and the operators it has a form for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enff.filters._step_length_numba import PointwiseKind, pointwise_kind, step_lengths
from enff.filters.step_length import STEP_HALVINGS, best_step_lengths
from enff.observations.operators import ATan, Identity, Power, Tanh
from enff.observations.space import Select

OPERATORS = {"identity": Identity(), "atan": ATan(), "tanh": Tanh(), "power3": Power(3.0), "power1.5": Power(1.5)}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_kernel_step_lengths_equal_the_torch_search(name):
    operator = OPERATORS[name]
    rng = np.random.default_rng(3)
    n_members, d, rows, width = 12, 60, 50, 7
    anomalies = rng.standard_normal((n_members, d)) * 0.5
    mean = rng.standard_normal(d) * 2.0
    sources = rng.integers(0, d, size=40)  # observation -> state element
    index = rng.integers(0, 40, size=(rows, width))
    weight = rng.uniform(0.0, 1.0, size=(rows, width))
    weight[:, -2:] = 0.0  # padding
    wbar = rng.standard_normal((rows, n_members)) * rng.uniform(0.01, 3.0, size=(rows, 1))  # long and short steps
    std = rng.uniform(0.05, 0.5, size=40)
    g = operator.pointwise()
    observed_mean = g(torch.as_tensor(mean[sources] + rng.standard_normal(40) * 0.1)).numpy()
    innovation = rng.standard_normal(40) * 3.0
    kind, exponent = pointwise_kind(operator)

    out = np.empty(rows)
    step_lengths(anomalies, mean, wbar, index, weight, sources, innovation, observed_mean, std, int(kind), exponent,
                 STEP_HALVINGS, out)

    t = torch.as_tensor
    source = t(sources)[t(index)]
    increment = torch.einsum("ncp,cn->cp", t(anomalies)[:, source], t(wbar))
    expected = best_step_lengths(t(wbar), t(mean)[source], increment, t(innovation)[t(index)],
                                 t(observed_mean)[t(index)], t(std)[t(index)], t(weight), g)
    np.testing.assert_array_equal(out, expected.numpy())
    if name != "identity":  # nonlinear maps with large innovations: some steps are shortened, not all
        assert 0 < (out < 1).sum() < rows


def test_kernel_keeps_the_full_step_of_a_linear_operator():
    # J(a) is a quadratic with its minimum at a = 1 when wbar is the Gauss-Newton step of a linear h
    rng = np.random.default_rng(0)
    n_members, p = 10, 6
    s = rng.standard_normal((p, n_members))  # scaled observation anomalies S (p x N)
    dy = rng.standard_normal(p)
    wbar = np.linalg.solve((n_members - 1) * np.eye(n_members) + s.T @ s, s.T @ dy)
    # a state whose anomalies give exactly S under the identity, observed with unit error std
    anomalies = s.T.copy()
    out = np.empty(1)
    step_lengths(anomalies, np.zeros(p), wbar[None], np.arange(p)[None], np.ones((1, p)), np.arange(p), dy,
                 np.zeros(p), np.ones(p), int(PointwiseKind.IDENTITY), 1.0, STEP_HALVINGS, out)
    assert out[0] == 1.0


def test_pointwise_kind_of_compositions():
    assert pointwise_kind(Select(np.arange(3)) | ATan()) == (PointwiseKind.ATAN, 1.0)
    assert pointwise_kind(ATan() | Select(np.arange(3))) == (PointwiseKind.ATAN, 1.0)
    assert pointwise_kind(Power(2.0)) == (PointwiseKind.POWER, 2.0)
    assert pointwise_kind(Identity() | Tanh()) == (PointwiseKind.TANH, 1.0)
    assert pointwise_kind(ATan() | Tanh()) is None  # two maps in a row: the torch search
