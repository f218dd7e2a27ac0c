"""What the flow rung should map onto when a budget leaves room for a full registration on
some frames only: frame 0, or the newest frame a full registration answered (a keyframe).

Offline and deterministic, so the choice is measured apart from the machine's speed: every
``--every``-th frame is tracked with the full schedule, the others with the flow rung
(:data:`regtrack.budget.FLOW_RUNG`), one engine, frames in order. Variants:

- ``full``: every frame with the full schedule (the offline default);
- ``frame0``: the flow rung onto frame 0 (the averaged reference while the motion is fine);
- ``keyframe``: the flow rung onto the keyframe after a jump, onto frame 0 while the motion is
  fine (the default under a deadline);
- ``keyframe_always``: onto the keyframe on every frame;
- ``small``: the smallest registration rung instead of the full schedule, the flow rung onto
  frame 0 on the other frames (what a tight budget ran before keyframes).

    python benchmarks/keyframe.py                    # the real case and synthetic_dev
    python benchmarks/keyframe.py --cases A_005_part1 --every 2

Prints a table and writes benchmarks/results/keyframe.json (with the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import machine, machine_line, real_case

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
VARIANTS = ("full", "frame0", "keyframe", "keyframe_always", "small")


def case_folder(name: str) -> Path:
    return DATA / name if (DATA / name).is_dir() else DATA / "synthetic_dev" / name


def run_variant(args) -> tuple[str, str, dict]:
    """One variant on one case: its official scores and how many frames each path answered."""
    name, variant, every = args
    from regtrack.budget import FLOW_RUNG, LADDER
    from regtrack.engine import Engine, Keyframe, TrackerSettings
    from regtrack.metrics import evaluate_case

    case = real_case(case_folder(name), None)
    engine = Engine.build(case.frames[0], case.first_mask, TrackerSettings(), case.spacing_mm)
    registered = LADDER[-2] if variant == "small" else LADDER[0]
    masks, previous, keyframe, keyframe_answers = [case.first_mask], case.first_mask, None, 0
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for index in range(1, len(case.frames)):
            frame = case.frames[index]
            if variant == "full" or (index - 1) % every == 0:
                result = engine.track_frame(frame, previous, index, schedule=registered)
                if result.source == "registration":
                    keyframe = Keyframe(index, frame, result.mask)
            else:
                given = keyframe if variant.startswith("keyframe") else None
                fine = (lambda *_: False) if variant == "keyframe_always" else engine.fine
                with mock.patch.object(Engine, "fine", fine):
                    result = engine.track_frame(
                        frame, previous, index, schedule=FLOW_RUNG, keyframe=given
                    )
                keyframe_answers += "mapped onto frame" in result.candidate_reason
            previous = result.mask
            masks.append(result.mask)
    scores = evaluate_case(np.stack(masks).astype(np.uint8), case.labels)
    return (
        name,
        variant,
        {
            "dsc": scores["dsc"],
            "centre_distance_mm": scores["centre_distance_mm"],
            "frames_onto_keyframe": keyframe_answers,
            "seconds": time.perf_counter() - began,
        },
    )


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ["A_005_part1", *sorted(p.name for p in (DATA / "synthetic_dev").iterdir())]
    parser.add_argument("--cases", nargs="+", default=default)
    parser.add_argument("--every", type=int, default=3, help="full schedule on every N-th")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "keyframe.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    tasks = [(case, variant, args.every) for case in args.cases for variant in VARIANTS]
    results: dict[str, dict] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for case, variant, numbers in pool.map(run_variant, tasks):
            results.setdefault(case, {})[variant] = numbers
    report = {
        "benchmark": "keyframe",
        "command": "python benchmarks/keyframe.py " + " ".join(sys.argv[1:]),
        "every": args.every,
        "machine": machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"full schedule on every {args.every}th frame, the flow rung on the others")
    print("| case | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for case, row in results.items():
        cells = (f"{row[v]['dsc']:.4f} / {row[v]['centre_distance_mm']:.2f}" for v in VARIANTS)
        print(f"| {case} | " + " | ".join(cells) + " |")
    print(machine_line(report["machine"]))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
