"""The spread of the real-time mode over runs, and its recovery after a load spike.

The same replay gives different answers from run to run on a machine shared with other
software, so one run says little. This replays a TrackRAD case (default the real case,
../shared/data/A_005_part1, 8 Hz, manual masks) ``--runs`` times under each ``--budget``,
budgets alternating run by run so a drift of the machine's load touches all of them, and
reports the minimum, median and maximum over the runs of the deadline misses, the share of
frames answered by their own map ("fresh": a registration or the flow rung), the share
answered by elastix itself, DSC and centre distance, with the
machine, its load average before and after every run and its CPU steal over the runs.

``--spike`` runs a load generator in each replay: ``--spike-procs`` CPU-bound processes
(default two, both cores of a 2-core machine) for ``--spike-s`` seconds (default 6) from
the middle of the replay on, and reports per run how many frames after the spike's end
the first fresh answer came (``resume_frames``; 0: the first frame after it was fresh).

    python benchmarks/realtime_spread.py                       # 10 runs at 0.05 and 0.1 s
    python benchmarks/realtime_spread.py --spike               # the same with a load spike
    python benchmarks/realtime_spread.py --runs 1 --max-frames 30 --out /tmp/spread.json

Writes JSON (default benchmarks/results/realtime_spread.json, or _spike.json) and prints a
table. The offline default (no deadline) is run once as the reference for accuracy unless
``--no-offline``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine, machine_line

REAL_CASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "A_005_part1"
RESULTS = Path(__file__).parent / "results"
BUDGETS = (0.05, 0.1)


def _fresh(result) -> bool:
    """Answered by its own map: a registration or the flow rung (not an earlier frame's
    answer, nor a fallback)."""
    return result.source == "registration" and result.answered_by == result.index


def _by_elastix(result) -> bool:
    """Fresh, and elastix's map answered (not the flow rung nor the flow candidate)."""
    from regtrack.engine import answered_with

    return _fresh(result) and answered_with(result.source, result.candidate) == "registration"


def _busy(until: float) -> None:
    """A CPU-bound load generator: spin until ``until`` (time.time())."""
    x = 0
    while time.time() < until:
        x += 1


class Spike:
    """``procs`` CPU-bound processes for ``seconds``, started by :meth:`start`."""

    def __init__(self, procs: int, seconds: float) -> None:
        self.procs, self.seconds = procs, seconds
        self.started = self.ended = None  # perf_counter() times
        self._processes: list = []

    def start(self) -> None:
        until = time.time() + self.seconds
        context = multiprocessing.get_context("fork")
        self._processes = [
            context.Process(target=_busy, args=(until,), daemon=True) for _ in range(self.procs)
        ]
        for process in self._processes:
            process.start()
        self.started = time.perf_counter()
        self.ended = self.started + self.seconds

    def stop(self) -> None:
        for process in self._processes:
            process.join(timeout=self.seconds + 5)
            if process.is_alive():
                process.terminate()
                process.join()


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat; None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    return (values[7] if len(values) > 7 else 0), sum(values[:8])


def replay_once(case, frames, labels, budget: float, spike: Spike | None, spike_frame: int):
    """One streamed replay under ``budget``; its numbers (and the spike's, when given)."""
    from regtrack.metrics import evaluate_case
    from regtrack.realtime import RealtimeTracker
    from regtrack.tracking import TrackerSettings

    load_before = os.getloadavg()
    tracker = RealtimeTracker(TrackerSettings(budget_s=budget), spacing_mm=case.spacing_mm)
    interval = 1.0 / case.frame_rate_hz
    with warnings.catch_warnings(), tracker:
        warnings.simplefilter("ignore", RuntimeWarning)
        results = [tracker.init(frames[0], case.first_mask)]
        started = time.perf_counter()  # frame 1 arrives now (the stream's clock)
        for result in tracker.stream(frames, frame_rate_hz=case.frame_rate_hz):
            results.append(result)
            if spike is not None and spike.started is None and result.index + 1 >= spike_frame:
                spike.start()
    if spike is not None:
        spike.stop()
    answered = results[1:]
    masks = np.stack([r.mask for r in results]).astype(np.uint8)
    scores = evaluate_case(masks, labels)
    run = {
        "budget_s": budget,
        "workers": tracker.workers,
        "n_frames": len(results),
        "misses": int(sum(r.latency_ms > budget * 1e3 for r in answered)),
        "fresh_share": float(np.mean([_fresh(r) for r in answered])),
        "elastix_share": float(np.mean([_by_elastix(r) for r in answered])),
        "stale_frames": [r.index for r in answered if not _fresh(r)],
        "stale_reasons": {r.index: r.reason for r in answered if not _fresh(r)},
        "dsc": scores["dsc"],
        "cd_mm": scores["centre_distance_mm"],
        "p95_latency_ms": float(np.percentile([r.latency_ms for r in answered], 95)),
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "schedules": _counts(r.schedule or "previous" for r in answered),
        "stages_ms_median": _stage_medians(answered),
    }
    if spike is not None and spike.started is not None:
        run["spike"] = _spike_numbers(answered, spike, started, interval)
    return run


def _counts(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _stage_medians(answered) -> dict:
    """Median milliseconds per stage over the frames answered by their own registration."""
    stages: dict[str, list[float]] = {}
    for result in answered:
        if _fresh(result):
            for name, ms in getattr(result, "stages_ms", {}).items():
                stages.setdefault(name, []).append(ms)
    return {name: float(np.median(ms)) for name, ms in stages.items()}


def _spike_numbers(answered, spike: Spike, started: float, interval: float) -> dict:
    """Where the spike began and ended in frames, and how soon fresh answers came back."""

    def arrival(result) -> float:
        return started + (result.index - 1) * interval

    during = [r for r in answered if spike.started <= arrival(r) < spike.ended]
    after = [r for r in answered if arrival(r) >= spike.ended]
    first_after = after[0].index if after else None
    resumed = next((r.index for r in after if _fresh(r)), None)
    return {
        "start_frame": during[0].index if during else None,
        "end_frame": first_after,
        "seconds": spike.seconds,
        "procs": spike.procs,
        "fresh_share_during": float(np.mean([_fresh(r) for r in during])) if during else None,
        "fresh_share_after": float(np.mean([_fresh(r) for r in after])) if after else None,
        "resume_frames": None if resumed is None else resumed - first_after,
        "misses_during": int(sum(r.latency_ms > r.budget_ms for r in during)),
    }


def offline_scores(case, frames, labels) -> dict:
    """The offline default (no deadline): the reference for accuracy."""
    from regtrack.metrics import evaluate_case
    from regtrack.tracking import iter_track

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results = list(iter_track(frames, case.first_mask, spacing_mm=case.spacing_mm))
    scores = evaluate_case(np.stack([r.mask for r in results]).astype(np.uint8), labels)
    return {"dsc": scores["dsc"], "cd_mm": scores["centre_distance_mm"]}


def spread(runs: list[dict]) -> dict:
    """min / median / max over runs of the numbers the issue asks about."""
    out = {}
    keys = ["misses", "fresh_share", "elastix_share", "dsc", "cd_mm", "p95_latency_ms"]
    series = {key: [run[key] for run in runs] for key in keys}
    spikes = [run["spike"] for run in runs if "spike" in run]
    if spikes:
        series["resume_frames"] = [s["resume_frames"] for s in spikes]
        series["fresh_share_after_spike"] = [s["fresh_share_after"] for s in spikes]
    for key, values in series.items():
        known = [v for v in values if v is not None]
        out[key] = {
            "min": min(known) if known else None,
            "median": statistics.median(known) if known else None,
            "max": max(known) if known else None,
            "n": len(known),
        }
        if len(known) < len(values):
            out[key]["never"] = len(values) - len(known)  # e.g. fresh answers never resumed
    return out


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=REAL_CASE, help="TrackRAD case folder")
    parser.add_argument("--runs", type=int, default=10, help="replays per budget (default 10)")
    parser.add_argument(
        "--budget", type=float, action="append", help="seconds per frame (default 0.05, 0.1)"
    )
    parser.add_argument("--max-frames", type=int, help="replay only the first N frames")
    parser.add_argument("--spike", action="store_true", help="a load spike in every replay")
    parser.add_argument("--spike-s", type=float, default=6.0, help="spike length (default 6)")
    parser.add_argument(
        "--spike-procs", type=int, default=2, help="CPU-bound processes of the spike (default 2)"
    )
    parser.add_argument("--no-offline", action="store_true", help="skip the offline reference")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from regtrack.io import read_case
    from regtrack.processes import start_worker_server

    args = parse(argv)
    start_worker_server()
    budgets = args.budget or list(BUDGETS)
    case = read_case(args.case)
    frames = np.asarray(case.frames[: args.max_frames] if args.max_frames else case.frames)
    labels = np.asarray(case.labels)[: len(frames)]
    spike_frames = round(args.spike_s * case.frame_rate_hz)
    spike_frame = max(1, (len(frames) - spike_frames) // 2)  # centred in the replay
    steal_before = _cpu_times()
    runs: dict[float, list[dict]] = {budget: [] for budget in budgets}
    for k in range(args.runs):
        for budget in budgets:  # alternating: a drift of the load touches every budget
            spike = Spike(args.spike_procs, args.spike_s) if args.spike else None
            run = replay_once(case, frames, labels, budget, spike, spike_frame)
            runs[budget].append(run)
            print(
                f"run {k + 1}/{args.runs} budget {budget:g} s: misses {run['misses']}, "
                f"fresh {100 * run['fresh_share']:.1f} % "
                f"(elastix {100 * run['elastix_share']:.1f} %), DSC {run['dsc']:.4f}, "
                f"CD {run['cd_mm']:.2f} mm, load {run['load_before'][0]:.2f}"
                + (f", resume {run['spike']['resume_frames']} frames" if "spike" in run else ""),
                flush=True,
            )
    steal_after = _cpu_times()
    steal = None
    if steal_before and steal_after and steal_after[1] > steal_before[1]:
        steal = (steal_after[0] - steal_before[0]) / (steal_after[1] - steal_before[1])
    report = {
        "case": case.name,
        "frames": len(frames),
        "frame_rate_hz": case.frame_rate_hz,
        "runs": args.runs,
        "command": " ".join(["python", "benchmarks/realtime_spread.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "cpu_steal_share": steal,
        "offline": None if args.no_offline else offline_scores(case, frames, labels),
        "spike": {"seconds": args.spike_s, "procs": args.spike_procs, "from_frame": spike_frame}
        if args.spike
        else None,
        "budgets": {
            f"{budget:g}": {"spread": spread(group), "runs": group}
            for budget, group in runs.items()
        },
    }
    out = args.out or RESULTS / (
        "realtime_spread_spike.json" if args.spike else "realtime_spread.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(_table(report))
    print(machine_line(report["machine"]))
    print(f"written: {out}")
    return 0


def _table(report: dict) -> str:
    lines = [
        "| budget | misses min/med/max | fresh % min/med/max | by elastix % min/med/max "
        "| DSC min/med/max | CD mm min/med/max"
        + (" | resume frames min/med/max |" if report["spike"] else " |"),
        "|---|---|---|---|---|---" + ("|---|" if report["spike"] else "|"),
    ]

    def three(entry, scale=1.0, digits=0):
        values = [entry[k] for k in ("min", "median", "max")]
        return " / ".join("-" if v is None else f"{v * scale:.{digits}f}" for v in values)

    for budget, group in report["budgets"].items():
        s = group["spread"]
        row = (
            f"| {budget} s | {three(s['misses'])} | {three(s['fresh_share'], 100, 1)} | "
            f"{three(s['elastix_share'], 100, 1)} | "
            f"{three(s['dsc'], digits=4)} | {three(s['cd_mm'], digits=2)} |"
        )
        if report["spike"]:
            row += f" {three(s['resume_frames'])} |"
        lines.append(row)
    if report["offline"]:
        lines.append(
            f"offline: DSC {report['offline']['dsc']:.4f}, CD {report['offline']['cd_mm']:.2f} mm"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
