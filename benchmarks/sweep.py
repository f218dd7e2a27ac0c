"""Sweep throughput on dask.distributed, and recovery from a worker killed mid-sweep.

Two phantom cases (``lung_slide``, ``kidney_drift``, short sequences) x 8 settings:

1. scaling: the sweep on a LocalCluster of 1 worker process, then of 2 (1 thread and 1 ITK
   thread each), timed after every worker has loaded elastix (a real sweep over dozens of
   cases pays that once per worker); speedup = time(1 worker) / time(2 workers). A third run,
   1 worker with 2 ITK threads, shows what ITK's own threads give instead of processes, and
   that the per-task thread setting takes effect (CPU seconds per wall second). With
   ``--trials N`` the configurations run interleaved N times; trial k of every configuration
   is one pair, and the speedup is reported over all pairs: total time of the 1-worker trials
   / total time of the other configuration's trials, and the median, min and max of the
   per-pair ratios (never the fastest trial of each, which measures the quietest moment of a
   shared machine rather than the sweep);
2. recovery: the 2-worker sweep again, one worker process killed (SIGKILL of the pid from
   ``client.run(os.getpid)``) while it runs a task; the table must end with every row exactly
   once, all ok, and the lost task must have been retried (its run folder counts 2 starts).

Prints the tables (timings: every trial, their total and median; ranking: the first 2-worker
run) and writes JSON with every trial's record, the speedups over all pairs, the machine and
its load average.

    python benchmarks/sweep.py                      # 30 frames per case
    python benchmarks/sweep.py --frames 20 --keep work/
    python benchmarks/sweep.py --trials 3           # 3 interleaved runs per configuration
    python benchmarks/sweep.py --recompute benchmarks/results/sweep.json   # speedups of a JSON
                                                    # from its per-trial timings, no new runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CASES = ("lung_slide", "kidney_drift")
SPEC = """
cases = ["data/*/"]
preset = "bspline_ncc"

[axes]
FinalGridSpacingInPhysicalUnits = [8, 16]
roi = [true, false]
MaximumNumberOfIterations = [[30, 30, 30], [60, 60, 60]]
"""


def machine() -> dict:
    """accuracy.py's machine record plus the libraries a sweep uses."""
    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import machine as base_machine

    return base_machine(("dask", "distributed", "matplotlib", "tqdm"))


def load_average() -> list[float] | None:
    """1, 5, 15 minute load (the machine may be shared: it explains a low speedup)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def write_cases(folder: Path, n_frames: int) -> Path:
    from regtrack.phantom import BENCHMARK_SPECS, generate_phantom, write_phantom_case

    for name in CASES:
        write_phantom_case(
            generate_phantom(BENCHMARK_SPECS[name], n_frames=n_frames), folder / "data"
        )
    spec = folder / "sweep.toml"
    spec.write_text(SPEC)
    return spec


def warm_up() -> float:
    """Load elastix in this worker (about 10 s per process, once); returns the seconds."""
    start = time.perf_counter()
    from regtrack import load_parameter_maps, register_pair

    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    maps = load_parameter_maps("bspline_ncc", {"MaximumNumberOfIterations": 1})
    register_pair(image, image, maps)
    return time.perf_counter() - start


def executing_tasks(dask_worker) -> list[str]:
    """Keys of the tasks this worker is running now (run on the worker by client.run)."""
    return [str(task.key) for task in dask_worker.state.executing]


def cluster(n_workers: int, itk_threads: int):
    from distributed import LocalCluster

    env = {
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(itk_threads),
        "OMP_NUM_THREADS": str(itk_threads),
    }
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0", env=env
    )


def read_rows(out: Path) -> list[dict]:
    from regtrack.sweep import open_results

    with open_results(out) as db:
        return db.rows()


def timed_sweep(spec: Path, out: Path, n_workers: int, itk_threads: int) -> dict:
    """One sweep on a fresh, warmed-up LocalCluster; its timings and rows."""
    from distributed import Client

    from regtrack.sweep import run_sweep

    started = time.perf_counter()
    with cluster(n_workers, itk_threads) as local, Client(local) as client:
        warm = client.run(warm_up)
        ready = time.perf_counter()
        load = load_average()
        summary = run_sweep(spec, out, client=client, threads_per_task=itk_threads, progress=False)
        sweep_s = time.perf_counter() - ready
    rows = read_rows(out)
    return {
        "workers": n_workers,
        "itk_threads_per_task": itk_threads,
        "sweep_s": sweep_s,
        "end_to_end_s": time.perf_counter() - started,
        "warm_up_s": sorted(warm.values()),
        "tasks": summary.total,
        "failed": summary.failed,
        "task_s_mean": float(np.mean([r["task_s"] for r in rows])),
        "s_per_frame_mean": float(np.mean([r["s_per_frame"] for r in rows if r["s_per_frame"]])),
        "cpu_per_wall": float(sum(r["cpu_s"] for r in rows) / sum(r["task_s"] for r in rows)),
        "cpu_s_sum": float(sum(r["cpu_s"] for r in rows)),
        "task_s_sum": float(sum(r["task_s"] for r in rows)),
        "itk_threads_seen": sorted({r["itk_threads"] for r in rows if r["itk_threads"]}),
        "load_average_at_start": load,
    }


def killed_worker_sweep(spec: Path, out: Path) -> dict:
    """2-worker sweep with one worker killed while it runs a task; checks the table."""
    from distributed import Client

    from regtrack.sweep import run_sweep

    result: dict = {}
    with cluster(2, 1) as local, Client(local) as client:
        client.run(warm_up)
        runner = threading.Thread(
            target=lambda: result.update(
                summary=run_sweep(spec, out, client=client, threads_per_task=1, progress=False)
            )
        )
        runner.start()
        killed = _kill_a_busy_worker(client, out)
        runner.join()
    rows = read_rows(out)
    with sqlite3.connect(out / "results.sqlite") as connection:
        n_rows, n_keys = connection.execute(
            "SELECT COUNT(*), COUNT(DISTINCT case_name || '/' || setting_id || '/' || repeat) "
            "FROM results"
        ).fetchone()
    expected = {t.key for t in _spec_tasks(spec)}
    retried = sorted(
        (r["case_name"], r["setting_id"], r["repeat"]) for r in rows if r["attempts"] > 1
    )
    lost = sorted(_task_of(key) for key in killed["executing"])
    checks = {
        "every_row_exactly_once": n_rows == n_keys == len(expected)
        and {(r["case_name"], r["setting_id"], r["repeat"]) for r in rows} == expected,
        "all_ok": all(r["status"] == "ok" for r in rows),
        "lost_tasks_retried": bool(lost) and set(lost) <= set(retried),
    }
    return {
        **killed,
        "rows": n_rows,
        "expected_rows": len(expected),
        "lost_tasks": lost,
        "retried_tasks": retried,
        "checks": checks,
        "passed": all(checks.values()),
        "sweep_s": result["summary"].seconds,
    }


def _kill_a_busy_worker(client, out: Path) -> dict:
    """Once 3 rows are recorded, SIGKILL a worker process in the middle of a task."""
    database = out / "results.sqlite"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.2)
        if not database.exists():
            continue
        with sqlite3.connect(database) as connection:
            if connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] < 3:
                continue
        busy = {a: keys for a, keys in client.run(executing_tasks).items() if keys}
        if busy:
            address = min(busy)
            pid = client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)
            print(f"killed worker {address} (pid {pid}) while it ran {busy[address]}", flush=True)
            return {
                "killed_worker": address,
                "killed_pid": pid,
                "executing": busy[address],
                "rows_before_kill": _count(database),
            }
    raise RuntimeError("no worker was busy after 3 rows; nothing to kill")


def _count(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _task_of(key: str) -> tuple[str, str, int]:
    """(case, setting id, repeat) of a task key regtrack-sweep-<case>-<id>-r<k>-<token>."""
    head, setting, repeat, _ = key.rsplit("-", 3)
    return (head.removeprefix("regtrack-sweep-"), setting, int(repeat[1:]))


def _spec_tasks(spec: Path):
    from regtrack.sweep import load_sweep_spec

    return load_sweep_spec(spec).tasks()


def summarise(name: str, trials: list[dict]) -> dict:
    """One configuration over all its trials (none dropped): times, totals, pooled ratios."""
    times = [t["sweep_s"] for t in trials]
    return {
        "config": name,
        "workers": trials[0]["workers"],
        "itk_threads_per_task": trials[0]["itk_threads_per_task"],
        "trials": trials,
        "sweep_s_trials": times,
        "sweep_s_total": float(sum(times)),
        "sweep_s_median": float(np.median(times)),
        "end_to_end_s_median": float(np.median([t["end_to_end_s"] for t in trials])),
        "task_s_mean": float(
            sum(t["task_s_sum"] for t in trials) / sum(t["tasks"] for t in trials)
        ),
        "s_per_frame_mean": float(np.mean([t["s_per_frame_mean"] for t in trials])),
        "cpu_per_wall": float(
            sum(t["cpu_s_sum"] for t in trials) / sum(t["task_s_sum"] for t in trials)
        ),
    }


def all_pair_speedups(scaling: list[dict]) -> dict:
    """Speedup of each configuration against the first, over all interleaved trial pairs.

    Trial k of every configuration ran in the same round, so (base trial k, config trial k) is
    a pair. ``total`` = sum of the base's times / sum of the configuration's; ``ratios`` the
    per-pair speedups with their median, min and max. Needs only ``sweep_s_trials``, so it
    also recomputes an older JSON.
    """
    base = scaling[0]["sweep_s_trials"]
    definition = (
        "time(1 worker, 1 ITK thread) / time(configuration), over all interleaved "
        "trial pairs; total = sum / sum"
    )
    out: dict = {
        "definition": definition,
        "base": _config_name(scaling[0]),
        "pairs": len(base),
        "configs": {},
    }
    for run in scaling[1:]:
        times = run["sweep_s_trials"]
        if len(times) != len(base):
            raise ValueError(f"{_config_name(run)}: {len(times)} trials against {len(base)}")
        ratios = [b / t for b, t in zip(base, times, strict=True)]
        out["configs"][_config_name(run)] = {
            "total": float(sum(base) / sum(times)),
            "ratios": ratios,
            "median": float(np.median(ratios)),
            "min": float(min(ratios)),
            "max": float(max(ratios)),
        }
    return out


def _config_name(run: dict) -> str:
    return f"{run['workers']}w_{run['itk_threads_per_task']}t"


def format_scaling(runs: list[dict], speedup: dict) -> str:
    header = (
        "| workers | ITK threads/task | sweep s, each trial | sweep s, total | s/task | "
        "s/frame | CPU s per wall s | speedup, total | speedup per pair, median (min-max) |"
    )
    lines = [header, "|---" * 9 + "|"]
    for run in runs:
        pair = speedup["configs"].get(_config_name(run))
        each = ", ".join(f"{t:.1f}" for t in run["sweep_s_trials"])
        ratio = (
            f"{pair['total']:.2f}x | {pair['median']:.2f}x ({pair['min']:.2f}-{pair['max']:.2f}x)"
            if pair
            else "1.00x | 1.00x"
        )
        lines.append(
            f"| {run['workers']} | {run['itk_threads_per_task']} | {each} | "
            f"{run['sweep_s_total']:.1f} | {run['task_s_mean']:.2f} | "
            f"{run['s_per_frame_mean']:.3f} | {run['cpu_per_wall']:.2f} | {ratio} |"
        )
    lines.append(f"\nspeedups over all {speedup['pairs']} trial pairs: {speedup['definition']}")
    return "\n".join(lines)


def recompute(path: Path) -> dict:
    """Add the all-pair speedups to an existing sweep JSON from its per-trial timings."""
    report = json.loads(path.read_text())
    speedup = all_pair_speedups(report["scaling"])
    for run in report["scaling"]:
        run.setdefault("sweep_s_total", float(sum(run["sweep_s_trials"])))
    report["speedup"] = speedup
    stale = report.pop("speedup_2_vs_1", None)
    if stale is not None:  # written before: fastest trial of each configuration
        report["recomputed"] = (
            "speedup recomputed over all trial pairs from sweep_s_trials by "
            "`benchmarks/sweep.py --recompute`; the old speedup_2_vs_1 (fastest trial of each "
            "configuration) was removed. The other figures of each scaling row (sweep_s, "
            "end_to_end_s, task_s_mean, s_per_frame_mean, cpu_per_wall) are still its fastest "
            "trial's: this run recorded only that trial in full."
        )
    path.write_text(json.dumps(report, indent=2, default=str))
    return speedup


def main(argv=None) -> int:
    from regtrack.sweep.report import format_ranking, rank_settings

    args = _parser().parse_args(argv)
    if args.recompute:
        speedup = recompute(args.recompute)
        for name, pair in speedup["configs"].items():
            print(
                f"{name} vs {speedup['base']}: total {pair['total']:.2f}x, per pair median "
                f"{pair['median']:.2f}x ({pair['min']:.2f}-{pair['max']:.2f}x) over "
                f"{speedup['pairs']} pairs"
            )
        print(f"written: {args.recompute}")
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="regtrack-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = write_cases(work, args.frames)
    configs = [("one_worker", 1, 1), ("two_workers", 2, 1)]
    if not args.skip_threads:
        configs.append(("one_worker_two_threads", 1, 2))
    trials: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for trial in range(args.trials):  # interleaved, so a change of load hits every config
        for name, n_workers, threads in configs:
            out = work / f"{name}_t{trial}"
            trials[name].append(timed_sweep(spec, out, n_workers, threads))
    # Every trial counts: keeping the fastest of each would report the quietest moment.
    runs = [summarise(name, trials[name]) for name, _, _ in configs]
    speedup = all_pair_speedups(runs)
    print(format_scaling(runs, speedup))
    ranking = rank_settings(read_rows(work / "two_workers_t0"))
    print("\n" + format_ranking(ranking))
    recovery = killed_worker_sweep(spec, work / "killed_worker")
    print(
        f"\nkilled worker: {recovery['rows']} rows of {recovery['expected_rows']}, lost "
        f"{recovery['lost_tasks']}, retried {recovery['retried_tasks']}; checks "
        f"{recovery['checks']}"
    )
    report = {
        "benchmark": "sweep",
        "machine": machine(),
        "cases": list(CASES),
        "frames": args.frames,
        "spec": SPEC,
        "trials": args.trials,
        "scaling": runs,
        "speedup": speedup,
        "recovery": recovery,
        "ranking": ranking,
        "load_average_at_end": load_average(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"written: {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if recovery["passed"] else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per case")
    parser.add_argument("--trials", type=int, default=1, help="timed runs per configuration")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    parser.add_argument(
        "--skip-threads", action="store_true", help="skip the 1 worker x 2 ITK threads run"
    )
    parser.add_argument(
        "--recompute",
        type=Path,
        metavar="JSON",
        help="recompute the speedups of an existing sweep JSON over all its "
        "trial pairs and write them into it; runs nothing",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "sweep.json"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
