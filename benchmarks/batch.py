"""Many cases through the batch command: wall time against the sum of per-case times, and the
summary's scores against `regtrack evaluate` on the same outputs.

By default the eight ``synthetic_dev`` cases and the real case ``A_005_part1`` (from
``../shared/data`` beside the repository) go through

    regtrack track CASE ... --out WORK/w<N>_t<k> --workers N --no-progress

once per worker count (1 and 2) and trial, each into a fresh folder (nothing resumed), the
configurations interleaved trial by trial. Per run it records the command's wall time (process
start, cluster start and ITK loading included), the batch's own ``wall_s`` and the sum of its
cases' ``case_s`` from ``summary.json`` (each case's task: reading, tracking, scoring; the
first case on each worker pays ITK's loading), their ratio (how many cases ran at once, on
average), and the load average before and after. Then, for each run, ``regtrack evaluate``
scores the same ``output.mha`` files against the case folders, and every official metric of
the summary is compared with it case by case.

Prints the tables and writes JSON (default ``benchmarks/results/batch.json``) with the
machine, its load, every run and the comparison.

    python benchmarks/batch.py                           # the nine cases, 1 and 2 workers
    python benchmarks/batch.py --trials 3                # 3 interleaved runs per worker count
    python benchmarks/batch.py --case c1 --case c2 --out /tmp/batch.json   # other cases
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METRICS = ("dsc", "hd95_mm", "masd_mm", "centre_distance_mm", "relative_d98")
#: Largest |summary - evaluate| counted as the same score (both come from one scorer).
SAME_SCORE = 1e-9


def default_cases() -> list[Path]:
    dev = sorted(p for p in (DATA / "synthetic_dev").iterdir() if p.is_dir())
    return [*dev, DATA / "A_005_part1"]


def machine() -> dict:
    """accuracy.py's machine record plus the libraries a batch on dask uses."""
    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import machine as base_machine

    return base_machine(("dask", "distributed", "tqdm"))


def load_average() -> list[float] | None:
    """1, 5, 15 minute load (the machine may be shared: it explains a low speedup)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _env() -> dict:
    """This interpreter's environment, with this checkout first on the import path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _regtrack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regtrack.cli", *args],
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def run_batch(cases: list[Path], out: Path, workers: int, extra: list[str]) -> dict:
    """One batch command with ``workers`` worker processes; its times from summary.json."""
    load_before = load_average()
    start = time.perf_counter()
    done = _regtrack(
        "track",
        *map(str, cases),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--no-progress",
        *extra,
    )
    command_s = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"regtrack track exited {done.returncode}:\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "workers": workers,
        "exit_status": done.returncode,
        "command_s": command_s,
        "batch_wall_s": summary["wall_s"],
        "sum_case_s": summary["sum_case_s"],
        "cases_at_once": summary["sum_case_s"] / summary["wall_s"],
        "ok": summary["ok"],
        "failed": summary["failed"],
        "scored": summary["scored"],
        "mean_scores": summary["mean_scores"],
        "load_before": load_before,
        "load_after": load_average(),
        "rows": summary["rows"],
    }


def evaluate_outputs(cases: list[Path], out: Path, folder: Path) -> dict[str, dict]:
    """``regtrack evaluate OUT PARENT`` for each parent folder of the cases: scores per case."""
    scores: dict[str, dict] = {}
    for k, parent in enumerate(sorted({case.parent for case in cases})):
        path = folder / f"evaluate_{k}.json"
        done = _regtrack("evaluate", str(out), str(parent), "--json", str(path))
        if not path.is_file():
            raise RuntimeError(
                f"regtrack evaluate wrote nothing ({done.returncode}):\n{done.stderr}"
            )
        names = {case.name for case in cases if case.parent == parent}
        per_case = json.loads(path.read_text())["per_case"]
        scores.update({name: v for name, v in per_case.items() if name in names})
    return scores


def compare(rows: list[dict], evaluated: dict[str, dict]) -> list[dict]:
    """Per case: the summary's and evaluate's scores and their largest difference."""
    compared = []
    for row in rows:
        if row.get("n_frames_scored") is None:
            continue
        theirs = evaluated.get(row["case"])
        diffs = [abs(row[m] - theirs[m]) for m in METRICS] if theirs else []
        compared.append(
            {
                "case": row["case"],
                "summary": {m: row[m] for m in METRICS},
                "evaluate": {m: theirs[m] for m in METRICS} if theirs else None,
                "max_abs_diff": max(diffs) if diffs else None,
                "same": bool(diffs) and max(diffs) <= SAME_SCORE,
            }
        )
    return compared


def format_runs(runs: list[dict]) -> str:
    header = (
        f"{'workers':>7} {'trial':>5} {'command s':>10} {'batch s':>9} {'sum case s':>11} "
        f"{'at once':>8} {'ok':>4} {'failed':>6} {'scored':>6}  load before / after (1 min)"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        load = [f"{v[0]:.2f}" if v else "-" for v in (run["load_before"], run["load_after"])]
        lines.append(
            f"{run['workers']:>7} {run['trial']:>5} {run['command_s']:>10.1f} "
            f"{run['batch_wall_s']:>9.1f} {run['sum_case_s']:>11.1f} "
            f"{run['cases_at_once']:>8.2f} {run['ok']:>4} {run['failed']:>6} {run['scored']:>6}"
            f"  {load[0]} / {load[1]}"
        )
    return "\n".join(lines)


def format_scores(compared: list[dict]) -> str:
    header = f"{'case':<28} {'DSC summary':>12} {'DSC evaluate':>13} {'max |diff|':>11}"
    lines = [header, "-" * len(header)]
    for entry in compared:
        theirs = entry["evaluate"]["dsc"] if entry["evaluate"] else float("nan")
        diff = entry["max_abs_diff"]
        lines.append(
            f"{entry['case']:<28} {entry['summary']['dsc']:>12.4f} {theirs:>13.4f} "
            f"{diff if diff is not None else float('nan'):>11.2e}"
        )
    return "\n".join(lines)


def speedups(runs: list[dict]) -> dict:
    """Batch wall time of 1 worker over that of each other count, trial by trial and total."""
    by = {}
    for run in runs:
        by.setdefault(run["workers"], {})[run["trial"]] = run["batch_wall_s"]
    base = by.get(1, {})
    result = {}
    for workers, trials in by.items():
        pairs = [base[t] / s for t, s in trials.items() if t in base]
        if workers != 1 and pairs:
            total = sum(base[t] for t in trials if t in base) / sum(
                s for t, s in trials.items() if t in base
            )
            result[str(workers)] = {"per_trial": pairs, "total": total}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = [Path(c).resolve() for c in args.case] if args.case else default_cases()
    missing = [str(c) for c in cases if not (c / "images").is_dir()]
    if missing:
        print(f"batch.py: not case folders: {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="regtrack-batch-"))
    extra = [item for pair in (("--set", s) for s in args.set) for item in pair]
    runs = []
    try:
        for trial in range(args.trials):
            for workers in args.workers:
                out = work / f"w{workers}_t{trial}"
                shutil.rmtree(out, ignore_errors=True)
                run = {"trial": trial, **run_batch(cases, out, workers, extra)}
                evaluated = evaluate_outputs(cases, out, work)
                run["scores_vs_evaluate"] = compare(run["rows"], evaluated)
                runs.append(run)
                print(format_runs(runs[-1:]).splitlines()[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "regtrack track CASE ... --out OUT --workers N --no-progress " + " ".join(extra),
        "cases": [str(c) for c in cases],
        "machine": machine(),
        "load_average_at_end": load_average(),
        "runs": runs,
        "speedup": speedups(runs),
        "scores_agree": all(e["same"] for r in runs for e in r["scores_vs_evaluate"]),
    }
    print()
    print(format_runs(runs))
    print()
    print(format_scores(runs[0]["scores_vs_evaluate"]))
    print(f"\nspeedup (1 worker's batch time / N's): {json.dumps(result['speedup'])}")
    print(
        f"summary scores = regtrack evaluate on every case of every run: {result['scores_agree']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {args.out}")
    return 0 if result["scores_agree"] else 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        action="append",
        help="case folder (repeat; default: synthetic_dev's eight and A_005_part1)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=1, help="interleaved runs per count")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="elastix override passed to every run",
    )
    parser.add_argument("--keep", help="keep the run folders here (default: a deleted temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch.json")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
