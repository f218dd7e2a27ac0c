"""The flow rung's keyframe: after a jump, a frame maps onto the newest frame a full
registration answered, not onto frame 0 (regtrack.candidates.keyframe_mask, the engine's flow
rung, the streaming tracker's dispatch)."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import ndimage

from regtrack.budget import FLOW_RUNG, LADDER
from regtrack.candidates import keyframe_mask
from regtrack.engine import Engine, Keyframe
from regtrack.metrics import dice
from regtrack.realtime import RealtimeTracker
from regtrack.tracking import FrameResult, TrackerSettings

SPACING = (1.0, 1.0)
WHOLE = (slice(0, 96), slice(0, 96))


def _centre_error_px(mask, truth) -> float:
    return float(
        np.hypot(*np.subtract(ndimage.center_of_mass(mask), ndimage.center_of_mass(truth)))
    )


def test_a_keyframes_mask_is_carried_onto_a_frame_that_moved_and_was_rescaled(translated):
    frames, masks = translated([(0, 0), (12, 5), (15, 7)])  # frames 1 -> 2: 3 px, 2 px
    carried = keyframe_mask(frames[2], frames[1], masks[1].astype(bool), WHOLE, SPACING)
    assert dice(carried, masks[2]) > 0.95
    assert _centre_error_px(carried, masks[2]) < 0.3
    assert _centre_error_px(masks[1], masks[2]) > 3  # the keyframe's own mask is off


@pytest.mark.parametrize(
    "index, mapped",
    [(6, "mapped onto frame 5"), (2, "")],  # frame 6: 20 px from frame 0; frame 2: 8 px
    ids=["after a jump onto the keyframe", "fine motion keeps its reference"],
)
def test_the_flow_rung_maps_onto_the_keyframe_only_after_a_jump(jump_sequence, index, mapped):
    frames, masks = jump_sequence
    engine = Engine.build(frames[0], masks[0].astype(bool), TrackerSettings(), SPACING)
    keyframe = Keyframe(index - 1, frames[index - 1], masks[index - 1].astype(bool))
    result = engine.track_frame(
        frames[index], masks[index - 1].astype(bool), index, schedule=FLOW_RUNG, keyframe=keyframe
    )
    assert result.source == "registration" and result.candidate == "flow"
    if mapped:
        assert mapped in result.candidate_reason
    else:
        assert "mapped onto" not in result.candidate_reason
    assert _centre_error_px(result.mask, masks[index]) < 0.5


class TimedWorker:
    """A worker of the pool: a full schedule takes 80 ms, a smaller one 60 ms, the flow rung
    2 ms; every answer is the frame's row. It records what each call was given."""

    keyframes = True

    def __init__(self, calls):
        self.works = {schedule: 1000 for schedule in LADDER}
        self.calls = calls
        self._pool = ThreadPoolExecutor(1)

    def submit(self, frame, previous, index, *, schedule, return_fields=False, keyframe=None):
        self.calls.append((index, schedule, keyframe))
        full = schedule.flow_candidate and not schedule.flow_only
        seconds = 0.002 if schedule.flow_only else 0.08 if full else 0.06

        def register():
            time.sleep(seconds)
            mask = np.zeros((32, 32), bool)
            mask[index, :] = True
            return FrameResult(index=index, mask=mask, source="registration")

        return self._pool.submit(register)

    def close(self):
        self._pool.shutdown(wait=True)


def test_when_no_full_registration_fits_it_runs_late_for_the_next_frames_keyframe():
    calls = []
    first_mask = np.zeros((32, 32), bool)
    first_mask[10:20, 10:20] = True
    frame = np.zeros((32, 32), np.float32)
    settings = TrackerSettings(budget_s=0.03)
    interval = 0.25
    answers = []
    with RealtimeTracker(
        settings, worker=lambda *_: TimedWorker(calls), workers=2, frame_interval_s=interval
    ) as tracker:
        tracker.init(frame, first_mask)
        calls.clear()  # the calibration's
        for _ in range(5):
            arrival = time.perf_counter()
            answers.append(tracker.step(frame, arrival=arrival))
            time.sleep(max(0.0, arrival + interval - time.perf_counter()))
    assert [a.answered_by for a in answers] == [1, 2, 3, 4, 5]  # every answer fresh
    assert all("flow rung on another worker answered" in a.candidate_reason for a in answers)
    assert all("past the deadline for a keyframe" in a.candidate_reason for a in answers)
    assert all(a.latency_ms < 20 for a in answers)  # as soon as the flow (2 ms), not at 30 ms
    full = {index for index, schedule, _ in calls if schedule is LADDER[0]}
    assert full == {1, 2, 3, 4, 5}  # each frame's full registration ran, past its deadline
    flow = {index: keyframe for index, schedule, keyframe in calls if schedule.flow_only}
    assert flow[1] is None  # nothing registered yet
    for index in range(2, 6):
        assert flow[index].index == index - 1 and flow[index].mask[index - 1].all()


@pytest.mark.parametrize("age", [9, 0])
def test_a_keyframe_too_old_or_not_older_is_not_given(age):
    calls = []
    tracker = RealtimeTracker(TrackerSettings(), worker=lambda *_: TimedWorker(calls))
    tracker._keyframe = Keyframe(10, np.zeros((32, 32)), np.zeros((32, 32), bool))
    slot = type("Slot", (), {"worker": TimedWorker(calls)})()
    assert tracker._keyframe_for(slot, 10 + age) is None
    assert tracker._keyframe_for(slot, 11) is tracker._keyframe
