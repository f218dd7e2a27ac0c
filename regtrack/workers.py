"""Where a streaming tracker's registrations run: in this process, or in a worker process.

Elastix holds Python's GIL for the whole registration (measured: a 5 ms sleep in the main
thread woke after 277 ms while elastix ran in a second thread), so a thread cannot answer at a
deadline. Under a deadline the registration engine therefore lives in worker *processes*
(:func:`regtrack.processes.owned_process_pool`), one elastix engine each; offline, it runs
in this process.

A worker has ``works`` (schedule -> work), ``step_sizes``, ``submit(frame, previous, index,
*, schedule, return_fields) -> Future[FrameResult]`` and ``close()``. The built-in
workers time their stages (:func:`regtrack.stages.track_timed`) and take a ``keyframe``
(:class:`regtrack.engine.Keyframe`) for the flow rung (``keyframes = True``).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import BrokenExecutor, Future
from dataclasses import replace

import numpy as np

from .engine import Engine, FrameResult, Keyframe
from .processes import owned_process_pool, started_warm, thread_counts
from .stages import track_timed

__all__ = ["WORKERS", "InlineWorker", "ProcessWorker"]

_PROCESS_ENGINE: Engine | None = None
_PROCESS_FRAMES: np.ndarray | None = None  # the frames its owner hands over (shared memory)
_FRAME_SLOTS = 2  # one registration runs per worker; the second slot is slack
_KEYFRAME_SLOT = _FRAME_SLOTS  # and one more for the keyframe the flow rung maps onto


class InlineWorker:
    """The engine in this process: no deadline can interrupt it (offline mode)."""

    keyframes = True

    def __init__(self, frame0, mask0, settings, spacing_mm) -> None:
        self._engine = Engine.build(frame0, mask0, settings, spacing_mm)
        self.works = self._engine.works
        self.step_sizes = self._engine.step_sizes

    def submit(self, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(track_timed(self._engine, *args, **kwargs))
        return future

    def close(self) -> None:
        pass


class ProcessWorker:
    """The engine in a child process, so the main process can answer at a deadline.

    Starting returns at once; ``built`` is done when the engine is (its result raises a bad
    preset's own error). The child dies with this process and ignores Ctrl-C.
    """

    keyframes = True

    def __init__(self, frame0, mask0, settings, spacing_mm, *, threads=None) -> None:
        self._pool = owned_process_pool(threads)
        self._frames, path = _shared_frames(np.shape(frame0))
        self._handed = 0
        self._keyframe_index: int | None = None  # the keyframe now in its slot
        # built as a task, not in the initializer: a bad preset raises its own error
        self.built = self._pool.submit(
            _process_build, frame0, mask0, settings, spacing_mm, threads, path
        )
        # the worker unlinks it once mapped; this covers a build that failed before
        self.built.add_done_callback(lambda _: _unlink(path))

    @property
    def works(self) -> dict:
        return self.built.result()[0]

    @property
    def step_sizes(self) -> dict:
        return self.built.result()[1]

    @property
    def started_warm(self) -> bool:
        """The process began with ITK's wrappers loaded (forked from the loaded server)."""
        return self.built.result()[2]

    @property
    def thread_counts(self) -> dict[str, int]:
        """The worker's thread pools (:func:`regtrack.processes.thread_counts`)."""
        return self.built.result()[3]

    @property
    def pids(self) -> list[int]:
        """The child's process id (for tests and monitoring)."""
        return list(self._pool._processes or ())

    def submit(self, frame, previous, index, *, keyframe: Keyframe | None = None, **kwargs):
        """Register ``frame``: it goes through shared memory and the starting mask as bits,
        not as pickled arrays (a 350 x 350 frame and mask cost 1.5-3.5 ms more per frame
        through the pipe than a bare call, up to 15 ms at the 90th percentile under load).
        A ``keyframe`` goes the same way, its frame only when it changed."""
        slot, self._handed = self._handed % _FRAME_SLOTS, self._handed + 1
        self._frames[slot] = frame
        start = np.packbits(np.asarray(previous, bool))
        key = None
        if keyframe is not None:  # the worker is idle: nothing reads the slot meanwhile
            if keyframe.index != self._keyframe_index:
                self._frames[_KEYFRAME_SLOT] = keyframe.frame
                self._keyframe_index = keyframe.index
            key = (keyframe.index, np.packbits(np.asarray(keyframe.mask, bool)))
        try:
            return self._pool.submit(_process_track, slot, start, index, key, **kwargs)
        except BrokenExecutor as error:  # the process died while idle: fail this frame alone
            future: Future = Future()
            future.set_exception(error)
            return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


WORKERS = {"inline": InlineWorker, "process": ProcessWorker}
"""The built-in workers by the name :class:`regtrack.realtime.RealtimeTracker` takes."""


def _shared_frames(shape) -> tuple[np.ndarray, str]:
    """Frame slots in shared memory (/dev/shm where there is one) and the file's path."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    handle, path = tempfile.mkstemp(prefix="regtrack-frames-", dir=folder)
    os.close(handle)
    return np.memmap(path, np.float32, "w+", shape=(_FRAME_SLOTS + 1, *shape)), path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _process_build(
    frame0, mask0, settings, spacing_mm, threads, frames_path
) -> tuple[dict, dict, bool, dict]:
    global _PROCESS_ENGINE, _PROCESS_FRAMES
    _PROCESS_FRAMES = np.memmap(
        frames_path, np.float32, "r", shape=(_FRAME_SLOTS + 1, *np.shape(frame0))
    )
    _unlink(frames_path)  # both sides have it mapped: nothing is left behind if either dies
    if threads and "MaximumNumberOfThreads" not in settings.overrides:
        settings = replace(
            settings, overrides={**settings.overrides, "MaximumNumberOfThreads": threads}
        )
    _PROCESS_ENGINE = Engine.build(frame0, mask0, settings, spacing_mm)
    engine = _PROCESS_ENGINE
    return engine.works, engine.step_sizes, started_warm(), thread_counts()


def _process_track(slot: int, start: np.ndarray, index: int, key, **kwargs) -> FrameResult:
    frame = np.array(_PROCESS_FRAMES[slot])
    previous = _unpacked(start, frame.shape)
    keyframe = None
    if key is not None:
        key_frame = np.array(_PROCESS_FRAMES[_KEYFRAME_SLOT])
        keyframe = Keyframe(key[0], key_frame, _unpacked(key[1], frame.shape))
    return track_timed(_PROCESS_ENGINE, frame, previous, index, keyframe=keyframe, **kwargs)


def _unpacked(bits: np.ndarray, shape) -> np.ndarray:
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).view(bool)
