"""The streaming tracker: one frame in, one mask out, never later than the frame's deadline.

:class:`RealtimeTracker` is the one code path of regtrack: offline tracking drives it frame by
frame with no deadline, the real-time mode with one.

Elastix holds Python's GIL for the whole registration (measured: a 5 ms sleep in the main
thread woke after 277 ms while elastix ran in a second thread), so a thread cannot answer at a
deadline. Under a deadline the registration engine therefore lives in a worker *process*: the
main process waits for it until the deadline and, when it is not done, answers with the
fallback (the last good mask) while the late registration goes on and, once finished, starts
the next frame from where it found the target.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Self

import numpy as np

from .budget import LADDER, CostModel, check_budget, choose_schedule
from .checks import check_frame, check_mask
from .engine import Engine, FrameResult, TrackerSettings
from .gate import centroid_mm, hybrid_decision, metric_outlier

__all__ = ["RealtimeTracker"]

logger = logging.getLogger(__name__)

_ANSWER_MARGIN_S = 0.004  # building the fallback answer and returning it
_CALIBRATION = (LADDER[-1], LADDER[-1], LADDER[len(LADDER) // 2], LADDER[0])


class _InlineWorker:
    """The engine in this process: no deadline can interrupt it (offline mode)."""

    def __init__(self, frame0, mask0, settings, spacing_mm) -> None:
        self._engine = Engine.build(frame0, mask0, settings, spacing_mm)
        self.works = self._engine.works
        self.step_sizes = self._engine.step_sizes

    def submit(self, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(self._engine.track_frame(*args, **kwargs))
        return future

    def close(self) -> None:
        pass


_PROCESS_ENGINE: Engine | None = None


def _process_build(frame0, mask0, settings, spacing_mm) -> tuple[dict, dict]:
    global _PROCESS_ENGINE
    _PROCESS_ENGINE = Engine.build(frame0, mask0, settings, spacing_mm)
    return _PROCESS_ENGINE.works, _PROCESS_ENGINE.step_sizes


def _process_track(*args, **kwargs) -> FrameResult:
    return _PROCESS_ENGINE.track_frame(*args, **kwargs)


class _ProcessWorker:
    """The engine in a child process, so the main process can answer at a deadline."""

    def __init__(self, frame0, mask0, settings, spacing_mm) -> None:
        import multiprocessing

        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        try:  # built as a task, not an initializer: a bad preset raises its own error here
            self.works, self.step_sizes = self._pool.submit(_process_build, frame0, mask0, settings,
                                           spacing_mm).result()  # fmt: skip
        except BaseException:
            self.close()
            raise

    def submit(self, *args, **kwargs) -> Future:
        return self._pool.submit(_process_track, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_WORKERS = {"inline": _InlineWorker, "process": _ProcessWorker}


@dataclass
class _InFlight:
    """A registration that missed its frame's deadline and is still running."""

    index: int
    future: Future
    submitted: float
    work: int


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
        callable ``(frame0, mask0, settings, spacing_mm) -> worker`` supplies another worker:
        an object with ``works`` (schedule -> work), ``submit(frame, previous, index, *,
        schedule, return_fields) -> concurrent.futures.Future[FrameResult]`` and ``close()``.
    return_fields : bool
        Also compute each frame's displacement field.
    sam_tracker : object, optional
        For methods "sam" and "hybrid": a tracker with ``init(frame0, mask0)`` and
        ``step(frame) -> SamAnswer``, e.g. ``regtrack.sam.SamTracker(model)`` around a model
        already loaded (default: loaded from ``settings.sam_checkpoint``).

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
        return_fields: bool = False,
        sam_tracker=None,
    ) -> None:
        if not callable(worker) and worker not in ("auto", "inline", "process"):
            raise ValueError(
                f"worker must be 'auto', 'inline', 'process' or a callable, got {worker!r}"
            )
        self.settings = settings or TrackerSettings()
        self.spacing_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
        self.worker_kind = worker
        if worker == "auto":
            self.worker_kind = "process" if self.settings.budget_s else "inline"
        self.return_fields = return_fields
        self.method = self.settings.method
        self._method_decided = False
        self.cost = CostModel()
        self._worker = None
        self._sam = None
        self._sam_tracker = sam_tracker
        self._sam_model = None
        self._ready = False
        self._previous: np.ndarray | None = None
        self._previous_index = 0
        self._metrics: deque[float] = deque(maxlen=20)
        self._in_flight: _InFlight | None = None
        self._next_index = 1
        self._frame_shape: tuple[int, int] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker (a registration still running is abandoned)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None
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
        so the first budgeted frame already has a cost model (default: when a budget is set).
        """
        self.close()
        frame0 = check_frame(frame0, 0)
        if frame0.ndim != 2:
            raise ValueError(f"frame 0 must be a 2D (H, W) image, got shape {frame0.shape}")
        mask0 = check_mask(mask0, frame0.shape)
        if not self._method_decided:  # once per tracker: a resumed init keeps the method
            self.method, self._method_decided = self._method_that_runs(), True
        self._sam = self._start_sam(frame0, mask0)
        if self.method != "sam":
            self._worker = _WORKERS.get(self.worker_kind, self.worker_kind)(
                frame0, mask0, self.settings, self.spacing_mm
            )
        self._frame_shape = frame0.shape
        self._previous = mask0 if previous_mask is None else np.asarray(previous_mask, bool)
        self._previous_index = next_index - 1
        self._in_flight, self._next_index, self._ready = None, next_index, True
        self._metrics.clear()
        budgeted = self.settings.budget_s or self.settings.total_budget_s
        if self._worker and (calibrate if calibrate is not None else budgeted):
            self._calibrate(frame0, mask0)
        step_sizes = getattr(self._worker, "step_sizes", None) or None
        return FrameResult(index=0, mask=mask0, source="given", step_sizes=step_sizes)

    def _method_that_runs(self) -> str:
        """The settings' method, decided once: hybrid without a SAM2.1 checkpoint says so and
        runs registration alone for the whole run."""
        from impact.sam2_hiera import CHECKPOINT_ENV_VAR

        method = self.settings.method
        checkpoint = self.settings.sam_checkpoint or os.environ.get(CHECKPOINT_ENV_VAR)
        if method == "hybrid" and self._sam_tracker is None and not checkpoint:
            message = (
                "hybrid mode has no SAM2.1 checkpoint (pass --sam-checkpoint or set "
                f"{CHECKPOINT_ENV_VAR}); running registration alone"
            )
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=3)
            return "registration"
        return method

    def _start_sam(self, frame0, mask0):
        """The SAM2.1 tracker for methods "sam" and "hybrid"; hybrid without one says so."""
        if self.method == "registration":
            return None
        if self._sam_tracker is not None:
            self._sam_tracker.init(frame0, mask0)
            return self._sam_tracker
        from impact.sam2_hiera import CHECKPOINT_ENV_VAR

        from .sam import SamTracker, load_sam2_video

        if self._sam_model is None:
            checkpoint = self.settings.sam_checkpoint or os.environ.get(CHECKPOINT_ENV_VAR)
            self._sam_model = load_sam2_video(checkpoint, image_size=self.settings.sam_image_size)
        tracker = SamTracker(self._sam_model)
        tracker.init(frame0, mask0)
        return tracker

    def _calibrate(self, frame0, mask0) -> None:
        for schedule in _CALIBRATION:
            start = time.perf_counter()
            self._worker.submit(frame0, mask0, 0, schedule=schedule).result()
            self.cost.observe(self._worker.works[schedule], (time.perf_counter() - start) * 1e3)
        logger.info("cost model calibrated: full schedule %.0f ms, smallest %.0f ms",
                    self.predict_ms(LADDER[0]), self.predict_ms(LADDER[-1]))  # fmt: skip

    def predict_ms(self, schedule) -> float:
        """Predicted milliseconds for one frame with ``schedule`` (margin included)."""
        return self.cost.predict(self._worker.works[schedule])

    def step(
        self, frame: np.ndarray, *, arrival: float | None = None, budget_s: float | None = None
    ) -> FrameResult:
        """Answer one frame by ``arrival + budget`` (``time.perf_counter()`` clock).

        Parameters
        ----------
        frame : ndarray, shape (H, W)
        arrival : float, optional
            When the frame arrived (default: now); the deadline counts from it.
        budget_s : float, optional
            This frame's budget (default ``settings.budget_s``; None: no deadline).
        """
        arrival = time.perf_counter() if arrival is None else arrival
        if not self._ready:
            raise RuntimeError("call init(frame0, mask0) before step(frame)")
        index, self._next_index = self._next_index, self._next_index + 1
        frame = check_frame(frame, index)
        if frame.shape != self._frame_shape:
            raise ValueError(
                f"frame {index} has shape {frame.shape} but frame 0 is {self._frame_shape}; "
                "every frame of a sequence must have the same size."
            )
        budget = check_budget(budget_s, "budget_s") if budget_s is not None else None
        budget = budget or self.settings.budget_s
        deadline = None if budget is None else arrival + budget
        timing = {"arrival": arrival, "budget_ms": math.nan if budget is None else budget * 1e3}
        sam = self._sam.step(frame) if self._sam else None
        if self.method == "sam":
            return self._take_sam(index, sam, "", **timing)
        if not self._worker_free(deadline):
            busy = f"the registration of frame {self._in_flight.index} is still running"
            return self._fallback(index, busy, sam, **timing)
        start = self._starting_mask(sam)
        schedule = choose_schedule(_ms_left(deadline), self._worker.works, self.cost)
        submitted = time.perf_counter()
        future = self._worker.submit(frame, start, index, schedule=schedule,
                                     return_fields=self.return_fields)  # fmt: skip
        try:
            result = future.result(timeout=_seconds_left(deadline))
        except FutureTimeout:
            self._in_flight = _InFlight(index, future, submitted, self._worker.works[schedule])
            late = f"deadline: registration ({schedule.name}) not done within {budget * 1e3:.0f} ms"
            return self._fallback(index, late, sam, **timing)
        self._absorb(result, submitted, self._worker.works[schedule])
        if result.source != "registration":
            return self._fallback(index, result.reason, sam, **timing)
        return self._decide(result, sam, **timing)

    def _starting_mask(self, sam) -> np.ndarray:
        """Where the registration starts: SAM's mask, unless it jumped away (a look-alike) or
        changed size beyond the area gate (a leak into the neighbours)."""
        if sam is None or not sam.mask.any():
            return self._previous
        jump = np.linalg.norm(centroid_mm(sam.mask, self.spacing_mm)
                              - centroid_mm(self._previous, self.spacing_mm))  # fmt: skip
        ratio = sam.mask.sum() / self._previous.sum()
        plausible = self.settings.min_area_ratio <= ratio <= self.settings.max_area_ratio
        return sam.mask if plausible and jump <= self.settings.max_jump_mm else self._previous

    def _decide(self, result: FrameResult, sam, **timing) -> FrameResult:
        """A passing registration is the answer, unless hybrid's gate hands it to SAM."""
        if sam is None:
            self._keep(result)
            return self._answer(result, **timing)
        reason = metric_outlier(result.metric_value, self._metrics)
        keep = not reason
        if keep:
            keep, reason = hybrid_decision(
                result.mask, sam.mask, self._previous, self.spacing_mm,
                max_jump_mm=self.settings.max_jump_mm, agree_mm=self.settings.agree_mm,
            )  # fmt: skip
        if not keep and sam.mask.any():
            return self._take_sam(result.index, sam, reason, **timing)
        self._metrics.append(result.metric_value)
        self._keep(result)
        result = replace(result, sam_score=sam.score, gate="pass", reason=reason)
        return self._answer(result, **timing)

    def _keep(self, result: FrameResult) -> None:
        """The answer of a newer frame than the last one kept is where the next one starts."""
        if result.index > self._previous_index:
            self._previous, self._previous_index = result.mask, result.index

    def _worker_free(self, deadline: float | None) -> bool:
        """Collect a late registration; wait for it while a new one could still fit."""
        if self._in_flight is None:
            return True
        in_flight = self._in_flight
        wait = _seconds_left(deadline)
        if wait is not None:
            wait = max(0.0, wait - self.predict_ms(LADDER[-1]) / 1e3)
        try:
            result = in_flight.future.result(timeout=wait)
        except FutureTimeout:
            return False
        self._in_flight = None
        self._absorb(result, in_flight.submitted, in_flight.work)
        if result.source == "registration":
            self._keep(result)  # late, but it warms the next frame
        return True

    def _absorb(self, result: FrameResult, submitted: float, work: int) -> None:
        """Learn the cost of a finished registration."""
        self.cost.observe(work, (time.perf_counter() - submitted) * 1e3)

    def _answer(self, result: FrameResult, *, arrival: float, budget_ms: float) -> FrameResult:
        latency_ms = (time.perf_counter() - arrival) * 1e3
        return replace(result, budget_ms=budget_ms, latency_ms=latency_ms)

    def _take_sam(self, index: int, sam, reason: str, **timing) -> FrameResult:
        result = FrameResult(index=index, mask=sam.mask, source="sam", reason=reason,
                             sam_score=sam.score, gate="sam" if reason else "",
                             elapsed_ms=sam.ms)  # fmt: skip
        if sam.mask.any():
            self._keep(result)
        return self._answer(result, **timing)

    def _fallback(self, index: int, reason: str, sam=None, **timing) -> FrameResult:
        """No usable registration: SAM's mask when there is one, else the last good mask."""
        if sam is not None and sam.mask.any():
            return self._take_sam(index, sam, reason, **timing)
        logger.info("frame %d answered with the previous mask: %s", index, reason)
        result = FrameResult(index=index, mask=self._previous, source="previous", reason=reason)
        return self._answer(result, **timing)


def _seconds_left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.perf_counter() - _ANSWER_MARGIN_S)


def _ms_left(deadline: float | None) -> float | None:
    left = _seconds_left(deadline)
    return None if left is None else left * 1e3
