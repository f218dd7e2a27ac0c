"""Does the more similar map lie closer to the truth? The premise of a registration that
corrects its start, measured per frame.

For every frame of each case, the flow-started registration (``start="flow"``,
:mod:`regtrack.flowstart`) gives two maps of the target's neighbourhood: its start (the DIS
flow) and its answer (the start corrected by elastix's finest level). For each map this
records

- the error: the distance between the centroid of mask(0) pulled back by the map and the
  centroid of the frame's true mask;
- the similarity the registration maximises: normalised correlation between frame t and
  frame 0 pulled back by the map, over the registration's region (the same box).

It then reports per case the mean error of each map, how often the registration raised the
similarity, and how often the map with the higher similarity was the one closer to the
truth ("agreement"). Where agreement is well under one half, a registration that makes the
frames more alike moves away from the truth: no similarity-driven correction can improve
on the start there, whatever its optimiser or grid.

    python benchmarks/similarity_truth.py --cases-dir ../shared/data/synthetic_dev \\
        --cases-dir ../shared/data --out benchmarks/results/similarity_truth.json

Each frame starts from the true mask of the frame before (not the tracker's answer), so the
frames are independent of one another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import find_case_folders, machine, machine_line, real_case


def frame_maps(engine, frame, previous):
    """The start (flow) and the registered map of the box around ``previous``, and the box:
    the engine's own flow-started registration (``Engine._flow_started``)."""
    from regtrack.budget import LADDER
    from regtrack.engine import _roi_box
    from regtrack.gate import centroid_mm

    shift = tuple(
        float(v) for v in engine.first_centroid - centroid_mm(previous, engine.spacing_mm)
    )
    box = _roi_box(previous, engine.settings.roi_margin_mm, engine.spacing_mm)
    fixed = engine.extractor(frame) if engine.extractor else frame
    start, started, why = engine._flow_started(frame, fixed, box, shift, LADDER[0])
    if started is None:
        raise RuntimeError(f"the flow-started registration failed: {why}")
    return start, started.points, box


def score(engine, frame, truth, points, box) -> tuple[float, float]:
    """(centroid error mm, NCC over the box) of one map."""
    from regtrack.gate import centroid_mm
    from regtrack.refine import sample
    from regtrack.registration import warp_mask_to

    spacing = np.asarray(engine.spacing_mm)
    mask = np.zeros(truth.shape, bool)
    mask[box] = warp_mask_to(engine.first_mask, points, spacing)
    error = (
        float(np.hypot(*(centroid_mm(mask, spacing) - centroid_mm(truth, spacing))))
        if mask.any()
        else float("nan")
    )
    pulled = sample(engine.frame0, points / spacing[:, None, None]).ravel()
    fixed = np.asarray(frame[box], np.float64).ravel()
    return error, float(np.corrcoef(fixed, pulled)[0, 1])


def run_case(case, preset: str) -> dict:
    from regtrack.engine import Engine, TrackerSettings

    # Frame 0 as the reference: frames here are not answered in order, so none is averaged in.
    settings = TrackerSettings(preset=preset, start="flow", reference="first")
    engine = Engine.build(case.frames[0], case.first_mask, settings, case.spacing_mm)
    rows = []
    for t in range(1, len(case.frames)):
        truth, previous = case.labels[t].astype(bool), case.labels[t - 1].astype(bool)
        start, registered, box = frame_maps(engine, case.frames[t], previous)
        rows.append([score(engine, case.frames[t], truth, p, box) for p in (start, registered)])
    r = np.array(rows)  # frames x (start, registered) x (error, ncc)
    closer = r[:, 1, 0] < r[:, 0, 0]
    more_similar = r[:, 1, 1] > r[:, 0, 1]
    return {
        "frames": len(rows),
        "start_error_mm": float(np.nanmean(r[:, 0, 0])),
        "registered_error_mm": float(np.nanmean(r[:, 1, 0])),
        "registration_raised_similarity": float(np.mean(more_similar)),
        "registration_closer": float(np.mean(closer)),
        "agreement": float(np.mean(closer == more_similar)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases-dir", type=Path, action="append", required=True)
    parser.add_argument("--preset", default="bspline_ncc", help="default bspline_ncc")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = {}
    for folder in [f for d in args.cases_dir for f in find_case_folders(d)]:
        case = real_case(folder, args.max_frames)
        results[case.name] = run_case(case, args.preset)
        r = results[case.name]
        print(
            f"{case.name:28s} start {r['start_error_mm']:.3f} mm, registered "
            f"{r['registered_error_mm']:.3f} mm, similarity raised "
            f"{100 * r['registration_raised_similarity']:.0f} %, closer "
            f"{100 * r['registration_closer']:.0f} %, agreement {100 * r['agreement']:.0f} %",
            flush=True,
        )
    info = machine(("itk-elastix", "opencv-python-headless"))
    print(machine_line(info))
    if args.out:
        report = {
            "benchmark": "similarity_truth",
            "preset": args.preset,
            "machine": info,
            "load_average": list(os.getloadavg()),
            "results": results,
        }
        args.out.write_text(json.dumps(report, indent=1, allow_nan=False))
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
