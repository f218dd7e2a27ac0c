"""Running a sweep: one dask.distributed task per (case, setting, repeat, start), rows to
SQLite.

Each task gets a few hundred bytes (the case folder's path, the setting's values, where to
write) and reads its case itself, so no image goes through the scheduler. It tracks the case
(from its start frame) with :func:`regtrack.run.track_case` into
``RESULTS/runs/<case>/<setting id>[_r<k>][_f<start>]/`` (the
per-frame ``frames.jsonl`` stays there), scores it with :func:`regtrack.metrics.evaluate_case`
when the case has labels (an unlabelled case is tracked and timed, its scores left empty)
and returns one small row. The client records each row in SQLite as its future completes.

A task that raises is a result, not a crash: its row says ``failed`` and why, and the sweep
goes on. A worker process that dies (killed, out of memory) loses its task; the scheduler
runs it again elsewhere, and the rerun resumes the run folder frame by frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..extras import need_extra
from ..runfolder import check_not_inputs, claim_outputs, mark_written
from .cluster import guarded, process_id, task_results, usable_cores
from .results import RESULTS_FILE, ResultsDB
from .spec import Setting, SweepSpec, SweepTask, load_sweep_spec

__all__ = ["SweepSummary", "run_sweep", "run_task", "usable_cores"]

logger = logging.getLogger(__name__)


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
        Keys (case, setting id, repeat, start) of the tasks run, in the order they finished.
    failed : int
        How many of those failed.
    scored : int
        How many of those were scored (the others failed or have no labels).
    seconds : float
        Wall time of the run, cluster start included.
    """

    out: Path
    total: int
    skipped: int = 0
    ran: list = field(default_factory=list)
    failed: int = 0
    scored: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- worker side


def run_task(payload: dict) -> dict:
    """Track one case with one setting and score it; never raises for a failing case.

    Parameters
    ----------
    payload : dict
        ``case``, ``case_dir``, ``setting_id``, ``setting`` (values), ``label``, ``repeat``,
        ``start`` (the frame tracking starts from), ``run_dir``, ``threads`` (int, or
        ``{"by_host": {ip: n}, "default": n}``) and ``client`` (host:pid of the caller, whose own ITK setting is restored afterwards).

    Returns
    -------
    dict
        One results row (see :data:`regtrack.sweep.results.COLUMNS`). A case without
        labels is tracked and timed; its score columns stay empty.
    """
    row = {
        "case_name": payload["case"],
        "setting_id": payload["setting_id"],
        "repeat": payload["repeat"],
        "start": payload["start"],
        "setting": payload["setting"],
        "label": payload["label"],
    }
    return guarded(payload, row, lambda run_dir, _: _track_and_score(payload, run_dir))


def _track_and_score(payload: dict, run_dir: Path) -> dict:
    """Track the case into ``run_dir`` (resuming a partial run) and score it if labelled."""
    from regtrack.batch import track_and_score

    settings = Setting(payload["setting_id"], payload["setting"], {}).tracker_settings()
    return track_and_score(payload["case_dir"], run_dir, settings, start=payload["start"])


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
    """Run every missing (case, setting, repeat, start) of a sweep and record its row.

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
    if client is None and scheduler != "synchronous":
        need_extra("sweep", "a sweep on dask (--scheduler synchronous runs it here, without dask)")
    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    if workers is not None and (scheduler or client is not None):
        raise ValueError(
            "--workers sizes the local cluster; an existing cluster (--scheduler) "
            "is used as it is: drop one of the two"
        )
    _check_counts(workers=workers, threads_per_task=threads_per_task)
    out = Path(out).resolve()
    check_not_inputs({"--out": out / "spec.toml"}, [spec.path])
    claim_outputs(
        [out / "spec.toml", out / RESULTS_FILE],
        fix="choose another --out folder (--resume continues only a sweep regtrack ran there)",
    )
    _prepare_out(out, resume, retry_failed)
    tasks = spec.tasks()
    summary = SweepSummary(out=out, total=len(tasks))
    with ResultsDB(out / RESULTS_FILE) as db:
        mark_written(out / RESULTS_FILE, growing=True)
        _keep_spec(out, spec, db)
        done = db.keys(("ok",) if retry_failed else ("ok", "failed"))
        todo = [task for task in tasks if task.key not in done]
        summary.skipped = len(tasks) - len(todo)
        logger.info(
            "sweep %s: %d case(s) x %d setting(s) x %d repeat(s) x %d start(s) = %d task(s); "
            "%d already recorded, %d to run",
            spec.name,
            len(spec.cases),
            len(spec.settings()),
            spec.repeats,
            len(spec.starts),
            len(tasks),
            summary.skipped,
            len(todo),
        )
        if todo:
            payloads = [_payload(task, out) for task in todo]
            with _rows(payloads, scheduler, workers, threads_per_task, client) as rows:
                _record_all(rows, len(payloads), db, summary, progress)
    summary.seconds = time.perf_counter() - start
    logger.info(
        "%d task(s) run, %d failed, %d scored against labels, in %.1f s; results: %s",
        len(summary.ran),
        summary.failed,
        summary.scored,
        summary.seconds,
        out / RESULTS_FILE,
    )
    return summary


def _check_counts(**counts) -> None:
    """ValueError unless each count given is a whole number >= 1 (--workers, ...)."""
    for name, value in counts.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a whole number >= 1, got {value!r}")


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
    mark_written(out / "spec.toml")
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
        "start": task.start,
        "run_dir": str(out / "runs" / task.case / task.run_name),
        "client": process_id(),
    }


def _record_all(
    rows: Iterator, n_tasks: int, db: ResultsDB, summary: SweepSummary, progress: bool
) -> None:
    """Write each row as it arrives and keep the bar's done / failed / remaining current."""
    from tqdm.auto import tqdm

    with tqdm(total=n_tasks, unit="task", disable=not progress, dynamic_ncols=True) as bar:
        for row in rows:
            db.record(row)
            summary.ran.append((row["case_name"], row["setting_id"], row["repeat"], row["start"]))
            summary.failed += row["status"] != "ok"
            summary.scored += row.get("n_frames_scored") is not None
            if row["status"] != "ok":
                logger.warning(
                    "failed: %s %s (r%d, from frame %d): %s",
                    row["case_name"],
                    row["label"],
                    row["repeat"],
                    row["start"],
                    row["error"],
                )
            bar.set_postfix(
                done=len(summary.ran) - summary.failed,
                failed=summary.failed,
                remaining=n_tasks - len(summary.ran),
                refresh=False,
            )
            bar.update(1)


def _rows(payloads, scheduler, workers, threads_per_task, client):
    """Rows as tasks complete, from dask or (``"synchronous"``) from this process."""
    return task_results(
        run_task,
        payloads,
        scheduler=scheduler,
        workers=workers,
        threads_per_task=threads_per_task,
        client=client,
        key=lambda p: f"regtrack-sweep-{p['case']}-{p['setting_id']}-r{p['repeat']}-f{p['start']}",
        on_lost=_lost_row,
        say=logger.info,
    )


def _lost_row(payload: dict, error: Exception) -> dict:
    """The row of a task dask itself gave up on (its worker died too often)."""
    return {
        "case_name": payload["case"],
        "setting_id": payload["setting_id"],
        "repeat": payload["repeat"],
        "start": payload["start"],
        "setting": payload["setting"],
        "label": payload["label"],
        "run_dir": payload["run_dir"],
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
    }
