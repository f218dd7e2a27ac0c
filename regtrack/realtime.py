"""The streaming tracker: one frame in, one mask out, never later than the frame's deadline.

:class:`RealtimeTracker` is the one code path of regtrack: offline tracking drives it frame by
frame with no deadline, the real-time mode with one.

Under a deadline the registration engine lives in worker processes (:mod:`regtrack.workers`),
a small pool of them (one elastix thread each), so registrations of consecutive frames overlap
when one takes longer than the frame interval: the frame rate, not the budget alone, is what
the pipeline must sustain. Each frame goes to a free worker with the largest schedule that fits
(:mod:`regtrack.pacing`), starting from the freshest known position (the newest finished
answer); the main process waits for it until the deadline and, when it is not done, answers
with the newest finished result (its frame is recorded as ``answered_by``), while the late
registration goes on and, once finished, moves the starting point of the next frames forward,
unless a newer result already has.

SAM2.1 (methods "sam" and "hybrid") runs off the main loop too (:mod:`regtrack.sam_worker`):
in a process of its own when regtrack loads the model, in a thread for a tracker the caller
passes in. Each frame is offered to it as it arrives; when SAM is busy the newest frame waits
and older waiting ones are skipped. Under a deadline a frame uses SAM's answer only if it has
arrived in time; without one (offline) every frame waits for SAM, as SAM then initialises
every registration.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import Self

import numpy as np

from .budget import FLOW_RUNG, LADDER, Schedule, check_budget
from .checks import check_frame, check_mask, check_spacing
from .engine import FrameResult, Keyframe, TrackerSettings
from .gate import centroid_mm, hybrid_decision, metric_outlier
from .pacing import CALIBRATION, WARM_UP, Job, Pacer
from .processes import start_worker_server, usable_cores, worker_context
from .sam_worker import SamWorker, sam_checkpoint
from .stages import with_tracker_stages
from .workers import WORKERS, ProcessWorker

__all__ = ["RealtimeTracker", "default_workers", "start_worker_server", "worker_context"]

logger = logging.getLogger(__name__)

_ANSWER_MARGIN_S = 0.004  # building the fallback answer and returning it
# ... plus the latest this process recently woke from a timed wait or answered past the time
# it meant to (measured up to 19 ms at load 3.5 on 2 cores), so the fallback still comes in
# time. (Lowering the workers' priority instead starved them behind other users' processes.)
# Each lateness counts for less as it ages, halving every _WAKE_HALF_LIFE_S: under a lasting
# load new ones keep the margin up, and once a spike is over the margin shrinks back within
# a second instead of eating the budget of the next 256 waits (as the largest of the last
# 256 did).
_WAKE_SAFETY = 1.5  # a spike larger than any recent one still fits
_WAKE_HALF_LIFE_S = 0.5
_MAX_WORKERS = 4
# The flow rung maps a frame onto the newest frame a full registration answered when that is
# at most this many frames old (a second at 8 Hz), onto frame 0 otherwise.
_KEYFRAME_MAX_AGE = 8
# A registration run for a keyframe is extra work, done only while the machine has room:
# its newest registrations at most a quarter slower than calibrated (the cost model's
# slowdown: 0.9-1.15 on a quiet machine, 1.26-2.2 under a load spike on the real case at
# 0.05 s) and no frame answered by an earlier answer for the last second. (With neither, the
# keyframes' registrations slowed the answers: 42-98 % of a 6 s spike's frames were fresh at
# 0.05 s, against 98-100 % without keyframes.)
_KEYFRAME_MAX_SLOWDOWN = 1.25
_KEYFRAME_CALM_S = 1.0


def default_workers(budget_s: float | None) -> int:
    """Registration workers for a process pool: one per core (at most 4) under a budget, one
    without (nothing then gains from overlapping registrations)."""
    if budget_s is None:
        return 1
    return max(1, min(usable_cores(), _MAX_WORKERS))


@dataclass
class _Pending:
    """A frame taken in and not yet answered."""

    index: int
    arrival: float
    deadline: float | None
    budget_s: float | None
    sam: Future | None = None  # SAM's answer for this frame (None: skipped for a newer one)
    job: Job | None = None
    slot: _Slot | None = None
    schedule: Schedule | None = None
    reason: str = ""  # why there is no usable registration
    result: FrameResult | None = None  # the registration, once taken in and usable
    taken_in: bool = False  # the registration's outcome is in result or reason
    backup: Job | None = None  # the flow rung on another worker, answering a late registration
    backup_slot: _Slot | None = None
    for_keyframe: bool = False  # the registration runs past the deadline for the keyframe

    @property
    def budget_ms(self) -> float:
        return math.nan if self.budget_s is None else self.budget_s * 1e3


@dataclass
class _Slot:
    """A worker of the pool and the registration it runs, if any."""

    worker: object
    job: Job | None = None

    def ready(self) -> bool:
        """Built (a failed build raises its error here)."""
        built = getattr(self.worker, "built", None)
        if built is None:
            return True
        if not built.done():
            return False
        built.result()
        return True


class RealtimeTracker:
    """Track a target frame by frame, each answer within its budget.

    Parameters
    ----------
    settings : TrackerSettings, optional
        Preset, ROI and gate; ``settings.budget_s`` is the default per-frame budget.
    spacing_mm : (float, float)
    worker : {"auto", "inline", "process"} or callable
        Where elastix runs. "process" (the default when a budget is set) enforces deadlines;
        "inline" runs in this process and can only choose a schedule that should fit. A
        callable ``(frame0, mask0, settings, spacing_mm) -> worker`` supplies another worker
        (called once per worker of the pool, and again to replace one that failed): an
        object with ``works`` (schedule -> work), ``submit(frame, previous, index, *,
        schedule, return_fields) -> concurrent.futures.Future[FrameResult]`` and ``close()``.
    workers : int, optional
        Registrations that may run at once, each in its own worker process with one elastix
        thread (default: :func:`default_workers`; "inline" runs one).
    frame_interval_s : float, optional
        Seconds between frames (default: learned from the ``arrival`` times given to
        :meth:`step`). A schedule that would still run when the next frame arrives is
        chosen only when another worker will be free for that frame.
    return_fields : bool
        Also compute each frame's displacement field.
    sam_tracker : object, optional
        For methods "sam" and "hybrid": a tracker with ``init(frame0, mask0)`` and
        ``step(frame) -> SamAnswer``, e.g. ``regtrack.sam.SamTracker(model)`` around a model
        already loaded; it steps in a thread of this process. Default: SAM2.1 loaded from
        ``settings.sam_checkpoint`` in a process of its own.

    Notes
    -----
    Each answer is the frame's own registration when it passes its gate in time
    (``answered_by == index``), else the newest finished result (``answered_by`` < index;
    ``reason`` says why). A registration starts from the newest finished answer when it is
    submitted (``start_age`` frames old). A registration that finishes late never replaces
    a newer answer; a worker that dies is replaced, and its frame answered by the fallback.
    SAM's answer for a frame takes part (gate, fallback) when it has arrived by the time the
    frame is answered, which a failed or late registration waits for until the deadline;
    otherwise ``sam_score`` is NaN and ``reason`` says that SAM was not ready.

    Examples
    --------
    >>> with RealtimeTracker(TrackerSettings(budget_s=0.25)) as tracker:   # doctest: +SKIP
    ...     tracker.init(frame0, mask0)
    ...     for frame in stream:
    ...         result = tracker.step(frame)      # result.mask, result.record()
    """

    def __init__(
        self,
        settings: TrackerSettings | None = None,
        *,
        spacing_mm: Sequence[float] = (1.0, 1.0),
        worker: str = "auto",
        workers: int | None = None,
        frame_interval_s: float | None = None,
        return_fields: bool = False,
        sam_tracker=None,
    ) -> None:
        if not callable(worker) and worker not in ("auto", "inline", "process"):
            raise ValueError(
                f"worker must be 'auto', 'inline', 'process' or a callable, got {worker!r}"
            )
        self.settings = settings or TrackerSettings()
        row, col = check_spacing(tuple(spacing_mm)[:2], "spacing_mm")
        self.spacing_mm = (row, col)
        self.worker_kind = worker
        if worker == "auto":
            self.worker_kind = "process" if self.settings.budget_s else "inline"
        self.workers = _check_workers(workers, self.worker_kind, self.settings.budget_s)
        if self.worker_kind == "process":
            start_worker_server()  # loads while the caller reads frame 0
        self.return_fields = return_fields
        self.method = self.settings.method
        self._method_decided = False
        self._pacer = Pacer(
            budgeted=bool(self.settings.budget_s), frame_interval_s=frame_interval_s
        )
        self._slots: list[_Slot] = []
        self._build_args: tuple = ()
        self._sam: SamWorker | None = None
        self._sam_tracker = sam_tracker
        self._ready = False
        self._previous: np.ndarray | None = None
        self._previous_index = 0  # the frame whose answer _previous is
        self._keyframe: Keyframe | None = None  # the newest frame a full registration answered
        self._stale_at = -math.inf  # when a frame was last answered by an earlier answer
        self._metrics: deque[float] = deque(maxlen=20)
        self._lateness = (time.perf_counter(), 0.0)  # (when, how late), see _late_by
        self._next_index = 1
        self._frame_shape: tuple[int, int] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers and SAM (registrations and a SAM step still running are
        abandoned)."""
        self._close_registrations()
        if self._sam is not None:
            self._sam.close()
            self._sam = None

    def _close_registrations(self) -> None:
        for slot in self._slots:
            slot.worker.close()
        self._slots = []
        self._ready = False

    def init(
        self,
        frame0: np.ndarray,
        mask0: np.ndarray,
        *,
        previous_mask: np.ndarray | None = None,
        next_index: int = 1,
        calibrate: bool | None = None,
    ) -> FrameResult:
        """Set frame 0 and its mask; returns frame 0's answer (the given mask).

        ``previous_mask`` and ``next_index`` resume a sequence part-way (SAM's memory then
        starts again from frame 0 alone). ``calibrate`` times a few registrations of frame 0
        on every worker at once, so the first budgeted frame already has a cost model
        (default: when a budget is set).
        """
        self._close_registrations()
        frame0 = check_frame(frame0, 0)
        if frame0.ndim != 2:
            raise ValueError(f"frame 0 must be a 2D (H, W) image, got shape {frame0.shape}")
        mask0 = check_mask(mask0, frame0.shape)
        if not self._method_decided:  # once per tracker: a resumed init keeps the method
            self.method, self._method_decided = self._method_that_runs(), True
        self._sam = self._start_sam(frame0, mask0)
        if self.method != "sam":
            self._build_args = (frame0, mask0, self.settings, self.spacing_mm)
            self._start_workers()
        self._frame_shape = frame0.shape
        self._previous = mask0 if previous_mask is None else np.asarray(previous_mask, bool)
        self._previous_index = next_index - 1
        self._keyframe = None
        self._next_index, self._ready = next_index, True
        self._metrics.clear()
        self._pacer.restart()
        budgeted = self.settings.budget_s or self.settings.total_budget_s
        if self._slots and (calibrate if calibrate is not None else budgeted):
            self._calibrate(frame0, mask0)
        step_sizes = getattr(self._slots[0].worker, "step_sizes", None) if self._slots else None
        return FrameResult(
            index=0, mask=mask0, source="given", step_sizes=step_sizes or None, answered_by=0
        )

    def _new_worker(self):
        if self.worker_kind == "process":
            # each worker's share of the cores, for every thread pool it runs (see
            # regtrack.processes._set_thread_pools)
            threads = max(1, usable_cores() // self.workers)
            return ProcessWorker(*self._build_args, threads=threads)
        return WORKERS.get(self.worker_kind, self.worker_kind)(*self._build_args)

    def _start_workers(self) -> None:
        """Start every worker (processes build their engines side by side), wait for them."""
        try:
            for _ in range(self.workers):
                self._slots.append(_Slot(self._new_worker()))
            for slot in self._slots:
                built = getattr(slot.worker, "built", None)
                if built is not None:
                    built.result()
        except BaseException:
            self.close()
            raise

    def _method_that_runs(self) -> str:
        """The settings' method, decided once: hybrid without a SAM2.1 checkpoint says so and
        runs registration alone for the whole run."""
        method = self.settings.method
        if method != "hybrid" or self._sam_tracker is not None:
            return method
        if not sam_checkpoint(self.settings):
            message = (
                "hybrid mode has no SAM2.1 checkpoint (pass --sam-checkpoint or set "
                "REGTRACK_SAM2_CHECKPOINT); running registration alone"
            )
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=3)
            return "registration"
        return method

    def _start_sam(self, frame0, mask0) -> SamWorker | None:
        """SAM2.1 for methods "sam" and "hybrid", started (again) from frame 0; a resumed
        init keeps the worker and its loaded model."""
        if self.method == "registration":
            return None
        sam = self._sam
        if sam is None and self._sam_tracker is not None:
            sam = SamWorker.in_thread(self._sam_tracker)
        elif sam is None:  # resolved here: the process may have started before a setenv
            checkpoint = sam_checkpoint(self.settings)
            sam = SamWorker.in_process(checkpoint, self.settings.sam_image_size)
        try:
            sam.restart(frame0, mask0)
        except BaseException:
            sam.close()
            self._sam = None
            raise
        return sam

    def _calibrate(self, frame0, mask0) -> None:
        """Time a few schedules on frame 0, all workers at once (as they will run), after a
        warm-up that is not timed."""
        for position, schedule in enumerate((*WARM_UP, *CALIBRATION)):
            jobs = [self._submit(slot, frame0, mask0, 0, schedule, 0) for slot in self._slots]
            while not all(job.future.done() for job in jobs):
                self._timed_wait([], 0.002)  # how late this process wakes while workers run
            for slot, job in zip(self._slots, jobs, strict=True):
                job.future.result()
                slot.job = None
                if position >= len(WARM_UP):
                    self._pacer.observe(job)
        logger.info(
            "cost model calibrated on %d worker(s): full schedule %.0f ms, smallest %.0f ms",
            self.workers,
            self.predict_ms(LADDER[0]),
            self.predict_ms(LADDER[-1]),
        )

    def predict_ms(self, schedule) -> float:
        """Predicted milliseconds for one frame with ``schedule`` (margin included)."""
        return self._pacer.predict_ms(self._slots[0].worker.works, schedule)

    def step(
        self, frame: np.ndarray, *, arrival: float | None = None, budget_s: float | None = None
    ) -> FrameResult:
        """Answer one frame by ``arrival + budget`` (``time.perf_counter()`` clock).

        Registrations of earlier frames that missed their deadlines may still run meanwhile;
        to overlap every frame's registration with the next ones, use :meth:`stream`.

        Parameters
        ----------
        frame : ndarray, shape (H, W)
        arrival : float, optional
            When the frame arrived (default: now); the deadline counts from it, and the
            arrivals given teach the tracker the frame interval.
        budget_s : float, optional
            This frame's budget (default ``settings.budget_s``; None: no deadline).
        """
        pending = self._dispatch(frame, arrival, budget_s, wait=True)
        while (answer := self._resolve(pending)) is None:
            self._timed_wait(_unfinished(pending), self._seconds_left(pending.deadline))
        return answer

    def stream(self, frames, *, frame_rate_hz: float) -> Iterator[FrameResult]:
        """Answer frames arriving at ``frame_rate_hz``, from the next frame on, in order.

        Frame k (k >= the next index) arrives ``(k - next) / frame_rate_hz`` s after the
        call and is handed to a free worker as it arrives, while earlier frames'
        registrations still run; each answer is yielded at the latest at its deadline.

        Parameters
        ----------
        frames : ndarray or lazy reader, shape (T, H, W)
            A recorded sequence (``frames[k]`` is read before frame k is due).
        frame_rate_hz : float
        """
        if not self._ready:
            raise RuntimeError("call init(frame0, mask0) before stream(frames)")
        first, interval = self._next_index, 1.0 / frame_rate_hz
        self._pacer.frame_interval_s = self._pacer.frame_interval_s or interval
        clock, pending, k = time.perf_counter(), deque(), first
        upcoming = frames[k] if k < len(frames) else None
        while k < len(frames) or pending:
            while pending and (answer := self._resolve(pending[0])) is not None:
                pending.popleft()
                yield answer
            arrival = clock + (k - first) * interval
            if k < len(frames) and time.perf_counter() >= arrival:
                pending.append(self._dispatch(upcoming, arrival, None, wait=False))
                k += 1
                upcoming = frames[k] if k < len(frames) else None
                continue
            self._wait_for_event(arrival if k < len(frames) else None, pending)

    def _wait_for_event(self, arrival: float | None, pending) -> None:
        """Sleep until a frame arrives, the oldest unanswered frame's deadline (less the
        margin), a registration finishes or SAM answers the oldest frame; late registrations
        that finished are taken in."""
        self._collect()
        now = time.perf_counter()
        times = [arrival - now] if arrival is not None else []
        if pending and pending[0].deadline is not None:
            times.append(pending[0].deadline - now - self._margin_s())
        timeout = max(0.0, min(times)) if times else None
        running = [
            slot.job.future for slot in self._slots if slot.job and not slot.job.future.done()
        ]
        if pending:
            running += [f for f in _unfinished(pending[0]) if f not in running]
        self._timed_wait(running, timeout)

    def _timed_wait(self, futures, timeout: float | None) -> None:
        """Wait for the first of ``futures`` or ``timeout``; learn how late a timeout woke us."""
        due = None if timeout is None else time.perf_counter() + timeout
        if futures:
            done = wait_futures(futures, timeout=timeout, return_when=FIRST_COMPLETED).done
        else:
            time.sleep(timeout or 0.0)
            done = ()
        if due is not None and not done:
            self._late_by(time.perf_counter() - due)

    def _margin_s(self) -> float:
        """How long before a deadline its answer is built: a fixed margin plus the latest this
        process recently woke from a timed wait (each lateness halving every
        ``_WAKE_HALF_LIFE_S`` as it ages)."""
        return _ANSWER_MARGIN_S + _WAKE_SAFETY * self._lateness_now(time.perf_counter())

    def _lateness_now(self, now: float) -> float:
        at, peak = self._lateness
        return peak * 0.5 ** ((now - at) / _WAKE_HALF_LIFE_S)

    def _late_by(self, seconds: float) -> None:
        """This process woke or answered ``seconds`` past the time it meant to: the largest
        lateness, each halved for every half-life since it happened, is one number."""
        now = time.perf_counter()
        self._lateness = (now, max(self._lateness_now(now), seconds, 0.0))

    def _seconds_left(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(0.0, deadline - time.perf_counter() - self._margin_s())

    def _ms_left(self, deadline: float | None) -> float | None:
        left = self._seconds_left(deadline)
        return None if left is None else left * 1e3

    def _dispatch(self, frame, arrival, budget_s, *, wait: bool) -> _Pending:
        """Take a frame in: hand it to a free worker (waiting for one while a registration
        could still fit, when ``wait``), starting from the freshest known position."""
        if not self._ready:
            raise RuntimeError("call init(frame0, mask0) before step(frame)")
        if arrival is not None:
            self._pacer.arrived(arrival)
        arrival = time.perf_counter() if arrival is None else arrival
        index, self._next_index = self._next_index, self._next_index + 1
        frame = check_frame(frame, index)
        if frame.shape != self._frame_shape:
            raise ValueError(
                f"frame {index} has shape {frame.shape} but frame 0 is {self._frame_shape}; "
                "every frame of a sequence must have the same size."
            )
        budget = check_budget(budget_s, "budget_s") if budget_s is not None else None
        budget = budget or self.settings.budget_s
        pending = _Pending(index, arrival, None if budget is None else arrival + budget, budget)
        if self._sam is not None:
            pending.sam = self._sam.offer(index, frame)
            if pending.deadline is None:  # offline: SAM's mask starts every registration
                pending.sam.result()
        if self.method == "sam":
            return pending
        self._collect()
        slot = self._free_slot(pending.deadline if wait else arrival)
        if slot is None:
            pending.reason = self._busy_reason()
            return pending
        start, start_index = self._starting_mask()
        pending.slot = slot
        pending.schedule = self._choose(pending.deadline, arrival, slot)
        if self._keyframe_fits(pending):
            pending.schedule, pending.for_keyframe = LADDER[0], True
        elif self._backup_held(pending):
            pending.schedule = FLOW_RUNG
        pending.job = self._submit(slot, frame, start, index, pending.schedule, index - start_index)
        self._submit_backup(pending, frame, start, index - start_index)
        return pending

    def _backs_up(self, pending: _Pending) -> bool:
        """The frame's registration gets a backup flow (that answers if it runs late): under
        a deadline, when the frame is due before the next one arrives (the backup must not
        hold a worker the next frame needs) and SAM, which answers late registrations in
        hybrid mode, is not there."""
        if pending.deadline is None or self._sam is not None:
            return False
        interval = self._pacer.interval_s()
        return interval is None or pending.budget_s < interval

    def _spare_slot(self, pending: _Pending) -> _Slot | None:
        """An idle worker for the frame's backup flow (:meth:`_backs_up`)."""
        if not self._backs_up(pending):
            return None
        return next(
            (s for s in self._slots if s is not pending.slot and s.job is None and s.ready()),
            None,
        )

    def _keyframe_fits(self, pending: _Pending) -> bool:
        """No full registration fits the deadline, yet an idle worker can run the backup and
        the full schedule would finish before the frame after next arrives (the next one
        goes to the backup's worker): the full registration then runs past the deadline for
        the flow rung's keyframe, while the backup answers.
        A keyframe a frame or two old makes the flow rung nearly as good as the registration
        after a jump (real case: every third frame registered, the rest by the flow rung
        from the keyframe, DSC 0.969 / CD 0.89 mm; from frame 0, 0.960 / 1.07; the small
        registration rungs alone, 0.957 / 1.36)."""
        schedule, interval = pending.schedule, self._pacer.interval_s()
        if schedule.full or interval is None or not self._pacer.cost:
            return False
        if (self._pacer.cost.slowdown() or 1.0) > _KEYFRAME_MAX_SLOWDOWN:
            return False
        if time.perf_counter() - self._stale_at < _KEYFRAME_CALM_S:
            return False
        if not all(getattr(slot.worker, "keyframes", False) for slot in self._slots):
            return False
        done_by = time.perf_counter() + self.predict_ms(LADDER[0]) / 1e3
        return done_by <= pending.arrival + 2 * interval and self._spare_slot(pending) is not None

    def _backup_held(self, pending: _Pending) -> bool:
        """A registration rung was chosen under a deadline shorter than the frame interval
        (where every registration has a backup flow), and no other worker is idle to run
        it (busy with a keyframe's registration, or a late one): without its backup a late
        registration is answered by an earlier answer (at 0.1 s, up to 5 frames of a run,
        mostly a worker's first frame and the rungs the cost model tries again after a
        second), so the flow rung answers instead."""
        if pending.schedule.flow_only or len(self._slots) < 2 or not self._backs_up(pending):
            return False
        return self._pacer.interval_s() is not None and self._spare_slot(pending) is None

    def _submit_backup(self, pending: _Pending, frame, start, start_age: int) -> None:
        """The flow rung of the same frame on a spare worker (:meth:`_spare_slot`)."""
        spare = None if pending.schedule.flow_only else self._spare_slot(pending)
        if spare is not None:
            pending.backup_slot = spare
            pending.backup = self._submit(spare, frame, start, pending.index, FLOW_RUNG, start_age)

    def _resolve(self, pending: _Pending) -> FrameResult | None:
        """The frame's answer once its registration (and, when that fails, SAM) is done or
        its deadline has come; an unused backup is then left to :meth:`_collect`."""
        answer = self._resolve_frame(pending)
        if answer is not None and pending.backup is not None:
            pending.backup.answered = True
        return answer

    def _resolve_frame(self, pending: _Pending) -> FrameResult | None:
        job = pending.job
        timing = {
            "arrival": pending.arrival,
            "budget_ms": pending.budget_ms,
            "submitted": None if job is None else job.submitted,
            "finished": math.nan if job is None else job.finished,
            "ready": time.perf_counter(),
        }
        if self.method == "sam":
            return self._resolve_sam(pending, timing)
        if job is not None and not job.future.done():
            # a keyframe's registration was meant to run on: its backup answers when ready
            backed = pending.for_keyframe and pending.backup and pending.backup.future.done()
            if not backed and self._seconds_left(pending.deadline) != 0.0:
                return None
            return self._answer_late(pending, timing)
        if job is not None and not pending.taken_in:
            self._take_in(pending)
        if job is not None:
            timing["finished"] = job.finished  # (it may have finished since timing was read)
        if pending.result is None and self._waits_for_sam(pending):
            return None
        sam, note = self._sam_answer(pending)
        if pending.result is None and (
            backup := self._backup_answer(pending, pending.reason, timing)
        ):
            return backup
        if pending.result is None:
            start_age = job.start_age if job else -1
            return self._fallback(pending.index, pending.reason, sam, start_age, note, **timing)
        return self._decide(pending.result, sam, note, **timing)

    def _resolve_sam(self, pending: _Pending, timing: dict) -> FrameResult | None:
        """Method "sam": SAM's answer for the frame when it comes in time, else the newest
        answer SAM has given."""
        sam, note = self._sam_answer(pending)
        if sam is not None:
            return self._take_sam(pending.index, sam, "", **timing)
        if self._waits_for_sam(pending):
            return None
        newest = self._sam.newest
        if newest is not None and newest[1].mask.any():
            self._keep(newest[1].mask, newest[0])
        return self._fallback(pending.index, f"deadline: {note}", **timing)

    def _answer_late(self, pending: _Pending, timing: dict) -> FrameResult:
        """The deadline has come before the registration: SAM's answer if it is here, else
        the newest finished answer."""
        job = pending.job
        job.answered = True  # runs on; _collect takes it in when it finishes
        meant = pending.deadline - self._margin_s()
        self._collect()  # an earlier frame's registration may have finished meanwhile
        what = "flow" if pending.schedule.flow_only else f"registration ({pending.schedule.name})"
        late = f"deadline: {what} not done within {pending.budget_ms:.0f} ms"
        if pending.for_keyframe:
            late = f"registration ({pending.schedule.name}) runs past the deadline for a keyframe"
        answer = self._backup_answer(pending, late, timing)
        if answer is None:
            sam, note = self._sam_answer(pending)
            answer = self._fallback(pending.index, late, sam, job.start_age, note, **timing)
        if time.perf_counter() >= meant:  # an early answer says nothing of how late we wake
            self._late_by(time.perf_counter() - meant)
        return answer

    def _backup_answer(self, pending: _Pending, late: str, timing: dict) -> FrameResult | None:
        """The backup flow's answer for a frame whose registration is late, if it is here and
        passed its gate; None otherwise."""
        backup = pending.backup
        if backup is None or not backup.future.done():
            return None
        pending.backup, pending.backup_slot.job = None, None
        error = backup.future.exception()
        if isinstance(error, BrokenExecutor):
            self._replace(pending.backup_slot, error, pending.index)
        if error is not None:
            logger.error("frame %d: the backup flow failed: %r", pending.index, error)
            return None
        self._pacer.observe(backup)
        result = backup.future.result()
        if result.source != "registration":
            return None
        mapped = result.candidate_reason.partition("; ")[2]  # "mapped onto frame k, ..."
        result = replace(
            result,
            answered_by=pending.index,
            start_age=backup.start_age,
            candidate_reason=f"{late}; the flow rung on another worker answered"
            + (f"; {mapped}" if mapped else ""),
        )
        timing = {**timing, "submitted": backup.submitted, "finished": backup.finished}
        return self._decide(result, None, **timing)

    def _take_in(self, pending: _Pending) -> None:
        """A finished registration's outcome into ``pending``: the result, or why not."""
        job, pending.taken_in = pending.job, True
        pending.slot.job = None
        error = job.future.exception()
        if isinstance(error, BrokenExecutor):  # the worker process died
            pending.reason = self._replace(pending.slot, error, pending.index)
            return
        self._pacer.observe(job)
        result = job.future.result()
        if result.source != "registration":
            pending.reason = result.reason
            return
        self._new_keyframe(job, result)
        pending.result = replace(result, answered_by=pending.index, start_age=job.start_age)

    def _waits_for_sam(self, pending: _Pending) -> bool:
        """SAM may still answer this frame before its deadline."""
        left = self._seconds_left(pending.deadline)
        return pending.sam is not None and not pending.sam.done() and left != 0.0

    def _sam_answer(self, pending: _Pending):
        """SAM's answer for this frame if it has arrived, else None and why not."""
        if pending.sam is None:
            return None, ""
        if not pending.sam.done():
            busy = self._sam.busy_with
            return None, "SAM not ready" + ("" if busy is None else f" (busy with frame {busy})")
        error = pending.sam.exception()
        if error is not None:  # (offline it was raised when the frame was taken in)
            logger.error("frame %d: SAM failed: %r", pending.index, error)
            return None, f"SAM failed ({type(error).__name__}: {error})"
        answer = pending.sam.result()
        if answer is None:
            return None, "SAM skipped this frame (busy; it takes the newest frame when free)"
        return answer, ""

    def _submit(self, slot, frame, start, index, schedule: Schedule, start_age: int) -> Job:
        submitted = time.perf_counter()
        keyframe = self._keyframe_for(slot, index) if schedule.flow_only else None
        more = {} if keyframe is None else {"keyframe": keyframe}
        future = slot.worker.submit(
            frame, start, index, schedule=schedule, return_fields=self.return_fields, **more
        )
        work = slot.worker.works[schedule]
        kept = frame if schedule.full and index > 0 else None
        slot.job = Job(index, future, submitted, work, schedule.kind, start_age, frame=kept)
        future.add_done_callback(lambda _, job=slot.job: job.mark_finished())
        return slot.job

    def _collect(self) -> None:
        """Take in every finished registration, oldest frame first: each moves the starting
        point forward unless a newer answer already has; a failed worker is replaced."""
        done = [
            slot
            for slot in self._slots
            if slot.job and slot.job.answered and slot.job.future.done()
        ]
        for slot in sorted(done, key=lambda slot: slot.job.index):
            job, slot.job = slot.job, None
            error = job.future.exception()
            if isinstance(error, BrokenExecutor):  # its frame was answered already
                self._replace(slot, error, job.index)
                continue
            self._pacer.observe(job)
            result = job.future.result()
            if result.source == "registration":
                self._keep(result.mask, result.index)  # late; warms the next
                self._new_keyframe(job, result)

    def _free_slot(self, deadline: float | None) -> _Slot | None:
        """A worker free for this frame; waits for a running registration to finish while
        the smallest schedule could still fit after it."""
        while True:
            for slot in self._slots:
                if slot.job is None and slot.ready():
                    return slot
            waitable = [
                slot.job.future if slot.job else slot.worker.built
                for slot in self._slots
                if slot.job is None or slot.job.answered
            ]
            wait = self._seconds_left(deadline)
            if wait is not None and self._pacer.cost:
                wait = max(0.0, wait - self.predict_ms(LADDER[-1]) / 1e3)
            elif wait is not None:
                wait = 0.0  # no cost model yet: nothing is known to fit
            if not waitable or not wait_futures(waitable, wait, FIRST_COMPLETED).done:
                return None
            self._collect()

    def _busy_reason(self) -> str:
        running = sorted(slot.job.index for slot in self._slots if slot.job)
        starting = sum(slot.job is None for slot in self._slots)
        if len(running) == 1 and not starting:
            return f"the registration of frame {running[0]} is still running"
        text = f"all {len(self._slots)} registration workers busy"
        if running:
            text += f": frames {', '.join(map(str, running))} still running"
        return text + (f" ({starting} restarting)" if starting else "")

    def _replace(self, slot: _Slot, error: BaseException, index: int) -> str:
        """Close a worker that died and start another in its place; the reason, as text."""
        reason = f"registration worker failed ({type(error).__name__}: {error}); replaced"
        logger.error("frame %d: %s", index, reason)
        slot.worker.close()
        slot.worker, slot.job = self._new_worker(), None
        return reason

    def _choose(self, deadline: float | None, arrival: float, slot: _Slot) -> Schedule:
        """The largest schedule that fits the deadline and, unless another worker will be free
        when the next frame arrives, the time until it does."""
        others = (o.job for o in self._slots if o is not slot and o.ready())
        return self._pacer.choose(
            self._ms_left(deadline),
            slot.worker.works,
            deadline=deadline,
            arrival=arrival,
            others=others,
        )

    def _starting_mask(self) -> tuple[np.ndarray, int]:
        """Where the registration starts, and from which frame: SAM's newest answer when it
        is newer than the newest finished answer (offline: SAM's mask of this frame), unless
        it jumped away (a look-alike) or changed size beyond the area gate (a leak into the
        neighbours); else the newest finished answer."""
        newest = self._sam.newest if self._sam else None
        if newest is None or newest[0] <= self._previous_index or not newest[1].mask.any():
            return self._previous, self._previous_index
        index, sam = newest
        jump = np.linalg.norm(
            centroid_mm(sam.mask, self.spacing_mm) - centroid_mm(self._previous, self.spacing_mm)
        )
        ratio = sam.mask.sum() / self._previous.sum()
        plausible = self.settings.min_area_ratio <= ratio <= self.settings.max_area_ratio
        if plausible and jump <= self.settings.max_jump_mm:
            return sam.mask, index
        return self._previous, self._previous_index

    def _decide(self, result: FrameResult, sam, sam_note: str = "", **timing) -> FrameResult:
        """A passing registration is the answer, unless hybrid's gate hands it to SAM; when
        SAM's answer has not arrived, the registration decides alone and says so."""
        if sam is None:
            if self.method == "hybrid":
                self._metrics.append(result.metric_value)
                result = replace(result, gate="pass", reason=sam_note)
            self._keep(result.mask, result.index)
            return self._answer(result, **timing)
        reason = metric_outlier(result.metric_value, self._metrics)
        keep = not reason
        if keep:
            keep, reason = hybrid_decision(
                result.mask,
                sam.mask,
                self._previous,
                self.spacing_mm,
                max_jump_mm=self.settings.max_jump_mm,
                agree_mm=self.settings.agree_mm,
            )
        if not keep and sam.mask.any():
            return self._take_sam(result.index, sam, reason, result.start_age, **timing)
        self._metrics.append(result.metric_value)
        self._keep(result.mask, result.index)
        result = replace(result, sam_score=sam.score, gate="pass", reason=reason)
        return self._answer(result, **timing)

    def _keyframe_for(self, slot: _Slot, index: int) -> Keyframe | None:
        """The keyframe for frame ``index``'s flow rung, if recent and the worker takes one."""
        keyframe = self._keyframe
        if keyframe is None or not getattr(slot.worker, "keyframes", False):
            return None
        return keyframe if 0 < index - keyframe.index <= _KEYFRAME_MAX_AGE else None

    def _new_keyframe(self, job: Job, result: FrameResult) -> None:
        """A full registration's answer of a newer frame becomes the flow rung's keyframe."""
        if job.frame is None or (self._keyframe and self._keyframe.index >= job.index):
            return
        self._keyframe = Keyframe(job.index, job.frame, result.mask)

    def _keep(self, mask: np.ndarray, index: int) -> None:
        """The answer of a newer frame than the last one kept is where the next one starts;
        an older one arriving late changes nothing."""
        if index > self._previous_index:
            self._previous, self._previous_index = mask, index

    def _answer(
        self,
        result: FrameResult,
        *,
        arrival: float,
        budget_ms: float,
        submitted: float | None = None,
        finished: float = math.nan,
        ready: float | None = None,
    ) -> FrameResult:
        """The answer, with its latency and time per stage (:mod:`regtrack.stages`)."""
        now = time.perf_counter()
        ready = now if ready is None else ready
        own = result.source == "registration"
        timed = with_tracker_stages(
            result,
            arrival=arrival,
            submitted=submitted,
            finished=finished if math.isfinite(finished) else ready,
            ready=ready,
            answered=now,
            own=own,
        )
        return replace(timed, budget_ms=budget_ms, latency_ms=(now - arrival) * 1e3)

    def _take_sam(self, index: int, sam, reason: str, start_age: int = -1, **timing):
        result = FrameResult(
            index=index,
            mask=sam.mask,
            source="sam",
            reason=reason,
            sam_score=sam.score,
            gate="sam" if reason else "",
            elapsed_ms=sam.ms,
            start_age=start_age,
        )
        if sam.mask.any():
            self._keep(sam.mask, index)
        return self._answer(result, **timing)

    def _fallback(
        self, index: int, reason: str, sam=None, start_age: int = -1, sam_note="", **timing
    ):
        """No usable registration of this frame: SAM's mask when there is one, else the
        newest finished answer."""
        if sam is not None and sam.mask.any():
            return self._take_sam(index, sam, reason, start_age, **timing)
        if sam_note and sam_note not in reason:
            reason = f"{reason}; {sam_note}"
        logger.info(
            "frame %d answered with frame %d's answer: %s", index, self._previous_index, reason
        )
        self._stale_at = time.perf_counter()
        result = FrameResult(
            index=index,
            mask=self._previous,
            source="previous",
            reason=reason,
            answered_by=self._previous_index,
            start_age=start_age,
        )
        return self._answer(result, **timing)


def _unfinished(pending: _Pending) -> list[Future]:
    """What a frame still waits for: its registration, its backup, SAM's answer."""
    backup = pending.backup.future if pending.backup else None
    futures = [pending.job.future if pending.job else None, backup, pending.sam]
    return [future for future in futures if future is not None and not future.done()]


def _check_workers(workers, kind, budget_s) -> int:
    if workers is None:
        return default_workers(budget_s) if kind == "process" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if kind == "inline" and workers > 1:
        raise ValueError(
            f"the inline worker runs one registration at a time, got workers={workers}; "
            "use worker='process' for a pool"
        )
    return workers
