"""SAM2.1 off the main loop: one frame at a time, always the newest, never a backlog.

A :class:`SamWorker` steps a SAM tracker on an executor of its own, so the streaming tracker
answers each frame by its deadline whatever SAM costs (SAM2.1-tiny at 1024 px takes seconds a
frame on a CPU). Its memory stays sequential: one step at a time, frames in order. When a frame
is offered while SAM is busy it waits in a slot of one; a newer frame takes that slot and the
older one is skipped (its answer is None). So SAM, once free, always takes the newest frame and
never holds more than the frame it steps and the one that waits.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial

import numpy as np

from .processes import owned_process_pool
from .sam import SamAnswer

__all__ = ["CHECKPOINT_ENV_VAR", "SamWorker"]

# impact.sam2_hiera.CHECKPOINT_ENV_VAR, not imported from there: that module imports torch,
# which the tracker's process must not load for a SAM that runs in a process of its own.
CHECKPOINT_ENV_VAR = "REGTRACK_SAM2_CHECKPOINT"


class SamWorker:
    """A SAM tracker stepping on a one-worker executor, the newest offered frame first.

    Attributes
    ----------
    newest : (int, SamAnswer) or None
        The newest answer that has arrived since the last :meth:`restart`, and its frame.
    busy_with : int or None
        The frame SAM is stepping now.
    stepped, skipped : int
        Frames answered, and frames skipped because a newer one was offered while SAM was busy.
    """

    def __init__(self, executor: Executor, init, step, where: str) -> None:
        self._executor = executor
        self._init, self._step = init, step
        self.where = where  # "thread" or "process"
        self._lock = threading.Lock()
        self._generation = 0  # restart() counts up: a step of the previous run is not news
        self._waiting: tuple[int, np.ndarray, Future] | None = None
        self.busy_with: int | None = None
        self.newest: tuple[int, SamAnswer] | None = None
        self.stepped = self.skipped = 0

    @classmethod
    def in_thread(cls, tracker) -> SamWorker:
        """Step ``tracker`` (``init(frame0, mask0)``, ``step(frame)``), an object the caller
        built around a loaded model, in a dedicated thread: the model cannot cheaply move to
        another process. torch releases the GIL while it computes, so this process still
        answers on time (only elastix, which never releases it, needs a process)."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="regtrack-sam")
        return cls(executor, tracker.init, tracker.step, "thread")

    @classmethod
    def in_process(cls, checkpoint: str | None, image_size: int | None) -> SamWorker:
        """Load SAM2.1 from ``checkpoint`` in a process of its own (torch is imported there,
        not here); it dies with this process. The model loads on the first :meth:`restart`."""
        executor = owned_process_pool()
        return cls(
            executor, partial(_process_init, checkpoint, image_size), _process_step, "process"
        )

    @property
    def pids(self) -> list[int]:
        """The SAM process's id (empty for a thread)."""
        return list(getattr(self._executor, "_processes", None) or ())

    def restart(self, frame0: np.ndarray, mask0: np.ndarray) -> None:
        """Start tracking from frame 0 again; returns when SAM has taken it (a model that does
        not load or a mask it refuses raises its own error here)."""
        with self._lock:
            self._generation += 1
            self.newest, waiting, self._waiting = None, self._waiting, None
        if waiting:
            waiting[2].set_result(None)
        self._executor.submit(self._init, frame0, mask0).result()

    def offer(self, index: int, frame: np.ndarray) -> Future:
        """Hand frame ``index`` to SAM; the future holds its answer, or None when it was
        skipped for a newer frame."""
        future: Future = Future()
        with self._lock:
            idle = self.busy_with is None
            skipped = None
            if idle:
                self.busy_with = index
            else:
                skipped, self._waiting = self._waiting, (index, frame, future)
                self.skipped += skipped is not None
            generation = self._generation
        if idle:
            self._run(index, frame, future, generation)
        elif skipped:
            skipped[2].set_result(None)
        return future

    def close(self) -> None:
        """Stop: nothing new starts; the SAM process ends at once (a step takes seconds on a
        CPU and nothing of it is kept), a thread finishes the step under way."""
        with self._lock:
            waiting, self._waiting = self._waiting, None
        if waiting:
            waiting[2].set_result(None)
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()

    def _run(self, index: int, frame: np.ndarray, future: Future, generation: int) -> None:
        try:
            step = self._executor.submit(self._step, frame)
        except RuntimeError as error:  # shut down, or the SAM process died
            with self._lock:
                self.busy_with = None
            future.set_exception(error)
            return
        step.add_done_callback(partial(self._finished, index, future, generation))

    def _finished(self, index: int, future: Future, generation: int, step: Future) -> None:
        """A step ended: note its answer, start the frame that waits, then hand the answer
        over (``newest`` is up to date before anyone waiting on the future wakes)."""
        answer = error = None
        if not step.cancelled():  # cancelled: closed before it started
            error = step.exception()
            answer = None if error else step.result()
        with self._lock:
            if answer is not None and generation == self._generation:
                self.newest = (index, answer)
                self.stepped += 1
            following, self._waiting = self._waiting, None
            self.busy_with = following[0] if following else None
            current = self._generation
        if following:
            self._run(*following, current)
        if error is None:
            future.set_result(answer)
        else:
            future.set_exception(error)


_TRACKER = None  # in the SAM process: the SamTracker around the model it loaded


def _process_init(checkpoint, image_size, frame0, mask0) -> None:
    global _TRACKER
    if _TRACKER is None:  # loaded once; a restart keeps the model
        from .sam import SamTracker, load_sam2_video

        _TRACKER = SamTracker(load_sam2_video(checkpoint, image_size=image_size))
    _TRACKER.init(frame0, mask0)


def _process_step(frame) -> SamAnswer:
    return _TRACKER.step(frame)


def sam_checkpoint(settings) -> str | None:
    """The checkpoint to load: the settings', else the environment variable's."""
    return settings.sam_checkpoint or os.environ.get(CHECKPOINT_ENV_VAR)
