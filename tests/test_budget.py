"""Budgets: validation, the cost model, schedule choice, scaled parameter maps."""

import math

import numpy as np
import pytest

from regtrack.budget import (
    FLOW_RUNG,
    LADDER,
    CostModel,
    Schedule,
    check_budget,
    choose_schedule,
    scaled_maps,
)
from regtrack.parameters import load_parameter_maps
from regtrack.tracking import TrackerSettings, track


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), "fast"])
def test_bad_budgets_are_refused_with_the_fix(bad):
    with pytest.raises(ValueError, match="budget_s must be"):
        check_budget(bad, "budget_s")
    with pytest.raises(ValueError, match="budget_s must be"):
        TrackerSettings(budget_s=bad)


def test_no_budget_and_infinity_mean_unlimited():
    assert check_budget(None) is None
    assert check_budget(math.inf) is None
    assert check_budget("0.25") == 0.25


def test_scaled_maps_scale_iterations_and_samples_and_count_the_work():
    maps = load_parameter_maps("bspline_ncc", {"MaximumNumberOfIterations": [60, 60, 60]})
    assert dict(maps.GetParameterMap(0))["NumberOfSpatialSamples"] == ("1000",)
    _, full_work = scaled_maps(maps, Schedule(1.0, 1.0))
    half, half_work = scaled_maps(maps, Schedule(0.5, 0.25))
    assert full_work == 3 * 60 * 1000
    assert dict(half.GetParameterMap(0))["MaximumNumberOfIterations"] == ("30", "30", "30")
    assert dict(half.GetParameterMap(0))["NumberOfSpatialSamples"] == ("250",)
    assert half_work == 3 * 30 * 250
    assert dict(maps.GetParameterMap(0))["MaximumNumberOfIterations"] == ("60", "60", "60")


def test_cost_model_recovers_a_linear_cost_and_adds_a_margin():
    cost = CostModel(margin=1.1)
    for work in (1000, 5000, 20000, 80000):
        cost.observe(work, 5.0 + 0.001 * work)
    assert cost.predict(40000) == pytest.approx((5.0 + 40.0) * 1.1)
    assert math.isinf(CostModel().predict(1000))


def test_small_budget_gets_a_smaller_schedule_than_a_large_one():
    cost = CostModel()
    works = {s: 180_000 * s.iterations * s.samples for s in LADDER}
    for schedule in (LADDER[0], LADDER[-1]):
        cost.observe(works[schedule], 2.0 + works[schedule] / 1000)  # 182 ms full
    small, large = choose_schedule(50.0, works, cost), choose_schedule(1000.0, works, cost)
    assert large == LADDER[0]
    assert works[small] < works[large]
    assert cost.predict(works[small]) <= 50.0
    assert choose_schedule(None, works, cost) == LADDER[0]
    assert choose_schedule(0.1, works, cost) == LADDER[-1]  # nothing fits: the smallest


def test_below_the_smallest_registration_the_flow_rung_answers():
    cost = CostModel(margin=1.0)
    works = {s: 1 if s.flow_only else 100_000 * s.iterations * s.samples for s in LADDER}
    for schedule in LADDER[:-1]:
        cost.observe(works[schedule], 20.0 + works[schedule] / 1000, schedule.kind)
    cost.observe(1, 9.0, "flow")
    assert choose_schedule(23.0, works, cost) == LADDER[-2]  # the smallest registration fits
    assert choose_schedule(15.0, works, cost) == FLOW_RUNG  # only the flow fits
    assert LADDER.index(FLOW_RUNG) == len(LADDER) - 1 and FLOW_RUNG.name == "flow"


def test_offline_total_budget_shrinks_the_schedule(translated):
    frames, masks = translated([(0, 0), (2, 1), (4, 2), (5, 2)])
    full = track(frames, masks[0])
    tight = track(frames, masks[0], total_budget_s=0.01)
    assert {r["schedule"] for r in full.records[1:]} == {LADDER[0].name}
    assert all(r["work"] < full.records[1]["work"] for r in tight.records[1:])
    # a tight budget costs accuracy, but the answer is still a registration near the truth
    assert {r["source"] for r in tight.records[1:]} == {"registration"}
    assert np.abs(tight.masks.astype(int) - masks).sum() < masks[0].sum()


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def calibrated(clock, **kwargs):
    """A real-time cost model after a quiet calibration: preset kind 40 + 0.0004 ms per unit
    of work, recursive kind 15 + 0.004."""
    cost = CostModel(quantile=0.98, window_s=4.0, retry_s=1.0, clock=clock, **kwargs)
    for work in (45000, 90000, 45000, 90000, 45000, 90000, 45000, 90000):
        cost.observe(work, 40 + 0.0004 * work, "")
    for work in (1800, 15000, 1800, 15000, 1800, 15000, 1800, 15000):
        cost.observe(work, 15 + 0.004 * work, "recursive")
    return cost


def test_a_kind_that_looked_too_slow_is_predicted_again_once_the_machine_is_fast():
    clock = FakeClock()
    cost = calibrated(clock)
    quiet = cost.predict(90000, "")
    for _ in range(6):  # a load spike: the preset kind three times slower, then not chosen
        clock.now += 0.125
        cost.observe(90000, 3 * (40 + 0.0004 * 90000), "")
    assert cost.predict(90000, "") > 2.5 * quiet
    for _ in range(12):  # 1.5 s of the recursive kind at its calibrated speed
        clock.now += 0.125
        cost.observe(1800, 15 + 0.004 * 1800, "recursive")
    assert cost.slowdown() == pytest.approx(1.0)
    assert cost.predict(90000, "") == pytest.approx(quiet, rel=0.05)  # tried again
    clock.now += 0.125
    cost.observe(90000, 40 + 0.0004 * 90000, "")  # and measured anew: its own fit again
    assert cost.predict(90000, "") < 1.5 * quiet


def test_under_a_lasting_load_a_kind_not_run_is_predicted_as_slow_as_the_ones_that_run():
    clock = FakeClock()
    cost = calibrated(clock)
    quiet = cost.predict(90000, "")
    for _ in range(40):  # 5 s at twice the calibrated cost, the preset kind never chosen
        clock.now += 0.125
        cost.observe(8400, 2 * (15 + 0.004 * 8400), "recursive")
    assert cost.slowdown() == pytest.approx(2.0)
    assert cost.predict(90000, "") == pytest.approx(2 * quiet, rel=0.05)


def test_a_spike_ages_out_of_the_kind_that_keeps_running():
    clock = FakeClock()
    cost = calibrated(clock)
    quiet = cost.predict(8400, "recursive")
    for _ in range(8):
        clock.now += 0.125
        cost.observe(8400, 4 * (15 + 0.004 * 8400), "recursive")
    assert cost.predict(8400, "recursive") > 3 * quiet
    for _ in range(40):  # 5 s quiet: longer than the window
        clock.now += 0.125
        cost.observe(8400, 15 + 0.004 * 8400, "recursive")
    assert cost.predict(8400, "recursive") == pytest.approx(quiet, rel=0.2)


def test_under_a_lasting_load_a_cheaper_rung_answers_before_none_fits():
    """Twice as slow: the chosen rung is smaller, and still one predicted to fit."""
    clock = FakeClock()
    works = {s: (90000 if s.pyramid == "" else 1800 + 3000 * i) for i, s in enumerate(LADDER)}
    quiet, loaded = calibrated(clock), calibrated(clock)
    for _ in range(16):
        clock.now += 0.125
        loaded.observe(works[LADDER[3]], 2 * (15 + 0.004 * works[LADDER[3]]), "recursive")
    budget_ms = 150.0
    chosen_quiet = choose_schedule(budget_ms, works, quiet)
    chosen_loaded = choose_schedule(budget_ms, works, loaded)
    assert LADDER.index(chosen_loaded) > LADDER.index(chosen_quiet)
    assert loaded.predict(works[chosen_loaded], chosen_loaded.pyramid) <= budget_ms


def test_a_window_of_one_rung_keeps_the_calibrated_slope_for_the_larger_rungs():
    """Only the quarter rung ran lately: the half rung is predicted along the calibrated
    line moved to today's cost, not 2.9x the quarter rung's time (which would never let the
    half rung be tried again)."""
    clock = [0.0]
    cost = CostModel(margin=1.0, quantile=0.5, window_s=4.0, clock=lambda: clock[0])
    quarter, half = 3150, 9000
    for _ in range(4):  # the calibration (a kind's first 8): 20 ms + 1/315 ms a unit
        cost.observe(quarter, 30.0, "recursive", at=0.0)
        cost.observe(half, 48.57, "recursive", at=0.0)
    for k in range(20):  # then 2.5 s of the quarter rung, 2 ms slower than calibrated
        clock[0] = 2.0 + 0.125 * k
        cost.observe(quarter, 32.0, "recursive", at=clock[0])
    assert cost.predict(half, "recursive") == pytest.approx(50.57, abs=0.5)
    assert cost.predict(half, "recursive") < 32.0 * half / quarter - 30
