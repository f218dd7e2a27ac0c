"""What a report shows, read from a results folder of :func:`regtrack.run.track_case`.

Everything a plot draws comes from a function here returning plain arrays
(:func:`trajectory`, :func:`quality`), so tests and users can check the numbers behind a
picture instead of its pixels. Nothing here imports matplotlib or imageio.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..gate import centroid_mm
from ..runfolder import RunFiles, is_fallback, read_records, start_corrections

__all__ = [
    "SOURCES",
    "RunData",
    "Trajectory",
    "is_fallback",
    "is_gate_rejected",
    "load_run",
    "missed_deadline",
    "quality",
    "sam_ran",
    "schedule_words",
    "trajectory",
]

logger = logging.getLogger(__name__)

#: Every ``source`` a :meth:`regtrack.FrameResult.record` holds: frame 0 is "given"; later
#: frames are answered by "registration", by the SAM2.1 tracker ("sam") or by the last good
#: mask ("previous"). "previous", and "sam" with a reason (hybrid mode), are fallbacks the
#: physicist should see (:func:`regtrack.runfolder.is_fallback`).
SOURCES = ("given", "registration", "sam", "previous")
#: How a record's ``reason`` begins when the registration ran out of time (the deadline came
#: first, or the previous frame's registration still held the worker): a missed deadline,
#: not a gate's verdict (see :class:`regtrack.realtime.RealtimeTracker`).
_TIMING_REASONS = ("deadline", "the registration of frame")


@dataclass
class RunData:
    """One results folder, read.

    Attributes
    ----------
    directory : Path
        The results folder.
    settings : dict
        ``run.json``.
    records : list of dict
        ``frames.jsonl``, frames 0..n_done-1 in order.
    n_frames : int
        Frames of the sequence (the run may have answered fewer).
    masks : ndarray, shape (n_done, H, W), uint8
        The answered frames' masks (a read-only memory map).
    frames : FrameReader or None
        The input sequence, when its file is still where ``run.json`` says.
    labels : FrameReader or None
        Ground truth, when the case has it.
    spacing_mm : tuple of float
        (row, col) pixel spacing.
    frame_rate_hz : float or None
    scanned_region : str or None
    notes : list of str
        What could not be read and what was assumed instead, for the page.
    """

    directory: Path
    settings: dict
    records: list[dict]
    n_frames: int
    masks: np.ndarray
    frames: Any = None
    labels: Any = None
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    frame_rate_hz: float | None = None
    scanned_region: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_done(self) -> int:
        """Frames answered (recorded in ``frames.jsonl``)."""
        return len(self.records)

    @property
    def missing(self) -> tuple[int, int] | None:
        """(first, last) missing frame of an interrupted run; None when every frame is done."""
        return None if self.n_done >= self.n_frames else (self.n_done, self.n_frames - 1)

    @property
    def status(self) -> str:
        """ "complete" or "incomplete: frames N-M missing"."""
        if self.missing is None:
            return "complete"
        first, last = self.missing
        return f"incomplete: frames {first}-{last} missing"

    @property
    def name(self) -> str:
        return str(self.settings.get("case") or self.directory.name)

    def times(self) -> tuple[np.ndarray, str]:
        """Time of every frame of the sequence and its unit ("s", or "frame" without a rate)."""
        index = np.arange(self.n_frames, dtype=np.float64)
        if self.frame_rate_hz:
            return index / self.frame_rate_hz, "s"
        return index, "frame"


# --------------------------------------------------------------------------- loading


def load_run(results_dir: str | Path) -> RunData:
    """Read a results folder written by :func:`regtrack.run.track_case`.

    Parameters
    ----------
    results_dir : path
        The ``--out`` folder of ``regtrack track``.

    Returns
    -------
    RunData

    Raises
    ------
    ValueError
        When the folder holds no results: no ``run.json``, ``frames.jsonl`` and
        ``masks.partial.npy``, or no frame recorded yet.
    """
    directory = Path(results_dir)
    _check_results_folder(directory)
    files = RunFiles(directory)
    settings = json.loads(files.settings.read_text())
    records = read_records(files.records)
    masks = np.load(files.masks, mmap_mode="r")
    n_frames = int(settings.get("n_frames") or masks.shape[0])
    run = RunData(directory, settings, records[:n_frames], n_frames, masks[: len(records)])
    _attach_case(run)
    return run


def _check_results_folder(directory: Path) -> None:
    """One clear ValueError naming what a results folder holds, when it does not."""
    expected = (
        "expected run.json, frames.jsonl and masks.partial.npy as written by "
        f"`regtrack track INPUT --out {directory}` (regtrack.run.track_case)"
    )
    if not directory.is_dir():
        raise ValueError(f"no tracking results: {directory} is not a folder; {expected}")
    missing = [path.name for path in RunFiles(directory).required if not path.is_file()]
    if missing:
        raise ValueError(
            f"no tracking results in {directory}: {', '.join(missing)} not found; {expected}"
        )
    if not read_records(RunFiles(directory).records):
        raise ValueError(
            f"no tracking results in {directory}: frames.jsonl holds no frame record yet; "
            f"{expected}, with at least frame 0 answered"
        )


def _attach_case(run: RunData) -> None:
    """Open the input frames and labels named in run.json; note what cannot be opened."""
    files = run.settings.get("files") or {}
    frames_path = Path(files["frames"]) if files.get("frames") else None
    if frames_path is None:
        run.notes.append("run.json names no input files: the movie shows the masks only")
    else:
        _open_case_files(run, frames_path, files)
    if run.frames is None:
        _spacing_from_output(run)
    rate = run.settings.get("frame_rate_hz")
    run.frame_rate_hz = float(rate) if rate else run.frame_rate_hz
    if not run.frame_rate_hz:
        run.notes.append("frame rate unknown: time is given in frames")


def _open_case_files(run: RunData, frames_path: Path, files: dict) -> None:
    from ..io import read_case

    labels = files.get("labels")
    try:
        case = read_case(frames_path, mask=files.get("mask"), labels=labels)
    except (ValueError, OSError) as error:
        run.notes.append(f"input not readable ({error}): the movie shows the masks only")
        return
    if tuple(case.frames.shape) != (run.n_frames, *run.masks.shape[1:]):
        run.notes.append(
            f"input {frames_path} is {case.frames.shape} (T, H, W) but the run has "
            f"{(run.n_frames, *run.masks.shape[1:])}: not used"
        )
        return
    run.frames, run.labels, run.spacing_mm = case.frames, case.labels, case.spacing_mm
    metadata = _case_metadata(frames_path)
    run.frame_rate_hz = metadata.get("frame_rate_hz")
    run.scanned_region = metadata.get("scanned_region")


def _case_metadata(frames_path: Path) -> dict:
    """frame-rate.json and scanned-region.json of the case folder holding a sequence file.

    A TrackRAD case keeps them two levels up (``<case>/images/<case>_frames.mha``), the
    challenge input folder three (``input/images/mri-linacs/<x>.mha``).
    """
    parents = frames_path.parents
    roots = []
    if frames_path.parent.name == "images":
        roots.append(parents[1])
    if frames_path.parent.name == "mri-linacs" and len(parents) > 2:
        roots.append(parents[2])
    found: dict[str, Any] = {}
    for root in roots:
        rate, region = root / "frame-rate.json", root / "scanned-region.json"
        try:
            if rate.is_file():
                found["frame_rate_hz"] = float(json.loads(rate.read_text()))
            if region.is_file():
                found["scanned_region"] = str(json.loads(region.read_text()))
        except (ValueError, TypeError, OSError) as error:
            logger.warning("ignoring unreadable case metadata in %s: %s", root, error)
    return found


def _spacing_from_output(run: RunData) -> None:
    """Without the input, take the spacing from output.mha (same geometry), else 1 mm."""
    output = run.directory / "output.mha"
    if output.is_file():
        from ..io import FrameReader

        try:
            run.spacing_mm = FrameReader(output, dtype=np.uint8).geometry.spacing_mm
            return
        except ValueError as error:
            logger.warning("cannot read the spacing of %s: %s", output, error)
    run.notes.append("pixel spacing unknown: 1 mm assumed")


# --------------------------------------------------------------------------- per frame


def missed_deadline(record: dict) -> bool:
    """True when the registration did not finish within the frame's budget, so a fallback
    answered; read from the record's ``reason`` (a streaming run under a budget)."""
    return is_fallback(record) and str(record.get("reason") or "").startswith(_TIMING_REASONS)


def is_gate_rejected(record: dict) -> bool:
    """True when the registration finished but was turned down on this frame.

    A :meth:`regtrack.FrameResult.record` says so with a fallback source ("previous" or
    "sam") and a ``reason``: the quality gate (metric, area, folding), the hybrid gate
    (``gate`` "sam") or elastix itself said no. A registration that answered (source
    "registration", ``gate`` "" or "pass") is never a rejection, nor is a missed deadline
    (:func:`missed_deadline`), nor the SAM tracker answering by choice (method "sam": no
    reason).
    """
    return is_fallback(record) and bool(record.get("reason")) and not missed_deadline(record)


def sam_ran(records: list[dict]) -> bool:
    """True when the SAM2.1 tracker ran: some frame has a SAM answer or a finite SAM score."""
    return any(
        r.get("source") == "sam" or math.isfinite(_as_float(r.get("sam_score"))) for r in records
    )


def schedule_words(schedule: Any) -> str | None:
    """A record's ``schedule`` in words: "it1/s1" -> "full", "it0.5/s0.75" -> "50 %
    iterations, 75 % samples"; None when the frame ran no registration ("").

    Other text is returned as it is.
    """
    if not schedule:
        return None
    found = _SCHEDULE.fullmatch(str(schedule).strip())
    if not found:
        return str(schedule)
    iterations, samples = (float(v) for v in found.groups())
    if iterations == samples == 1:
        return "full"
    return f"{100 * iterations:.0f} % iterations, {100 * samples:.0f} % samples"


#: :attr:`regtrack.budget.Schedule.name`: fractions of the preset's iterations and samples.
_SCHEDULE = re.compile(r"it([0-9.eE+-]+)/s([0-9.eE+-]+)")


@dataclass
class Trajectory:
    """The data behind the trajectory plot.

    Attributes
    ----------
    frame : ndarray of int, shape (T,)
    time : ndarray of float, shape (T,)
        Seconds, or frame numbers when the frame rate is unknown (``time_unit``).
    time_unit : str
        "s" or "frame".
    predicted_mm : ndarray, shape (T, 2)
        Centroid (row, col) of the predicted mask in mm from the centre of the top-left
        pixel; NaN for frames not answered (interrupted run) or with an empty mask.
    ground_truth_mm : ndarray, shape (T, 2), or None
        The same for the ground truth, when the case has labels.
    source : list of str
        The answer's source per frame ("missing" for frames not answered).
    fallback, gate_rejected : ndarray of bool, shape (T,)
        See :func:`is_fallback`, :func:`is_gate_rejected`.
    spacing_mm : tuple of float
    """

    frame: np.ndarray
    time: np.ndarray
    time_unit: str
    predicted_mm: np.ndarray
    ground_truth_mm: np.ndarray | None
    source: list[str]
    fallback: np.ndarray
    gate_rejected: np.ndarray
    spacing_mm: tuple[float, float]

    def to_json(self) -> dict:
        """Plain JSON values; NaN becomes null so any JSON reader takes the file."""
        gt = self.ground_truth_mm
        return {
            "frame": self.frame.tolist(),
            "time": _json_floats(self.time),
            "time_unit": self.time_unit,
            "spacing_mm": list(self.spacing_mm),
            "axes": ["row", "col"],
            "predicted_mm": _json_floats(self.predicted_mm),
            "ground_truth_mm": None if gt is None else _json_floats(gt),
            "source": self.source,
            "fallback_frames": np.flatnonzero(self.fallback).tolist(),
            "gate_rejected_frames": np.flatnonzero(self.gate_rejected).tolist(),
        }


def trajectory(run: RunData | str | Path) -> Trajectory:
    """Mask centroids over time: what the trajectory plot draws.

    Parameters
    ----------
    run : RunData or path
        A loaded run or its results folder.

    Returns
    -------
    Trajectory
    """
    run = run if isinstance(run, RunData) else load_run(run)
    time, unit = run.times()
    predicted = np.full((run.n_frames, 2), np.nan)
    predicted[: run.n_done] = centroid_mm(run.masks, run.spacing_mm)
    truth = None
    if run.labels is not None:
        truth = centroid_mm(np.asarray(run.labels[:]), run.spacing_mm)
    padded = run.records + [{"source": "missing"}] * (run.n_frames - run.n_done)
    return Trajectory(
        frame=np.arange(run.n_frames),
        time=time,
        time_unit=unit,
        predicted_mm=predicted,
        ground_truth_mm=truth,
        source=[str(r.get("source")) for r in padded],
        fallback=np.array([r["source"] != "missing" and is_fallback(r) for r in padded]),
        gate_rejected=np.array([r["source"] != "missing" and is_gate_rejected(r) for r in padded]),
        spacing_mm=tuple(float(s) for s in run.spacing_mm),
    )


#: Numeric record keys the quality timeline draws (when present in any record).
QUALITY_KEYS = (
    "metric_value",
    "iterations",
    "elapsed_ms",
    "registration_ms",
    "feature_ms",
    "budget_ms",
    "latency_ms",
    "sam_score",
)


def quality(run: RunData | str | Path) -> dict[str, Any]:
    """Per-frame numbers of the quality timeline, one entry per answered frame.

    Parameters
    ----------
    run : RunData or path

    Returns
    -------
    dict
        ``frame``, ``time``, ``time_unit``; each key of ``QUALITY_KEYS`` with a finite value
        in some record, as a float array (NaN where a frame lacks it, and on the given frame
        0, which is not registered); ``area_mm2``;
        ``deadline_missed``, ``fallback`` and ``gate_rejected`` (bool arrays); ``source``,
        ``reason`` and ``schedule`` (lists); ``stages_ms`` (stage -> float array, 0 where a
        frame's record does not name the stage, NaN for a record without stage times), when
        the streaming tracker recorded them (:mod:`regtrack.stages`).
    """
    run = run if isinstance(run, RunData) else load_run(run)
    records = run.records
    time, unit = run.times()
    data: dict[str, Any] = {"frame": np.arange(run.n_done), "time": time[: run.n_done]}
    data["time_unit"] = unit
    for key in QUALITY_KEYS:
        # frame 0 is given, not registered: its zeros would read as a free registration
        values = np.array(
            [math.nan if r.get("source") == "given" else _as_float(r.get(key)) for r in records]
        )
        if np.isfinite(values).any():  # NaN everywhere means "not used in this run"
            data[key] = values
    pixel_mm2 = float(np.prod(run.spacing_mm))
    data["area_mm2"] = np.array([_as_float(r.get("area_px")) * pixel_mm2 for r in records])
    data["deadline_missed"] = np.array([missed_deadline(r) for r in records])
    data["fallback"] = np.array([is_fallback(r) for r in records])
    data["gate_rejected"] = np.array([is_gate_rejected(r) for r in records])
    data["source"] = [str(r.get("source")) for r in records]
    data["reason"] = [str(r.get("reason") or "") for r in records]
    data["schedule"] = [schedule_words(r.get("schedule")) for r in records]
    stages = stage_times(records)
    if stages:
        data["stages_ms"] = stages
    return data


def stage_times(records: list[dict]) -> dict[str, np.ndarray]:
    """Milliseconds per stage and frame from the records' ``stages_ms``, in the order of
    :data:`regtrack.stages.STAGES` (stages no record names are left out)."""
    from ..stages import STAGES

    timed = [r.get("stages_ms") if isinstance(r.get("stages_ms"), dict) else None for r in records]
    named = {name for times in timed if times for name in times}
    stages = {}
    for name in [s for s in STAGES if s in named] + sorted(named - set(STAGES)):
        stages[name] = np.array(
            [math.nan if times is None else _as_float(times.get(name, 0.0)) for times in timed]
        )
    return stages


def quality_json(data: dict[str, Any]) -> dict:
    """:func:`quality` output as plain JSON values (NaN -> null)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = quality_json(value)
        elif isinstance(value, np.ndarray):
            out[key] = value.tolist() if value.dtype.kind in "bi" else _json_floats(value)
        else:
            out[key] = value
    return out


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _json_floats(array: np.ndarray) -> list:
    """Nested lists of floats with NaN as None."""
    values = np.asarray(array, dtype=np.float64)
    listed = values.tolist()
    if not np.isnan(values).any():
        return listed
    if values.ndim == 1:
        return [None if math.isnan(v) else v for v in listed]
    return [_json_floats(row) for row in values]


# --------------------------------------------------------------------------- summary


def summary(run: RunData) -> dict[str, Any]:
    """Key facts for the page: counts per source, timing, status, settings."""
    records = run.records
    later = [r for r in records if r.get("source") != "given"]
    ms = np.array([_as_float(r.get("elapsed_ms")) for r in later])
    ms = ms[np.isfinite(ms)]
    sources: dict[str, int] = {}
    for r in records:
        sources[str(r.get("source"))] = sources.get(str(r.get("source")), 0) + 1
    budget = [_as_float(r.get("budget_ms")) for r in records]
    budget = [b for b in budget if math.isfinite(b)]  # NaN: ran without a budget
    candidates: dict[str, int] = {}  # which map answered a registered frame (engine.FrameResult)
    for r in records:
        if r.get("candidate"):
            candidates[r["candidate"]] = candidates.get(r["candidate"], 0) + 1
    schedules: dict[str, int] = {}
    for r in records:
        label = schedule_words(r.get("schedule"))
        if label:
            schedules[label] = schedules.get(label, 0) + 1
    return {
        "case": run.name,
        "status": run.status,
        "complete": run.missing is None,
        "frames_done": run.n_done,
        "n_frames": run.n_frames,
        "frame_shape": list(run.masks.shape[1:]),
        "spacing_mm": list(run.spacing_mm),
        "frame_rate_hz": run.frame_rate_hz,
        "scanned_region": run.scanned_region,
        "preset": run.settings.get("preset"),
        "sources": sources,
        "fallback_frames": int(sum(is_fallback(r) for r in records)),
        "gate_rejected_frames": int(sum(is_gate_rejected(r) for r in records)),
        "deadline_missed_frames": int(sum(missed_deadline(r) for r in records)),
        "budget_ms": float(np.median(budget)) if budget else None,
        "schedules": schedules,
        "candidates": candidates,
        "start_correction_mm": start_corrections(records),
        "ms_per_frame_median": float(np.median(ms)) if ms.size else None,
        "ms_per_frame_p95": float(np.percentile(ms, 95)) if ms.size else None,
        "ms_per_frame_max": float(ms.max()) if ms.size else None,
        "output_written": (run.directory / "output.mha").is_file(),
        "has_ground_truth": run.labels is not None,
        "sam_ran": sam_ran(records),
        "notes": list(run.notes),
    }
