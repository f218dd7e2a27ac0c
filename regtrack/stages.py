"""Where a frame's time goes: milliseconds per stage, each measured where the stage runs.

A registration worker times its own stages (:func:`track_timed`): the intensity
preprocessing, the feature maps, elastix (``registration``), the flow candidate (``flow``),
the refinement, the answered frame averaged into the flow's reference (``reference``), the
warp of mask(0) (mapping the transform to points and pulling the mask
back), and ``other`` (crop, gate, centroids: the rest of the worker's call). It also returns
when its call began and ended, on the machine-wide monotonic clock that
``time.perf_counter()`` reads in every process on Linux, so the streaming tracker adds the
stages around it: ``queue`` (arrival to the frame's hand-over to a worker), ``dispatch`` (hand-over
to the worker's start: pickling, the pipe, the worker waking), ``return`` (the worker's end
to the result in the tracker's process) and ``answer`` (result, or deadline, to the answer).
A frame answered without its own registration has ``queue``, ``waited`` (hand-over, or
arrival, to the moment the tracker stopped waiting) and ``answer``.

The stages sum to the frame's ``latency_ms``: every record of ``frames.jsonl`` carries them
as ``stages_ms``, in :data:`STAGES` order.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field, fields

import numpy as np

from .engine import FrameResult

__all__ = ["STAGES", "TimedResult", "instrument_engine", "track_timed", "with_tracker_stages"]

STAGES = (
    "queue",
    "dispatch",
    "preprocess",
    "features",
    "registration",
    "flow",
    "refinement",
    "reference",
    "warp",
    "other",
    "return",
    "waited",
    "answer",
)
"""Every stage a record may name, in the order a frame goes through them."""

# The engine's calls, by the name the engine module calls them, and the stage each is. A call
# made inside another timed call counts for the outer one (the flow candidate's own warps of
# mask(0) are the flow's). Names the engine does not have are skipped.
_ENGINE_CALLS = {
    "flatten_intensity": "preprocess",
    "register_pair": "registration",
    "register_from_start": "registration",
    "flow_candidate": "flow",
    "keyframe_mask": "flow",
    "choose_candidate": "flow",
    "refine_points": "refinement",
    "mapped_points": "warp",
    "warp_mask": "warp",
    "warp_mask_to": "warp",
    "displacement_field": "warp",
    "field_from_points": "warp",
}
# The flow candidate and its weighing; an answered frame averaged into the flow's reference.
_ENGINE_METHODS = {"_choose": "flow", "_average_in": "reference"}
_WORKER_STAGES = STAGES[STAGES.index("preprocess") : STAGES.index("warp") + 1]


@dataclass(frozen=True)
class TimedResult(FrameResult):
    """A :class:`regtrack.engine.FrameResult` with its time per stage (``stages_ms``, ms in
    :data:`STAGES` order) and, from a worker, when its call began and ended
    (``worker_span``, ``time.perf_counter()`` seconds; not part of the record)."""

    stages_ms: dict = field(default_factory=dict)
    worker_span: tuple[float, float] | None = None

    @classmethod
    def of(cls, result: FrameResult, **changes) -> TimedResult:
        """``result`` as a TimedResult, with ``changes`` applied."""
        values = {f.name: getattr(result, f.name) for f in fields(result)}
        return cls(**{**values, **changes})

    def __reduce__(self):
        # the mask crosses from a worker process as bits: 8 times fewer bytes through the pipe
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        mask = np.asarray(values.pop("mask"))
        if mask.dtype != bool:
            return _timed_result, (values, mask, None)
        return _timed_result, (values, np.packbits(mask), mask.shape)

    def record(self) -> dict:
        values = super().record()
        del values["worker_span"]
        values["stages_ms"] = {k: round(v, 3) for k, v in self.stages_ms.items()}
        return values


def _timed_result(values: dict, mask: np.ndarray, shape) -> TimedResult:
    if shape is not None:
        size = int(np.prod(shape))
        mask = np.unpackbits(mask, count=size).reshape(shape).view(bool)
    return TimedResult(mask=mask, **values)


class _Clock(threading.local):
    """The stage now running in this thread and the milliseconds each stage took."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.ms: dict[str, float] | None = None


_CLOCK = _Clock()
_INSTRUMENTED: set[str] = set()
_LOCK = threading.Lock()


def _timed(stage: str, function):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        if _CLOCK.ms is None or _CLOCK.stage is not None:  # not timing, or inside a stage
            return function(*args, **kwargs)
        _CLOCK.stage, start = stage, time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _CLOCK.ms[stage] = _CLOCK.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1e3
            _CLOCK.stage = None

    timed.__regtrack_stage__ = stage
    return timed


def instrument_engine() -> None:
    """Time the engine's stages in this process (idempotent). Outside :func:`track_timed`
    the timed calls only pass through."""
    from . import engine

    with _LOCK:
        if "engine" in _INSTRUMENTED:
            return
        for name, stage in _ENGINE_CALLS.items():
            function = getattr(engine, name, None)
            if function is not None and not hasattr(function, "__regtrack_stage__"):
                setattr(engine, name, _timed(stage, function))
        for name, stage in _ENGINE_METHODS.items():
            method = getattr(engine.Engine, name, None)
            if method is not None and not hasattr(method, "__regtrack_stage__"):
                setattr(engine.Engine, name, _timed(stage, method))
        _INSTRUMENTED.add("engine")


def track_timed(engine, *args, **kwargs) -> TimedResult:
    """``engine.track_frame(*args, **kwargs)`` with its stages timed (:func:`instrument_engine`
    first)."""
    instrument_engine()
    _CLOCK.ms, _CLOCK.stage = {}, None
    start = time.perf_counter()
    try:
        result = engine.track_frame(*args, **kwargs)
    finally:
        ms, _CLOCK.ms = _CLOCK.ms, None
    end = time.perf_counter()
    if result.feature_ms:
        ms["features"] = result.feature_ms
    stages = {stage: ms[stage] for stage in _WORKER_STAGES if stage in ms}
    stages["other"] = max(0.0, (end - start) * 1e3 - sum(stages.values()))
    return TimedResult.of(result, stages_ms=stages, worker_span=(start, end))


def with_tracker_stages(
    result: FrameResult,
    *,
    arrival: float,
    submitted: float | None,
    finished: float,
    ready: float,
    answered: float,
    own: bool,
) -> TimedResult:
    """``result`` with the tracker's stages around the worker's, all on the perf_counter clock.

    ``submitted``: when the frame was handed to a worker (None: it was not); ``finished``:
    when its result reached this process (NaN: it had not); ``ready``: when the tracker
    stopped waiting for it; ``answered``: now; ``own``: ``result`` is the frame's own
    registration (its worker stages count).
    """
    stages: dict[str, float] = {}
    handed = arrival if submitted is None else submitted
    stages["queue"] = (handed - arrival) * 1e3
    span = getattr(result, "worker_span", None)
    worker = dict(getattr(result, "stages_ms", {}) or {}) if own else {}
    if own and math.isfinite(finished):
        if span is not None:
            stages["dispatch"] = max(0.0, (span[0] - handed) * 1e3)
            stages.update(worker)
            stages["return"] = max(0.0, (finished - span[1]) * 1e3)
        else:  # a worker that does not time itself: its whole call
            stages["registration"] = (finished - handed) * 1e3
        stages["answer"] = (answered - finished) * 1e3
    else:
        stages["waited"] = max(0.0, (ready - handed) * 1e3)
        stages["answer"] = (answered - ready) * 1e3
    return TimedResult.of(result, stages_ms=stages, worker_span=None)
