"""The files of one run folder and how to read them; light enough for the report to import.

A run folder (``regtrack track --out``) holds
- ``run.json``: what was asked (case, its files and their fingerprints, settings);
- ``frames.jsonl``: one record per frame, appended and flushed as each frame is answered;
- ``masks.partial.npy``: the masks so far (a (T, H, W) uint8 ``.npy``, written frame by frame);
- ``displacement.partial.npy``: optional (T, H, W, 2) float32 fields, mm (row, col);
- ``output.mha``: the final masks, written once every frame is done (unless the run was given
  another output file);
- ``run.lock``: present while a process writes the folder; holds its pid.

This module imports neither elastix nor torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RunFiles",
    "check_output_paths",
    "fallback_runs",
    "file_fingerprint",
    "fingerprint_change",
    "hold_lock",
    "is_fallback",
    "read_records",
]

#: Files up to this size are hashed whole; larger ones by their header and evenly spaced blocks.
FULL_HASH_BYTES = 64 * 2**20
_SAMPLE_BLOCKS = 64
_BLOCK_BYTES = 64 * 2**10
#: Record sources that are a normal answer; any other is a fallback (:func:`is_fallback`).
NORMAL_SOURCES = ("given", "registration")
#: Fallback runs at least this long are counted in a run's summary line.
LONG_FALLBACK_FRAMES = 4


@dataclass(frozen=True)
class RunFiles:
    """Paths of one run's output folder: the one list of what a run writes."""

    directory: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))

    @property
    def settings(self) -> Path:
        return self.directory / "run.json"

    @property
    def records(self) -> Path:
        return self.directory / "frames.jsonl"

    @property
    def masks(self) -> Path:
        return self.directory / "masks.partial.npy"

    @property
    def fields(self) -> Path:
        return self.directory / "displacement.partial.npy"

    @property
    def output(self) -> Path:
        return self.directory / "output.mha"

    @property
    def lock(self) -> Path:
        return self.directory / "run.lock"

    @property
    def required(self) -> tuple[Path, ...]:
        """The files every run has once it started: what a reader of results needs."""
        return (self.settings, self.records, self.masks)

    @property
    def results(self) -> tuple[Path, ...]:
        """Every result file a run may write (not the lock)."""
        return (*self.required, self.fields, self.output)


def read_records(path: str | Path) -> list[dict]:
    """Per-frame records of ``frames.jsonl``: frames 0..n-1 in order.

    A torn last line (a crash mid-write) or a record out of order ends the list, so what is
    returned is exactly the frames a resumed run would keep. A missing file gives ``[]``.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or record.get("index") != len(records):
            break
        records.append(record)
    return records


def is_fallback(record: dict) -> bool:
    """True when a frame's answer is not what its method answers normally: not the given mask,
    an accepted registration, or the SAM2.1 tracker answering by choice (method "sam": source
    "sam" with no reason; in hybrid mode SAM answers with the registration's reason)."""
    source = record.get("source")
    if source == "sam":
        return bool(record.get("reason"))
    return source not in NORMAL_SOURCES


def fallback_runs(records: list[dict]) -> list[tuple[int, int]]:
    """(first frame, length) of each run of consecutive fallback answers, in order."""
    runs: list[tuple[int, int]] = []
    for record in records:
        if not is_fallback(record):
            continue
        index = record["index"]
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


# --------------------------------------------------------------------------- input fingerprints


def file_fingerprint(path: str | Path) -> dict:
    """Size, mtime and a content hash of an input file, to tell later whether it changed.

    Files up to :data:`FULL_HASH_BYTES` are hashed whole (a first mask, most sequences);
    larger ones by their first block (the header) and :data:`_SAMPLE_BLOCKS` evenly spaced
    blocks, which reads about 4 MiB whatever the size.
    """
    path = Path(path)
    stat = path.stat()
    sampled = stat.st_size > FULL_HASH_BYTES
    digest = hashlib.sha256()
    with path.open("rb") as file:
        if sampled:
            step = stat.st_size // _SAMPLE_BLOCKS
            for offset in range(0, stat.st_size, step):
                file.seek(offset)
                digest.update(file.read(_BLOCK_BYTES))
        else:
            for block in iter(lambda: file.read(2**20), b""):
                digest.update(block)
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digest.hexdigest(),
        "hashed": "sampled" if sampled else "whole",
    }


def fingerprint_change(before: dict, now: dict) -> str | None:
    """Why a file's fingerprint ``now`` differs from ``before``; None when it is the same file.

    A sampled hash cannot see every byte, so for large files a new mtime counts as a change.
    """
    if before.get("size") != now.get("size"):
        return f"its size changed from {before.get('size')} to {now.get('size')} bytes"
    if before.get("sha256") != now.get("sha256"):
        return "its content changed"
    if now.get("hashed") == "sampled" and before.get("mtime_ns") != now.get("mtime_ns"):
        return "it was modified (new modification time)"
    return None


# --------------------------------------------------------------------------- one writer


@contextmanager
def hold_lock(files: RunFiles) -> Iterator[None]:
    """Hold ``run.lock`` while writing a run folder; one writer per folder.

    Raises ValueError when a live process holds it; a lock left by a dead process (a crash,
    a kill -9) is taken over with a RuntimeWarning. The folder must exist.
    """
    _acquire(files.lock)
    try:
        yield
    finally:
        files.lock.unlink(missing_ok=True)


def _acquire(lock: Path) -> None:
    """Create ``lock`` holding our pid, taking over a stale one (at most once)."""
    for attempt in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if attempt or _is_alive(owner):
                raise ValueError(
                    f"{lock.parent} is being written by another regtrack process "
                    f"({_describe(owner)}); wait for it to finish, or choose another --out"
                ) from None
            warnings.warn(
                f"{lock} was left by a process that is gone ({_describe(owner)}); taking the "
                "folder over",
                RuntimeWarning,
                stacklevel=4,
            )
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as file:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, file)
        return


def _lock_owner(lock: Path) -> dict:
    """The pid and host in a lock file; {} when it is unreadable (a writer mid-write)."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_alive(owner: dict) -> bool:
    """Whether the lock's owner may still run: same host and the pid exists (or unknown)."""
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True  # being written right now, or not ours to judge: do not take it
    if owner.get("host") != socket.gethostname():
        return True  # another machine on a shared disk: its pid means nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"


# --------------------------------------------------------------------------- output paths


def check_output_paths(out_dir: str | Path, output_file: str | Path | None = None) -> None:
    """Raise ValueError if the run folder or the output file could not be written.

    Tried before anything is written: a folder that is an existing file or lies under one,
    an output file that is a folder, a place we may not write. Nothing is left behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is an existing file; give a folder for the run")
    _check_can_create(out_dir, "--out")
    if output_file is not None:
        output_file = Path(output_file)
        if output_file.is_dir():
            raise ValueError(
                f"--output-file {output_file} is a folder; give a file name, e.g. "
                f"{output_file / 'output.mha'}"
            )
        _check_can_create(output_file.parent, "--output-file")


def _check_can_create(folder: Path, option: str) -> None:
    """ValueError unless ``folder`` exists or can be made, and a file can be written in it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {folder} cannot be created: {existing} is a file, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".regtrack-probe-", dir=existing)
    except OSError as err:
        raise ValueError(
            f"{option} {folder} cannot be written: {err.strerror} in {existing}; choose a "
            "folder you can write to"
        ) from None
    os.close(descriptor)
    os.unlink(probe)
