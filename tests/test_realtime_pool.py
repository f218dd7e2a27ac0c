"""The pool of registration workers: overlapping registrations, ordering, freshness, crashes,
real deadlines in a worker process, and workers that die with their parent.

The stand-in registrations here finish when the test says so (no clocks): what they check is
which answer and which starting point each frame gets, not how fast.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

from regtrack.budget import LADDER, CostModel, choose_schedule
from regtrack.processes import usable_cores
from regtrack.realtime import RealtimeTracker
from regtrack.tracking import FrameResult, TrackerSettings

SHAPE = (32, 32)


def first_mask():
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 10:20] = True
    return mask


def row_mask(index):
    mask = np.zeros(SHAPE, bool)
    mask[index, :] = True  # row `index`: tells the answers apart
    return mask


def frame_of(mask):
    """Which frame's answer a mask is (0: the given square)."""
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[0]) if rows.size == 1 else 0


class ManualWorker:
    """Registration stand-in whose registrations finish when the test calls ``finish``.

    Frames in ``at_once`` finish as they are submitted, frames in ``crash`` fail as a dead
    worker process does. One object serves every worker of the pool; ``made`` counts them.
    """

    def __init__(self, at_once=(), crash=()):
        self.works = {schedule: 1000 for schedule in LADDER}
        self.at_once, self.crash = set(at_once), set(crash)
        self.futures, self.started_from, self.made = {}, {}, 0

    def __call__(self, frame0, mask0, settings, spacing_mm):
        self.made += 1
        return self

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        self.started_from[index] = frame_of(previous)
        self.futures[index] = Future()
        if index in self.crash:
            self.futures[index].set_exception(BrokenProcessPool("worker process died"))
        elif index in self.at_once:
            self.finish(index)
        return self.futures[index]

    def finish(self, index):
        result = FrameResult(index=index, mask=row_mask(index), source="registration")
        self.futures[index].set_result(result)

    def close(self):
        pass


def tracker(worker, workers, budget_s=0.02):
    rt = RealtimeTracker(TrackerSettings(budget_s=budget_s), worker=worker, workers=workers)
    rt.init(np.zeros(SHAPE, np.float32), first_mask(), calibrate=False)
    return rt


def test_results_out_of_order_are_ordered_and_a_late_one_never_overwrites_a_newer():
    worker = ManualWorker(at_once={6})
    frame = np.zeros(SHAPE, np.float32)
    with tracker(worker, workers=2) as rt:
        first = rt.step(frame)  # worker A registers frame 1, past its deadline
        assert (first.source, first.answered_by, first.start_age) == ("previous", 0, 1)
        assert first.reason.startswith("deadline")
        second = rt.step(frame)  # worker B takes frame 2: the two overlap
        assert (second.answered_by, second.start_age) == (0, 2)
        busy = rt.step(frame)
        assert "all 2 registration workers busy: frames 1, 2 still running" in busy.reason
        assert busy.start_age == -1  # no registration started for frame 3
        worker.finish(2)  # frame 2 finishes before frame 1
        fourth = rt.step(frame)
        assert fourth.answered_by == 2 and frame_of(fourth.mask) == 2
        assert worker.started_from[4] == 2 and fourth.start_age == 2
        worker.finish(1)  # frame 1 finishes last: older than frame 2's answer
        fifth = rt.step(frame)
        assert fifth.answered_by == 2 and frame_of(fifth.mask) == 2
        assert worker.started_from[5] == 2 and fifth.start_age == 3
        worker.finish(5)
        worker.finish(4)
        sixth = rt.step(frame)  # finishes at once: a fresh answer, started from frame 5
        assert (sixth.source, sixth.answered_by, sixth.start_age) == ("registration", 6, 1)
        assert worker.started_from[6] == 5


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_answers_and_starting_points_are_never_older_than_the_pool_allows(workers):
    """Each registration takes 0..workers frames (0: done before its deadline): every frame
    is registered, and each answer is the newest finished one, at most `workers` old."""
    n = 30
    takes = {t: [0, workers, 1, workers - 1, 0, workers][t % 6] for t in range(1, n)}
    worker = ManualWorker(at_once={t for t, d in takes.items() if d == 0})
    frame = np.zeros(SHAPE, np.float32)
    with tracker(worker, workers=workers) as rt:
        for t in range(1, n):
            for s in range(1, t):
                if 0 < takes[s] and s + takes[s] == t:
                    worker.finish(s)
            newest = max([0] + [s for s in range(1, t) if s + takes[s] <= t])
            answer = rt.step(frame)
            assert answer.start_age != -1, f"frame {t} got no registration"
            assert worker.started_from[t] == newest and answer.start_age == t - newest
            expected = t if takes[t] == 0 else newest
            assert answer.answered_by == expected and frame_of(answer.mask) == expected
            assert t - answer.answered_by <= workers and answer.start_age <= workers


def test_a_crashed_worker_is_replaced_and_its_frame_answered_by_the_fallback():
    worker = ManualWorker(at_once={1, 3, 5}, crash={2})
    frame = np.zeros(SHAPE, np.float32)
    with tracker(worker, workers=2) as rt:
        assert worker.made == 2
        assert rt.step(frame).answered_by == 1
        crashed = rt.step(frame)
        assert crashed.source == "previous" and crashed.answered_by == 1
        assert "registration worker failed (BrokenProcessPool: worker process died)" in (
            crashed.reason
        )
        assert worker.made == 3  # replaced
        assert rt.step(frame).source == "registration"
        late = rt.step(frame)  # frame 4 misses its deadline, then its worker dies
        worker.futures[4].set_exception(BrokenProcessPool("worker process died"))
        assert late.reason.startswith("deadline")
        fresh = rt.step(frame)
        assert fresh.source == "registration" and worker.made == 4


class SleepingWorker:
    """Registration stand-in taking ``seconds`` each, ``threads`` at once (sleeps overlap)."""

    def __init__(self, seconds, threads):
        self.works = {schedule: 1000 for schedule in LADDER}
        self.seconds, self._pool = seconds, ThreadPoolExecutor(threads)

    def __call__(self, frame0, mask0, settings, spacing_mm):
        return self

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        def register():
            time.sleep(self.seconds)
            return FrameResult(index=index, mask=row_mask(index), source="registration")

        return self._pool.submit(register)

    def close(self):
        self._pool.shutdown(wait=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_stream_overlaps_registrations_longer_than_the_frame_interval(workers):
    """Registrations take 1.2 frame intervals: a pool of two registers every frame, one
    worker every other frame (the frames between are answered by the newest result)."""
    frames = np.zeros((12, *SHAPE), np.float32)
    worker = SleepingWorker(0.12, threads=workers)
    settings = TrackerSettings(budget_s=0.5)
    with RealtimeTracker(settings, worker=worker, workers=workers) as rt:
        rt.init(frames[0], first_mask(), calibrate=False)
        answers = list(rt.stream(frames, frame_rate_hz=10))
    assert [a.index for a in answers] == list(range(1, 12))
    fresh = [a.answered_by == a.index and a.source == "registration" for a in answers]
    if workers == 2:
        assert all(fresh)
    else:
        assert 3 <= sum(fresh) <= 8 and any("still running" in a.reason for a in answers)
    assert all(a.answered_by <= a.index and frame_of(a.mask) == a.answered_by for a in answers)


def test_a_schedule_running_past_the_next_frame_needs_a_worker_free_for_that_frame():
    works = {schedule: int(1e5 * schedule.iterations * schedule.samples) for schedule in LADDER}
    cost = CostModel(margin=1.0)
    for work in works.values():
        cost.observe(work, 5 + work / 250)  # full schedule: 405 ms
    assert choose_schedule(500, works, cost, next_frame_ms=125, free_for_next=True) == LADDER[0]
    alone = choose_schedule(500, works, cost, next_frame_ms=125, free_for_next=False)
    assert cost.predict(works[alone]) <= 125 < cost.predict(works[LADDER[1]])
    assert choose_schedule(None, works, cost, next_frame_ms=125, free_for_next=False) == alone


class SpikyWorker:
    """Registration stand-in that is slow (``slow_s``, longer than the budget) for the frames
    submitted while ``spike`` holds their index, and answers at once otherwise; the works
    differ per rung, so the cost model has a ladder to climb."""

    def __init__(self, spike, slow_s):
        self.spike, self.slow_s = spike, slow_s
        self.works = {
            s: 90000 if s.pyramid == "" else 1800 + 3000 * i for i, s in enumerate(LADDER)
        }
        self.timers = []

    def __call__(self, frame0, mask0, settings, spacing_mm):
        return self

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        future = Future()
        result = FrameResult(
            index=index, mask=row_mask(index), source="registration", schedule=schedule.name
        )
        if index in self.spike:
            timer = threading.Timer(self.slow_s, future.set_result, (result,))
            timer.daemon = True
            self.timers.append(timer)
            timer.start()
        else:
            future.set_result(result)
        return future

    def close(self):
        pass


def test_fresh_answers_resume_within_8_frames_of_a_load_spike_and_none_is_late(monkeypatch):
    """Frames 6-13 of a stream at 8 Hz take 0.4 s (the budget is 0.25 s), the others none:
    the spike's frames get the previous answer on time, and once it is over the frames get
    their own registrations again within 8 frames, the preset's rung among them (the cost
    model re-measures it). The answer margin is set wide, so a loaded test machine waking
    this process late cannot make an answer late (the deadline logic is what is tested)."""
    import regtrack.realtime

    monkeypatch.setattr(regtrack.realtime, "_ANSWER_MARGIN_S", 0.08)
    spike = range(6, 14)
    worker = SpikyWorker(spike, slow_s=0.4)
    frames = np.zeros((31, *SHAPE), np.float32)  # the masks tell 31 frames apart
    settings = TrackerSettings(budget_s=0.25)
    with RealtimeTracker(settings, worker=worker, workers=2) as rt:
        rt.init(frames[0], first_mask())
        answers = list(rt.stream(frames, frame_rate_hz=8.0))
    for timer in worker.timers:
        timer.join()
    assert [a.index for a in answers] == list(range(1, 31))
    assert all(a.latency_ms <= a.budget_ms for a in answers), "an answer came late"
    fresh = {a.index for a in answers if a.source == "registration" and a.answered_by == a.index}
    assert not fresh & set(spike)
    after = sorted(i for i in fresh if i >= spike.stop)
    assert after and after[0] < spike.stop + 8, f"fresh again only at frame {after[:1]}"
    assert len(after) >= 0.8 * (31 - after[0])  # and they stay fresh
    top = [a.index for a in answers if a.index >= spike.stop and a.schedule == LADDER[0].name]
    assert top, "the preset's rung was never tried again after the spike"


def test_the_answer_margin_forgets_a_late_wake_within_a_second(monkeypatch):
    """A wake 100 ms late widens the margin by 150 ms; it halves every half-life after, and a
    smaller lateness later does not reset it."""
    from regtrack import realtime

    clock = [100.0]
    monkeypatch.setattr(realtime.time, "perf_counter", lambda: clock[0])
    rt = RealtimeTracker(TrackerSettings(budget_s=0.05), worker=ManualWorker())
    base = realtime._ANSWER_MARGIN_S
    assert rt._margin_s() == pytest.approx(base)
    rt._late_by(0.1)
    assert rt._margin_s() == pytest.approx(base + 0.15)
    clock[0] += realtime._WAKE_HALF_LIFE_S
    rt._late_by(0.01)
    assert rt._margin_s() == pytest.approx(base + 0.075)
    clock[0] += 1.0 - realtime._WAKE_HALF_LIFE_S  # a second after the late wake
    assert rt._margin_s() == pytest.approx(base + 0.15 * 0.5 ** (1.0 / realtime._WAKE_HALF_LIFE_S))


def test_pool_size_is_checked():
    with pytest.raises(ValueError, match="workers must be a whole number"):
        RealtimeTracker(worker="process", workers=0)
    with pytest.raises(ValueError, match="inline worker runs one registration"):
        RealtimeTracker(worker="inline", workers=2)


def textured(shape, shift, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    canvas = sum(ndimage.gaussian_filter(rng.normal(size=(512, 512)), s) * s for s in (2, 4, 8))
    r, c = 80 - shift[0], 80 - shift[1]
    return (canvas[r : r + shape[0], c : c + shape[1]] * 100).astype(np.float32)


@pytest.mark.slow
def test_a_worker_process_misses_a_2_ms_deadline_and_still_seeds_the_next():
    shape = (350, 350)
    frames = [textured(shape, (2 * t, t)) for t in range(3)]
    mask = np.zeros(shape, bool)
    mask[150:200, 150:200] = True
    with RealtimeTracker(TrackerSettings(), worker="process") as rt:
        rt.init(frames[0], mask, calibrate=False)
        # uncalibrated, the cheapest rung (the flow alone) is chosen, and 2 ms is too little
        late = rt.step(frames[1], budget_s=0.002)
        assert late.source == "previous" and late.answered_by == 0 and late.start_age == 1
        assert late.reason == "deadline: flow not done within 2 ms"
        assert np.array_equal(late.mask, mask)
        following = rt.step(frames[2])  # no deadline: waits for the worker, then registers
    assert following.source == "registration" and following.answered_by == 2
    assert following.start_age == 1  # it started from frame 1's late registration
    # the frame went through shared memory and came back as bits, its stages timed there
    assert following.mask.dtype == bool and following.mask.shape == shape
    assert {"dispatch", "registration", "warp", "return"} <= set(following.stages_ms)
    assert sum(following.stages_ms.values()) == pytest.approx(following.latency_ms, abs=0.01)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_processes_die_with_a_killed_parent(tmp_path):
    parent = textwrap.dedent("""
        import sys, time
        import numpy as np
        from regtrack.realtime import RealtimeTracker
        from regtrack.tracking import TrackerSettings
        frame = np.random.default_rng(0).random((48, 48)).astype(np.float32) * 100
        mask = np.zeros((48, 48), bool)
        mask[18:30, 18:30] = True
        tracker = RealtimeTracker(TrackerSettings(budget_s=0.5), workers=2)
        tracker.init(frame, mask, calibrate=False)
        print(*[pid for slot in tracker._slots for pid in slot.worker.pids], flush=True)
        print(*[slot.worker._frames.filename for slot in tracker._slots], flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        pids = [int(pid) for pid in process.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        slots = process.stdout.readline().split()  # the workers' frame slots (shared memory)
        assert len(slots) == 2 and not any(Path(path).exists() for path in slots)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    end = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a worker outlived its killed parent"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server")
def test_workers_fork_from_a_loaded_server_and_a_killed_one_is_replaced_warm():
    shape = (96, 96)
    frames = [textured(shape, (t, 0)) for t in range(4)]
    mask = np.zeros(shape, bool)
    mask[40:56, 40:56] = True
    with RealtimeTracker(TrackerSettings(budget_s=30.0), worker="process", workers=2) as rt:
        rt.init(frames[0], mask, calibrate=False)
        first = [slot.worker for slot in rt._slots]
        assert [worker.started_warm for worker in first] == [True, True]
        share = max(1, usable_cores() // 2)  # every pool of a worker: its share of the cores
        for worker in first:
            assert worker.thread_counts == {"itk": share, "opencv": share, "blas": 1}
        (victim,) = first[0].pids
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.5)  # the pool notices its process is gone
        answers = [rt.step(frame) for frame in frames[1:]]
        replacements = [slot.worker for slot in rt._slots if slot.worker not in first]
    assert any("registration worker failed" in answer.reason for answer in answers)
    assert answers[-1].source == "registration"
    assert len(replacements) == 1 and replacements[0].started_warm
    assert victim not in replacements[0].pids


class SlowRegistrationWorker(ManualWorker):
    """Registrations finish when the test says so; the flow rung answers at once, with the
    frame's row and candidate "flow", or raises ``flow_error`` when given."""

    def __init__(self, flow_error=None):
        super().__init__()
        self.flow_error = flow_error

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        if not schedule.flow_only:
            return super().submit(frame, previous, index, schedule=schedule)
        future = Future()
        if self.flow_error is not None:
            future.set_exception(self.flow_error)
        else:
            future.set_result(
                FrameResult(
                    index=index, mask=row_mask(index), source="registration", candidate="flow"
                )
            )
        return future


def fast_cost_model(rt):
    """Every rung predicted to take 1 ms, so the full registration is chosen."""
    for kind in ("", "recursive", "flow"):
        for _ in range(3):
            rt._pacer.cost.observe(1000, 1.0, kind)


def test_a_late_registration_is_answered_by_the_flow_rung_on_an_idle_worker():
    frame = np.zeros(SHAPE, np.float32)
    with tracker(SlowRegistrationWorker(), workers=2, budget_s=0.03) as rt:
        fast_cost_model(rt)
        late = rt.step(frame)
    assert late.source == "registration" and late.answered_by == 1 and late.candidate == "flow"
    assert frame_of(late.mask) == 1  # this frame's own answer, not frame 0's
    assert "not done within 30 ms; the flow rung on another worker answered" in (
        late.candidate_reason
    )


def test_without_an_idle_worker_a_late_registration_falls_back_to_the_previous_answer():
    frame = np.zeros(SHAPE, np.float32)
    with tracker(SlowRegistrationWorker(), workers=1, budget_s=0.03) as rt:
        fast_cost_model(rt)
        late = rt.step(frame)
    assert late.source == "previous" and late.answered_by == 0
    assert late.reason.startswith("deadline: registration (it1/s1) not done within 30 ms")


def test_a_failed_backup_leaves_the_late_frame_to_the_previous_answer():
    frame = np.zeros(SHAPE, np.float32)
    worker = SlowRegistrationWorker(flow_error=RuntimeError("flow failed"))
    with tracker(worker, workers=2, budget_s=0.03) as rt:
        fast_cost_model(rt)
        late = rt.step(frame)
        assert late.source == "previous" and late.answered_by == 0
        assert late.reason.startswith("deadline: registration (it1/s1) not done within 30 ms")
        assert all(slot.job is None or slot.job.index == 1 for slot in rt._slots)
