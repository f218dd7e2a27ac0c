"""Tests for regtrack.metrics against hand-computed values of the official TrackRAD2025 rules."""

import math
import re

import numpy as np
import pytest

from regtrack.metrics import (
    METRIC_NAMES,
    centre_distance,
    dice,
    evaluate_case,
    format_table,
    hd95,
    masd,
    relative_d98,
    summarize,
)

SIZE = 40  # frames are SIZE x SIZE unless a test says otherwise


def square(top: int, left: int, side: int = 10, shape: tuple[int, int] = (SIZE, SIZE)):
    """A uint8 frame with a side x side square of ones at (top, left)."""
    frame = np.zeros(shape, np.uint8)
    frame[top : top + side, left : left + side] = 1
    return frame


def sequence(*frames):
    """Stack frames into a (T, H, W) sequence."""
    return np.stack(frames)


EMPTY = np.zeros((SIZE, SIZE), np.uint8)
GT = square(10, 10)
SHIFTED_3 = square(10, 13)  # GT moved 3 px to the right


# --- per-frame metrics ------------------------------------------------------------------


def test_identical_masks_are_perfect():
    assert dice(GT, GT) == 1.0
    assert hd95(GT, GT) == 0.0
    assert masd(GT, GT) == 0.0
    assert centre_distance(GT, GT) == 0.0


def test_dice_counts_the_overlap():
    # Two 10x10 squares 3 px apart overlap on 10 x 7 = 70 px: 2 * 70 / (100 + 100).
    assert dice(SHIFTED_3, GT) == pytest.approx(0.7, rel=1e-6)


def test_dice_takes_values_as_given():
    # Official quirk: a 0/255 mask enters the sums as 255s: 2 * 100 / (100 + 25500) = 2 / 256.
    assert dice(255 * GT, GT) == 2 / 256


def test_centre_distance_is_euclidean():
    assert centre_distance(square(13, 14), GT) == 5.0  # offset (3, 4)


@pytest.mark.parametrize(
    ("shift", "expected_hd95", "expected_masd"), [(1, 1.0, 0.5), (3, 3.0, 1.5)]
)
def test_surface_distances_of_a_shifted_square(shift, expected_hd95, expected_masd):
    # Boundaries are 36-px rings. For a shift of k = 3 columns, the distances from one ring
    # to the other are: top and bottom rows 0 (x7), 1, 2, 3 each; the trailing side 3 (x8);
    # the leading side min(row distance to a corner, 3) = 1, 2, 3, 3, 3, 3, 2, 1.
    # Sum 6 + 6 + 24 + 18 = 54 -> mean 1.5; sorted: 14 zeros, 4 ones, 4 twos, 14 threes,
    # so the 95th percentile (position 33.25 of 35) is 3. For k = 1: 18 zeros and 18 ones.
    # Both directions are mirror images, so HD95 equals the one-way value.
    moved = square(10, 10 + shift)
    assert hd95(moved, GT) == expected_hd95
    assert masd(moved, GT) == expected_masd


def test_masd_is_one_directional_and_hd95_symmetric():
    # A 3x3 square centred in an 11x11 one: each of its 8 boundary pixels is 4 px from the
    # big ring, whereas the big ring's corners are 4*sqrt(2) from the small ring's corners.
    small, big = square(14, 14, side=3), square(10, 10, side=11)
    assert masd(small, big) == 4.0
    assert masd(big, small) > 4.0
    # 40 ring pixels; the top 4 (the corners, 4*sqrt(2)) straddle position 37.05 of 39.
    assert hd95(small, big) == pytest.approx(4 * math.sqrt(2), rel=1e-6)
    assert hd95(big, small) == hd95(small, big)


def test_empty_prediction_scores_the_penalty():
    gt = square(5, 5, shape=(32, 48))
    empty = np.zeros_like(gt)
    assert dice(empty, gt) == 0.0
    assert hd95(empty, gt) == masd(empty, gt) == centre_distance(empty, gt) == 48.0


def test_empty_ground_truth_frame_is_not_scored():
    for metric in (dice, hd95, masd, centre_distance):
        assert math.isnan(metric(GT, EMPTY))


# --- per case ------------------------------------------------------------------------------


def test_first_frame_is_dropped():
    result = evaluate_case(sequence(GT, SHIFTED_3, GT), sequence(GT, GT, GT))
    # Frame 0 is dropped; frames 1 (shifted by 3) and 2 (perfect) are averaged.
    assert result["dsc"] == pytest.approx((0.7 + 1.0) / 2, rel=1e-6)
    assert result["hd95_mm"] == (3.0 + 0.0) / 2
    assert result["masd_mm"] == (1.5 + 0.0) / 2
    assert result["centre_distance_mm"] == (3.0 + 0.0) / 2
    assert result["n_frames_scored"] == 2


def test_empty_first_prediction_drops_frame_one_instead():
    # List order is [frame 1, frame 2, penalty of frame 0]; frame 1 is the one dropped.
    result = evaluate_case(sequence(EMPTY, SHIFTED_3, GT), sequence(GT, GT, GT))
    assert result["dsc"] == (1.0 + 0.0) / 2
    assert result["hd95_mm"] == result["masd_mm"] == (0.0 + SIZE) / 2
    assert result["centre_distance_mm"] == (0.0 + SIZE) / 2
    assert result["n_frames_scored"] == 2


def test_penalties_go_after_the_scored_frames():
    # [frame 0, frame 2, penalty of frame 1] -> frame 0 dropped.
    result = evaluate_case(sequence(SHIFTED_3, EMPTY, GT), sequence(GT, GT, GT))
    assert result["dsc"] == 0.5
    assert result["hd95_mm"] == SIZE / 2


def test_empty_ground_truth_frames_are_dropped():
    reference = evaluate_case(sequence(GT, SHIFTED_3, GT), sequence(GT, GT, GT))
    padded = evaluate_case(
        sequence(SHIFTED_3, GT, SHIFTED_3, GT, EMPTY), sequence(EMPTY, GT, GT, GT, EMPTY)
    )
    assert padded == reference


def test_evaluate_case_returns_plain_floats_and_accepts_bool():
    pred, gt = sequence(GT, SHIFTED_3, GT), sequence(GT, GT, GT)
    result = evaluate_case(pred, gt)
    assert set(result) == {*METRIC_NAMES, "n_frames_scored"}
    assert all(type(value) is float for value in result.values())
    assert evaluate_case(pred.astype(bool), gt.astype(bool)) == result


# --- relative D98 --------------------------------------------------------------------------


def test_relative_d98_is_one_for_a_perfect_prediction():
    gts = sequence(GT, square(11, 12), square(12, 14))
    assert relative_d98(gts, gts) == 1.0


def test_relative_d98_stays_one_for_small_errors_and_collapses_for_large_ones():
    gts = sequence(GT, GT, GT, GT)
    assert relative_d98(sequence(*[square(10, 11)] * 4), gts) == 1.0
    assert relative_d98(sequence(*[square(10, 20)] * 4), gts) < 0.05


def test_relative_d98_counts_empty_predictions_as_zero_dose():
    # Two perfect frames and two empty ones: the GTV gets dose 0.5 everywhere, so D98 = 0.5
    # against 1.0 unshifted. Frame 0 is included in the dose metric.
    gts = sequence(GT, GT, GT, GT)
    assert relative_d98(sequence(GT, EMPTY, GT, EMPTY), gts) == 0.5
    assert relative_d98(sequence(EMPTY, GT, GT, EMPTY), gts) == 0.5


def test_relative_d98_ignores_empty_ground_truth_frames():
    preds = sequence(square(10, 15), GT, square(10, 15))
    assert relative_d98(preds, sequence(EMPTY, GT, EMPTY)) == 1.0


def test_relative_d98_smooths_more_only_for_lung():
    # A 5 px error leaves the sigma-4 CTV but not the wider sigma-6 ("lung") one.
    preds, gts = sequence(*[square(10, 15)] * 3), sequence(GT, GT, GT)
    assert relative_d98(preds, gts, scanned_region="lung") == 1.0
    assert relative_d98(preds, gts, scanned_region="thorax") < 0.5
    assert relative_d98(preds, gts) == relative_d98(preds, gts, scanned_region="thorax")


def test_relative_d98_is_nan_when_the_ctv_vanishes():
    dot = square(20, 20, side=1)
    with pytest.warns(RuntimeWarning, match="too small"):
        assert math.isnan(relative_d98(sequence(dot, dot), sequence(dot, dot)))


# --- across cases --------------------------------------------------------------------------


def _case(value: float) -> dict[str, float]:
    return {**{name: value for name in METRIC_NAMES}, "n_frames_scored": 10.0}


def test_summarize_gives_mean_std_min():
    summary = summarize({"a": _case(0.6), "b": _case(0.8), "c": _case(1.0)})
    assert set(summary) == set(METRIC_NAMES)
    for stats in summary.values():
        assert stats["mean"] == pytest.approx(0.8)
        assert stats["std"] == pytest.approx(math.sqrt(0.08 / 3))  # population std
        assert stats["min"] == 0.6


def test_summarize_rejects_no_cases():
    with pytest.raises(ValueError, match="empty"):
        summarize({})


def test_format_table_has_a_row_per_case_and_the_summary():
    per_case = {"A_001": _case(0.5), "B_002": _case(0.7)}
    lines = format_table(per_case, summarize(per_case)).splitlines()
    assert lines[0].split() == [
        *("case", "DSC", "HD95", "mm", "MASD", "mm", "CD", "mm", "rel", "D98", "frames")
    ]
    assert [line.split()[0] for line in lines[2:4]] == ["A_001", "B_002"]
    assert lines[2].split()[1:] == ["0.5000", "0.50", "0.50", "0.50", "0.5000", "10"]
    assert [line.split()[0] for line in lines[5:]] == ["mean", "std", "min"]
    assert lines[5].split()[1] == "0.6000"
    assert len({len(line) for line in lines[:4]}) == 1  # fixed width


# --- validation ----------------------------------------------------------------------------


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(sequence(GT, GT), sequence(GT, GT, GT))


def test_rejects_non_3d_arrays():
    with pytest.raises(ValueError, match="must be 3D"):
        evaluate_case(GT, GT)


def test_rejects_all_empty_prediction():
    with pytest.raises(ValueError, match="'pred' is empty in every frame"):
        evaluate_case(sequence(EMPTY, EMPTY), sequence(GT, GT))


def test_rejects_prediction_only_where_ground_truth_is_empty():
    with pytest.raises(ValueError, match="'pred' is empty in every frame"):
        evaluate_case(sequence(EMPTY, EMPTY, GT), sequence(GT, GT, EMPTY))


def test_rejects_fewer_than_two_ground_truth_frames():
    with pytest.raises(ValueError, match="needs at least 2"):
        evaluate_case(sequence(GT, GT), sequence(GT, EMPTY))


def test_rejects_0_255_masks():
    message = (
        "pred contains values {0, 255}; the official metrics need 0/1 masks: "
        "divide by 255 or threshold"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_case(255 * sequence(GT, GT), sequence(GT, GT))
    with pytest.raises(ValueError, match=re.escape("gt contains values {0, 1, 2}")):
        evaluate_case(sequence(GT, GT), sequence(GT, 2 * GT))
