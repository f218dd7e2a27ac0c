"""The cost-model ladder of the streaming tracker: what each schedule of
:data:`regtrack.budget.LADDER` costs on the running workers, and the largest that fits.

A :class:`Pacer` learns each finished registration's cost (submitted to result received, per
pyramid kind; a load spike ages out and a kind that looked too slow is predicted again from
how fast the machine is now), learns the frame interval from the arrivals it is told of, and picks, for each
frame, the largest schedule that fits the deadline and, unless another worker will be free
when the next frame arrives, the time until it does.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .budget import FLOW_RUNG, LADDER, CostModel, Schedule, check_budget, choose_schedule

__all__ = ["CALIBRATION", "WARM_UP", "Job", "Pacer"]

CALIBRATION = (
    FLOW_RUNG,
    FLOW_RUNG,
    LADDER[-2],
    LADDER[-2],
    LADDER[len(LADDER) // 2],
    LADDER[1],
    LADDER[0],
)
"""Schedules timed on frame 0: two works of each pyramid kind, so each kind's cost model has a
slope from the start, and the flow rung (one work)."""
WARM_UP = (LADDER[-2],)
"""Run on frame 0 before the calibration and not timed: a worker's first registration took
100-165 ms against 30-50 ms for the next (real case, 2 workers on 2 cores). Timed, it made the
registration rungs look too slow for 0.1 s, so the flow rung answered every frame."""
_COST_QUANTILE = 0.98
# The cost model forgets a load spike after this long, and predicts a kind not run for
# RETRY_S from its calibration times how slow the rungs that did run are now
# (:class:`regtrack.budget.CostModel`): at 8 Hz, 32 and 8 frames.
WINDOW_S = 4.0
RETRY_S = 1.0


@dataclass
class Job:
    """One registration handed to a worker."""

    index: int
    future: Future
    submitted: float
    work: int
    kind: str  # the schedule's kind: the cost model fits each kind on its own
    start_age: int
    finished: float = math.nan  # perf_counter() when its result reached this process
    frame: Any = None  # kept while its answer may become the flow rung's keyframe
    answered: bool = False  # its frame has been answered (late: by the fallback)

    def predicted_end(self, cost: CostModel) -> float:
        return self.submitted + cost.predict(self.work, self.kind) / 1e3

    def mark_finished(self) -> None:
        self.finished = time.perf_counter()


class Pacer:
    """Cost model and frame interval of one tracker.

    Parameters
    ----------
    budgeted : bool
        Frames have deadlines: then the 98th percentile of the cost model's misfit, not the
        90th, decides what fits (nearly every answer should be fresh).
    frame_interval_s : float, optional
        Seconds between frames (default: the median gap of the arrivals given to
        :meth:`arrived`).
    """

    def __init__(self, *, budgeted: bool, frame_interval_s: float | None = None) -> None:
        self.cost = CostModel(
            quantile=_COST_QUANTILE if budgeted else 0.9, window_s=WINDOW_S, retry_s=RETRY_S
        )
        self.frame_interval_s = check_budget(frame_interval_s, "frame_interval_s")
        self._arrivals: deque[float] = deque(maxlen=9)

    def arrived(self, arrival: float) -> None:
        """A frame arrived at ``arrival`` (``time.perf_counter()`` clock)."""
        self._arrivals.append(arrival)

    def restart(self) -> None:
        """Forget the arrivals (the sequence starts again)."""
        self._arrivals.clear()

    def observe(self, job: Job) -> None:
        """Learn the cost of a finished registration (submitted to result received)."""
        finished = job.finished if math.isfinite(job.finished) else time.perf_counter()
        self.cost.observe(job.work, (finished - job.submitted) * 1e3, job.kind, at=finished)

    def predict_ms(self, works: dict, schedule: Schedule) -> float:
        """Predicted milliseconds for one frame with ``schedule`` (margin included)."""
        return self.cost.predict(works[schedule], schedule.kind)

    def interval_s(self) -> float | None:
        """Seconds between frames: given, or the median gap of the arrivals."""
        if self.frame_interval_s is not None:
            return self.frame_interval_s
        if len(self._arrivals) < 2:
            return None
        arrivals = list(self._arrivals)
        return statistics.median(b - a for a, b in itertools.pairwise(arrivals))

    def choose(
        self,
        ms_left: float | None,
        works: dict,
        *,
        deadline: float | None,
        arrival: float,
        others: Iterable[Job | None],
    ) -> Schedule:
        """The largest schedule that fits ``ms_left`` and, unless one of the ``others`` (the
        jobs of the other ready workers, None for an idle one; read only under a deadline)
        will be free when the next frame arrives, the time until it does."""
        interval = self.interval_s()
        next_ms, free = None, True
        if deadline is not None and interval is not None:
            next_arrival = arrival + interval
            next_ms = max(0.0, next_arrival - time.perf_counter()) * 1e3
            free = any(
                job is None or job.predicted_end(self.cost) <= next_arrival for job in others
            )
        return choose_schedule(ms_left, works, self.cost, next_frame_ms=next_ms, free_for_next=free)
