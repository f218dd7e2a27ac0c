"""Quality gates on crafted cases: folds, metric history, whose answer hybrid mode keeps."""

import numpy as np
import pytest

from regtrack.gate import (
    centroid_mm,
    folded_fraction,
    hybrid_decision,
    metric_outlier,
    registration_gate,
)
from regtrack.tracking import TrackerSettings


def square(centre, half=4, shape=(64, 64)):
    mask = np.zeros(shape, bool)
    mask[centre[0] - half : centre[0] + half, centre[1] - half : centre[1] + half] = True
    return mask


def test_folded_fraction_finds_a_fold_and_not_a_smooth_stretch():
    rows = np.arange(40, dtype=float)[:, None] * np.ones((1, 40))
    field = np.zeros((40, 40, 2))
    field[..., 0] = 0.5 * rows  # stretch by 1.5 along rows: det 1.5
    region = np.ones((40, 40), bool)
    assert folded_fraction(field, (1.0, 1.0), region) == 0.0
    field[..., 0] = np.where(rows < 20, -2.0 * rows, 0.0)  # d(u_row)/d(row) = -2: det -1
    fraction = folded_fraction(field, (1.0, 1.0), region)
    assert 0.45 < fraction < 0.55  # the upper half folds
    # with 2 mm pixels the same field in mm is a gradient of -1: det 0, still a fold
    assert folded_fraction(field, (2.0, 2.0), region) > 0.45
    assert folded_fraction(field, (1.0, 1.0), np.zeros((40, 40), bool)) == 0.0


def test_registration_gate_reasons():
    settings = TrackerSettings()
    mask = square((30, 30))
    assert registration_gate(mask, -0.9, mask.sum(), settings) == ""
    assert "finite" in registration_gate(mask, float("nan"), mask.sum(), settings)
    assert "empty" in registration_gate(mask & False, -0.9, mask.sum(), settings)
    assert "x4.00" in registration_gate(mask, -0.9, mask.sum() // 4, settings)
    assert "folds" in registration_gate(mask, -0.9, mask.sum(), settings, fold_fraction=0.02)


def test_metric_outlier_against_its_history():
    history = [-0.95, -0.94, -0.96, -0.95, -0.945, -0.955]
    assert metric_outlier(-0.94, history) == ""
    assert "worse than the recent median" in metric_outlier(-0.5, history)
    assert metric_outlier(-0.5, history[:3]) == ""  # too little history to judge
    flat = [-0.95] * 6  # MAD 0: the 5 % floor keeps noise from being rejected
    assert metric_outlier(-0.94, flat) == ""


@pytest.mark.parametrize(
    ("registered", "sam", "keep", "why"),
    [
        ((31, 30), (30, 31), True, ""),  # agree
        ((50, 30), (31, 30), False, "registration jumped 20.0 mm"),  # registration runs away
        ((31, 30), (50, 30), True, "SAM disagreed"),  # SAM jumps to a look-alike
        ((50, 30), (50, 45), True, "SAM disagreed"),  # both jump: registration kept
    ],
)
def test_hybrid_decision(registered, sam, keep, why):
    previous = square((30, 30))
    kept, reason = hybrid_decision(
        square(registered), square(sam), previous, (1.0, 1.0), max_jump_mm=10.0, agree_mm=3.0
    )
    assert kept is keep
    assert why in reason


def test_hybrid_decision_keeps_registration_when_sam_is_empty():
    previous = square((30, 30))
    kept, reason = hybrid_decision(
        square((50, 30)),
        np.zeros((64, 64), bool),
        previous,
        (1.0, 1.0),
        max_jump_mm=10.0,
        agree_mm=3.0,
    )
    assert kept and "empty" in reason


def test_centroid_of_one_mask_and_of_a_stack_agree_and_an_empty_mask_has_none():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:5, 10:14] = True  # centre (3, 11.5) px
    masks[2, 10:20, 0:3] = True  # centre (14.5, 1) px
    spacing = (2.0, 0.5)
    stack = centroid_mm(masks, spacing)
    assert stack.shape == (3, 2)
    np.testing.assert_allclose(stack[0], [6.0, 5.75])
    np.testing.assert_allclose(stack[2], [29.0, 0.5])
    assert np.isnan(stack[1]).all()
    for mask, expected in zip(masks, stack, strict=True):
        np.testing.assert_array_equal(centroid_mm(mask, spacing), expected)
