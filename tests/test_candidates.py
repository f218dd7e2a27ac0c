"""The choice between the registration's and the flow's answer (regtrack.candidates)."""

import numpy as np
from conftest import disk, textured_canvas

from regtrack.candidates import Candidate, choose_candidate, flow_candidate
from regtrack.gate import centroid_mm
from regtrack.metrics import dice
from regtrack.registration import warp_mask_to

SPACING = (1.0, 1.0)
SHAPE = (96, 96)
PART = (slice(20, 76), slice(20, 76))  # the target's neighbourhood


def _pair(shift_px):
    """Frame 0 and frame t cut from one texture, the content of frame t moved by ``shift_px``
    (row, col); the target disc of frame 0 and where it truly is in frame t."""
    canvas = textured_canvas(160, seed=3)
    top = np.array([32, 32])
    frame0 = canvas[top[0] : top[0] + SHAPE[0], top[1] : top[1] + SHAPE[1]]
    r0, c0 = top - np.asarray(shift_px)
    frame_t = canvas[r0 : r0 + SHAPE[0], c0 : c0 + SHAPE[1]]
    centre = np.array(SHAPE) // 2
    return frame0, frame_t, disk(SHAPE, centre, 12), disk(SHAPE, centre + shift_px, 12)


def _identity_points(offset_mm=(0.0, 0.0)):
    rows, cols = np.indices(SHAPE, dtype=np.float64)[:, PART[0], PART[1]]
    return np.stack([rows - offset_mm[0], cols - offset_mm[1]])


def _choose(frame0, frame_t, mask0, registered, shift_mm=(0.0, 0.0)):
    """What the engine does: both maps of PART, their target centroids, the choice."""
    value_range = (float(frame0.min()), float(frame0.max()))
    flow = flow_candidate(frame_t, frame0, PART, shift_mm, SPACING, value_range)
    registration = Candidate("registration", registered)
    masks = [warp_mask_to(mask0, c.points, SPACING) for c in (registration, flow)]
    choice = choose_candidate(
        registration,
        flow,
        centroids_mm=[centroid_mm(m, SPACING) for m in masks],
        target_shift_mm=float(np.hypot(*shift_mm)),
        agree_mm=3.0,
        max_shift_mm=15.0,
    )
    return choice, warp_mask_to(mask0, choice.chosen.points, SPACING)


def test_flow_answers_fine_motion_where_the_registration_is_off():
    frame0, frame_t, mask0, truth = _pair((2, -3))
    wrong = _identity_points(offset_mm=(2 + 1.5, -3 - 1.0))  # right motion, off by (1.5, -1)
    choice, mask = _choose(frame0, frame_t, mask0, wrong)
    assert choice.chosen.name == "flow", choice.reason
    assert dice(mask, truth[PART]) > 0.97
    off = centroid_mm(mask, SPACING) - centroid_mm(truth[PART], SPACING)
    assert np.hypot(*off) < 0.3


def test_registration_answers_after_a_jump_even_where_the_flow_agrees():
    frame0, frame_t, mask0, truth = _pair((2, -3))
    right = _identity_points(offset_mm=(2, -3))
    choice, mask = _choose(frame0, frame_t, mask0, right, shift_mm=(-16.0, 0.0))
    assert choice.chosen.name == "registration"
    assert "from frame 0" in choice.reason
    assert dice(mask, truth[PART]) > 0.99


def test_registration_answers_where_the_flow_lands_far_from_it():
    _, _, mask0, truth = _pair((2, -3))
    registration = Candidate("registration", _identity_points(offset_mm=(2, -3)))
    lost = Candidate("flow", _identity_points(offset_mm=(2 + 5, -3)))  # a flow 5 mm off
    masks = [warp_mask_to(mask0, c.points, SPACING) for c in (registration, lost)]
    choice = choose_candidate(
        registration,
        lost,
        centroids_mm=[centroid_mm(m, SPACING) for m in masks],
        target_shift_mm=3.6,
        agree_mm=3.0,
        max_shift_mm=15.0,
    )
    assert choice.chosen.name == "registration" and "from the registration" in choice.reason
    mask = warp_mask_to(mask0, choice.chosen.points, SPACING)
    assert dice(mask, truth[PART]) > 0.99


def test_frames_record_which_candidate_answered():
    from regtrack.engine import Engine, TrackerSettings

    frame0, frame_t, mask0, _ = _pair((2, -3))
    settings = TrackerSettings(
        start="translation", overrides={"MaximumNumberOfIterations": [5, 5, 5]}
    )
    engine = Engine.build(frame0, mask0, settings, SPACING)
    record = engine.track_frame(frame_t, mask0, 1).record()
    assert record["candidate"] in ("registration", "flow")
    assert record["candidate"] == "flow" or record["candidate_reason"]
