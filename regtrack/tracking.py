"""Offline tracking: propagate the frame-0 mask through a sequence on disk or in memory.

Both drivers here feed the streaming tracker (:class:`regtrack.realtime.RealtimeTracker`), the
one code path of regtrack: :func:`iter_track` as fast as it can, :func:`replay` at the
sequence's acquisition rate with each answer due within its budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .checks import check_frame, check_frame_rate, check_frames, check_mask
from .engine import FrameResult, TrackerSettings
from .parameters import DEFAULT_PRESET
from .realtime import RealtimeTracker

__all__ = ["FrameResult", "TrackResult", "TrackerSettings", "iter_track", "replay", "track"]


@dataclass
class TrackResult:
    """Masks for every frame plus what happened on each.

    Attributes
    ----------
    masks : ndarray of uint8, shape (T, H, W)
    records : list of dict
        One :meth:`FrameResult.record` per frame.
    displacement_mm : ndarray of float32, shape (T, H, W, 2), or None
        Per frame, u(x) in mm (row, col): frame-t point x corresponds to x + u(x) in frame 0.
    """

    masks: np.ndarray
    records: list[dict]
    displacement_mm: np.ndarray | None = None


def iter_track(
    frames,
    first_mask: np.ndarray,
    *,
    settings: TrackerSettings | None = None,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    start: int = 0,
    previous_mask: np.ndarray | None = None,
    return_fields: bool = False,
) -> Iterator[FrameResult]:
    """Yield one :class:`FrameResult` per frame, from frame ``start`` on.

    Parameters
    ----------
    frames : ndarray or lazy reader, shape (T, H, W)
        The sequence; anything with ``shape`` and ``frames[t] -> (H, W)``.
    first_mask : ndarray, shape (H, W)
        The target on frame 0.
    settings : TrackerSettings, optional
    spacing_mm : (float, float)
    start : int
        First frame to answer (0: frame 0's given mask comes first). A resumed run passes
        the next frame to do and, as ``previous_mask``, the answer for the frame before it.
    previous_mask : ndarray of bool, shape (H, W), optional
        The answer for frame ``start - 1`` (default: ``first_mask``).
    return_fields : bool
        Also compute each frame's displacement field.
    """
    settings = settings or TrackerSettings()
    tracker = RealtimeTracker(
        settings, spacing_mm=spacing_mm, worker="inline", return_fields=return_fields
    )
    n_frames = check_frames(frames)[0]

    def answers(first: int) -> Iterator[FrameResult]:  # one frame after the other, no deadline
        clock = time.perf_counter()
        for index in range(first, n_frames):
            budget_s = _frame_budget(settings, time.perf_counter() - clock, n_frames - index)
            yield tracker.step(frames[index], budget_s=budget_s)

    yield from _drive(tracker, frames, first_mask, answers, start, previous_mask)


def replay(
    frames,
    first_mask: np.ndarray,
    *,
    frame_rate_hz: float,
    settings: TrackerSettings | None = None,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    start: int = 0,
    previous_mask: np.ndarray | None = None,
) -> Iterator[FrameResult]:
    """Feed a recorded sequence to a :class:`RealtimeTracker` at its acquisition rate.

    Frame t arrives ``t / frame_rate_hz`` seconds after frame 1; each answer is due
    ``settings.budget_s`` after its frame arrives (``latency_ms`` in each record).
    """
    frame_rate_hz = check_frame_rate(frame_rate_hz)
    tracker = RealtimeTracker(
        settings or TrackerSettings(), spacing_mm=spacing_mm, frame_interval_s=1.0 / frame_rate_hz
    )
    # Frames handed over as they arrive, registrations of consecutive frames overlapping.
    answers = partial(_streamed, tracker, frames, frame_rate_hz)
    yield from _drive(tracker, frames, first_mask, answers, start, previous_mask)


def _streamed(tracker, frames, frame_rate_hz, _first: int) -> Iterator[FrameResult]:
    # The stream starts at the tracker's own next index, which init() set to ``_first``.
    return tracker.stream(frames, frame_rate_hz=frame_rate_hz)


def _drive(tracker, frames, first_mask, answers, start, previous_mask) -> Iterator[FrameResult]:
    """What both drivers share: checks, frame 0 (unless resuming), then ``answers(first)``,
    the later frames' answers from the streaming tracker, in order."""
    _, frame_shape = check_frames(frames)
    first_mask = check_mask(first_mask, frame_shape)
    with tracker:
        given = tracker.init(
            check_frame(frames[0], 0),
            first_mask,
            previous_mask=previous_mask,
            next_index=max(start, 1),
        )
        if start == 0:
            yield given
        yield from answers(max(start, 1))


def _frame_budget(settings: TrackerSettings, spent_s: float, frames_left: int) -> float | None:
    """This frame's share: the total budget left over the frames left, or the per-frame one."""
    if settings.total_budget_s is None:
        return settings.budget_s
    share = (settings.total_budget_s - spent_s) / frames_left
    return max(share, 1e-3)  # overspent: the smallest schedule, and on we go


def track(
    frames,
    first_mask: np.ndarray,
    *,
    preset: Any = DEFAULT_PRESET,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    roi: bool | None = True,
    roi_margin_mm: float = 30.0,
    flatten_sigma_mm: float = 0.0,
    budget_s: float | None = None,
    total_budget_s: float | None = None,
    method: str = "registration",
    sam_checkpoint: str | None = None,
    return_fields: bool = False,
    **overrides: Any,
) -> TrackResult:
    """Propagate the frame-0 mask to every frame of a sequence.

    Parameters
    ----------
    frames : ndarray, shape (T, H, W)
        The cine-MRI sequence (any real dtype); frame 0 carries the known mask.
    first_mask : ndarray, shape (H, W)
        Binary mask of the target on frame 0 (0/1 or bool; 0/255 is converted with a warning).
    preset : str or path or list of paths
        Elastix preset from ``parameter_maps/`` (see :func:`regtrack.available_presets`) or
        elastix parameter file(s).
    spacing_mm : (float, float)
        Pixel spacing (row, col) in mm.
    roi : bool or None
        Restrict the metric to the neighbourhood of the target; None decides by target size.
    roi_margin_mm : float
        Margin of that neighbourhood around the previous frame's mask.
    flatten_sigma_mm : float
        Divide each frame by its Gaussian-smoothed copy at this scale before registering
        (removes the coil's bias field); 0 to register the frames as they are.
    budget_s, total_budget_s : float, optional
        Seconds per frame, or for the whole sequence: the iteration schedule is chosen to
        fit (a cost model calibrated on frame 0). For answers that must never be late, use
        :class:`regtrack.realtime.RealtimeTracker`.
    method : {"registration", "sam", "hybrid"}
        Registration alone, the SAM2.1 video tracker alone, or both (SAM initialises each
        registration and answers when it fails its gate); see :class:`TrackerSettings`.
    sam_checkpoint : str, optional
        SAM2.1 checkpoint for "sam" and "hybrid" (default: ``REGTRACK_SAM2_CHECKPOINT``).
    return_fields : bool
        Also return each frame's displacement field (mm).
    **overrides
        Elastix parameters to override in every stage, e.g.
        ``MaximumNumberOfIterations=[100, 100, 100]``.

    Returns
    -------
    TrackResult
        ``masks`` (T, H, W) uint8 0/1 and one record per frame (source, metric value,
        iterations, milliseconds).

    Examples
    --------
    >>> from regtrack.phantom import generate_phantom
    >>> case = generate_phantom(n_frames=5)
    >>> result = track(case.frames, case.first_mask)
    >>> result.masks.shape == case.frames.shape
    True
    """
    settings = TrackerSettings(
        preset=preset,
        overrides=overrides,
        roi=roi,
        roi_margin_mm=roi_margin_mm,
        flatten_sigma_mm=flatten_sigma_mm,
        budget_s=budget_s,
        total_budget_s=total_budget_s,
        method=method,
        sam_checkpoint=None if sam_checkpoint is None else str(sam_checkpoint),
    )
    n_frames, frame_shape = check_frames(frames)
    masks = np.zeros((n_frames, *frame_shape), np.uint8)
    fields = np.zeros((n_frames, *frame_shape, 2), np.float32) if return_fields else None
    records = []
    for result in iter_track(
        frames, first_mask, settings=settings, spacing_mm=spacing_mm, return_fields=return_fields
    ):
        masks[result.index] = result.mask
        if fields is not None and result.displacement_mm is not None:
            fields[result.index] = result.displacement_mm
        records.append(result.record())
    return TrackResult(masks=masks, records=records, displacement_mm=fields)
