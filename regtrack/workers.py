"""Where a streaming tracker's registrations run: in this process, or in a worker process.

Elastix holds Python's GIL for the whole registration (measured: a 5 ms sleep in the main
thread woke after 277 ms while elastix ran in a second thread), so a thread cannot answer at a
deadline. Under a deadline the registration engine therefore lives in worker *processes*
(:func:`regtrack.processes.owned_process_pool`), one elastix engine each; offline, it runs
in this process.

A worker has ``works`` (schedule -> work), ``step_sizes``, ``submit(frame, previous, index,
*, schedule, return_fields) -> Future[FrameResult]`` and ``close()``.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor, Future
from dataclasses import replace

from .engine import Engine, FrameResult
from .processes import owned_process_pool, started_warm

__all__ = ["WORKERS", "InlineWorker", "ProcessWorker"]

_PROCESS_ENGINE: Engine | None = None


class InlineWorker:
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


class ProcessWorker:
    """The engine in a child process, so the main process can answer at a deadline.

    Starting returns at once; ``built`` is done when the engine is (its result raises a bad
    preset's own error). The child dies with this process and ignores Ctrl-C.
    """

    def __init__(self, frame0, mask0, settings, spacing_mm, *, threads=None) -> None:
        self._pool = owned_process_pool(threads)
        # built as a task, not in the initializer: a bad preset raises its own error
        self.built = self._pool.submit(_process_build, frame0, mask0, settings, spacing_mm, threads)

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
    def pids(self) -> list[int]:
        """The child's process id (for tests and monitoring)."""
        return list(self._pool._processes or ())

    def submit(self, *args, **kwargs) -> Future:
        try:
            return self._pool.submit(_process_track, *args, **kwargs)
        except BrokenExecutor as error:  # the process died while idle: fail this frame alone
            future: Future = Future()
            future.set_exception(error)
            return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


WORKERS = {"inline": InlineWorker, "process": ProcessWorker}
"""The built-in workers by the name :class:`regtrack.realtime.RealtimeTracker` takes."""


def _process_build(frame0, mask0, settings, spacing_mm, threads) -> tuple[dict, dict, bool]:
    global _PROCESS_ENGINE
    if threads and "MaximumNumberOfThreads" not in settings.overrides:
        settings = replace(
            settings, overrides={**settings.overrides, "MaximumNumberOfThreads": threads}
        )
    _PROCESS_ENGINE = Engine.build(frame0, mask0, settings, spacing_mm)
    return _PROCESS_ENGINE.works, _PROCESS_ENGINE.step_sizes, started_warm()


def _process_track(*args, **kwargs) -> FrameResult:
    return _PROCESS_ENGINE.track_frame(*args, **kwargs)
