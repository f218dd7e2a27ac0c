"""Tracking a case on disk: resumable, flushed frame by frame, nothing half-written.

The output folder's files are listed in :mod:`regtrack.runfolder` (:class:`RunFiles`).
A record is appended only after its mask is on disk, so a crash on frame 900 keeps 0-899 and
a rerun resumes at frame 900.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .checks import (
    check_first_mask_extent,
    check_frame_rate,
    check_sequence,
    check_tracker_settings,
)
from .runfolder import (
    RunFiles,
    check_not_inputs,
    check_output_paths,
    claim_outputs,
    file_fingerprint,
    fingerprint_change,
    forget_written,
    hold_lock,
    mark_written,
    read_records,
    strict_json,
)
from .tracking import TrackerSettings, iter_track, replay

__all__ = ["RunFiles", "track_case"]

logger = logging.getLogger(__name__)


def _settings_record(case, settings: TrackerSettings, return_fields: bool, inputs: dict) -> dict:
    """What a run was asked: the case and every tracker setting (a resume must ask the same)."""
    values = asdict(settings)
    preset = settings.preset
    values["preset"] = (
        [str(p) for p in preset] if isinstance(preset, (list, tuple)) else str(preset)
    )
    return {
        "case": case.name,
        "files": getattr(case, "files", None),
        "inputs": inputs,
        "n_frames": int(case.frames.shape[0]),
        "frame_shape": [int(n) for n in case.frames.shape[1:]],
        "spacing_mm": [float(v) for v in case.spacing_mm],
        "frame_rate_hz": case.frame_rate_hz,
        **values,
        "fields": return_fields,
    }


def _mask_fingerprint(case) -> dict:
    """Content fingerprint of the first mask: its file when read from disk, else its array."""
    mask_file = (getattr(case, "files", None) or {}).get("mask")
    if mask_file:
        return file_fingerprint(mask_file)
    array = np.ascontiguousarray(case.first_mask)
    return {"path": "<mask array>", "sha256": hashlib.sha256(array.view(np.uint8).data).hexdigest()}


def _prepare(files: RunFiles, wanted: dict, restart: bool) -> int:
    """Check an existing run matches ``wanted``; return how many frames are already done."""
    found = None if restart else _read_settings(files)
    done = _frames_done(files) if found is not None else 0
    if done == 0:  # nothing worth keeping: start over with what is asked now
        forget_written(files.records, files.masks, files.fields, files.output)
        _write_json(files.settings, wanted)
        return 0
    _check_same_inputs(files, found.pop("inputs", {}), wanted["inputs"])
    asked = json.loads(strict_json({k: v for k, v in wanted.items() if k != "inputs"}, default=str))
    if found != asked:
        changed = sorted(k for k in asked.keys() | found.keys() if found.get(k) != asked.get(k))
        raise ValueError(
            f"{files.directory} holds a run with other settings ({', '.join(changed)} differ); "
            "pass --restart to start over there, or choose another output folder."
        )
    return done


def _read_settings(files: RunFiles) -> dict | None:
    """The run.json of a previous run; None when there is none."""
    if not files.settings.exists():
        return None
    try:
        return json.loads(files.settings.read_text())
    except ValueError:
        raise ValueError(
            f"{files.settings} is not valid JSON (damaged); pass --restart to start over there, "
            "or choose another output folder."
        ) from None


def _check_same_inputs(files: RunFiles, before: dict, now: dict) -> None:
    """ValueError naming the first input file that is not the one the run started on."""
    for name, fingerprint in now.items():
        old = before.get(name)
        why = "the run has no fingerprint of it" if old is None else None
        why = why or fingerprint_change(old, fingerprint)
        if why:
            raise ValueError(
                f"{fingerprint['path']} is not the input {files.directory} was tracked on "
                f"({why}); pass --restart to track it again from frame 0, or choose another "
                "output folder."
            )


def _write_json(path: Path, value: dict) -> None:
    """Write run.json whole or not at all (a crash mid-write leaves the old one)."""
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(strict_json(value, indent=2, default=str))
    os.replace(scratch, path)
    mark_written(path)


def _frames_done(files: RunFiles) -> int:
    """Frames 0..n-1 recorded in order (a torn last line from a crash is ignored)."""
    if not files.masks.exists():
        return 0
    return len(read_records(files.records))


class _FrameFile:
    """A (T, ...) array in a ``.npy`` file, written and read one frame at a time.

    Plain positioned writes, not a memory map: a map keeps every frame written resident in
    the process, so a 20 000-frame run would grow by its whole mask volume. Each write is in
    the file (the OS's cache) when it returns, so a killed process loses nothing written.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, fresh: bool) -> None:
        if fresh or not path.exists():
            mark_written(path, growing=True)
            created = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            del created  # leaves the header and a sparse file of zeros
        found_shape, found_dtype, self._offset = _npy_header(path)
        self.path, self.shape, self.dtype = path, tuple(found_shape), np.dtype(found_dtype)
        if self.shape != tuple(shape) or self.dtype != np.dtype(dtype):
            _damaged(
                path,
                f"it holds a {self.dtype} array of shape {self.shape}, the run "
                f"needs {np.dtype(dtype)} of shape {tuple(shape)}",
            )
        self._frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        expected = self._offset + self.shape[0] * self._frame_bytes
        if path.stat().st_size < expected:
            _damaged(path, f"it holds {path.stat().st_size} of its {expected} bytes (truncated)")
        self._fd = os.open(path, os.O_RDWR)

    def __setitem__(self, index: int, frame: np.ndarray) -> None:
        data = np.ascontiguousarray(frame, dtype=self.dtype)
        os.pwrite(self._fd, data.data, self._offset + index * self._frame_bytes)

    def __getitem__(self, index: int) -> np.ndarray:
        data = os.pread(self._fd, self._frame_bytes, self._offset + index * self._frame_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.shape[1:])

    def array(self) -> np.ndarray:
        """The whole array, memory-mapped read-only (for the final output file)."""
        return np.load(self.path, mmap_mode="r")

    def close(self) -> None:
        os.close(self._fd)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file; a damaged header names the file."""
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(file)
            return tuple(shape), np.dtype(dtype), file.tell()
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        _damaged(path, f"its header cannot be read: {err}")
        raise  # not reached


def _damaged(path: Path, why: str) -> None:
    raise ValueError(
        f"{path} is damaged ({why}); pass --restart to track again from frame 0, or choose "
        "another output folder"
    )


def mask_digest(mask: np.ndarray) -> str:
    """Digest of one frame's mask as the run stores it (uint8), kept in its record."""
    data = np.ascontiguousarray(mask, dtype=np.uint8)
    return hashlib.blake2b(data.data, digest_size=12).hexdigest()


def _verified_frames(files: RunFiles, masks: _FrameFile, done: int) -> int:
    """How many of the ``done`` recorded frames have the mask their record's digest names.

    From the first frame whose stored mask does not match (edited, zeroed, or a record from
    before digests), the run is redone, with a RuntimeWarning: the frames after it were
    tracked from it.
    """
    records = read_records(files.records)[:done]
    for record in records:
        index = record["index"]
        if record.get("mask_digest") != mask_digest(masks[index]):
            bad = [
                r["index"]
                for r in records[index:]
                if r.get("mask_digest") != mask_digest(masks[r["index"]])
            ]
            warnings.warn(
                f"{files.masks} does not hold the masks its records name for {len(bad)} of "
                f"the {done} frames done (first: frame {index}); tracking again from frame "
                f"{index}",
                RuntimeWarning,
                stacklevel=3,
            )
            return index
    return done


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
        Replay the sequence in real time at this rate (:func:`regtrack.tracking.replay`):
        each frame is answered within ``settings.budget_s`` of its arrival.

    Returns
    -------
    Path
        The written output file.
    """
    from .io import write_masks

    settings = settings or TrackerSettings()
    files = RunFiles(Path(out_dir))
    output = Path(output_path) if output_path else files.output
    inputs = {
        "frames": _check_before_writing(case, settings, files, output, frame_rate_hz),
        "mask": _mask_fingerprint(case),
    }
    wanted = _settings_record(case, settings, return_fields, inputs)
    if frame_rate_hz:  # a replay resumes only at the rate it started with
        wanted["replay_hz"] = float(frame_rate_hz)
    files.directory.mkdir(parents=True, exist_ok=True)
    with hold_lock(files):
        masks = _track_into(files, case, settings, wanted, restart, progress, frame_rate_hz)
        write_masks(output, masks, geometry=case.geometry, spacing_mm=case.spacing_mm)
        mark_written(output)
    return output


def _check_before_writing(case, settings, files, output, frame_rate_hz) -> dict:
    """Every check that can fail, run before the folder exists: settings, outputs, input.

    Returns the frames' fingerprint (taken in the same single read for frames in memory).
    """
    from .io import IMAGE_SUFFIXES

    check_tracker_settings(settings)
    if frame_rate_hz is not None:
        check_frame_rate(frame_rate_hz, "frame_rate_hz (--frame-rate)")
    check_output_paths(files.directory, output)
    if not output.name.lower().endswith(IMAGE_SUFFIXES):
        raise ValueError(
            f"output file {output} has no image suffix; end it with one of {IMAGE_SUFFIXES}"
        )
    inputs = [p for name, p in (getattr(case, "files", None) or {}).items() if p]
    check_not_inputs({"--output-file": output, "--out": files.directory}, inputs)
    claim_outputs(
        (*files.results, output),
        fix="choose another --out (--restart deletes only a previous regtrack run)",
    )
    frames_file = (getattr(case, "files", None) or {}).get("frames")
    if frames_file:
        check_sequence(case.frames, f"sequence {frames_file}")
        frames_fingerprint = file_fingerprint(frames_file)
    else:  # frames in memory: hash them in the same single pass
        digest = hashlib.sha256()
        check_sequence(_hashed(case.frames, digest), "the frames")
        frames_fingerprint = {"path": "<frames array>", "sha256": digest.hexdigest()}
    check_first_mask_extent(case.first_mask)
    return frames_fingerprint


def _hashed(frames, digest):
    """Yield the frames, feeding each into ``digest``."""
    for frame in frames:
        frame = np.ascontiguousarray(frame)
        digest.update(frame.view(np.uint8).data)
        yield frame


def _track_into(files, case, settings, wanted, restart, progress, frame_rate_hz) -> np.ndarray:
    """Resume or start the run in ``files``; return the (T, H, W) masks, all frames done."""
    n_frames, rows, cols = (int(n) for n in case.frames.shape)
    done = _prepare(files, wanted, restart)
    masks = _FrameFile(files.masks, (n_frames, rows, cols), np.uint8, fresh=done == 0)
    if done:
        done = _verified_frames(files, masks, done)
    fields = None
    if wanted["fields"]:
        fields = _FrameFile(files.fields, (n_frames, rows, cols, 2), np.float32, done == 0)
    _truncate_records(files, done)
    mark_written(files.records, growing=True)
    try:
        if done < n_frames:
            if done:
                logger.info("resuming %s at frame %d of %d", case.name, done, n_frames)
            _run_frames(case, files, settings, masks, fields, done, progress, frame_rate_hz)
    finally:
        for array in (masks, fields):
            if array is not None:
                array.close()
    return masks.array()


def _run_frames(case, files, settings, masks, fields, done, progress, frame_rate_hz) -> None:
    from tqdm.auto import tqdm

    common = {
        "settings": settings,
        "spacing_mm": case.spacing_mm,
        "start": done,
        "previous_mask": masks[done - 1] if done else None,
    }
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
            if fields is not None and result.displacement_mm is not None:
                fields[result.index] = result.displacement_mm
            record = {**result.record(), "mask_digest": mask_digest(result.mask)}
            log.write(strict_json(record) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(source=result.source, ms=f"{result.elapsed_ms:.0f}")
