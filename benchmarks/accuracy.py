"""Accuracy and speed of regtrack against its peers on phantom cases with known motion.

Methods: regtrack with one or more presets, copy-the-first-mask (the TrackRAD baseline),
OpenCV DIS optical flow and scikit-image TV-L1 optical flow. The optical-flow peers propagate
mask(0) by the backward map t -> 0 computed straight from frame t to frame 0, which is how a
user would apply them to this task. Every method is scored with the official TrackRAD metrics
on the same cases in the same run. Prints a table and writes JSON naming the machine.

    python benchmarks/accuracy.py                       # benchmark cases, all methods
    python benchmarks/accuracy.py --cases appearance    # appearance-stress cases
    python benchmarks/accuracy.py --cases severe        # the same stresses pushed further
    python benchmarks/accuracy.py --method regtrack:bspline_mi --method dis_flow --frames 30
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

PEERS = ("copy_first_mask", "dis_flow", "tvl1_flow")
DEFAULT_METHODS = ("regtrack:bspline_ncc", "regtrack:impact_mind", "regtrack:bspline_mi", *PEERS)


def machine(packages: tuple[str, ...] = ()) -> dict:
    """What ran the benchmark: CPU model, cores, Python, versions of the core libraries and
    of ``packages``."""
    import importlib.metadata as md

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("regtrack", "itk-elastix", "SimpleITK", "numpy", "scipy", "torch",
                 "opencv-python-headless", "scikit-image", *packages):  # fmt: skip
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": None, "python": sys.version.split()[0],
            "platform": platform.platform(), "versions": versions}  # fmt: skip


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    """Per-frame min-max to 0..255: optical flow assumes brightness constancy, and cine-MRI
    frames are rescaled frame to frame, so each frame is normalised on its own."""
    low, high = np.percentile(frame, (0.5, 99.5))
    return np.clip((frame - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)


def _warp_by_backward_flow(mask: np.ndarray, flow_rc: np.ndarray) -> np.ndarray:
    """mask_t(x) = mask_0(x + flow(x)), flow (2, H, W) in pixels (row, col), linear, >= 0.5."""
    from scipy import ndimage

    rows, cols = np.indices(mask.shape, dtype=np.float32)
    coords = np.stack([rows + flow_rc[0], cols + flow_rc[1]])
    return ndimage.map_coordinates(mask.astype(np.float32), coords, order=1) >= 0.5


def track_dis_flow(frames, first_mask, spacing_mm):
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    reference = _to_uint8(frames[0])
    for frame in frames[1:]:
        flow_xy = dis.calc(_to_uint8(frame), reference, None)  # frame_t(x) ~ frame_0(x + flow)
        yield _warp_by_backward_flow(first_mask, flow_xy.transpose(2, 0, 1)[::-1])


def track_tvl1_flow(frames, first_mask, spacing_mm):
    from skimage.registration import optical_flow_tvl1

    reference = _to_uint8(frames[0]).astype(np.float32)
    for frame in frames[1:]:
        flow_rc = optical_flow_tvl1(_to_uint8(frame).astype(np.float32), reference)
        yield _warp_by_backward_flow(first_mask, flow_rc)


def track_copy(frames, first_mask, spacing_mm):
    for _ in frames[1:]:
        yield first_mask


def track_regtrack(preset: str):
    """regtrack with a preset; also reports each frame's feature and registration time."""

    def run(frames, first_mask, spacing_mm, timings):
        from regtrack.tracking import TrackerSettings, iter_track

        results = iter_track(frames, first_mask, settings=TrackerSettings(preset=preset),
                             spacing_mm=spacing_mm, start=1)  # fmt: skip
        for result in results:
            timings.append((result.feature_ms, result.registration_ms))
            yield result.mask

    return run


def method_function(name: str):
    if name.startswith("regtrack:"):
        return track_regtrack(name.split(":", 1)[1])
    functions = {"copy_first_mask": track_copy, "dis_flow": track_dis_flow,
                 "tvl1_flow": track_tvl1_flow}  # fmt: skip
    if name not in functions:
        raise SystemExit(f"unknown method {name!r}; use regtrack:<preset> or one of {PEERS}")
    return functions[name]


def run_method(name: str, case) -> dict:
    """Masks for every frame and the seconds each frame took (frame 0 excluded)."""
    from regtrack.metrics import evaluate_case

    masks = [case.first_mask]
    seconds, timings = [], []
    method = method_function(name)
    extra = (timings,) if name.startswith("regtrack:") else ()
    start = time.perf_counter()
    for mask in method(case.frames, case.first_mask, case.spacing_mm, *extra):
        masks.append(mask)
        now = time.perf_counter()
        seconds.append(now - start)
        start = now
    scores = evaluate_case(np.stack(masks).astype(np.uint8), case.masks,
                           scanned_region=_region(case))  # fmt: skip
    scores["s_per_frame_median"] = float(np.median(seconds))
    scores["s_per_frame_mean"] = float(np.mean(seconds))
    scores["s_per_frame_p95"] = float(np.percentile(seconds, 95))
    if timings:
        feature_ms, registration_ms = np.median(timings, axis=0)
        scores["feature_ms_median"] = float(feature_ms)
        scores["registration_ms_median"] = float(registration_ms)
    return scores


def _region(case) -> str:
    return "thorax" if case.spec.site == "lung" else "abdomen"


def preset_hashes(methods) -> dict:
    from regtrack.parameters import preset_files

    hashes = {}
    for name in methods:
        if name.startswith("regtrack:"):
            files = preset_files(name.split(":", 1)[1])
            digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
            hashes[name] = digest[:16]
    return hashes


SUMMARY_COLUMNS = (
    ("dsc", "DSC", "{:.4f}"), ("centre_distance_mm", "CD mm", "{:.3f}"),
    ("hd95_mm", "HD95 mm", "{:.2f}"), ("masd_mm", "MASD mm", "{:.3f}"),
    ("relative_d98", "rel D98", "{:.4f}"), ("s_per_frame_median", "s/frame", "{:.3f}"),
    ("feature_ms_median", "features ms", "{:.1f}"), ("registration_ms_median", "elastix ms", "{:.0f}"),
)  # fmt: skip


def format_results(results: dict) -> str:
    """Markdown: mean over cases per method, then DSC / CD per case and method."""
    methods = list(next(iter(results.values())))
    lines = ["| method | " + " | ".join(t for _, t, _ in SUMMARY_COLUMNS) + " |",
             "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]  # fmt: skip
    for method in methods:
        cells = []
        for key, _, fmt in SUMMARY_COLUMNS:
            values = [results[c][method][key] for c in results if key in results[c][method]]
            cells.append(fmt.format(np.mean(values)) if values else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "| case | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for case_name, by_method in results.items():
        cells = [f"{by_method[m]['dsc']:.3f} / {by_method[m]['centre_distance_mm']:.2f}"
                 for m in methods]  # fmt: skip
        lines.append(f"| {case_name} (DSC / CD mm) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from regtrack.phantom import CASE_SETS, NAMED_SPECS, generate_phantom


    args = _parser().parse_args(argv)
    specs = {**CASE_SETS, "all": NAMED_SPECS}[args.cases]
    methods = args.method or list(DEFAULT_METHODS)
    results = {}
    for case_name, spec in specs.items():
        case = generate_phantom(spec, **({"n_frames": args.frames} if args.frames else {}))
        results[case_name] = {}
        for method in methods:
            results[case_name][method] = run_method(method, case)
            row = results[case_name][method]
            print(f"{case_name:<18}{method:<24} DSC {row['dsc']:.3f}  CD {row['centre_distance_mm']:.2f} mm"
                  f"  {row['s_per_frame_median'] * 1e3:.0f} ms/frame", flush=True)  # fmt: skip
    table = format_results(results)
    print(table)
    report = {"benchmark": "accuracy", "cases": args.cases, "machine": machine(),
              "itk_threads": _itk_threads(), "preset_sha256": preset_hashes(methods),
              "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")
    return 0


def _itk_threads() -> int | None:
    try:
        import itk

        return int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads())
    except Exception:  # noqa: BLE001 - informative only
        return None


def _parser() -> argparse.ArgumentParser:
    from regtrack.phantom import CASE_SETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=(*CASE_SETS, "all"), default="benchmark")
    parser.add_argument("--method", action="append", help="regtrack:<preset> or a peer name")
    parser.add_argument("--frames", type=int, default=None, help="frames per case")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "accuracy.json")  # fmt: skip
    return parser


if __name__ == "__main__":
    sys.exit(main())
