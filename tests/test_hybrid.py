"""Hybrid mode: SAM initialises the registration and answers when it fails; injected failures."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from regtrack.budget import LADDER
from regtrack.cli import main
from regtrack.io import write_trackrad_case
from regtrack.metrics import dice
from regtrack.realtime import RealtimeTracker
from regtrack.sam import SamAnswer
from regtrack.tracking import FrameResult, TrackerSettings, iter_track

SHAPE = (64, 64)


def square(centre, half=5):
    mask = np.zeros(SHAPE, bool)
    mask[centre[0] - half : centre[0] + half, centre[1] - half : centre[1] + half] = True
    return mask


class StandInSam:
    """SAM stand-in answering given masks (index -> mask)."""

    def __init__(self, masks):
        self.masks, self.index = masks, 0

    def init(self, frame0, mask0):
        self.index = 0
        return SamAnswer(mask0, 1.0, 1.0, 0.0)

    def step(self, frame):
        self.index += 1
        return SamAnswer(self.masks[self.index], 0.9, 1.0, 1.0)


class StandInRegistration:
    """Registration stand-in: per frame index, an answer (mask, source, reason, metric), a
    delay, and the mask it started from (recorded)."""

    def __init__(self, answers, delays=None):
        self.answers, self.delays = answers, delays or {}
        self.works = {schedule: 1000 for schedule in LADDER}
        self.started_from = {}
        self._pool = ThreadPoolExecutor(1)

    def __call__(self, frame0, mask0, settings, spacing_mm):
        return self

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        self.started_from[index] = previous.copy()
        mask, source, reason, metric = self.answers[index]

        def register():
            time.sleep(self.delays.get(index, 0.0))
            return FrameResult(
                index=index, mask=mask, source=source, reason=reason, metric_value=metric
            )

        return self._pool.submit(register)

    def close(self):
        self._pool.shutdown(wait=True)


def run(answers, sam_masks, *, delays=None, budget_s=None, n=None):
    registration = StandInRegistration(answers, delays)
    settings = TrackerSettings(method="hybrid", budget_s=budget_s)
    frames = np.zeros((n or len(sam_masks), *SHAPE), np.float32)
    with RealtimeTracker(settings, worker=registration, sam_tracker=StandInSam(sam_masks)) as rt:
        rt.init(frames[0], square((30, 30)), calibrate=False)
        results = [rt.step(frame) for frame in frames[1:]]
    return results, registration


def test_failed_registration_is_answered_by_sam():
    sam = {1: square((32, 30))}
    results, _ = run(
        {1: (square((30, 30)), "previous", "elastix failed: too few samples", -0.9)}, sam, n=2
    )
    assert results[0].source == "sam" and "elastix failed" in results[0].reason
    assert np.array_equal(results[0].mask, sam[1])


def test_deadline_is_answered_by_sam_on_time():
    sam = {1: square((32, 30))}
    results, _ = run(
        {1: (square((32, 30)), "registration", "", -0.9)}, sam, n=2, delays={1: 0.5}, budget_s=0.05
    )
    assert results[0].source == "sam" and results[0].reason.startswith("deadline")
    assert results[0].latency_ms < 400


def test_sam_jumping_to_a_look_alike_keeps_registration_and_does_not_steer_it():
    sam = {1: square((32, 31)), 2: square((55, 30))}  # frame 2: SAM jumps 23 mm away
    answers = {
        1: (square((32, 31)), "registration", "", -0.9),
        2: (square((33, 31)), "registration", "", -0.9),
    }
    results, registration = run(answers, sam, n=3)
    assert [r.source for r in results] == ["registration", "registration"]
    assert np.array_equal(registration.started_from[1], sam[1])  # SAM initialised frame 1
    assert np.array_equal(registration.started_from[2], answers[1][0])  # not SAM's look-alike
    assert "SAM disagreed" in results[1].reason and results[1].gate == "pass"


def test_registration_running_away_is_replaced_by_sam():
    sam = {1: square((31, 30))}
    results, _ = run({1: (square((52, 30)), "registration", "", -0.9)}, sam, n=2)
    assert results[0].source == "sam" and "registration jumped" in results[0].reason
    assert results[0].gate == "sam"


def test_metric_far_worse_than_its_history_hands_the_frame_to_sam():
    n = 9
    sam = {i: square((30, 30)) for i in range(1, n)}
    answers = {
        i: (square((30, 30)), "registration", "", -0.95 + 0.002 * (i % 3)) for i in range(1, n)
    }
    answers[n - 1] = (square((30, 30)), "registration", "", -0.4)
    results, _ = run(answers, sam, n=n)
    assert all(r.source == "registration" for r in results[:-1])
    assert results[-1].source == "sam" and "worse than the recent median" in results[-1].reason


def test_hybrid_without_checkpoint_says_so_and_registers(monkeypatch):
    monkeypatch.delenv("REGTRACK_SAM2_CHECKPOINT", raising=False)
    registration = StandInRegistration({1: (square((31, 30)), "registration", "", -0.9)})
    tracker = RealtimeTracker(TrackerSettings(method="hybrid"), worker=registration)
    with pytest.warns(UserWarning, match="no SAM2.1 checkpoint"):
        tracker.init(np.zeros(SHAPE, np.float32), square((30, 30)), calibrate=False)
    assert tracker.method == "registration"
    assert tracker.step(np.zeros(SHAPE, np.float32)).source == "registration"


@pytest.mark.sam2
def test_real_random_checkpoint_sam_answers_alone_and_hybrid_keeps_a_good_registration(
    random_sam21, translated
):
    """With a real (random-weight) SAM2.1: method "sam" answers every later frame with SAM's
    mask and runs no registration; hybrid runs SAM on every frame too, but a registration
    that moved only as far as the target (2-4 mm, under max_jump_mm) is kept, however far
    SAM's untrained answer lies."""
    path, _ = random_sam21
    frames, masks = translated([(0, 0), (2, 1), (4, 2)])
    runs = {}
    for method in ("sam", "hybrid"):
        settings = TrackerSettings(method=method, sam_checkpoint=str(path), sam_image_size=256)
        runs[method] = list(iter_track(frames, masks[0], settings=settings))
        assert [r.index for r in runs[method]] == [0, 1, 2]
        assert runs[method][0].source == "given"
        assert all(np.isfinite(r.sam_score) for r in runs[method][1:])  # SAM ran each frame
    for r in runs["sam"][1:]:
        assert (r.source, r.gate, r.reason, r.iterations) == ("sam", "", "", 0)
        assert r.mask.shape == frames.shape[1:] and np.isnan(r.metric_value)
    for r in runs["hybrid"][1:]:
        assert (r.source, r.gate) == ("registration", "pass") and r.iterations > 0
        assert dice(r.mask, masks[r.index]) > 0.9


def test_cli_sam_method_with_a_missing_checkpoint_fails_clearly(tmp_path, translated, capsys):
    frames, masks = translated([(0, 0), (1, 0)])
    case = write_trackrad_case(tmp_path, "c", frames, masks[0])
    missing = tmp_path / "nope.pt"
    code = main(
        [
            "track",
            str(case),
            "--out",
            str(tmp_path / "o"),
            "--method",
            "sam",
            "--sam-checkpoint",
            str(missing),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "nope.pt" in capsys.readouterr().err


def test_sam_mask_of_implausible_size_does_not_initialise_the_registration():
    sam = {1: square((30, 30), half=15)}  # 9x the area
    answers = {1: (square((31, 30)), "registration", "", -0.9)}
    results, registration = run(answers, sam, n=2)
    assert np.array_equal(registration.started_from[1], square((30, 30)))
    assert results[0].source == "registration"
