"""Many cases in one command: a run folder per case under OUT, and one summary table.

``regtrack track A B C --out OUT`` (several case folders, a glob, or a folder of case folders)
tracks every case with :func:`regtrack.run.track_case` into ``OUT/<case>/``, a run folder like
a single case's (resumable frame by frame, bound to its input and settings), and keeps
``OUT/summary.csv`` and ``OUT/summary.json``: one row per case with its frames, times,
fallback answers and, where the case has labels, the official scores. The summary is
rewritten as each case ends, so a killed batch keeps every finished row; the same command
run again resumes each case where it stopped and tracks no finished frame twice.

Cases run one after another in this process, or as dask tasks (``workers`` or
``scheduler``), with the sweep's worker set-up (:mod:`regtrack.sweep.cluster`). A case that
fails is a row with its error; the others go on.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SUMMARY_COLUMNS",
    "BatchCase",
    "BatchSummary",
    "find_cases",
    "is_batch",
    "run_batch",
    "run_case_task",
    "track_and_score",
]

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
#: Columns of the summary, in order (the CSV's header; the JSON's rows have the same keys).
SUMMARY_COLUMNS = (
    "case",
    "status",  # ok | failed
    "error",
    "labelled",  # whether the case has ground truth (targets/<case>_labels.mha)
    "scanned_region",
    "n_frames",
    "frames_tracked",  # frames tracked by the attempt that finished the case (fewer on resume)
    "fallback_frames",  # frames not answered by the method's normal answer
    "track_s",  # tracker time over all frames (frame records), resumed parts included
    "s_per_frame",  # mean tracker time per frame, frame 0 excluded
    "case_s",  # wall time of this command's task for the case (reading, tracking, scoring)
    "dsc",
    "hd95_mm",
    "masd_mm",
    "centre_distance_mm",
    "relative_d98",
    "n_frames_scored",
    "attempts",  # processes that started the case in this run folder, all commands together
    "itk_threads",
    "worker",
    "input",
    "run_dir",
)
logger = logging.getLogger(__name__)

_SCORES = ("dsc", "hd95_mm", "masd_mm", "centre_distance_mm", "relative_d98")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch: its name (its run folder under OUT), folder and frame count."""

    name: str
    folder: Path
    n_frames: int


@dataclass
class BatchSummary:
    """What :func:`run_batch` did.

    Attributes
    ----------
    out : Path
        The batch folder.
    rows : list of dict
        One row per case (see :data:`SUMMARY_COLUMNS`), in case order.
    seconds : float
        Wall time of the whole batch, cluster start included.
    """

    out: Path
    rows: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(row["status"] != "ok" for row in self.rows)

    @property
    def scored(self) -> int:
        return sum(row.get("n_frames_scored") is not None for row in self.rows)


# --------------------------------------------------------------------------- finding cases


def is_case_folder(path: Path) -> bool:
    """A TrackRAD case folder or a challenge input folder (both hold images/)."""
    return path.is_dir() and (path / "images").is_dir()


def is_batch(inputs: list) -> bool:
    """Whether ``inputs`` name several cases: more than one path, a glob, or one folder
    holding case folders. One case folder or sequence file is a single run, as always."""
    if len(inputs) != 1:
        return True
    path = Path(inputs[0])
    if not path.exists():
        return bool(_GLOB_CHARS.search(str(inputs[0])))
    return path.is_dir() and not is_case_folder(path) and bool(_child_cases(path))


def _child_cases(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_case_folder(p))


def find_cases(inputs: list) -> tuple[list[Path], dict[str, str]]:
    """Case folders named by ``inputs`` (folders, globs, folders of case folders).

    Returns
    -------
    folders : list of Path
        Each case folder once, in the order given (a glob's or a folder's in name order).
    problems : dict of str to str
        Each input that names no case, to what it is and what was expected.
    """
    folders: list[Path] = []
    problems: dict[str, str] = {}
    for entry in inputs:
        found, problem = _folders_of(str(entry))
        if problem:
            problems[str(entry)] = problem
        folders += [f for f in found if f not in folders]
    return folders, problems


def _folders_of(entry: str) -> tuple[list[Path], str | None]:
    path = Path(entry).expanduser()
    if is_case_folder(path):
        return [path.resolve()], None
    if path.is_dir():
        children = _child_cases(path)
        if children:
            return [c.resolve() for c in children], None
        return [], (
            "neither a case folder (no images/ in it) nor a folder of case folders; "
            "pass TrackRAD case folders (each holding images/ and targets/)"
        )
    if not path.exists() and _GLOB_CHARS.search(entry):
        matches = sorted(Path(p) for p in glob.glob(str(path)))
        cases = [m.resolve() for m in matches if is_case_folder(m)]
        if cases:
            return cases, None
        return [], (
            f"the glob matches no case folder ({len(matches)} path(s) match, none "
            "holding images/); correct the pattern, e.g. 'data/*/'"
        )
    if path.is_file():
        return [], (
            "a sequence file is tracked on its own (regtrack track FILE --mask "
            "MASK --out OUT); a batch takes case folders"
        )
    return [], "does not exist; pass case folders, a glob or a folder of case folders"


def plan_cases(inputs: list, out: Path) -> tuple[list[BatchCase], dict[str, str]]:
    """Read each case's header and first mask: the cases that can run and the refused ones.

    Returns
    -------
    cases : list of BatchCase
    refused : dict of str to str
        Input (case folder or argument) to the one-line reason it cannot run.

    Raises
    ------
    ValueError
        When two case folders have the same name (their run folders would collide), or OUT
        is a single case's run folder.
    """
    from .io import read_case
    from .runfolder import RunFiles

    if RunFiles(out).settings.exists():
        raise ValueError(
            f"--out {out} is the run folder of a single case; a batch writes a run folder per "
            "case under --out: choose another folder"
        )
    folders, refused = find_cases(inputs)
    names: dict[str, Path] = {}
    cases = []
    for folder in folders:
        other = names.setdefault(folder.name, folder)
        if other != folder:
            raise ValueError(
                f"two case folders are both named {folder.name!r} ({other} and {folder}); "
                "runs are stored as OUT/<case name>: run them in separate batches"
            )
        try:
            case = read_case(folder)
        except (ValueError, OSError) as error:
            refused[str(folder)] = str(error)
            continue
        cases.append(BatchCase(folder.name, folder, len(case.frames)))
    return cases, refused


# --------------------------------------------------------------------------- one case


def track_and_score(
    case_dir,
    run_dir,
    settings=None,
    *,
    restart: bool = False,
    return_fields: bool = False,
    start: int = 0,
) -> dict:
    """Track one case folder into ``run_dir`` (resuming a partial run); score it if labelled.

    Gate fallbacks are counted, not warned about frame by frame. ``start``: track from that
    frame, its label as the given mask (:func:`regtrack.io.case_from_frame`).

    Returns
    -------
    dict
        ``labelled``, ``scanned_region``, ``n_frames``, ``frames_tracked``,
        ``fallback_frames``, ``track_s``, ``s_per_frame``, the official scores
        (:data:`regtrack.metrics.METRIC_NAMES`) and ``n_frames_scored``; the scores are
        None for a case without labels.
    """
    from .io import case_from_frame, read_case
    from .run import track_case
    from .runfolder import RunFiles, read_records

    case = case_from_frame(read_case(case_dir), start)
    files = RunFiles(Path(run_dir))
    done_before = 0 if restart else len(read_records(files.records))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        output = track_case(
            case, run_dir, settings=settings, restart=restart, return_fields=return_fields
        )
    records = read_records(files.records)
    return {
        **_record_values(records),
        "frames_tracked": len(records) - min(done_before, len(records)),
        "labelled": case.labels is not None,
        "scanned_region": case.scanned_region,
        **_scores(case, output),
    }


def _record_values(records: list[dict]) -> dict:
    """Frames, fallbacks and tracker time of a run from its frame records."""
    from .runfolder import is_fallback

    elapsed = [float(r.get("elapsed_ms") or 0.0) for r in records if r["index"] > 0]
    return {
        "n_frames": len(records),
        "fallback_frames": sum(is_fallback(r) for r in records),
        "track_s": sum(elapsed) / 1e3,
        "s_per_frame": sum(elapsed) / len(elapsed) / 1e3 if elapsed else None,
    }


def _scores(case, output: Path) -> dict:
    """The official scores of ``output`` against the case's labels; None without labels."""
    import numpy as np

    from .evaluation import read_mask_sequence
    from .metrics import METRIC_NAMES, evaluate_case

    if case.labels is None:
        return {**dict.fromkeys(METRIC_NAMES), "n_frames_scored": None}
    truth = np.asarray(case.labels[:], dtype=np.uint8)
    scores = evaluate_case(read_mask_sequence(output), truth, scanned_region=case.scanned_region)
    return {
        **{name: float(scores[name]) for name in METRIC_NAMES},
        "n_frames_scored": int(scores["n_frames_scored"]),
    }


def run_case_task(payload: dict) -> dict:
    """One case of a batch as a task (in this process or on a dask worker); never raises.

    Parameters
    ----------
    payload : dict
        ``case``, ``case_dir``, ``run_dir``, ``settings`` (TrackerSettings), ``restart``,
        ``fields``, ``threads`` and ``client`` (see :func:`regtrack.sweep.cluster.guarded`).

    Returns
    -------
    dict
        The case's summary row (:data:`SUMMARY_COLUMNS`).
    """
    from .sweep.cluster import guarded

    def work(run_dir: Path, attempt: int) -> dict:
        # --restart discards the folder once; a retry after a lost worker resumes it.
        return track_and_score(
            payload["case_dir"],
            run_dir,
            payload["settings"],
            restart=payload["restart"] and attempt == 1,
            return_fields=payload["fields"],
        )

    row = guarded(payload, {"case": payload["case"], "input": payload["case_dir"]}, work)
    row["case_s"] = row.pop("task_s")
    row.pop("cpu_s", None)
    return row


# --------------------------------------------------------------------------- the batch


def run_batch(
    inputs: list,
    out,
    *,
    settings=None,
    workers: int | None = None,
    scheduler: str | None = None,
    threads_per_task: int | None = None,
    restart: bool = False,
    return_fields: bool = False,
    progress: bool = True,
    client=None,
) -> BatchSummary:
    """Track every case named by ``inputs`` into ``out/<case>/`` and write the summary.

    Parameters
    ----------
    inputs : list of path or str
        Case folders, globs, or folders of case folders.
    out : path
        Batch folder: ``<case>/`` run folders, ``summary.csv`` and ``summary.json``.
    settings : TrackerSettings, optional
        The same for every case.
    workers : int, optional
        Run the cases on a dask LocalCluster of this many worker processes.
    scheduler : str, optional
        ``tcp://host:port`` of a running dask scheduler (``out`` and the case folders on a
        filesystem its workers share). Without ``workers``, ``scheduler`` or ``client``
        the cases run one after another in this process.
    threads_per_task : int, optional
        ITK threads per case; default the host's cores divided by its task slots.
    restart : bool
        Discard each case's previous run instead of resuming it.
    return_fields : bool
        Also keep each frame's displacement field.
    progress : bool
        Show bars over cases and over frames (tqdm).
    client : distributed.Client, optional
        An existing dask client (notebooks, tests).

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError
        Before anything is written: bad settings, two cases with one name, ``workers``
        with ``scheduler``, or no case that can run (each refused input is logged first, a
        warning of one line).
    """
    from .checks import check_tracker_settings
    from .runfolder import check_output_paths, claim_outputs
    from .tracking import TrackerSettings

    start = time.perf_counter()
    settings = settings or TrackerSettings()
    check_tracker_settings(settings)
    if workers is not None and (scheduler or client is not None):
        raise ValueError(
            "--workers sizes a local cluster; an existing cluster (--scheduler) is used as it "
            "is: drop one of the two"
        )
    for option, value in (("--workers", workers), ("--threads-per-task", threads_per_task)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be 1 or more, got {value}")
    out = Path(out).resolve()
    check_output_paths(out)
    claim_outputs([out / SUMMARY_JSON, out / SUMMARY_CSV], fix="choose another --out folder")
    cases, refused = plan_cases(inputs, out)
    for name, why in refused.items():
        logger.warning("%s: %s", name, why)
    if not cases:
        raise ValueError(
            f"no case can run: {len(refused)} input(s) refused (one line each above); fix "
            "them, or pass case folders (each holding images/ and targets/)"
        )
    out.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(out=out)
    rows = {name: _refused_row(name, why) for name, why in refused.items()}
    payloads = [_payload(case, out, settings, restart, return_fields) for case in cases]
    where = "this process" if scheduler is None and workers is None and client is None else None
    logger.info(
        f"batch: {len(cases)} case(s), {sum(c.n_frames for c in cases)} frames"
        + (f", {len(refused)} refused" if refused else "")
        + (f"; one after another in {where}" if where else ""),
    )
    results = _task_results(payloads, scheduler, workers, threads_per_task, client, where)
    with results as finished, _Progress(cases, out, progress) as bar:
        for row in finished:
            rows[row["case"]] = row
            bar.case_done(row)
            summary.rows = _ordered(rows, cases, refused)
            summary.seconds = time.perf_counter() - start
            write_summary(out, summary, settings, total=len(cases) + len(refused))
    summary.rows = _ordered(rows, cases, refused)
    summary.seconds = time.perf_counter() - start
    write_summary(out, summary, settings, total=len(cases) + len(refused))
    return summary


def _task_results(payloads, scheduler, workers, threads_per_task, client, where):
    from .sweep.cluster import task_results, usable_cores

    return task_results(
        run_case_task,
        payloads,
        scheduler="synchronous" if where else scheduler,
        workers=workers,
        threads_per_task=threads_per_task or (usable_cores() if where else None),
        client=client,
        key=lambda p: f"regtrack-track-{p['case']}",
        on_lost=_lost_row,
        say=logger.info,
    )


def _payload(case: BatchCase, out: Path, settings, restart: bool, fields: bool) -> dict:
    from .sweep.cluster import process_id

    return {
        "case": case.name,
        "case_dir": str(case.folder),
        "run_dir": str(out / case.name),
        "settings": settings,
        "restart": restart,
        "fields": fields,
        "client": process_id(),
    }


def _refused_row(name: str, why: str) -> dict:
    return {"case": Path(name).name, "status": "failed", "error": why, "input": name}


def _lost_row(payload: dict, error: Exception) -> dict:
    """The row of a case dask gave up on (its worker died too often)."""
    return {
        "case": payload["case"],
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "input": payload["case_dir"],
        "run_dir": payload["run_dir"],
    }


def _ordered(rows: dict, cases: list[BatchCase], refused: dict) -> list[dict]:
    """Finished rows in the order the cases were given, refused inputs last."""
    order = [c.name for c in cases] + list(refused)
    return [{k: rows[n].get(k) for k in SUMMARY_COLUMNS} for n in order if n in rows]


# --------------------------------------------------------------------------- the summary


def write_summary(out: Path, summary: BatchSummary, settings, *, total: int) -> None:
    """Write ``summary.json`` and ``summary.csv``, each whole or not at all."""
    from dataclasses import asdict

    rows = summary.rows
    scored = [r for r in rows if r.get("n_frames_scored") is not None]
    content = {
        "cases": total,
        "finished": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": summary.failed,
        "scored": len(scored),
        "wall_s": summary.seconds,
        "sum_case_s": sum(r.get("case_s") or 0.0 for r in rows),
        "mean_scores": {k: _mean([r[k] for r in scored]) for k in _SCORES},
        "settings": asdict(settings),
        "rows": rows,
    }
    from .runfolder import mark_written, strict_json

    _replace(out / SUMMARY_JSON, strict_json(content, indent=2, default=str))
    _replace(out / SUMMARY_CSV, _csv_text(rows))
    mark_written(out / SUMMARY_JSON, out / SUMMARY_CSV)


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(values) / len(values) if values else None


def _csv_text(rows: list[dict]) -> str:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in SUMMARY_COLUMNS})
    return text.getvalue()


def _replace(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def summary_line(summary: BatchSummary) -> str:
    """One line: cases ok, failed and scored, and the batch's wall time."""
    n = len(summary.rows)
    return (
        f"{n - summary.failed} of {n} case(s) ok, {summary.failed} failed, {summary.scored} "
        f"scored against labels, in {summary.seconds:.1f} s"
    )


# --------------------------------------------------------------------------- progress


class _Progress:
    """Bars over cases and over frames; frames are counted from the run folders' records
    (every ``interval`` seconds, in a thread), so cases running on dask workers count too."""

    def __init__(self, cases: list[BatchCase], out: Path, enabled: bool, interval=0.5):
        from tqdm.auto import tqdm

        self._running = {c.name: (out / c.name / "frames.jsonl", c.n_frames) for c in cases}
        self._counted = dict.fromkeys(self._running, 0)
        self.cases = tqdm(total=len(cases), unit="case", disable=not enabled, position=0)
        self.frames = tqdm(
            total=sum(c.n_frames for c in cases), unit="frame", disable=not enabled, position=1
        )
        self._enabled, self._interval = enabled, interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._failed = 0

    def __enter__(self):
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.frames.close()
        self.cases.close()

    def case_done(self, row: dict) -> None:
        """Count a finished case (and the rest of its frames)."""
        with self._lock:
            entry = self._running.pop(row["case"], None)
            if entry is not None:
                self.frames.update(entry[1] - self._counted[row["case"]])
        self._failed += row["status"] != "ok"
        if row["status"] != "ok":
            logger.warning("%s: %s", row["case"], row["error"])
        self.cases.set_postfix(failed=self._failed, refresh=False)
        self.cases.update(1)

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                for name, (records, n_frames) in list(self._running.items()):
                    seen = min(_line_count(records), n_frames)
                    if seen > self._counted[name]:
                        self.frames.update(seen - self._counted[name])
                        self._counted[name] = seen


def _line_count(path: Path) -> int:
    try:
        with path.open("rb") as file:
            return sum(block.count(b"\n") for block in iter(lambda: file.read(2**20), b""))
    except OSError:
        return 0
