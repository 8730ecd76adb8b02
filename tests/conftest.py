"""Shared fixtures: small case texts that run in a fraction of a second per cycle."""

import textwrap

import pytest
import torch

SMALL_CASE = textwrap.dedent(
    """
    [model]
    name = "lorenz96"
    dim = 40
    forcing = 8.0
    dt = 0.05

    [observations]
    operator = "identity"
    every = 1
    std = 1.0

    [ensemble]
    size = 10
    initial_mean = "truth"
    initial_std = 1.0

    [filter]
    name = "none"

    [run]
    spinup = 50
    cycles = 12
    seed = 7
    """
)


@pytest.fixture
def small_case_text() -> str:
    """A valid Lorenz-96 (d = 40) case with the free-running filter and 12 cycles."""
    return SMALL_CASE


@pytest.fixture
def small_case_file(tmp_path, small_case_text):
    path = tmp_path / "small.toml"
    path.write_text(small_case_text)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for the module (training small networks oversubscribes 2 shared cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
