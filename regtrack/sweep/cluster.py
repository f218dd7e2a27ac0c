"""Where many tasks run: this process one by one, a LocalCluster of processes, or a running
dask cluster; and what each task does around its work on a worker.

Shared by sweeps (:mod:`regtrack.sweep.execute`) and batches (:mod:`regtrack.batch`):

- :func:`task_results` submits ``function(payload)`` for every payload and yields the results
  as they complete. Local workers are processes with 1 thread each and the ITK thread count
  set before ITK starts; a worker that dies loses its task, which dask runs again elsewhere.
- :func:`guarded` runs one task's work on the worker: it logs the start in the task's run
  folder (a count above 1 tells a retried task), sets ITK's thread count for the task, and
  turns an exception into a ``failed`` result instead of a crash.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import itk_elastix
from ..extras import need_extra
from ..processes import usable_cores

__all__ = ["guarded", "task_results", "usable_cores"]

logger = logging.getLogger(__name__)

ATTEMPTS_FILE = "attempts.jsonl"
_THREAD_ENV = (
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


def process_id() -> str:
    """host:pid of this process (a task run in its caller's process restores its threads)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- worker side


def guarded(payload: dict, row: dict, work: Callable[[Path, int], dict]) -> dict:
    """Run ``work(run_dir, attempt)`` as one task; never raises for a failing task.

    Parameters
    ----------
    payload : dict
        ``run_dir``, ``threads`` (int, or ``{"by_host": {ip: n}, "default": n}``) and
        ``client`` (host:pid of the caller, whose own ITK setting is restored afterwards).
    row : dict
        The task's result so far (its names); ``work``'s dict is added to it.
    work : callable
        Does the task in ``run_dir`` and returns the values to record; ``attempt`` counts
        the processes that started this task (1 the first time, more after a lost worker).

    Returns
    -------
    dict
        ``row`` with ``work``'s values, ``status`` (ok | failed), ``error``, ``attempts``,
        ``itk_threads``, ``worker``, ``task_s`` (wall) and ``cpu_s``.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    run_dir = Path(payload["run_dir"])
    row = {**row, "run_dir": str(run_dir), "worker": _worker_name()}
    previous = None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        row["attempts"] = _count_attempt(run_dir)
        previous, row["itk_threads"] = _limit_threads(_threads_here(payload["threads"]))
        row.update(work(run_dir, row["attempts"]))
        row.update(status="ok", error=None)
    except Exception as error:  # noqa: BLE001 - a failing task is a result; the rest go on
        row.update(status="failed", error=f"{type(error).__name__}: {error}")
    finally:
        # In the caller's own process (synchronous path, in-process cluster) its setting is
        # put back; a worker process keeps it, as tasks beside this one may still be running.
        if previous is not None and payload.get("client") == process_id():
            _limit_threads(previous)
    row["task_s"] = time.perf_counter() - wall
    row["cpu_s"] = time.process_time() - cpu
    return row


def _count_attempt(run_dir: Path) -> int:
    """Log this start in the run folder; the count tells a retried task (> 1)."""
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    path = run_dir / ATTEMPTS_FILE
    with path.open("a") as log:
        log.write(line + "\n")
    return len(path.read_text().splitlines())


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local:{os.getpid()}"


def _threads_here(threads) -> int:
    """The ITK thread count for this worker: per host (cores / task slots on it), or fixed."""
    if isinstance(threads, int):
        return threads
    try:
        from urllib.parse import urlparse

        from distributed import get_worker

        host = urlparse(get_worker().address).hostname
        return int(threads["by_host"].get(host, threads["default"]))
    except (ImportError, ValueError):
        return int(threads["default"])


def _limit_threads(n: int) -> tuple[int, int]:
    """Set ITK's (and torch's) thread count for this process; returns (before, now).

    Elastix runs its metric and resampling on ITK's global thread pool, which by default
    takes every core: N worker processes would then run N x cores threads. The environment
    variables only act before ITK starts, so the count is also set here, per task.
    """
    threader = itk_elastix.load().MultiThreaderBase
    before = int(threader.GetGlobalDefaultNumberOfThreads())
    threader.SetGlobalDefaultNumberOfThreads(int(n))
    if "torch" in sys.modules:  # IMPACT feature presets run torch in the same process
        sys.modules["torch"].set_num_threads(int(n))
    return before, int(threader.GetGlobalDefaultNumberOfThreads())


# --------------------------------------------------------------------------- client side


@contextmanager
def task_results(
    function: Callable[[dict], dict],
    payloads: list[dict],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_task: int | None = None,
    client=None,
    key: Callable[[dict], str] = lambda payload: "regtrack-task",
    on_lost: Callable[[dict, Exception], dict] | None = None,
    say: Callable[[str], None] | None = None,
):
    """Results of ``function(payload)`` for every payload, as the tasks complete.

    Parameters
    ----------
    function : callable
        A module-level function (dask sends it by name) taking a payload (with ``threads``
        added: the ITK threads its task may use) and returning a small dict.
    payloads : list of dict
        Paths and values only, no arrays: nothing heavy goes through the scheduler.
    scheduler : str, optional
        ``tcp://host:port`` of a running dask scheduler, used as it is; ``"synchronous"``
        runs the tasks one by one in this process, without dask. Default: a LocalCluster.
    workers : int, optional
        LocalCluster worker processes (1 thread each); default one per usable core.
    threads_per_task : int, optional
        ITK threads per task; default the worker host's cores divided by its task slots.
    client : distributed.Client, optional
        An existing client to run on (notebooks, tests); wins over ``scheduler``.
    key : callable
        A readable task key for the dashboard (made unique here).
    on_lost : callable, optional
        ``(payload, error) -> result`` for a task dask gave up on (its worker died too
        often); by default the error is raised.
    say : callable, optional
        Where the cluster's one line (workers, dashboard) goes (default: logged at INFO).

    Yields
    ------
    iterator of dict
    """
    if client is None and scheduler == "synchronous":
        threads = threads_per_task or usable_cores()
        yield (function({**p, "threads": threads}) for p in payloads)
        return
    need_extra("sweep", "running tasks on dask (--scheduler synchronous runs them here)")
    with (
        _quiet_dask_logs(),
        _client(scheduler, workers, threads_per_task, len(payloads), client) as dask_client,
    ):
        (say or logger.info)(
            f"dask: {len(dask_client.scheduler_info()['workers'])} worker(s) at "
            f"{dask_client.scheduler.address}; dashboard: {_dashboard(dask_client)}"
        )
        threads = threads_per_task or _threads_by_host(dask_client)
        yield _dask_results(dask_client, function, payloads, threads, key, on_lost)


def _dashboard(client) -> str:
    """The dashboard's address; dask serves its pages only where bokeh is installed."""
    import importlib.util

    link = getattr(client, "dashboard_link", None) or "unavailable"
    if importlib.util.find_spec("bokeh") is None:
        link += " (pages need bokeh: pip install 'bokeh>=3.1')"
    return link


@contextmanager
def _quiet_dask_logs():
    """Keep dask's INFO lines (every worker start and stop) out of the command's output.

    Its warnings (a worker died, a task is retried) still show; ``--log-level INFO`` shows all.
    """
    import distributed  # noqa: F401 - its import sets the level this overrides

    dask_logger = logging.getLogger("distributed")
    before = dask_logger.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        dask_logger.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        dask_logger.setLevel(before)


@contextmanager
def _client(scheduler, workers, threads_per_task, n_tasks, client):
    """The dask client: the one given, one on ``scheduler``, or a LocalCluster of processes."""
    if client is not None:
        yield client
        return
    from distributed import Client

    if scheduler:
        with Client(scheduler) as remote:
            yield remote
        return
    from distributed import LocalCluster

    cores = usable_cores()
    n_workers = max(1, min(workers or cores, n_tasks))
    threads = threads_per_task or max(1, cores // n_workers)
    # Set before each worker starts ITK, so even its first call runs on `threads` threads.
    env = dict.fromkeys(_THREAD_ENV, str(threads))
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=env,
        ) as cluster,
        Client(cluster) as local,
    ):
        yield local


def _threads_by_host(client) -> dict:
    """ITK threads per task on each worker host: its cores divided by its task slots."""
    from urllib.parse import urlparse

    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(usable_cores)
    slots: dict[str, int] = {}
    host_cores: dict[str, int] = {}
    for address, info in workers.items():
        host = urlparse(address).hostname
        slots[host] = slots.get(host, 0) + int(info.get("nthreads", 1))
        host_cores[host] = int(cores.get(address, 1))
    by_host = {host: max(1, host_cores[host] // slots[host]) for host in slots}
    return {"by_host": by_host, "default": min(by_host.values(), default=1)}


def _dask_results(client, function, payloads, threads, key, on_lost) -> Iterator[dict]:
    """Submit every task, then yield results as futures complete (any order)."""
    from distributed import as_completed

    futures = {}
    for payload in payloads:
        future = client.submit(
            function, {**payload, "threads": threads}, key=_unique(key(payload)), pure=False
        )
        futures[future] = payload
    for future in as_completed(futures):
        payload = futures.pop(future)
        try:
            result = future.result()
        except Exception as error:  # e.g. KilledWorker after repeated deaths
            if on_lost is None:
                raise
            result = on_lost(payload, error)
        future.release()
        yield result


def _unique(key: str) -> str:
    """A task key readable on the dashboard, unique across reruns on one scheduler."""
    return f"{key}-{os.urandom(4).hex()}"
