"""Running a sweep: one dask.distributed task per (case, setting, repeat), rows to SQLite.

Each task gets a few hundred bytes (the case folder's path, the setting's values, where to
write) and reads its case itself, so no image goes through the scheduler. It tracks the case
with :func:`regtrack.run.track_case` into ``RESULTS/runs/<case>/<setting id>[_r<k>]/`` (the
per-frame ``frames.jsonl`` stays there), scores it with :func:`regtrack.metrics.evaluate_case`
and returns one small row. The client records each row in SQLite as its future completes.

A task that raises is a result, not a crash: its row says ``failed`` and why, and the sweep
goes on. A worker process that dies (killed, out of memory) loses its task; the scheduler
runs it again elsewhere, and the rerun resumes the run folder frame by frame.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import itk_elastix
from .results import RESULTS_FILE, ResultsDB
from .spec import Setting, SweepSpec, SweepTask, load_sweep_spec

__all__ = ["SweepSummary", "run_sweep", "run_task", "usable_cores"]

_ATTEMPTS_FILE = "attempts.jsonl"
_THREAD_ENV = (
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


@dataclass
class SweepSummary:
    """What a call of :func:`run_sweep` did.

    Attributes
    ----------
    out : Path
        The results folder.
    total : int
        Tasks in the spec's grid.
    skipped : int
        Tasks already recorded (``--resume``), not run again.
    ran : list of tuple
        Keys (case, setting id, repeat) of the tasks run, in the order they finished.
    failed : int
        How many of those failed.
    seconds : float
        Wall time of the run, cluster start included.
    """

    out: Path
    total: int
    skipped: int = 0
    ran: list = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- worker side


def run_task(payload: dict) -> dict:
    """Track one case with one setting and score it; never raises for a failing case.

    Parameters
    ----------
    payload : dict
        ``case``, ``case_dir``, ``setting_id``, ``setting`` (values), ``label``, ``repeat``,
        ``run_dir``, ``threads`` (int, or ``{"by_host": {ip: n}, "default": n}``) and
        ``client`` (host:pid of the caller, whose own ITK setting is restored afterwards).

    Returns
    -------
    dict
        One results row (see :data:`regtrack.sweep.results.COLUMNS`).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    run_dir = Path(payload["run_dir"])
    row = {
        "case_name": payload["case"],
        "setting_id": payload["setting_id"],
        "repeat": payload["repeat"],
        "setting": payload["setting"],
        "label": payload["label"],
        "run_dir": str(run_dir),
        "worker": _worker_name(),
    }
    previous = None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        row["attempts"] = _count_attempt(run_dir)
        previous, row["itk_threads"] = _limit_threads(_threads_here(payload["threads"]))
        row.update(_track_and_score(payload, run_dir))
        row.update(status="ok", error=None)
    except Exception as error:  # noqa: BLE001 - a failing case is a result; the sweep goes on
        row.update(status="failed", error=f"{type(error).__name__}: {error}")
    finally:
        # In the caller's own process (synchronous path, in-process cluster) its setting is
        # put back; a worker process keeps it, as tasks beside this one may still be running.
        if previous is not None and payload.get("client") == _process_id():
            _limit_threads(previous)
    row["task_s"] = time.perf_counter() - wall
    row["cpu_s"] = time.process_time() - cpu
    return row


def _track_and_score(payload: dict, run_dir: Path) -> dict:
    """Track the case into ``run_dir`` (resuming a partial run) and score it."""
    import numpy as np

    from regtrack.evaluation import read_mask_sequence
    from regtrack.io import read_case
    from regtrack.metrics import METRIC_NAMES, evaluate_case
    from regtrack.run import track_case
    from regtrack.runfolder import RunFiles, read_records

    case = read_case(payload["case_dir"])
    if case.labels is None:
        raise ValueError(
            f"case folder {payload['case_dir']} has no targets/*_labels.mha; a sweep scores "
            "every run against the ground truth, so each case needs its labels"
        )
    settings = Setting(payload["setting_id"], payload["setting"], {}).tracker_settings()
    with warnings.catch_warnings():
        # Gate fallbacks warn once per frame; they are counted in the row instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        output = track_case(case, run_dir, settings=settings)
    truth = np.asarray(case.labels[:], dtype=np.uint8)
    scores = evaluate_case(read_mask_sequence(output), truth, scanned_region=case.scanned_region)
    records = read_records(RunFiles(run_dir).records)
    elapsed = [r["elapsed_ms"] for r in records if r["index"] > 0]
    return {
        **{name: scores[name] for name in METRIC_NAMES},
        "n_frames_scored": int(scores["n_frames_scored"]),
        "scanned_region": case.scanned_region,
        "n_frames": len(records),
        "fallback_frames": sum(r["source"] == "previous" for r in records),
        "s_per_frame": float(np.mean(elapsed)) / 1e3 if elapsed else None,
    }


def _process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _count_attempt(run_dir: Path) -> int:
    """Log this start in the run folder; the count tells a retried task (> 1)."""
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    path = run_dir / _ATTEMPTS_FILE
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


def run_sweep(
    spec,
    out,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_task: int | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    client=None,
) -> SweepSummary:
    """Run every missing (case, setting, repeat) of a sweep and record its row.

    Parameters
    ----------
    spec : SweepSpec or path
        The sweep (see :mod:`regtrack.sweep.spec`).
    out : path
        Results folder: ``results.sqlite``, ``spec.toml`` and ``runs/<case>/<run>/``.
    scheduler : str, optional
        ``tcp://host:port`` of a running dask scheduler, used as it is (RESULTS and the case
        folders must then be on a filesystem the workers share). ``"synchronous"`` runs the
        tasks one by one in this process, without dask. Default: a LocalCluster.
    workers : int, optional
        LocalCluster worker processes (1 thread each); default one per usable core.
    threads_per_task : int, optional
        ITK threads per task; default the worker host's cores divided by its task slots.
    resume : bool
        Allow an existing RESULTS and run only the tasks it has no row for.
    retry_failed : bool
        With ``resume``, also rerun the tasks recorded as failed (by default a failed row
        stays: a failure due to the setting would only fail again).
    progress : bool
        Show a tqdm bar (done / failed / remaining).
    client : distributed.Client, optional
        An existing client to run on (notebooks, tests); wins over ``scheduler``.

    Returns
    -------
    SweepSummary

    Raises
    ------
    ValueError
        For a malformed spec (before anything is written), or when RESULTS already holds a
        sweep and ``resume`` is not set.
    """
    start = time.perf_counter()
    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    if workers is not None and (scheduler or client is not None):
        raise ValueError(
            "--workers sizes the local cluster; an existing cluster (--scheduler) "
            "is used as it is: drop one of the two"
        )
    out = Path(out).resolve()
    _prepare_out(out, resume, retry_failed)
    tasks = spec.tasks()
    summary = SweepSummary(out=out, total=len(tasks))
    with ResultsDB(out / RESULTS_FILE) as db:
        _keep_spec(out, spec, db)
        done = db.keys(("ok",) if retry_failed else ("ok", "failed"))
        todo = [task for task in tasks if task.key not in done]
        summary.skipped = len(tasks) - len(todo)
        _say(
            f"sweep {spec.name}: {len(spec.cases)} case(s) x {len(spec.settings())} "
            f"setting(s) x {spec.repeats} repeat(s) = {len(tasks)} task(s); "
            f"{summary.skipped} already recorded, {len(todo)} to run"
        )
        if todo:
            payloads = [_payload(task, out) for task in todo]
            with _rows(payloads, scheduler, workers, threads_per_task, client) as rows:
                _record_all(rows, len(payloads), db, summary, progress)
    summary.seconds = time.perf_counter() - start
    _say(
        f"{len(summary.ran)} task(s) run, {summary.failed} failed, in "
        f"{summary.seconds:.1f} s; results: {out / RESULTS_FILE}"
    )
    return summary


def _say(message: str) -> None:
    print(message, flush=True)


def _prepare_out(out: Path, resume: bool, retry_failed: bool) -> None:
    if retry_failed and not resume:
        raise ValueError("--retry-failed reruns failed rows of an existing sweep; add --resume")
    if not resume and ((out / RESULTS_FILE).exists() or (out / "runs").exists()):
        raise ValueError(
            f"{out} already holds a sweep; pass --resume to run only what is missing there "
            "(add --retry-failed to rerun failed rows too), or choose another --out folder."
        )
    out.mkdir(parents=True, exist_ok=True)


def _keep_spec(out: Path, spec: SweepSpec, db: ResultsDB) -> None:
    """Copy the spec into RESULTS; every spec a sweep was (re)run with stays in ``meta``."""
    (out / "spec.toml").write_text(spec.text)
    texts = db.meta("spec_texts", [])
    if spec.text not in texts:
        db.set_meta("spec_texts", [*texts, spec.text])
    db.set_meta("spec_path", str(spec.path.resolve()))


def _payload(task: SweepTask, out: Path) -> dict:
    """The few hundred bytes a worker needs: paths and values, no arrays."""
    return {
        "case": task.case,
        "case_dir": task.case_dir,
        "setting_id": task.setting.id,
        "setting": task.setting.values,
        "label": task.setting.label,
        "repeat": task.repeat,
        "run_dir": str(out / "runs" / task.case / task.run_name),
        "client": _process_id(),
    }


def _record_all(
    rows: Iterator, n_tasks: int, db: ResultsDB, summary: SweepSummary, progress: bool
) -> None:
    """Write each row as it arrives and keep the bar's done / failed / remaining current."""
    from tqdm.auto import tqdm

    with tqdm(total=n_tasks, unit="task", disable=not progress, dynamic_ncols=True) as bar:
        for row in rows:
            db.record(row)
            summary.ran.append((row["case_name"], row["setting_id"], row["repeat"]))
            summary.failed += row["status"] != "ok"
            if row["status"] != "ok":
                bar.write(
                    f"failed: {row['case_name']} {row['label']} (r{row['repeat']}): {row['error']}"
                )
            bar.set_postfix(
                done=len(summary.ran) - summary.failed,
                failed=summary.failed,
                remaining=n_tasks - len(summary.ran),
                refresh=False,
            )
            bar.update(1)


@contextmanager
def _rows(payloads, scheduler, workers, threads_per_task, client):
    """Rows as tasks complete, from dask or (``"synchronous"``) from this process."""
    if client is None and scheduler == "synchronous":
        threads = threads_per_task or usable_cores()
        yield (run_task({**p, "threads": threads}) for p in payloads)
        return
    with (
        _quiet_dask_logs(),
        _client(scheduler, workers, threads_per_task, len(payloads), client) as dask_client,
    ):
        _say(
            f"dask: {len(dask_client.scheduler_info()['workers'])} worker(s) at "
            f"{dask_client.scheduler.address}; dashboard: {_dashboard(dask_client)}"
        )
        threads = threads_per_task or _threads_by_host(dask_client)
        yield _dask_rows(dask_client, payloads, threads)


def _dashboard(client) -> str:
    """The dashboard's address; dask serves its pages only where bokeh is installed."""
    import importlib.util

    link = getattr(client, "dashboard_link", None) or "unavailable"
    if importlib.util.find_spec("bokeh") is None:
        link += " (pages need bokeh: pip install 'bokeh>=3.1')"
    return link


@contextmanager
def _quiet_dask_logs():
    """Keep dask's INFO lines (every worker start and stop) out of the sweep's output.

    Its warnings (a worker died, a task is retried) still show; ``--log-level INFO`` shows all.
    """
    import distributed  # noqa: F401 - its import sets the level this overrides

    logger = logging.getLogger("distributed")
    before = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logger.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(before)


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


def _dask_rows(client, payloads: list[dict], threads) -> Iterator[dict]:
    """Submit every task, then yield rows as futures complete (any order)."""
    from distributed import as_completed

    futures = {}
    for payload in payloads:
        key = f"regtrack-sweep-{payload['case']}-{payload['setting_id']}-r{payload['repeat']}"
        future = client.submit(
            run_task, {**payload, "threads": threads}, key=_unique(key), pure=False
        )
        futures[future] = payload
    for future in as_completed(futures):
        payload = futures.pop(future)
        try:
            row = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. KilledWorker after repeated deaths
            row = _lost_row(payload, error)
        future.release()
        yield row


def _unique(key: str) -> str:
    """A task key readable on the dashboard, unique across reruns on one scheduler."""
    return f"{key}-{os.urandom(4).hex()}"


def _lost_row(payload: dict, error: Exception) -> dict:
    """The row of a task dask itself gave up on (its worker died too often)."""
    return {
        "case_name": payload["case"],
        "setting_id": payload["setting_id"],
        "repeat": payload["repeat"],
        "setting": payload["setting"],
        "label": payload["label"],
        "run_dir": payload["run_dir"],
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
    }
