"""Accuracy against the per-frame time budget, and the latency of the real-time mode.

Each phantom case is replayed at its acquisition rate (regtrack.tracking.replay): frame t
arrives at t / rate and must be answered within the budget; elastix runs in a worker process
and a registration not done in time is answered with the last good mask. "unlimited" is the
offline run (no deadline, the preset's full schedule), the reference for accuracy. Prints a
table, writes JSON naming the machine and a page with the plots (regtrack report).

The real case (../shared/data/A_005_part1, 8 Hz, manual masks) is streamed to the tracker
(RealtimeTracker.stream: frames handed to a pool of worker processes as they arrive) under
each of --real-budget; "fresh" is the share of frames answered by their own registration.

    python benchmarks/budget.py                              # all benchmark cases + real case
    python benchmarks/budget.py --case lung_slide --budget 0.1 --budget 0.25 --frames 40
    python benchmarks/budget.py --no-phantoms --real-budget 0.1 --real-budget 0.25
    python benchmarks/budget.py --no-phantoms --ladder      # each schedule's cost and score

--ladder runs the real case offline once per schedule of the ladder, with one elastix thread
as a real-time worker has: what each rung costs and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine

BUDGETS = (0.05, 0.1, 0.25, 0.5, 1.0)
REAL_BUDGETS = (0.1, 0.25)
REAL_CASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "A_005_part1"


def run_case(name: str, budget: float | None, n_frames: int | None) -> dict:
    """Track one phantom case under one budget (None: offline); scores and latencies."""
    from regtrack.metrics import evaluate_case
    from regtrack.phantom import BENCHMARK_SPECS, generate_phantom
    from regtrack.tracking import TrackerSettings, iter_track, replay

    overrides = {"n_frames": n_frames} if n_frames else {}
    case = generate_phantom(BENCHMARK_SPECS[name], **overrides)
    settings = TrackerSettings(budget_s=budget)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if budget is None:
            results = list(
                iter_track(
                    case.frames, case.first_mask, settings=settings, spacing_mm=case.spacing_mm
                )
            )
        else:
            results = list(
                replay(
                    case.frames,
                    case.first_mask,
                    settings=settings,
                    frame_rate_hz=case.spec.frame_rate_hz,
                    spacing_mm=case.spacing_mm,
                )
            )
    wall_s = time.perf_counter() - start
    masks = np.stack([r.mask for r in results]).astype(np.uint8)
    answered = results[1:]
    latency = [r.latency_ms for r in answered]
    return {
        "case": name,
        "budget_s": budget,
        "frame_rate_hz": case.spec.frame_rate_hz,
        "n_frames": len(results),
        "wall_s": wall_s,
        "scores": evaluate_case(masks, case.masks),
        "latency_ms": latency,
        "misses": int(sum(ms > budget * 1e3 for ms in latency)) if budget else 0,
        "registered": sum(r.source == "registration" for r in answered),
        "fallbacks": sum(r.source != "registration" for r in answered),
        "fresh_share": float(np.mean([_fresh(r) for r in answered])),
        "schedules": {
            s: sum(r.schedule == s for r in answered)
            for s in sorted({r.schedule for r in answered})
        },
    }


def _fresh(result) -> bool:
    """Answered by its own registration (not the newest earlier one, nor a fallback)."""
    return result.source == "registration" and result.answered_by == result.index


def run_real_case(path: Path, budget: float | None, workers: int | None = None) -> dict:
    """Stream a real TrackRAD case at its frame rate under one budget (None: offline)."""
    from regtrack.io import read_case
    from regtrack.metrics import evaluate_case
    from regtrack.realtime import RealtimeTracker
    from regtrack.tracking import TrackerSettings, iter_track

    case = read_case(path)
    frames = np.asarray(case.frames)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if budget is None:
            results = list(iter_track(frames, case.first_mask, spacing_mm=case.spacing_mm))
        else:
            tracker = RealtimeTracker(
                TrackerSettings(budget_s=budget), workers=workers, spacing_mm=case.spacing_mm
            )
            with tracker:
                results = [tracker.init(frames[0], case.first_mask)]
                results += tracker.stream(frames, frame_rate_hz=case.frame_rate_hz)
    wall_s = time.perf_counter() - start
    masks = np.stack([r.mask for r in results]).astype(np.uint8)
    answered = results[1:]
    latency = [r.latency_ms for r in answered]
    fresh = [_fresh(r) for r in answered]
    return {
        "case": case.name,
        "budget_s": budget,
        "frame_rate_hz": case.frame_rate_hz,
        "workers": None if budget is None else tracker.workers,
        "n_frames": len(results),
        "wall_s": wall_s,
        "scores": evaluate_case(masks, np.asarray(case.labels)),
        "latency_ms": latency if budget else [r.elapsed_ms for r in answered],
        "misses": int(sum(ms > budget * 1e3 for ms in latency)) if budget else 0,
        "fresh_share": float(np.mean(fresh)),
        "registered": sum(r.source == "registration" for r in answered),
        "fallbacks": sum(not f for f in fresh),
        "start_age": [r.start_age for r in answered],
        "answer_age": [r.index - r.answered_by for r in answered if r.answered_by >= 0],
        "records": [r.record() for r in answered],
        "schedules": {
            s: sum(r.schedule == s for r in answered)
            for s in sorted({r.schedule for r in answered})
        },
    }


def run_ladder(path: Path) -> list[dict]:
    """Offline, one schedule for every frame, one elastix thread (as in a real-time worker):
    what each rung of the ladder costs and scores on the real case."""
    import cv2

    from regtrack import itk_elastix
    from regtrack.budget import LADDER
    from regtrack.engine import Engine, TrackerSettings
    from regtrack.io import read_case
    from regtrack.metrics import evaluate_case

    itk_elastix.set_threads(1)
    cv2.setNumThreads(1)
    case = read_case(path)
    frames, labels = np.asarray(case.frames), np.asarray(case.labels)
    settings = TrackerSettings(overrides={"MaximumNumberOfThreads": 1})
    engine = Engine.build(frames[0], case.first_mask, settings, case.spacing_mm)
    rows = []
    for schedule in LADDER:
        masks, elapsed = [case.first_mask], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for index in range(1, len(frames)):
                start = time.perf_counter()
                result = engine.track_frame(frames[index], masks[-1], index, schedule=schedule)
                elapsed.append((time.perf_counter() - start) * 1e3)
                masks.append(result.mask)
        scores = evaluate_case(np.stack(masks).astype(np.uint8), labels)
        rows.append(
            {
                "schedule": schedule.name,
                "work": engine.works[schedule],
                "dsc": scores["dsc"],
                "centre_distance_mm": scores["centre_distance_mm"],
                "p50_ms": float(np.median(elapsed)),
                "p95_ms": float(np.percentile(elapsed, 95)),
            }
        )
        print(
            f"| {schedule.name} | {rows[-1]['work']} | {scores['dsc']:.4f} | "
            f"{scores['centre_distance_mm']:.2f} | {rows[-1]['p50_ms']:.0f} | "
            f"{rows[-1]['p95_ms']:.0f} |",
            flush=True,
        )
    return rows


def print_real_table(runs: list[dict], machine_name: str) -> None:
    print(f"\nreal case, streamed at its frame rate ({machine_name}):")
    print(
        "| case | budget | workers | DSC | p50 ms | p95 ms | p99 ms | max ms | misses | fresh "
        "| oldest answer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        budget = "offline" if run["budget_s"] is None else f"{run['budget_s']:g} s"
        p50, p95, p99 = np.percentile(run["latency_ms"], [50, 95, 99])
        oldest = max(run["answer_age"], default=0)
        print(
            f"| {run['case']} | {budget} | {run['workers'] or 1} | {run['scores']['dsc']:.4f} | "
            f"{p50:.0f} | {p95:.0f} | {p99:.0f} | {max(run['latency_ms']):.0f} | "
            f"{run['misses']}/{len(run['latency_ms'])} | {100 * run['fresh_share']:.1f} % "
            f"| {oldest} frames |"
        )


def summary_rows(runs: list[dict]) -> list[dict]:
    """One row per budget: mean scores over cases, pooled latency percentiles, misses."""
    rows = []
    for budget in sorted({r["budget_s"] for r in runs}, key=lambda b: b or np.inf):
        group = [r for r in runs if r["budget_s"] == budget]
        latency = np.concatenate([r["latency_ms"] for r in group])
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        rows.append(
            {
                "budget_s": budget,
                "dsc": float(np.mean([r["scores"]["dsc"] for r in group])),
                "centre_distance_mm": float(
                    np.mean([r["scores"]["centre_distance_mm"] for r in group])
                ),
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "max_ms": float(latency.max()),
                "misses": sum(r["misses"] for r in group),
                "frames": int(latency.size),
                "fallback_share": sum(r["fallbacks"] for r in group) / latency.size,
                "fresh_share": float(
                    np.average(
                        [r.get("fresh_share", np.nan) for r in group],
                        weights=[len(r["latency_ms"]) for r in group],
                    )
                ),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "| budget | DSC | CD mm | p50 ms | p95 ms | p99 ms | max ms | misses | fallback | fresh |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        budget = "unlimited" if row["budget_s"] is None else f"{row['budget_s']:g} s"
        print(
            f"| {budget} | {row['dsc']:.4f} | {row['centre_distance_mm']:.3f} | "
            f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} | "
            f"{row['max_ms']:.0f} | {row['misses']}/{row['frames']} | "
            f"{100 * row['fallback_share']:.0f} % | {100 * row['fresh_share']:.0f} % |"
        )


def main(argv=None) -> int:
    from regtrack.phantom import BENCHMARK_SPECS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="phantom case (default: all benchmark)")
    parser.add_argument("--budget", action="append", type=float, help="seconds (repeatable)")
    parser.add_argument("--frames", type=int, help="frames per case (default: the case's)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "budget.json"
    )
    parser.add_argument("--real", type=Path, default=REAL_CASE, help="real TrackRAD case folder")
    parser.add_argument("--real-budget", action="append", type=float, help="seconds (repeatable)")
    parser.add_argument("--workers", type=int, help="real case: worker processes (default: auto)")
    parser.add_argument("--no-phantoms", action="store_true", help="only the real case")
    parser.add_argument(
        "--ladder", action="store_true", help="real case: every schedule offline, one thread"
    )
    args = parser.parse_args(argv)
    cases = [] if args.no_phantoms else args.case or list(BENCHMARK_SPECS)
    budgets = [None, *(args.budget or BUDGETS)]
    real_runs, ladder = [], []
    if args.ladder and args.real.exists():
        print("| schedule | work | DSC | CD mm | p50 ms | p95 ms |\n|---|---|---|---|---|---|")
        ladder = run_ladder(args.real)
    if args.real.exists():
        for budget in [None, *(args.real_budget or REAL_BUDGETS)]:
            real_runs.append(run_real_case(args.real, budget, args.workers))
        info = machine()
        print_real_table(
            real_runs, f"{info['cpu']}, {info['cores']} cores; load {os.getloadavg()[0]:.1f}"
        )
    runs = []
    for name in cases:
        for budget in budgets:
            run = run_case(name, budget, args.frames)
            runs.append(run)
            print(
                f"{name:22s} budget {budget!s:>5}: DSC {run['scores']['dsc']:.4f} "
                f"p99 {np.percentile(run['latency_ms'], 99):.0f} ms, misses {run['misses']}, "
                f"fallbacks {run['fallbacks']}",
                flush=True,
            )
    rows = summary_rows(runs) if runs else []
    if rows:
        print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "budget",
        "machine": machine(),
        "cases": cases,
        "summary": rows,
        "runs": runs,
        "real": real_runs,
        "ladder": ladder,
    }
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"results: {args.out}")
    if runs:
        from regtrack.report import report_benchmark

        print(f"page: {report_benchmark(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
