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
import math
import os
import re
import socket
import statistics
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "WRITTEN_FILE",
    "RunFiles",
    "check_not_inputs",
    "check_output_paths",
    "claim_outputs",
    "fallback_runs",
    "file_fingerprint",
    "fingerprint_change",
    "foreign_files",
    "forget_written",
    "hold_lock",
    "is_fallback",
    "mark_written",
    "private_temp_dir",
    "read_records",
    "start_corrections",
    "strict_json",
    "writing",
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


def start_corrections(records: list[dict]) -> dict | None:
    """How far the registrations started from the fast tracker's map moved the target's centre
    from where that map put it (``start_correction_mm``): ``frames``, ``median`` and ``max``
    (mm) over the frames that have one; None when none has."""
    moved = [r.get("start_correction_mm") for r in records]
    moved = [m for m in moved if m is not None and math.isfinite(m)]
    if not moved:
        return None
    return {"frames": len(moved), "median": statistics.median(moved), "max": max(moved)}


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
            if not owner and _not_a_lock(lock):
                raise ValueError(
                    f"{lock} is a file that regtrack did not write (not a run lock); regtrack "
                    "would take it over. Move or delete it, or choose another --out"
                ) from None
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


#: A lock file still empty after this long is not one being written right now.
_LOCK_WRITE_S = 5.0


def _not_a_lock(lock: Path) -> bool:
    """Whether ``lock`` cannot be a run lock: it holds something other than regtrack's
    {"pid", "host"}, or it stayed empty longer than a writer takes to fill it."""
    import time

    try:
        stat = lock.stat()
    except OSError:
        return False
    if stat.st_size == 0:
        return time.time() - stat.st_mtime > _LOCK_WRITE_S
    return True


def _lock_owner(lock: Path) -> dict:
    """The pid and host in a lock file; {} when it is unreadable (a writer mid-write)."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) and "pid" in owner else {}


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


# --------------------------------------------------------------------------- what regtrack wrote

#: The record, in each folder regtrack writes to, of the files it wrote there.
WRITTEN_FILE = ".regtrack-written.json"


def strict_json(value, **options) -> str:
    """``json.dumps`` that writes only strict JSON: NaN and infinities become null.

    Python's json writes a bare ``NaN``, which other readers refuse; every JSON file regtrack
    writes goes through here (or refuses them with ``allow_nan=False``).
    """
    return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def check_not_inputs(outputs: dict, inputs) -> None:
    """ValueError when an output path (option -> path) is one of the inputs.

    Compared by the file itself (``os.path.samefile``), so a link or another spelling of an
    input is caught too. An input that is a folder (a case folder) covers everything inside
    it, and an ``--out`` folder that directly holds an input file is refused as well (writing
    there changes what the input's folder holds).
    """
    inputs = [Path(p) for p in inputs if p]
    for option, output in outputs.items():
        if output is None:
            continue
        output = Path(output)
        for source in inputs:
            if _same_file(output, source):
                raise ValueError(
                    f"{option} {output} is an input of this run ({source}); writing it would "
                    "destroy the input. Choose another output path"
                )
            if source.is_dir() and _inside(output, source):
                raise ValueError(
                    f"{option} {output} lies inside the input folder {source}; writing there "
                    "changes what is read. Choose an output path outside it"
                )
            if output.is_dir() and _same_file(output, source.parent) and option == "--out":
                raise ValueError(
                    f"{option} {output} is the folder of the input {source}; the run's files "
                    "would mix with the input's. Choose another output folder"
                )


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (existing or not) lies inside ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _written_record(folder: Path) -> dict:
    """The files regtrack wrote in ``folder``: name -> fingerprint (or {"growing": true})."""
    path = folder / WRITTEN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) else None
    return files if isinstance(files, dict) else {}


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a file regtrack wrote (and nobody changed since)."""
    entry = _written_record(path.parent).get(path.name)
    if not isinstance(entry, dict):
        return _is_regtrack_page(path)
    if entry.get("growing"):  # appended frame by frame; its records are checked on resume
        return True
    try:
        return fingerprint_change(entry, file_fingerprint(path)) is None
    except OSError:
        return False


#: The footer of every page regtrack renders (report/templates/base.html.j2).
_PAGE_FOOTER = re.compile(
    rb"<footer>regtrack \S+ &middot; generated [^<]*</footer>\s*(</main>\s*)?</body>\s*</html>\s*$"
)


def _is_regtrack_page(path: Path) -> bool:
    """Whether ``path`` is an HTML page regtrack rendered, even where its folder has no record
    (pages kept in git beside their benchmark JSON): its last bytes are regtrack's footer."""
    if path.suffix.lower() != ".html":
        return False
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 4096))
        return bool(_PAGE_FOOTER.search(file.read()))


def foreign_files(paths) -> list[Path]:
    """The paths that exist but were not written by regtrack (or were changed since)."""
    found = []
    for path in paths:
        path = Path(path)
        if path.is_symlink() or (path.exists() and not (path.is_file() and _is_ours(path))):
            found.append(path)
    return found


def claim_outputs(paths, *, fix: str = "choose another output folder") -> None:
    """ValueError naming the first of ``paths`` that exists and regtrack did not write.

    Called before anything is written: regtrack overwrites, resumes or deletes only files it
    wrote itself (listed in the folder's :data:`WRITTEN_FILE`), never a user's file that
    happens to have one of its names.
    """
    foreign = foreign_files(paths)
    if foreign:
        path = foreign[0]
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(
            f"{path} is {kind} that regtrack did not write (or that was changed since); "
            f"regtrack would overwrite it. Move or delete it, or {fix}"
        )


def mark_written(*paths, growing: bool = False) -> None:
    """Record ``paths`` as written by regtrack in their folders' :data:`WRITTEN_FILE`.

    ``growing`` marks files appended to as a run goes (records, partial masks): their
    content is checked by the resume, not by a fingerprint.
    """
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        path = Path(path)
        by_folder.setdefault(path.parent, []).append(path)
    for folder, names in by_folder.items():
        files = _written_record(folder)
        for path in names:
            files[path.name] = {"growing": True} if growing else file_fingerprint(path)
        _replace_json(folder / WRITTEN_FILE, {"written_by": "regtrack", "files": files})


@contextmanager
def writing(paths, *, fix: str = "choose another output folder") -> Iterator[list[Path]]:
    """Claim ``paths`` (:func:`claim_outputs`), then record those written when the block ends.

    Whatever happens in the block (an error, Ctrl-C), every one of ``paths`` that exists
    afterwards was written by it, so it is recorded and a rerun may overwrite it.
    """
    paths = [Path(p) for p in paths]
    claim_outputs(paths, fix=fix)
    try:
        yield paths
    finally:
        done = [p for p in paths if p.is_file() and not p.is_symlink()]
        if done:
            mark_written(*done)


def forget_written(*paths) -> None:
    """Delete files regtrack wrote (only those) and drop them from the record."""
    for path in (Path(p) for p in paths):
        if path.exists() and not foreign_files([path]):
            path.unlink()
        files = _written_record(path.parent)
        if files.pop(path.name, None) is not None:
            _replace_json(path.parent / WRITTEN_FILE, {"written_by": "regtrack", "files": files})


def _replace_json(path: Path, value) -> None:
    """Write a JSON file whole or not at all."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(strict_json(value, indent=1))
    os.replace(scratch, path)


# --------------------------------------------------------------------------- temporary folders

_TEMP_PREFIX = "regtrack-tmp-"


_PRIVATE_TEMP: list[Path] = []


@contextmanager
def private_temp_dir() -> Iterator[Path]:
    """Hold every temporary folder of this process and its workers in one folder.

    Within the block, ``tempfile.tempdir`` and ``TMPDIR`` (which worker processes inherit)
    name a folder ``regtrack-tmp-<pid>-*`` in the system's temporary directory. The folder
    is this process's for its lifetime and is removed when it exits, normally, on an error,
    on Ctrl-C or on SIGTERM (which regtrack's command handles like Ctrl-C), after its worker
    processes are gone; one left by a process killed outright (SIGKILL) is removed by the
    next regtrack command on this machine.
    """
    root = _private_root()
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(root), str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]


def _private_root() -> Path:
    """This process's private temporary folder, made (and its removal at exit arranged) once."""
    import shutil
    from multiprocessing import util

    if _PRIVATE_TEMP and _PRIVATE_TEMP[-1].is_dir():
        return _PRIVATE_TEMP[-1]
    util.get_temp_dir()  # multiprocessing's own folder stays outside: it removes it itself
    system = Path(tempfile.gettempdir())
    _remove_orphans(system)
    root = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=system))
    _PRIVATE_TEMP.append(root)
    # run by multiprocessing's exit handler after it has stopped the worker processes
    util.Finalize(None, shutil.rmtree, args=(str(root), True), exitpriority=-200)
    return root


def _remove_orphans(system: Path) -> None:
    """Remove the private temporary folders of regtrack processes that are gone."""
    import shutil

    for folder in system.glob(f"{_TEMP_PREFIX}*-*"):
        pid = folder.name[len(_TEMP_PREFIX) :].split("-")[0]
        if (
            pid.isdigit()
            and folder.is_dir()
            and not _is_alive({"pid": int(pid), "host": socket.gethostname()})
        ):
            shutil.rmtree(folder, ignore_errors=True)
