"""Tracking a case on disk: resumable, flushed frame by frame, nothing half-written.

The output folder's files are listed in :mod:`regtrack.runfolder` (:class:`RunFiles`).
A record is appended only after its mask is on disk, so a crash on frame 900 keeps 0-899 and
a rerun resumes at frame 900.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .realtime import replay
from .runfolder import RunFiles, read_records
from .tracking import TrackerSettings, iter_track

__all__ = ["RunFiles", "track_case"]

logger = logging.getLogger(__name__)


def _settings_record(case, settings: TrackerSettings, return_fields: bool) -> dict:
    """What a run was asked: the case and every tracker setting (a resume must ask the same)."""
    values = asdict(settings)
    preset = settings.preset
    values["preset"] = (
        [str(p) for p in preset] if isinstance(preset, (list, tuple)) else str(preset)
    )
    return {
        "case": case.name,
        "files": getattr(case, "files", None),
        "n_frames": int(case.frames.shape[0]),
        "frame_shape": [int(n) for n in case.frames.shape[1:]],
        "spacing_mm": [float(v) for v in case.spacing_mm],
        "frame_rate_hz": case.frame_rate_hz,
        **values,
        "fields": return_fields,
    }


def _prepare(files: RunFiles, wanted: dict, restart: bool) -> int:
    """Check an existing run matches ``wanted``; return how many frames are already done."""
    files.directory.mkdir(parents=True, exist_ok=True)
    if restart or not files.settings.exists():
        for path in (files.records, files.masks, files.fields):
            path.unlink(missing_ok=True)
        files.settings.write_text(json.dumps(wanted, indent=2, default=str))
        return 0
    found = json.loads(files.settings.read_text())
    if found != json.loads(json.dumps(wanted, default=str)):
        changed = sorted(k for k in wanted if found.get(k) != wanted[k])
        raise ValueError(
            f"{files.directory} holds a run with other settings ({', '.join(changed)} differ); "
            "pass --restart to start over there, or choose another output folder."
        )
    return _frames_done(files)


def _frames_done(files: RunFiles) -> int:
    """Frames 0..n-1 recorded in order (a torn last line from a crash is ignored)."""
    if not files.masks.exists():
        return 0
    return len(read_records(files.records))


def _open_array(path: Path, shape: tuple[int, ...], dtype, fresh: bool) -> np.ndarray:
    if fresh or not path.exists():
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    return np.lib.format.open_memmap(path, mode="r+")


def _truncate_records(files: RunFiles, n_done: int) -> None:
    """Drop any record after the last complete one, so the file stays one line per frame."""
    if not files.records.exists():
        return
    lines = files.records.read_text().splitlines(keepends=True)[:n_done]
    files.records.write_text("".join(lines))


def track_case(
    case,
    out_dir: str | os.PathLike,
    *,
    settings: TrackerSettings | None = None,
    output_path: str | os.PathLike | None = None,
    return_fields: bool = False,
    restart: bool = False,
    progress: bool = False,
    frame_rate_hz: float | None = None,
) -> Path:
    """Track a :class:`regtrack.io.Case` into ``out_dir``, resuming an interrupted run.

    Parameters
    ----------
    case : regtrack.io.Case
    out_dir : path
        Folder for the run's files (see module docstring).
    settings : TrackerSettings, optional
    output_path : path, optional
        Where the final masks go (default ``out_dir/output.mha``).
    return_fields : bool
        Also keep each frame's displacement field.
    restart : bool
        Discard a previous run in ``out_dir`` instead of resuming it.
    progress : bool
        Show a progress bar (tqdm).
    frame_rate_hz : float, optional
        Replay the sequence in real time at this rate (:func:`regtrack.realtime.replay`):
        each frame is answered within ``settings.budget_s`` of its arrival.

    Returns
    -------
    Path
        The written output file.
    """
    from .io import write_masks

    settings = settings or TrackerSettings()
    files = RunFiles(Path(out_dir))
    n_frames, rows, cols = (int(n) for n in case.frames.shape)
    done = _prepare(files, _settings_record(case, settings, return_fields), restart)
    masks = _open_array(files.masks, (n_frames, rows, cols), np.uint8, fresh=done == 0)
    fields = None
    if return_fields:
        fields = _open_array(files.fields, (n_frames, rows, cols, 2), np.float32, done == 0)
    _truncate_records(files, done)
    if done < n_frames:
        if done:
            logger.info("resuming %s at frame %d of %d", case.name, done, n_frames)
        _run_frames(case, files, settings, masks, fields, done, progress, frame_rate_hz)
    output = Path(output_path) if output_path else files.output
    write_masks(output, masks, geometry=case.geometry, spacing_mm=case.spacing_mm)
    return output


def _run_frames(case, files, settings, masks, fields, done, progress, frame_rate_hz) -> None:
    from tqdm.auto import tqdm

    common = {"settings": settings, "spacing_mm": case.spacing_mm, "start": done,
              "previous_mask": masks[done - 1] if done else None}  # fmt: skip
    if frame_rate_hz:
        results = replay(case.frames, case.first_mask, frame_rate_hz=frame_rate_hz, **common)
    else:
        results = iter_track(
            case.frames, case.first_mask, return_fields=fields is not None, **common
        )
    bar = tqdm(total=masks.shape[0], initial=done, disable=not progress, unit="frame")
    with files.records.open("a") as log, bar:
        for result in results:
            masks[result.index] = result.mask
            masks.flush()
            if fields is not None and result.displacement_mm is not None:
                fields[result.index] = result.displacement_mm
                fields.flush()
            log.write(json.dumps(result.record()) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(source=result.source, ms=f"{result.elapsed_ms:.0f}")
