"""Accuracy against the per-frame time budget, and the latency of the real-time mode.

Each phantom case is replayed at its acquisition rate (regtrack.tracking.replay): frame t
arrives at t / rate and must be answered within the budget; elastix runs in a worker process
and a registration not done in time is answered with the last good mask. "unlimited" is the
offline run (no deadline, the preset's full schedule), the reference for accuracy. Prints a
table, writes JSON naming the machine and a page with the plots (regtrack report).

    python benchmarks/budget.py                              # all benchmark cases
    python benchmarks/budget.py --case lung_slide --budget 0.1 --budget 0.25 --frames 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine

BUDGETS = (0.05, 0.1, 0.25, 0.5, 1.0)


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
            results = list(iter_track(case.frames, case.first_mask, settings=settings,
                                      spacing_mm=case.spacing_mm))  # fmt: skip
        else:
            results = list(replay(case.frames, case.first_mask, settings=settings,
                                  frame_rate_hz=case.spec.frame_rate_hz,
                                  spacing_mm=case.spacing_mm))  # fmt: skip
    wall_s = time.perf_counter() - start
    masks = np.stack([r.mask for r in results]).astype(np.uint8)
    answered = results[1:]
    latency = [r.latency_ms for r in answered]
    return {
        "case": name, "budget_s": budget, "frame_rate_hz": case.spec.frame_rate_hz,
        "n_frames": len(results), "wall_s": wall_s,
        "scores": evaluate_case(masks, case.masks),
        "latency_ms": latency,
        "misses": int(sum(ms > budget * 1e3 for ms in latency)) if budget else 0,
        "registered": sum(r.source == "registration" for r in answered),
        "fallbacks": sum(r.source != "registration" for r in answered),
        "schedules": {s: sum(r.schedule == s for r in answered)
                      for s in sorted({r.schedule for r in answered})},
    }  # fmt: skip


def summary_rows(runs: list[dict]) -> list[dict]:
    """One row per budget: mean scores over cases, pooled latency percentiles, misses."""
    rows = []
    for budget in sorted({r["budget_s"] for r in runs}, key=lambda b: b or np.inf):
        group = [r for r in runs if r["budget_s"] == budget]
        latency = np.concatenate([r["latency_ms"] for r in group])
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        rows.append({
            "budget_s": budget,
            "dsc": float(np.mean([r["scores"]["dsc"] for r in group])),
            "centre_distance_mm": float(np.mean([r["scores"]["centre_distance_mm"] for r in group])),
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": float(latency.max()),
            "misses": sum(r["misses"] for r in group), "frames": int(latency.size),
            "fallback_share": sum(r["fallbacks"] for r in group) / latency.size,
        })  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    print("| budget | DSC | CD mm | p50 ms | p95 ms | p99 ms | max ms | misses | fallback |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        budget = "unlimited" if row["budget_s"] is None else f"{row['budget_s']:g} s"
        print(f"| {budget} | {row['dsc']:.4f} | {row['centre_distance_mm']:.3f} | "
              f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} | "
              f"{row['max_ms']:.0f} | {row['misses']}/{row['frames']} | "
              f"{100 * row['fallback_share']:.0f} % |")  # fmt: skip


def main(argv=None) -> int:
    from regtrack.phantom import BENCHMARK_SPECS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="phantom case (default: all benchmark)")
    parser.add_argument("--budget", action="append", type=float, help="seconds (repeatable)")
    parser.add_argument("--frames", type=int, help="frames per case (default: the case's)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "budget.json"
    )
    args = parser.parse_args(argv)
    cases = args.case or list(BENCHMARK_SPECS)
    budgets = [None, *(args.budget or BUDGETS)]
    runs = []
    for name in cases:
        for budget in budgets:
            run = run_case(name, budget, args.frames)
            runs.append(run)
            print(f"{name:22s} budget {budget!s:>5}: DSC {run['scores']['dsc']:.4f} "
                  f"p99 {np.percentile(run['latency_ms'], 99):.0f} ms, misses {run['misses']}, "
                  f"fallbacks {run['fallbacks']}", flush=True)  # fmt: skip
    rows = summary_rows(runs)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "budget", "machine": machine(), "cases": cases, "summary": rows,
              "runs": runs}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"results: {args.out}")
    from regtrack.report import report_benchmark

    print(f"page: {report_benchmark(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
