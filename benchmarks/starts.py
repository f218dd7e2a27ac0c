"""How much of a case's score is its frame 0: every method on the same case, started from later
frames too.

A tracker maps every frame t onto the frame its mask was given on, so that frame's noise is in
every answer: one noise draw, shared by the whole sequence, shifts a method's centre distance by
a few tenths of a pixel. A comparison decided by less than that is decided by frame 0. Here each
case is also tracked from frame k (frames k, k+1, ..., its label at k as the given mask), a new
draw of that noise on the same anatomy and motion: k = 0, 10, 20, ... while at least 30 frames
are left, at most six starts a case. Every method runs on every start in one run: regtrack, its start alone (the fast tracker's map, ``start_only``), OpenCV DIS and
scikit-image TV-L1 (as in ``accuracy.py``).

    python benchmarks/starts.py                               # synthetic_dev and the real case
    python benchmarks/starts.py --cases d13_small_thorax --every 5 --most 9

Prints, per case, each method's centre distance on every start and on how many starts
regtrack is closer than each of the others; writes benchmarks/results/starts.json (with the
machine and its load), rewritten as each result comes in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine, machine_line, real_case, run_method

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
METHODS = ("regtrack", "regtrack+start_only=true", "dis_flow", "tvl1_flow")


def case_folder(name: str, cases_dirs=(DATA, DATA / "synthetic_dev")) -> Path:
    """The folder of case ``name``: the first of ``cases_dirs`` that holds it."""
    for folder in map(Path, cases_dirs):
        if (folder / name).is_dir():
            return folder / name
    raise SystemExit(f"no case {name!r} in {', '.join(map(str, cases_dirs))} (--cases-dir)")


def run_start(args) -> tuple[str, int, str, dict]:
    """One method on one case tracked from frame ``start``: its official scores."""
    folder, start, method = args
    case = real_case(folder, None)
    case = replace(case, frames=case.frames[start:], labels=case.labels[start:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = run_method(method, case)
    keep = ("dsc", "centre_distance_mm", "s_per_frame_median", "registration_share")
    return folder.name, start, method, {k: scores[k] for k in keep if k in scores}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    synthetic = DATA / "synthetic_dev"
    default = (
        ["A_005_part1", *sorted(p.name for p in synthetic.iterdir())] if synthetic.is_dir() else []
    )
    parser.add_argument("--cases", nargs="+", default=default)
    parser.add_argument(
        "--cases-dir",
        nargs="+",
        type=Path,
        default=[DATA, DATA / "synthetic_dev"],
        help="folders that hold the case folders (searched in order)",
    )
    parser.add_argument("--every", type=int, default=10, help="frames between starts")
    parser.add_argument("--most", type=int, default=6, help="starts a case at most")
    parser.add_argument("--min-frames", type=int, default=30, help="frames a start keeps")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "starts.json")
    return parser.parse_args(argv)


def starts_of(folder: Path, args) -> list[int]:
    """Start frames of a case: every ``args.every`` while ``args.min_frames`` are left."""
    length = len(real_case(folder, None).frames)
    return list(range(0, length - args.min_frames + 1, args.every))[: args.most]


def closer_on(results: dict, method: str, other: str) -> tuple[int, int]:
    """On how many starts ``method``'s centre distance is below ``other``'s, of how many."""
    pairs = [
        (row[method]["centre_distance_mm"], row[other]["centre_distance_mm"])
        for row in results.values()
        if method in row and other in row
    ]
    return sum(a < b for a, b in pairs), len(pairs)


def main(argv=None) -> int:
    args = parse(argv)
    folders = {c: case_folder(c, args.cases_dir) for c in args.cases}
    starts = {c: starts_of(folders[c], args) for c in args.cases}
    report = {
        "benchmark": "starts",
        "command": "python benchmarks/starts.py " + " ".join(sys.argv[1:]),
        "starts": starts,
        "machine": machine(),
        "load_average_before": os.getloadavg(),
        "results": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tasks = [(folders[c], s, m) for c in args.cases for s in starts[c] for m in args.methods]
    with ProcessPoolExecutor(args.jobs) as pool:
        for done in as_completed([pool.submit(run_start, task) for task in tasks]):
            case, start, method, scores = done.result()
            report["results"].setdefault(case, {}).setdefault(str(start), {})[method] = scores
            report["load_average_after"] = os.getloadavg()
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    results = {
        case: {str(s): report["results"][case][str(s)] for s in starts[case]} for case in starts
    }
    print_table(results, args.methods)
    print(machine_line(report["machine"]))
    print(f"wrote {args.out}")
    return 0


def print_table(results: dict, methods) -> None:
    """Centre distance (mm) per start, its mean, and regtrack's wins against each other."""
    print("centre distance mm, per start frame; mean over starts; starts where regtrack is closer")
    print("| case | method | per start | mean | regtrack closer |")
    for case, by_start in results.items():
        for method in methods:
            values = [row[method]["centre_distance_mm"] for row in by_start.values()]
            won, of = closer_on(by_start, "regtrack", method)
            wins = f"{won} of {of}" if method != "regtrack" and of else ""
            cells = " ".join(f"{v:.3f}" for v in values)
            print(f"| {case} | {method} | {cells} | {np.mean(values):.3f} | {wins} |")
    for method in [m for m in methods if m != "regtrack"] if "regtrack" in methods else ():
        counts = [closer_on(by_start, "regtrack", method) for by_start in results.values()]
        won, of = (sum(c[k] for c in counts) for k in (0, 1))
        print(f"regtrack closer than {method} on {won} of {of} starts")


if __name__ == "__main__":
    sys.exit(main())
