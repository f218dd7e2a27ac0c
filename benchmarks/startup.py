"""What a user waits for: whole-command time and time to the first answer, beside the frames'
own work, for ``regtrack track``, ``regtrack realtime`` and the TrackRAD container entry.

Each command runs in a fresh process (a cold start: Python, regtrack, ITK's wrappers, the
engine), as a user or the challenge runs it, on a short and a long case. The time to the first
answer is from launch until frame 1's record is in ``frames.jsonl``; the frames' own work is
the sum of their ``elapsed_ms``. ``realtime`` replays at the case's frame rate, so its whole
time includes the replay ((T - 1) / rate), reported beside it. Warm starts are measured in one
process: the Python API's second case, and real-time workers forked from a loaded server
against workers spawned cold.

    python benchmarks/startup.py                          # -> benchmarks/results/startup.json
    python benchmarks/startup.py --repeats 3 --pythonpath ../old-checkout --out before.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine, machine_line

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CASES = {
    "short": DATA / "synthetic_dev" / "d10_faint_tumour",  # 50 frames, 256 x 256, 2 Hz
    "long": DATA / "A_005_part1",  # 124 frames, 350 x 350, 8 Hz
}
COMMANDS = ("track", "realtime", "trackrad")
_POLL_S = 0.005


def command_line(command: str, case: Path, work: Path) -> tuple[list[str], Path]:
    """The regtrack command line and the frames.jsonl it writes."""
    cli = [sys.executable, "-c", "import sys; from regtrack.cli import main; sys.exit(main())"]
    if command == "track":
        out = work / "run"
        return [*cli, "track", str(case), "--out", str(out), "--no-progress"], out
    if command == "realtime":
        out = work / "run"
        args = ["realtime", str(case), "--out", str(out), "--budget", "0.25", "--no-progress"]
        return [*cli, *args], out
    container = container_input(case, work / "input")
    args = ["trackrad", "--input", str(container), "--output", str(work / "output")]
    return [*cli, *args, "--no-progress"], work / "tmp"  # its run folder is a temp dir there


def container_input(case: Path, folder: Path) -> Path:
    """The challenge container's input folder for a TrackRAD case folder (links, no copies)."""
    name = case.name
    for sub, source in (
        ("images/mri-linacs", case / "images" / f"{name}_frames.mha"),
        ("images/mri-linac-target", case / "targets" / f"{name}_first_label.mha"),
    ):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / source.name).symlink_to(source.resolve())
    for meta in case.glob("*.json"):
        shutil.copy(meta, folder / meta.name)
    return folder


def time_command(command: str, case: Path, pythonpath: str | None) -> dict:
    """Run one command cold; wall time, time to frame 1's answer, the frames' own work."""
    with tempfile.TemporaryDirectory(prefix="regtrack-startup-") as tmp:
        work = Path(tmp)
        argv, out = command_line(command, case, work)
        (work / "tmp").mkdir()
        env = {**os.environ, "TMPDIR": str(work / "tmp")}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        start = time.perf_counter()
        process = subprocess.Popen(  # cwd: ``python -c`` puts it first on sys.path
            argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        first_answer, records = None, ""
        while process.poll() is None:
            text = _records_text(out)
            if text:
                records = text
                if first_answer is None and text.count("\n") >= 2:
                    first_answer = time.perf_counter() - start
            time.sleep(_POLL_S)
        wall = time.perf_counter() - start
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[3:])} failed: {process.stderr.read()[-2000:]}")
        records = _records_text(out) or records
    lines = [json.loads(line) for line in records.splitlines() if line.strip()]
    frames = len(lines)
    rate = json.loads((case / "frame-rate.json").read_text())
    row = {
        "command": command,
        "case": case.name,
        "frames": frames,
        "wall_s": round(wall, 3),
        "first_answer_s": None if first_answer is None else round(first_answer, 3),
        "frames_work_s": round(sum(r.get("elapsed_ms", 0.0) for r in lines) / 1e3, 3),
    }
    if command == "realtime":
        row["replay_s"] = round((frames - 1) / float(rate), 3)
    return row


def _records_text(out: Path) -> str:
    """frames.jsonl of a run folder, or of the one run folder under a temp dir."""
    found = [out / "frames.jsonl"] if out.name == "run" else sorted(out.glob("*/frames.jsonl"))
    for path in found:
        try:
            return path.read_text()
        except OSError:
            continue
    return ""


_WARM_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import regtrack
from regtrack.io import read_case
imported = time.perf_counter() - start
case = read_case(sys.argv[1])
times = []
for _ in range(2):
    t = time.perf_counter()
    regtrack.track(case.frames[:10], case.first_mask, spacing_mm=case.spacing_mm)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": imported, "first_call_s": times[0], "second_call_s": times[1]}))
"""

_WORKERS_SCRIPT = """
import json, sys, time
import multiprocessing
from regtrack import processes, realtime
from regtrack.io import read_case
from regtrack.tracking import TrackerSettings
if sys.argv[2] == "spawn":
    processes.worker_context = lambda: multiprocessing.get_context("spawn")
case = read_case(sys.argv[1])
times = []
for _ in range(2):
    t = time.perf_counter()
    with realtime.RealtimeTracker(TrackerSettings(budget_s=0.25), workers=2) as tracker:
        tracker.init(case.frames[0], case.first_mask, calibrate=False)
        times.append(time.perf_counter() - t)
print(json.dumps({"first_pool_s": times[0], "second_pool_s": times[1]}))
"""


def time_script(script: str, *args: str, pythonpath: str | None = None) -> dict:
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    with tempfile.TemporaryDirectory(prefix="regtrack-startup-") as work:
        out = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return {k: round(v, 3) for k, v in json.loads(out.stdout.splitlines()[-1]).items()}


def median_row(rows: list[dict]) -> dict:
    """Medians of the timed fields over repeats; the rest from the first."""
    merged = dict(rows[0])
    for key, value in rows[0].items():
        if key.endswith("_s") and value is not None:
            merged[key] = round(statistics.median(r[key] for r in rows), 3)
    merged["repeats"] = len(rows)
    return merged


def format_table(rows: list[dict]) -> str:
    lines = [
        "| command | case | frames | whole command s | first answer s | frames' work s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r["wall_s"] / r["frames_work_s"] if r["frames_work_s"] else float("nan")
        wall = f"{r['wall_s']:.2f}"
        if "replay_s" in r:
            wall += f" (replay {r['replay_s']:.1f})"
        lines.append(
            f"| {r['command']} | {r['case']} | {r['frames']} | {wall} | "
            f"{r['first_answer_s']:.2f} | {r['frames_work_s']:.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    missing = [str(p) for p in CASES.values() if not p.is_dir()]
    if missing:
        print(f"case folders not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = []
    for command in args.command or COMMANDS:
        for label, case in CASES.items():
            load_before = os.getloadavg()[0]
            runs = [time_command(command, case, args.pythonpath) for _ in range(args.repeats)]
            load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            rows.append({"size": label, **median_row(runs), "load_1min_before_after": load})
            print(rows[-1], flush=True)
    warm = {
        "python_api_10_frames": time_script(
            _WARM_SCRIPT, str(CASES["short"]), pythonpath=args.pythonpath
        )
    }
    if not args.pythonpath:  # the worker start methods exist in this checkout only
        for method in ("forkserver", "spawn"):
            warm[f"two_workers_{method}"] = time_script(
                _WORKERS_SCRIPT, str(CASES["short"]), method
            )
    info = machine()
    print(machine_line(info))
    print(format_table(rows))
    print(json.dumps(warm, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "pythonpath": args.pythonpath, "rows": rows, "warm": warm}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", action="append", choices=COMMANDS, help="(repeatable)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row (median)")
    parser.add_argument(
        "--pythonpath", help="run another checkout's regtrack (e.g. the commit before a change)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    return parser


if __name__ == "__main__":
    sys.exit(main())
