"""The cubic sparsity schedule of Zhu & Gupta (2017), checked against hand-computed values."""

import pytest

from sparse_lightning.errors import ConfigError
from sparse_lightning.schedules import PolynomialSchedule


def schedule(**kw):
    args = dict(final_sparsity=0.9, begin_step=10, end_step=110, frequency=20)
    args.update(kw)
    return PolynomialSchedule(**args)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (10, 0.0),
        (35, 0.9 * (1 - 0.75**3)),  # a quarter of the way: 0.9 * (1 - (3/4)^3)
        (60, 0.9 * (1 - 0.5**3)),
        (110, 0.9),
        (10_000, 0.9),
    ],
)
def test_sparsity_follows_the_cubic_formula(step, expected):
    assert schedule().sparsity_at(step) == pytest.approx(expected, abs=1e-12)


def test_initial_sparsity_is_the_starting_point():
    s = schedule(initial_sparsity=0.5)
    assert s.sparsity_at(60) == pytest.approx(0.9 + (0.5 - 0.9) * 0.5**3)


def test_updates_happen_every_frequency_steps_between_begin_and_end_and_at_end():
    updates = [t for t in range(200) if schedule().is_update_step(t)]
    assert updates == [10, 30, 50, 70, 90, 110]
    off_grid = PolynomialSchedule(0.9, begin_step=0, end_step=25, frequency=10)
    assert [t for t in range(40) if off_grid.is_update_step(t)] == [0, 10, 20, 25]


def test_sparsity_never_decreases():
    s = schedule()
    values = [s.sparsity_at(t) for t in range(150)]
    assert all(b >= a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(final_sparsity=1.0), "sparsity target 1.0"),
        (dict(final_sparsity=-0.1), "sparsity target -0.1"),
        (dict(begin_step=110), "begin_step=110"),
        (dict(frequency=0), "frequency=0"),
        (dict(begin_step=-1), "begin_step=-1"),
    ],
)
def test_bad_schedules_are_rejected_with_the_value_named(kw, message):
    with pytest.raises(ConfigError, match=message):
        schedule(**kw)


def test_progress_follows_the_cubic_curve_from_begin_to_end():
    """1 - (1 - (t - t0) / (t_end - t0))^3, typed out: begin 10, end 30."""
    from sparse_lightning.schedules import PolynomialSchedule

    schedule = PolynomialSchedule(0.0, begin_step=10, end_step=30, frequency=5)
    assert [schedule.progress_at(t) for t in (0, 10, 15, 20, 30, 40)] == pytest.approx(
        [0.0, 0.0, 1 - 0.75**3, 1 - 0.5**3, 1.0, 1.0]
    )
