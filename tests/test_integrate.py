"""enff.integrate: the registry of steppers, its typed names and the amortized solver config.

The steppers' accuracy is tested where they are used: test_ensemble_flow.py (Euler, Heun, Euler-Maruyama),
test_amortized_ode.py (RK4, Dopri5), test_lorenz.py (the models' RK4 against DOP853).
"""

import math
from typing import get_args

import pytest
import torch

from enff.integrate import RK4, STEPPERS, Dopri5, Method, SolverConfig, integrate, rk4_steps, tendency_field
from enff.registry import RegistryError

from helpers import DEVICES, DTYPES


def test_method_names_are_the_registered_steppers():
    assert sorted(get_args(Method)) == STEPPERS.names()


def test_unknown_setting_names_the_known_ones():
    with pytest.raises(RegistryError, match="n_steps"):
        integrate(lambda x, t: -x, torch.ones(2), method="rk4", evaluations=4)
    with pytest.raises(RegistryError, match="dopri5"):
        integrate(lambda x, t: -x, torch.ones(2), method="rk5", n_steps=4)  # type: ignore[arg-type]


#: Settings of each registered stepper for the analytic problem, and the relative error it must reach.
ANALYTIC = {
    "euler": ({"evaluations": 64}, 3e-2),
    "heun": ({"evaluations": 33}, 1e-2),  # the last step is an Euler step (see enff.integrate)
    "rk4": ({"n_steps": 16}, 1e-6),
    "dopri5": ({"rtol": 1e-8, "atol": 1e-8}, 1e-6),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", STEPPERS.names())
def test_growth_forwards_and_backwards(method, dtype, device):
    """``dx/dt = t x`` has ``x(1) = x(0) exp(1/2)``; integrating back from 1 to 0 undoes it."""
    keys, tol = ANALYTIC[method]
    tol = max(tol, 1e-5) if dtype == torch.float32 else tol
    x0 = torch.tensor([1.0, -2.0], dtype=dtype, device=device)
    x1 = integrate(lambda x, t: t * x, x0, method=method, **keys)
    assert x1.dtype == dtype and x1.device == x0.device
    torch.testing.assert_close(x1, x0 * math.exp(0.5), rtol=tol, atol=0)
    back = integrate(lambda x, t: t * x, x1, method=method, start=1.0, end=0.0, **keys)
    torch.testing.assert_close(back, x0, rtol=2 * tol, atol=0)


def test_in_place_tendency_steps_like_a_field_returning_new_tensors():
    """One reused buffer (tendency_field) gives the same RK4 result as a field that allocates."""

    def tendency(x, out):
        torch.mul(x, -0.5, out=out)

    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    buffered = rk4_steps(tendency_field(tendency, x0), x0, 0.25, 4)
    fresh = RK4(4).solve(lambda x, t: -0.5 * x, x0, 0.0, 1.0)
    assert fresh.n_evals == 16
    torch.testing.assert_close(buffered, fresh.state, rtol=0, atol=0)
    torch.testing.assert_close(buffered, x0 * math.exp(-0.5), rtol=1e-5, atol=0)


def test_solver_config_builds_its_stepper_from_the_registry():
    assert SolverConfig(n_steps=7).stepper() == RK4(n_steps=7)
    assert SolverConfig(method="dopri5", rtol=1e-3, max_steps=99).stepper() == Dopri5(rtol=1e-3, atol=1e-5,
                                                                                      max_steps=99)
    with pytest.raises(ValueError, match="n_steps"):
        SolverConfig(method="dopri5", n_steps=0)
