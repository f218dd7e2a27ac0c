"""Worker processes that die with their owner: where regtrack's child processes come from.

Real-time registration workers (:mod:`regtrack.workers`) and the SAM2.1 worker
(:mod:`regtrack.sam_worker`) each run in a pool of one process from :func:`owned_process_pool`:
forked from a server that has loaded ITK's elastix wrappers once (:mod:`regtrack.preload`),
killed by the kernel when the owner ends, deaf to Ctrl-C (the owner stops them, so its records
stay whole). This module sits below both users and imports neither.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

__all__ = [
    "owned_process_pool",
    "start_worker_server",
    "started_warm",
    "thread_counts",
    "usable_cores",
    "worker_context",
]

_PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_STARTED_WARM = False  # this worker process began with ITK's wrappers already loaded


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_context():
    """Where worker processes come from: a fork server that has imported the engine and
    loaded ITK's elastix wrappers once (:mod:`regtrack.preload`), so a worker, the first or
    a replacement, starts warm; spawn (a cold start each) where there is no fork server.

    Starting the server early (:func:`start_worker_server`) overlaps its load with the
    caller's own work, such as reading the case.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["regtrack.preload"])
    return context


def start_worker_server() -> None:
    """Start the worker fork server now (it loads in the background); idempotent."""
    context = worker_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def owned_process_pool(threads: int | None = None) -> ProcessPoolExecutor:
    """A pool of one worker process from :func:`worker_context` that dies with this process
    and ignores Ctrl-C (registration workers, the SAM worker); ``threads`` sets its ITK,
    OpenCV, BLAS and OpenMP threads (:func:`_set_thread_pools`; None: the libraries'
    defaults, for the SAM worker, whose torch sets its own)."""
    context = worker_context()
    pdeathsig = (
        context.get_start_method() == "forkserver"
        or threading.current_thread() is threading.main_thread()
    )
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=context,
        initializer=_process_start,
        initargs=(os.getpid(), pdeathsig, threads),
    )


def started_warm() -> bool:
    """In a worker process: it began with ITK's wrappers loaded (forked from the server)."""
    return _STARTED_WARM


def _process_start(owner_pid: int, pdeathsig: bool, threads: int | None) -> None:
    """Worker process start: die with the owner, leave Ctrl-C to it, use ``threads``."""
    global _STARTED_WARM
    from . import itk_elastix

    _STARTED_WARM = itk_elastix.is_loaded()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner stops us; its records stay whole
    if pdeathsig and sys.platform.startswith("linux"):
        # the kernel kills us when our parent ends: the fork server (which ends with the
        # owner), or under spawn the owner's spawning thread (the main thread)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if not _alive(owner_pid):  # died before we got here
        os._exit(1)
    threading.Thread(target=_watch_owner, args=(owner_pid,), daemon=True).start()
    if threads:
        _set_thread_pools(threads)


def _set_thread_pools(threads: int) -> None:
    """Every thread pool a registration worker's frame runs through, set on purpose.

    The workers of a pool share the machine's cores (``threads`` is each one's share): a
    pool wider than its share puts threads of two frames on one core, and the frame whose
    thread waits is the one that misses its deadline. ITK (elastix, transformix) and
    OpenCV (the DIS flows of the flow candidate and the refinement) get the share. numpy's
    BLAS gets one thread whatever the share: its only work here is the B-spline map's tiny
    products, which an OpenBLAS with idle threads spinning on busy cores took 6.7 ms to do
    where one thread takes 0.05 ms. OpenMP, which none of these use on the wheels
    regtrack installs, gets the share too, so a build that does cannot oversubscribe.
    """
    import cv2
    from threadpoolctl import threadpool_limits

    from . import itk_elastix

    itk_elastix.set_threads(threads)
    cv2.setNumThreads(threads)
    threadpool_limits(1, user_api="blas")
    threadpool_limits(threads, user_api="openmp")


def thread_counts() -> dict[str, int]:
    """This process's thread pools: ITK's default, OpenCV's, and the widest BLAS (0: none
    loaded)."""
    import cv2
    from threadpoolctl import threadpool_info

    from . import itk_elastix

    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return {
        "itk": itk_elastix.default_threads(),
        "opencv": int(cv2.getNumThreads()),
        "blas": max(blas, default=0),
    }


def _watch_owner(owner_pid: int) -> None:
    """The portable fallback: once the owner or our parent is gone, exit."""
    parent = os.getppid()
    while os.getppid() == parent and _alive(owner_pid):
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a reused pid)
        return True
    return True
