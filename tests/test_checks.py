"""Options are Literal fields checked by the one annotation reader (enff.checks / enff.config), and every
dispatch table that maps an option to its code covers exactly the option's values."""

from dataclasses import dataclass
from typing import Literal, get_args

import pytest

from enff.amortized.fmcpe import CONDITIONINGS, SOURCE_MAPS, Condition, ObservationSource, Reader
from enff.amortized.posterior import UNPLACED, Incomplete
from enff.amortized.tasks import DEFINITIONS, SBIBMName, SBIBMTask
from enff.checks import check_choices, check_positive, check_positive_int
from enff.filters import get_filter
from enff.filters.ensemble_score import PRIOR_SCORES, REVERSE_SAMPLERS, STARTS, PriorScore, ReverseSampler, Start
from enff.filters.guidance import SCHEDULES, Schedule
from enff.filters.local_flow import COORDINATE_CHANGES, FlowCoordinates
from enff.filters.local_tempering import RAW_STEPS, TemperingSchedule
from enff.filters.particle import PERTURBED, Perturb
from enff.integrate import STEPPERS, Method, Sampler, SolverConfig, SolverMethod
from enff.models.lorenz96 import BACKENDS, KERNELS, Backend, Kernel


@pytest.mark.parametrize("option, table", [
    (PriorScore, PRIOR_SCORES), (ReverseSampler, REVERSE_SAMPLERS), (Start, STARTS), (Schedule, SCHEDULES),
    (FlowCoordinates, COORDINATE_CHANGES), (TemperingSchedule, RAW_STEPS), (Perturb, PERTURBED),
    (ObservationSource, SOURCE_MAPS), (Condition, CONDITIONINGS), (Incomplete, UNPLACED), (SBIBMName, DEFINITIONS),
    (Method, STEPPERS), (Backend, BACKENDS), (Kernel, KERNELS),
])
def test_every_dispatch_table_covers_exactly_its_option(option, table):
    assert set(table) == set(get_args(option))


def test_the_samplers_and_solvers_are_registered_steppers():
    assert set(get_args(Sampler)) <= set(STEPPERS) and set(get_args(SolverMethod)) <= set(STEPPERS)


@dataclass(frozen=True)
class _Options:
    mode: Literal["a", "b"] = "a"
    maybe: Literal["x"] | None = None
    count: int = 1

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class _Narrowed(_Options):
    mode: Literal["a"] = "a"


def test_check_choices_names_the_field_and_lists_the_values():
    _Options(mode="b", maybe="x", count=-5)  # count is no option: not checked here
    with pytest.raises(ValueError, match=r"^mode must be one of 'a', 'b', got 'c'$"):
        _Options(mode="c")
    _Options(maybe=None)
    with pytest.raises(ValueError, match=r"^maybe must be one of 'x', got 'y'$"):
        _Options(maybe="y")
    with pytest.raises(ValueError, match=r"^mode must be one of 'a', got 'b'$"):
        _Narrowed(mode="b")  # a subclass is checked against its own annotation


@pytest.mark.parametrize("build, message", [
    (lambda: get_filter("ensf", sampler="heun"), "sampler must be one of 'sde', 'ode', got 'heun'"),
    (lambda: get_filter("lensf", radius=1.0, score="member"), "score must be one of 'mixture', got 'member'"),
    (lambda: get_filter("enff-ot", sampler="rk4"), "sampler must be one of 'euler', 'heun', got 'rk4'"),
    (lambda: get_filter("lenff-ot", radius=1.0, coordinates="grid"), "coordinates must be one of 'state', "
                                                                    "'standardized', got 'grid'"),
    (lambda: get_filter("bpf", perturb="some"), "perturb must be one of 'all', 'duplicates', got 'some'"),
    (lambda: SolverConfig(method="euler"), "method must be one of 'rk4', 'dopri5', got 'euler'"),
    (lambda: Reader(condition="raw"), "condition must be one of 'summary', 'data', got 'raw'"),
    (lambda: SBIBMTask("gaussian_mixture"), "name must be one of 'two_moons', 'gaussian_linear', 'slcp', got "
                                            "'gaussian_mixture'"),
])
def test_options_built_in_python_are_refused_with_the_allowed_values(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_positive_checks():
    assert check_positive_int("n", 3.0) == 3 and check_positive("dt", 2) == 2.0
    for bad in (0, 1.5, True, -2):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            check_positive_int("n", bad)
    for bad in (0.0, float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="dt must be a finite positive number"):
            check_positive("dt", bad)
