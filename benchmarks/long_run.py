"""A long run in bounded memory, and a killed run resumed with nothing lost.

A generated sequence (the ``liver_8hz_irregular`` phantom, 128 x 128, its first 400 frames
repeated to ``--frames``, written as one ``.mha`` with a first-frame mask) goes through
``regtrack track`` and ``regtrack realtime`` (8 Hz, 0.1 s budget) as a user runs them. The
resident memory (RSS, and PSS, which splits pages shared between processes) of the command
and its worker processes is sampled twice a second
beside the number of frames answered: it must stay flat once the first frames are done.
``track`` is killed (SIGKILL) once frame ``--kill-at`` is recorded and run again: the rerun
must resume where the record stops, and the finished run hold every frame exactly once.

    python benchmarks/long_run.py                       # 20 000 frames: about 50 min
    python benchmarks/long_run.py --frames 3000 --kill-at 1500 --out /tmp/long.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine, machine_line

RESULTS = Path(__file__).parent / "results"
_SAMPLE_S = 0.5
_CLI = [sys.executable, "-c", "import sys; from regtrack.cli import main; sys.exit(main())"]


def write_sequence(folder: Path, n_frames: int) -> tuple[Path, Path]:
    """The sequence and its frame-0 mask; time on the last ITK axis (frames contiguous)."""
    import SimpleITK as sitk

    from regtrack.phantom import BENCHMARK_SPECS, generate_phantom

    loop = generate_phantom(BENCHMARK_SPECS["liver_8hz_irregular"], n_frames=400, shape=(128, 128))
    low, high = np.percentile(loop.frames, (0.5, 99.5))
    grey = np.clip((loop.frames - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    frames = np.resize(grey, (n_frames, *grey.shape[1:]))  # the loop, repeated
    sequence = sitk.GetImageFromArray(frames)  # numpy (T, H, W) -> ITK (x, y, t)
    sequence.SetSpacing((1.5, 1.5, 0.125))
    paths = folder / "long_frames.mha", folder / "long_first_label.mha"
    sitk.WriteImage(sequence, str(paths[0]))
    mask = sitk.GetImageFromArray(loop.masks[0].astype(np.uint8))
    mask.SetSpacing((1.5, 1.5))
    sitk.WriteImage(mask, str(paths[1]))
    return paths


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process and all its descendants, MiB (Linux /proc). RSS counts the
    pages workers share with the fork server once per process; PSS splits them."""
    rss = pss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            rss += _kib(Path(f"/proc/{current}/status"), "VmRSS:")
            pss += _kib(Path(f"/proc/{current}/smaps_rollup"), "Pss:")
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(child) for child in children]
    return round(rss / 1024, 1), round(pss / 1024, 1)


def _kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def count_records(path: Path) -> int:
    try:
        with path.open("rb") as file:
            return sum(1 for _ in file)
    except OSError:
        return 0


def run_sampled(argv: list[str], records: Path, kill_at: int | None = None) -> dict:
    """Run a command, sampling (elapsed s, frames recorded, RSS MiB, PSS MiB); kill it once
    frame ``kill_at`` is recorded."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, killed = [], False
    while process.poll() is None:
        done = count_records(records)
        elapsed = round(time.perf_counter() - start, 1)
        samples.append((elapsed, done, *tree_memory_mb(process.pid)))
        if kill_at is not None and done > kill_at:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(_SAMPLE_S)
    process.wait()
    if process.returncode != 0 and not killed:
        raise RuntimeError(f"{' '.join(argv[3:])} failed: {process.stderr.read()[-2000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1), "killed": killed, "samples": samples}


def memory_summary(samples, n_frames: int, after: int = 1000) -> dict:
    """RSS and PSS at chosen frames, their peak while frames after ``after`` were tracked,
    and their peak after the last frame (the final output file is written then)."""
    tracking = [s for s in samples if after <= s[1] < n_frames]
    closing = [s for s in samples if s[1] >= n_frames]
    summary: dict = {"rss_pss_mb_at_frame": {}}
    for frame in (after, n_frames // 4, n_frames // 2, 3 * n_frames // 4, n_frames - 1):
        near = [s for s in samples if s[1] >= frame]
        if near:
            summary["rss_pss_mb_at_frame"][str(frame)] = list(near[0][2:])
    for name, column in (("rss", 2), ("pss", 3)):
        summary[f"{name}_mb_peak_tracking_after_{after}"] = max(
            (s[column] for s in tracking), default=None
        )
        summary[f"{name}_mb_peak_writing_output"] = max((s[column] for s in closing), default=None)
    return summary


def check_records(records: Path, n_frames: int) -> dict:
    """Every frame recorded exactly once, in order."""
    indices = [json.loads(line)["index"] for line in records.read_text().splitlines()]
    return {
        "records": len(indices),
        "in_order_once_each": indices == list(range(n_frames)),
        "frames_lost": n_frames - len(set(indices)),
    }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    result = {"machine": machine(), "frames": args.frames, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="regtrack-long-") as tmp:
        folder = Path(tmp)
        sequence, mask = write_sequence(folder, args.frames)
        common = [str(sequence), "--mask", str(mask), "--no-progress"]
        for command in args.command or ("track", "realtime"):
            out = folder / command
            argv_ = [*_CLI, command, *common, "--out", str(out)]
            if command == "realtime":
                argv_ += ["--budget", "0.1", "--frame-rate", "8"]
            records = out / "frames.jsonl"
            kill_at = args.kill_at if command == "track" else None
            first = run_sampled(argv_, records, kill_at)
            row = {"first": {k: v for k, v in first.items() if k != "samples"}}
            samples = first["samples"]
            if first["killed"]:
                recorded = count_records(records)
                second = run_sampled(argv_, records)
                row["resumed_at_frame"] = recorded
                row["second"] = {k: v for k, v in second.items() if k != "samples"}
                samples = samples + [(s[0] + first["wall_s"], *s[1:]) for s in second["samples"]]
            row.update(memory_summary(samples, args.frames, args.after))
            row.update(check_records(records, args.frames))
            row["samples"] = samples[:: max(1, len(samples) // 400)]
            row["load_1min_at_end"] = round(os.getloadavg()[0], 2)
            result["runs"][command] = row
            print(command, {k: v for k, v in row.items() if k != "samples"}, flush=True)
    print(machine_line(result["machine"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--kill-at", type=int, default=10_000, help="track is killed here")
    parser.add_argument("--command", action="append", choices=("track", "realtime"))
    parser.add_argument("--after", type=int, default=1000, help="memory is flat from here")
    parser.add_argument("--out", type=Path, default=RESULTS / "long_run.json")
    return parser


if __name__ == "__main__":
    sys.exit(main())
