"""Budgets: validation, the cost model, schedule choice, scaled parameter maps."""

import math

import numpy as np
import pytest

from regtrack.budget import LADDER, CostModel, Schedule, check_budget, choose_schedule, scaled_maps
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


def test_offline_total_budget_shrinks_the_schedule(translated):
    frames, masks = translated([(0, 0), (2, 1), (4, 2), (5, 2)])
    full = track(frames, masks[0])
    tight = track(frames, masks[0], total_budget_s=0.01)
    assert {r["schedule"] for r in full.records[1:]} == {LADDER[0].name}
    assert all(r["work"] < full.records[1]["work"] for r in tight.records[1:])
    # a tight budget costs accuracy, but the answer is still a registration near the truth
    assert {r["source"] for r in tight.records[1:]} == {"registration"}
    assert np.abs(tight.masks.astype(int) - masks).sum() < masks[0].sum()
