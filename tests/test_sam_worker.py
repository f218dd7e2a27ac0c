"""SAM off the main loop: a frame is answered by its deadline whatever SAM is doing, a busy
SAM skips to the newest frame, and a SAM answer that arrives in time is used.

The stand-ins here finish when the test says so (no clocks): the tests check which answer
and which starting point each frame gets, not how fast. Frame k is filled with the value k;
registration answers are the frame-0 square moved k rows down, SAM's moved k columns right.
"""

import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from regtrack.budget import LADDER
from regtrack.realtime import RealtimeTracker
from regtrack.sam import SamAnswer
from regtrack.tracking import FrameResult, TrackerSettings

SHAPE = (32, 32)
BUDGET_S = 0.2  # wide enough for a stand-in that answers at once to be in time


def square(rows=0, cols=0):
    mask = np.zeros(SHAPE, bool)
    mask[10 + rows : 20 + rows, 10 + cols : 20 + cols] = True
    return mask


def who(mask):
    """("registration", k), ("sam", k) or ("given", 0): whose answer a mask is."""
    rows, cols = (np.flatnonzero(mask.any(axis=axis))[0] - 10 for axis in (1, 0))
    if rows:
        return "registration", int(rows)
    return ("sam", int(cols)) if cols else ("given", 0)


def frame(index):
    return np.full(SHAPE, float(index), np.float32)


class ManualSam:
    """SAM stand-in whose steps finish when the test calls ``finish`` (frames in ``at_once``
    finish as they start); ``stepped`` lists the frames it was given, in order."""

    def __init__(self, at_once=()):
        self.at_once, self.stepped, self.fail = set(at_once), [], set()
        self._release: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def init(self, frame0, mask0):
        self.stepped.clear()
        return SamAnswer(mask0, 1.0, 1.0, 0.0)

    def step(self, image):
        index = int(image[0, 0])
        self.stepped.append(index)
        if index not in self.at_once and not self._event(index).wait(10):
            raise TimeoutError(f"the test never finished SAM's step of frame {index}")
        if index in self.fail:
            raise RuntimeError("SAM stand-in failed")
        return SamAnswer(square(cols=index), 0.9, 1.0, 1.0)

    def finish(self, index):
        self._event(index).set()

    def finish_all(self):
        with self._lock:
            events = list(self._release.values())
        for event in events:
            event.set()
        self.at_once = set(range(1000))

    def _event(self, index):
        with self._lock:
            return self._release.setdefault(index, threading.Event())


class ManualRegistration:
    """Registration stand-in: frames in ``at_once`` finish as they are submitted, the others
    never; ``started_from`` records whose answer each registration started from."""

    def __init__(self, at_once=()):
        self.works = {schedule: 1000 for schedule in LADDER}
        self.at_once, self.started_from = set(at_once), {}

    def __call__(self, frame0, mask0, settings, spacing_mm):
        return self

    def submit(self, image, previous, index, *, schedule, return_fields=False):
        self.started_from[index] = who(previous)
        future = Future()
        if index in self.at_once:
            mask = square(rows=index)
            future.set_result(FrameResult(index=index, mask=mask, source="registration"))
        return future

    def close(self):
        pass


@pytest.fixture
def sam():
    stand_in = ManualSam()
    yield stand_in
    stand_in.finish_all()  # no SAM thread left waiting


def tracker(sam, registration=None, *, method="hybrid", budget_s=BUDGET_S, workers=2):
    settings = TrackerSettings(method=method, budget_s=budget_s)
    rt = RealtimeTracker(
        settings, worker=registration or ManualRegistration(), workers=workers, sam_tracker=sam
    )
    rt.init(frame(0), square(), calibrate=False)
    return rt


def wait_for_sam_answer(rt, index):
    """Until SAM's answer of frame ``index`` has arrived (a test synchronisation, no assert on
    time)."""
    give_up = time.monotonic() + 10
    while (rt._sam.newest or (-1,))[0] != index:
        assert time.monotonic() < give_up, f"SAM never answered frame {index}"
        time.sleep(0.001)


def test_a_frame_is_answered_by_its_registration_while_sam_is_still_busy(sam):
    registration = ManualRegistration(at_once={1, 2})
    with tracker(sam, registration, budget_s=0.05) as rt:
        first, second = rt.step(frame(1)), rt.step(frame(2))
        assert rt._sam.busy_with == 1  # frame 2 waits for SAM to be free
    for t, answer in ((1, first), (2, second)):
        assert (answer.source, answer.answered_by, answer.gate) == ("registration", t, "pass")
        assert np.isnan(answer.sam_score) and answer.reason == "SAM not ready (busy with frame 1)"
    assert registration.started_from == {1: ("given", 0), 2: ("registration", 1)}


def test_sam_skips_frames_while_busy_and_resumes_on_the_newest(sam):
    sam.at_once = {3, 4}
    with tracker(sam, ManualRegistration(at_once={1, 2, 3, 4}), budget_s=0.05) as rt:
        for t in (1, 2, 3):
            assert "SAM not ready" in rt.step(frame(t)).reason
        sam.finish(1)  # SAM is free: frame 3 is the newest, frame 2 is skipped
        wait_for_sam_answer(rt, 3)
        assert sam.stepped == [1, 3]
        assert (rt._sam.stepped, rt._sam.skipped, rt._sam.busy_with) == (2, 1, None)
        rt.step(frame(4))
        wait_for_sam_answer(rt, 4)
    assert sam.stepped == [1, 3, 4]


def test_a_sam_answer_in_time_answers_a_late_registration(sam):
    sam.at_once = {1}
    registration = ManualRegistration()  # no registration finishes
    with tracker(sam, registration) as rt:
        late = rt.step(frame(1))
        assert (late.source, late.answered_by, late.sam_score) == ("sam", -1, 0.9)
        assert late.reason.startswith("deadline") and who(late.mask) == ("sam", 1)
        second = rt.step(frame(2))  # SAM now busy with frame 2: its answer of 1 is the newest
    assert registration.started_from[2] == ("sam", 1) and second.start_age == 1
    assert second.source == "previous" and second.answered_by == 1
    assert "SAM not ready (busy with frame 2)" in second.reason


def test_a_sam_answer_arriving_late_starts_the_next_registration(sam):
    registration = ManualRegistration(at_once={2})
    with tracker(sam, registration) as rt:
        first = rt.step(frame(1))  # neither registration nor SAM done by the deadline
        assert (first.source, first.answered_by) == ("previous", 0)
        assert first.reason.startswith("deadline") and "SAM not ready" in first.reason
        sam.finish(1)
        wait_for_sam_answer(rt, 1)
        second = rt.step(frame(2))
    assert registration.started_from[2] == ("sam", 1) and second.start_age == 1
    assert (second.source, second.answered_by) == ("registration", 2)


def test_sam_alone_answers_with_its_newest_answer_when_late(sam):
    with tracker(sam, method="sam") as rt:
        first = rt.step(frame(1))
        assert (first.source, first.answered_by) == ("previous", 0)
        assert first.reason == "deadline: SAM not ready (busy with frame 1)"
        sam.finish(1)
        wait_for_sam_answer(rt, 1)
        second = rt.step(frame(2))  # SAM busy with frame 2 until its deadline
        assert (second.source, second.answered_by) == ("previous", 1)
        assert who(second.mask) == ("sam", 1)
        sam.at_once = {3}
        sam.finish(2)
        wait_for_sam_answer(rt, 2)
        third = rt.step(frame(3))
    assert (third.source, third.answered_by, who(third.mask)) == ("sam", -1, ("sam", 3))


def test_without_a_deadline_every_frame_waits_for_sam(sam):
    registration = ManualRegistration(at_once={1, 2})
    threading.Timer(0.05, sam.finish, args=(1,)).start()
    threading.Timer(0.05, sam.finish, args=(2,)).start()
    with tracker(sam, registration, budget_s=None, workers=1) as rt:
        answers = [rt.step(frame(1)), rt.step(frame(2))]
    assert registration.started_from == {1: ("sam", 1), 2: ("sam", 2)}
    assert [(a.source, a.sam_score, a.start_age) for a in answers] == [("registration", 0.9, 0)] * 2
    assert sam.stepped == [1, 2]


def test_under_a_deadline_a_failed_sam_step_fails_no_frame(sam):
    sam.at_once, sam.fail = {1, 2}, {1}
    with tracker(sam, ManualRegistration(at_once={2})) as rt:
        first = rt.step(frame(1))  # no registration, SAM failed: the newest answer
        assert (first.source, first.answered_by) == ("previous", 0)
        assert "SAM failed (RuntimeError: SAM stand-in failed)" in first.reason
        second = rt.step(frame(2))  # SAM goes on with the next frame
    assert (second.source, second.answered_by) == ("registration", 2)


@pytest.mark.sam2
def test_a_checkpoint_loads_in_a_sam_process_and_torch_stays_out_of_this_one(random_sam21):
    """regtrack loads the checkpoint in a process of its own: the tracker's process never
    imports torch, and SAM still answers every frame (offline: each frame waits for it)."""
    code = textwrap.dedent(
        f"""
        import os, sys
        import numpy as np
        from regtrack.realtime import RealtimeTracker
        from regtrack.tracking import TrackerSettings

        settings = TrackerSettings(
            method="sam", sam_checkpoint={str(random_sam21[0])!r}, sam_image_size=64
        )
        frames = np.random.default_rng(0).normal(size=(3, 48, 48)).astype(np.float32)
        mask = np.zeros((48, 48), bool)
        mask[16:32, 16:32] = True
        with RealtimeTracker(settings) as rt:
            rt.init(frames[0], mask)
            answers = [rt.step(f) for f in frames[1:]]
            pids = rt._sam.pids
        print(*[a.source for a in answers], "torch" in sys.modules, os.getpid() in pids, len(pids))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["sam", "sam", "False", "False", "1"]


@pytest.mark.sam2
def test_a_real_sam_process_under_a_deadline_never_holds_a_frame_back(random_sam21, translated):
    """Hybrid with SAM2.1 (random weights, 256 px) in its process and elastix in a worker:
    every frame is answered, and each record says whether SAM's answer took part."""
    frames, masks = translated([(0, 0), (1, 0), (2, 1), (3, 1), (4, 2)])
    settings = TrackerSettings(
        method="hybrid", budget_s=0.5, sam_checkpoint=str(random_sam21[0]), sam_image_size=256
    )
    with RealtimeTracker(settings, worker="process", workers=1) as rt:
        rt.init(frames[0], masks[0])
        answers = [rt.step(f) for f in frames[1:]]
        assert rt._sam.where == "process" and rt._sam.stepped + rt._sam.skipped <= 4
    assert [a.index for a in answers] == [1, 2, 3, 4]
    for answer in answers:
        assert np.isfinite(answer.sam_score) or "SAM" in answer.reason
        assert answer.source in ("registration", "sam", "previous")
