"""Time `regtrack report` on a 250-frame 350 x 350 phantom run; size of its movie.

The phantom (``lung_slide`` at 350 x 350, 250 frames, 4 Hz) is tracked once with the default
preset (not timed; a kept ``--work`` folder is reused), then ``regtrack report RUN`` runs in a
fresh interpreter ``--repeats`` times, pinned to ``--cores`` cores, as a user would run it:
imports included. Prints a table and writes JSON naming the machine.

    python benchmarks/report.py
    python benchmarks/report.py --frames 100 --repeats 1 --work /tmp/report-bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("load", "trajectory", "plots", "movie", "metrics", "page")
TARGET_S, TARGET_MB = 20.0, 10.0  # issue 9: under 20 s on 2 cores, movie under 10 MB


def machine() -> dict:
    """accuracy.py's machine record plus the libraries a report uses and ffmpeg's version."""
    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import machine as base_machine

    info = base_machine(("matplotlib", "imageio", "imageio-ffmpeg", "jinja2", "pillow"))
    try:
        import imageio_ffmpeg

        info["versions"]["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_version()
    except Exception:  # noqa: BLE001 - informative only
        info["versions"]["ffmpeg"] = None
    return info


def tracked_run(work: Path, n_frames: int, size: int) -> tuple[Path, float]:
    """The phantom's results folder (tracked now, or reused) and the seconds tracking took."""
    from regtrack.io import read_case
    from regtrack.phantom import BENCHMARK_SPECS, generate_phantom, write_phantom_case
    from regtrack.run import track_case

    run_dir = work / "run"
    if (run_dir / "output.mha").exists():
        settings = json.loads((run_dir / "run.json").read_text())
        if settings.get("n_frames") == n_frames and settings.get("frame_shape") == [size, size]:
            return run_dir, 0.0
    phantom = generate_phantom(BENCHMARK_SPECS["lung_slide"], n_frames=n_frames, shape=(size, size))
    case = read_case(write_phantom_case(phantom, work / "cases"))
    start = time.perf_counter()
    track_case(case, run_dir, restart=True, progress=True)
    return run_dir, time.perf_counter() - start


def _pin(cores: int):
    """preexec_fn pinning the child to the first ``cores`` CPUs (Linux), else None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = sorted(os.sched_getaffinity(0))[:cores]
    return lambda: os.sched_setaffinity(0, chosen)


def time_report(run_dir: Path, cores: int, gif: bool = False) -> dict:
    """Wall seconds of one `regtrack report` in a fresh interpreter, and what it wrote."""
    out = run_dir / ("report-gif" if gif else "report")
    command = [sys.executable, "-m", "regtrack.cli", "report", str(run_dir), "--out", str(out)]
    command += ["--gif"] if gif else []
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, preexec_fn=_pin(cores))
    seconds = time.perf_counter() - start
    facts = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": seconds,
        "stages_s": facts["render_s"],
        "movie_bytes": facts["movie"]["bytes"],
        "movie_frames": facts["movie"]["frames"],
        "html_bytes": (out / "index.html").stat().st_size,
    }


def format_table(rows: list[dict], label: str) -> str:
    """Markdown: one line per kind of report (median over repeats)."""
    header = "| report | wall s (median) | wall s (min) | " + " | ".join(STAGES) + " | movie MB |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    walls = [r["wall_s"] for r in rows]
    stages = [statistics.median(r["stages_s"].get(s, 0.0) for r in rows) for s in STAGES]
    lines.append(
        f"| {label} | {statistics.median(walls):.1f} | {min(walls):.1f} | "
        + " | ".join(f"{s:.1f}" for s in stages)
        + f" | {rows[0]['movie_bytes'] / 1e6:.1f} |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="regtrack-report-bench-"))
    run_dir, tracking_s = tracked_run(work, args.frames, args.size)
    if tracking_s:
        print(f"tracked {args.frames} frames in {tracking_s:.0f} s (not part of the timing)")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    mp4 = [time_report(run_dir, args.cores) for _ in range(args.repeats)]
    label = f"{args.frames} frames {args.size} x {args.size}, MP4"
    table = format_table(mp4, label)
    gif = [time_report(run_dir, args.cores, gif=True)] if args.gif else []
    if gif:
        table += "\n" + format_table(gif, label.replace("MP4", "GIF")).splitlines()[-1]
    print(table)
    wall = statistics.median(r["wall_s"] for r in mp4)
    size_mb = mp4[0]["movie_bytes"] / 1e6
    verdict = (
        f"target: under {TARGET_S:.0f} s and {TARGET_MB:.0f} MB -> "
        f"{'met' if wall < TARGET_S and size_mb < TARGET_MB else 'MISSED'}"
    )
    print(verdict)
    report = {
        "benchmark": "report",
        "machine": machine(),
        "cores_used": args.cores,
        "case": {"phantom": "lung_slide", "frames": args.frames, "shape": [args.size] * 2},
        "tracking_s": tracking_s or None,
        "load_average_1min": load_before,
        "target": {"wall_s": TARGET_S, "movie_mb": TARGET_MB},
        "results": {"mp4": mp4, "gif": gif},
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--size", type=int, default=350, help="frame side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="CPUs the report may use")
    parser.add_argument("--gif", action="store_true", help="also time one GIF report")
    parser.add_argument("--work", type=Path, help="folder for the case and run (kept, reused)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "report.json"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
