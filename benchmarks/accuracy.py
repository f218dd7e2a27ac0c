"""Accuracy and speed of regtrack against its peers on real, semi-synthetic and phantom cases.

Cases, all scored in one run with the official TrackRAD metrics (:mod:`regtrack.metrics`):

- real cases: every TrackRAD-layout case folder under ``--cases-dir`` that has labels (the
  official training data as users have it; ``../shared/data`` in development);
- semi-synthetic cases (``--semi``): frame 0 and the first label of each real case, warped by
  known breathing + jump motion with noise and per-frame min-max scaling, built at run time
  from the case folder (nothing of the real case is stored);
- phantom case sets (``--cases``): ``benchmark``, ``appearance``, ``severe``, ``realistic``,
  ``fine``.

Methods: regtrack (``regtrack`` = default settings, ``regtrack:<preset>``, and any setting
changed with ``+name=value``, e.g. ``regtrack+flatten_sigma_mm=10``) and the peers
copy-the-first-mask (the TrackRAD baseline), OpenCV DIS optical flow and scikit-image TV-L1,
each flow computed straight from frame t to frame 0 and used to pull mask(0) onto frame t.
Each peer gets the input its documentation assumes: DIS 8-bit frames, TV-L1 (whose default
``attachment=15`` assumes intensities in [0, 1]) frames in [0, 1]; by default frame 0's range
maps to [0, 1] for every frame (``--peer-scaling sequence``), or each frame's own min-max does
(``--peer-scaling frame``; on frames already min-max scaled per frame this costs both flows
accuracy: it re-scales frames whose maximum moved).

Prints a table naming the machine, the ranking of the methods on every case and how it agrees
with the ranking on the real cases, and writes JSON (``benchmarks/results/``).

    python benchmarks/accuracy.py --cases-dir ../shared/data --semi --cases realistic
    python benchmarks/accuracy.py --cases benchmark                 # phantoms only
    python benchmarks/accuracy.py --cases-dir DIR --cases none --max-frames 40 --method dis_flow
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PEERS = ("copy_first_mask", "dis_flow", "tvl1_flow")
DEFAULT_METHODS = ("regtrack", *PEERS)
RESULTS = Path(__file__).parent / "results"


@dataclass
class BenchCase:
    """One scored case, whatever its source: frames (T, H, W) float32, labels (T, H, W) uint8."""

    name: str
    kind: str  # "real", "semi-synthetic" or "phantom"
    frames: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float]
    scanned_region: str | None

    @property
    def first_mask(self) -> np.ndarray:
        return self.labels[0].astype(bool)


# ------------------------------------------------------------------------------------ machine


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
    for dist in (
        "regtrack",
        "itk-elastix",
        "SimpleITK",
        "numpy",
        "scipy",
        "torch",
        "opencv-python-headless",
        "scikit-image",
        *packages,
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_line(info: dict) -> str:
    """One line naming the machine, printed under the tables."""
    versions = info["versions"]
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"itk-elastix {versions.get('itk-elastix')}, OpenCV {versions.get('opencv-python-headless')}, "
        f"scikit-image {versions.get('scikit-image')}"
    )


# -------------------------------------------------------------------------------------- peers


PEER_SCALINGS = ("sequence", "frame")
"""How the flow peers' inputs are scaled: ``sequence`` maps frame 0's min..max to [0, 1] and
applies that to every frame (keeps brightness constancy; causal); ``frame`` min-max scales
each frame on its own (undoes per-frame gain, but re-scales frames that are already scaled)."""


def scale_unit(frame: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max to [0, 1], float32, what TV-L1's default ``attachment=15`` assumes: by the
    frame's own range, or by ``value_range`` (frame 0's, for sequence scaling)."""
    frame = np.asarray(frame, dtype=np.float32)
    low, high = value_range or (float(frame.min()), float(frame.max()))
    return (frame - low) / max(high - low, 1e-6)


def scale_uint8(frame: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max to 0..255 uint8 (clipped), the input OpenCV's DIS flow takes."""
    return np.round(np.clip(scale_unit(frame, value_range), 0.0, 1.0) * 255.0).astype(np.uint8)


def _peer_range(frames, scaling: str) -> tuple[float, float] | None:
    """Frame 0's intensity range for sequence scaling, None for per-frame scaling."""
    if scaling == "frame":
        return None
    first = np.asarray(frames[0], dtype=np.float32)
    return float(first.min()), float(first.max())


def _warp_by_backward_flow(mask: np.ndarray, flow_rc: np.ndarray) -> np.ndarray:
    """mask_t(x) = mask_0(x + flow(x)), flow (2, H, W) in pixels (row, col), linear, >= 0.5."""
    from scipy import ndimage

    rows, cols = np.indices(mask.shape, dtype=np.float32)
    coords = np.stack([rows + flow_rc[0], cols + flow_rc[1]])
    return ndimage.map_coordinates(mask.astype(np.float32), coords, order=1) >= 0.5


def track_dis_flow(frames, first_mask, spacing_mm, scaling="sequence"):
    """OpenCV DIS (medium preset), frame t straight to frame 0."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    value_range = _peer_range(frames, scaling)
    reference = scale_uint8(frames[0], value_range)
    for frame in frames[1:]:
        flow_xy = dis.calc(
            scale_uint8(frame, value_range), reference, None
        )  # frame_t(x) ~ frame_0(x + flow)
        yield _warp_by_backward_flow(first_mask, flow_xy.transpose(2, 0, 1)[::-1])


def track_tvl1_flow(frames, first_mask, spacing_mm, scaling="sequence"):
    """scikit-image TV-L1 with its defaults, on frames scaled to [0, 1], frame t to frame 0."""
    from skimage.registration import optical_flow_tvl1

    value_range = _peer_range(frames, scaling)
    reference = scale_unit(frames[0], value_range)
    for frame in frames[1:]:
        flow_rc = optical_flow_tvl1(scale_unit(frame, value_range), reference)
        yield _warp_by_backward_flow(first_mask, flow_rc)


def track_copy(frames, first_mask, spacing_mm):
    """The TrackRAD baseline: mask(0) on every frame."""
    for _ in frames[1:]:
        yield first_mask


def regtrack_settings(name: str) -> dict:
    """TrackerSettings keywords of a method name ``regtrack[:preset][+setting=value...]``,
    e.g. ``regtrack+flatten_sigma_mm=10`` or ``regtrack:bspline_mi+roi=none``."""
    head, *changes = name.split("+")
    settings: dict = {"preset": head.split(":", 1)[1]} if ":" in head else {}
    for change in changes:
        key, _, text = change.partition("=")
        words = {"true": True, "false": False, "none": None}
        settings[key] = words[text.lower()] if text.lower() in words else _number_or_text(text)
    return settings


def _number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def track_regtrack(name: str):
    """regtrack with the settings its method name gives; also reports feature/elastix time."""

    def run(frames, first_mask, spacing_mm, timings):
        from regtrack.tracking import TrackerSettings, iter_track

        settings = TrackerSettings(**regtrack_settings(name))
        results = iter_track(frames, first_mask, settings=settings, spacing_mm=spacing_mm, start=1)
        for result in results:
            timings.append((result.feature_ms, result.registration_ms, answered_by(result)))
            yield result.mask

    return run


def answered_by(result) -> str:
    """Which map answered a frame: "registration", "flow" (the fast tracker's, as fallback or
    as the start alone) or the fallback source ("previous", "sam")."""
    from regtrack.engine import answered_with

    return answered_with(result.source, result.candidate)


def method_function(name: str):
    if name == "regtrack" or name.startswith(("regtrack:", "regtrack+")):
        return track_regtrack(name)
    functions = {
        "copy_first_mask": track_copy,
        "dis_flow": track_dis_flow,
        "tvl1_flow": track_tvl1_flow,
    }
    if name not in functions:
        raise SystemExit(
            f"unknown method {name!r}; use regtrack, regtrack:<preset>, "
            f"regtrack+<setting>=<value> or one of {list(PEERS)}"
        )
    return functions[name]


def run_method(name: str, case: BenchCase, *, peer_scaling: str = "sequence") -> dict:
    """Official scores of one method on one case, plus seconds per frame (frame 0 excluded)."""
    from regtrack.metrics import evaluate_case

    masks = [case.first_mask]
    seconds, timings = [], []
    method = method_function(name)
    extra = (timings,) if name.startswith("regtrack") else ()
    extra = (peer_scaling,) if name in ("dis_flow", "tvl1_flow") else extra
    start = time.perf_counter()
    for mask in method(case.frames, case.first_mask, case.spacing_mm, *extra):
        masks.append(mask)
        now = time.perf_counter()
        seconds.append(now - start)
        start = now
    scores = evaluate_case(
        np.stack(masks).astype(np.uint8), case.labels, scanned_region=case.scanned_region
    )
    scores["s_per_frame_median"] = float(np.median(seconds))
    scores["s_per_frame_mean"] = float(np.mean(seconds))
    scores["s_per_frame_p95"] = float(np.percentile(seconds, 95))
    if timings:
        feature_ms, registration_ms = np.median([t[:2] for t in timings], axis=0)
        scores["feature_ms_median"] = float(feature_ms)
        scores["registration_ms_median"] = float(registration_ms)
        answers = [t[2] for t in timings]
        scores["answered_by"] = {name: answers.count(name) for name in sorted(set(answers))}
        scores["registration_share"] = answers.count("registration") / len(answers)
    return scores


# -------------------------------------------------------------------------------------- cases


def find_case_folders(cases_dir: Path) -> list[Path]:
    """TrackRAD case folders under ``cases_dir`` (itself or its subfolders) that have labels."""
    candidates = [cases_dir, *sorted(p for p in cases_dir.iterdir() if p.is_dir())]
    return [p for p in candidates if any((p / "targets").glob("*_labels.mha"))]


def real_case(folder: Path, max_frames: int | None) -> BenchCase:
    """A real case with manual labels on every frame, read whole (up to ``max_frames``)."""
    from regtrack.io import read_case

    case = read_case(folder)
    stop = len(case.frames) if max_frames is None else min(max_frames, len(case.frames))
    frames = np.asarray(case.frames[0:stop], dtype=np.float32)
    labels = np.asarray(case.labels[0:stop], dtype=np.uint8)
    kind = "synthetic" if "synthetic" in folder.parent.name else "real"
    return BenchCase(case.name, kind, frames, labels, case.spacing_mm, case.scanned_region)


def semi_cases(folder: Path, max_frames: int | None) -> list[BenchCase]:
    """The semi-synthetic cases built from a real case's frame 0 and first label."""
    from regtrack.phantom import SEMI_SYNTHETIC_SPECS, semisynthetic_from_case

    cases = []
    for spec in SEMI_SYNTHETIC_SPECS.values():
        semi = semisynthetic_from_case(folder, spec, **_frames_override(spec, max_frames))
        name = f"{folder.name}_{spec.name}"
        cases.append(
            BenchCase(
                name,
                "semi-synthetic",
                semi.frames,
                semi.masks,
                semi.spacing_mm,
                semi.scanned_region,
            )
        )
    return cases


def _frames_override(spec, max_frames: int | None) -> dict:
    """n_frames cut to ``max_frames``, the jump kept inside the cut."""
    if max_frames is None or max_frames >= spec.n_frames:
        return {}
    override = {"n_frames": max_frames}
    jump_frame = getattr(spec, "jump_frame", None) or getattr(spec, "baseline_shift_frame", None)
    if jump_frame is not None and jump_frame >= max_frames // 2:
        key = "jump_frame" if hasattr(spec, "jump_frame") else "baseline_shift_frame"
        override[key] = max_frames // 2
    return override


def phantom_cases(set_name: str, max_frames: int | None) -> list[BenchCase]:
    """The phantom cases of a named set."""
    from regtrack.phantom import generate_phantom

    cases = []
    for name, spec in phantom_sets()[set_name].items():
        case = generate_phantom(spec, **_frames_override(spec, max_frames))
        cases.append(
            BenchCase(
                name, "phantom", case.frames, case.masks, case.spacing_mm, spec.scanned_region
            )
        )
    return cases


def phantom_sets() -> dict:
    from regtrack.phantom import CASE_SETS

    return dict(CASE_SETS)


def load_cases(args) -> list[BenchCase]:
    """Every case the command line asks for, real ones first."""
    cases: list[BenchCase] = []
    folders = []
    for cases_dir in args.cases_dir or []:
        found = find_case_folders(cases_dir)
        if not found:
            raise SystemExit(
                f"--cases-dir {cases_dir}: no TrackRAD case folder with"
                " targets/<case>_labels.mha found in it or its subfolders"
            )
        folders += found
    cases += [real_case(folder, args.max_frames) for folder in folders]
    if args.semi:
        if not folders:
            raise SystemExit("--semi builds cases from real ones: give --cases-dir as well")
        cases += [c for folder in folders for c in semi_cases(folder, args.max_frames)]
    for set_name in args.cases:
        cases += phantom_cases(set_name, args.max_frames)
    return cases


# -------------------------------------------------------------------------------------- ranks


def method_ranks(by_method: dict, key: str = "dsc") -> dict[str, float]:
    """Rank of each method on one case by ``key`` (1 = best DSC; ties share the mean rank)."""
    from scipy.stats import rankdata

    names = list(by_method)
    values = np.array([by_method[m][key] for m in names])
    return dict(zip(names, rankdata(-values).tolist()))


def rank_agreement(results: dict, kinds: dict[str, str]) -> dict[str, dict]:
    """For every case: the methods' DSC ranks and, for each reference kind present (the real
    cases, the generated synthetic_dev cases), Kendall's tau with the mean rank over that kind's
    cases (1: the same order) and whether the order is exactly the same."""
    ranks = {case: method_ranks(by_method) for case, by_method in results.items()}
    agreement = {case: {"ranks": r} for case, r in ranks.items()}
    for reference_kind in REFERENCE_KINDS:
        members = [c for c, kind in kinds.items() if kind == reference_kind]
        if members:
            _agree_with(ranks, members, reference_kind, agreement)
    return agreement


REFERENCE_KINDS = ("real", "synthetic")
"""The kinds of case a ranking is compared with: what a phantom set must predict."""


def _agree_with(ranks: dict, members: list[str], reference_kind: str, agreement: dict) -> None:
    from scipy.stats import kendalltau

    methods = list(ranks[members[0]])
    reference = np.mean([[ranks[c][m] for m in methods] for c in members], axis=0)
    for case, r in ranks.items():
        if case in members and reference_kind != "real":
            continue
        order = [r[m] for m in methods]
        tau = kendalltau(reference, order).statistic if len(methods) > 1 else 1.0
        agreement[case][f"kendall_tau_vs_{reference_kind}"] = float(tau)
        agreement[case][f"same_order_as_{reference_kind}"] = bool(
            np.array_equal(np.argsort(reference), np.argsort(order))
        )


# -------------------------------------------------------------------------------------- table


SUMMARY_COLUMNS = (
    ("dsc", "DSC", "{:.4f}"),
    ("centre_distance_mm", "CD mm", "{:.3f}"),
    ("hd95_mm", "HD95 mm", "{:.2f}"),
    ("masd_mm", "MASD mm", "{:.3f}"),
    ("relative_d98", "rel D98", "{:.4f}"),
    ("s_per_frame_median", "s/frame", "{:.3f}"),
    ("registration_share", "by registration", "{:.0%}"),
    ("feature_ms_median", "features ms", "{:.1f}"),
    ("registration_ms_median", "elastix ms", "{:.0f}"),
)


def format_results(results: dict, kinds: dict[str, str], agreement: dict) -> str:
    """Markdown: mean per method for each kind of case, then DSC / CD and ranks per case."""
    methods = list(dict.fromkeys(m for by_method in results.values() for m in by_method))
    lines = []
    for kind in dict.fromkeys(kinds.values()):
        members = [c for c in results if kinds[c] == kind]
        lines += [
            f"{kind} cases ({len(members)}): mean over cases",
            "",
            "| method | " + " | ".join(t for _, t, _ in SUMMARY_COLUMNS) + " |",
            "|---" * (len(SUMMARY_COLUMNS) + 1) + "|",
        ]
        for method in methods:
            cells = []
            for key, _, fmt in SUMMARY_COLUMNS:
                values = [
                    results[c][method][key] for c in members if key in results[c].get(method, {})
                ]
                cells.append(fmt.format(np.mean(values)) if values else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "| case | kind | "
        + " | ".join(methods)
        + " | DSC ranks | tau vs real | tau vs synthetic |",
        "|---" * (len(methods) + 5) + "|",
    ]
    for case, by_method in results.items():
        cells = [
            f"{by_method[m]['dsc']:.3f} / {by_method[m]['centre_distance_mm']:.2f}"
            if m in by_method
            else "-"
            for m in methods
        ]
        info = agreement.get(case, {})
        ranks = " ".join(f"{info['ranks'][m]:g}" for m in methods if m in info.get("ranks", {}))
        taus = " | ".join(_tau_text(info, kind) for kind in REFERENCE_KINDS)
        lines.append(f"| {case} | {kinds[case]} | " + " | ".join(cells) + f" | {ranks} | {taus} |")
    lines.append("")
    lines.append("Cells: DSC / centre distance mm. Ranks by DSC, in the column order (1 = best).")
    return "\n".join(lines)


def _tau_text(info: dict, reference_kind: str) -> str:
    tau = info.get(f"kendall_tau_vs_{reference_kind}")
    if tau is None:
        return "-"
    return f"{tau:+.2f}" + (" same" if info[f"same_order_as_{reference_kind}"] else "")


# --------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    methods = args.method or list(DEFAULT_METHODS)
    for name in methods:
        method_function(name)  # fail on a mistyped method before the first case runs
    cases = load_cases(args)
    if not cases:
        raise SystemExit("no cases: give --cases-dir DIR and/or --cases <set>")
    results, kinds = {}, {}
    load_before = os.getloadavg()
    for case in cases:
        kinds[case.name] = case.kind
        results[case.name] = {}
        for method in methods:
            row = results[case.name][method] = run_method(
                method, case, peer_scaling=args.peer_scaling
            )
            print(
                f"{case.name:<28}{method:<22} DSC {row['dsc']:.3f}  CD {row['centre_distance_mm']:6.2f} mm"
                f"  {row['s_per_frame_median'] * 1e3:5.0f} ms/frame",
                flush=True,
            )
    agreement = rank_agreement(results, kinds)
    info = machine()
    print()
    print(format_results(results, kinds, agreement))
    print(machine_line(info) + " (timings depend on the load of the machine)")
    report = {
        "benchmark": "accuracy",
        "cases": _cases_label(args),
        "machine": info,
        "itk_threads": _itk_threads(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "preset_sha256": preset_hashes(methods),
        "max_frames": args.max_frames,
        "peer_scaling": args.peer_scaling,
        "kinds": kinds,
        "rank_agreement": agreement,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")
    return 0


def _cases_label(args) -> str:
    parts = [f"cases in {d}" for d in args.cases_dir or []]
    parts += ["semi-synthetic from them"] if args.semi else []
    return ", ".join(parts + [f"phantom set {s}" for s in args.cases]) or "none"


def preset_hashes(methods) -> dict:
    from regtrack.parameters import DEFAULT_PRESET, preset_files

    hashes = {}
    for name in methods:
        if name.startswith("regtrack"):
            preset = regtrack_settings(name).get("preset", DEFAULT_PRESET)
            files = preset_files(preset)
            hashes[name] = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:16]
    return hashes


def _itk_threads() -> int | None:
    try:
        from regtrack import itk_elastix

        return itk_elastix.default_threads()
    except Exception:  # noqa: BLE001 - informative only
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases-dir",
        type=Path,
        action="append",
        help="folder of TrackRAD-layout cases with labels (or one case folder); repeat. "
        "Cases in a folder whose name holds 'synthetic' (synthetic_dev) count as "
        "generated cases with exact truth (kind 'synthetic'), the others as real",
    )
    parser.add_argument(
        "--semi",
        action="store_true",
        help="add semi-synthetic cases built from each real case's frame 0",
    )
    parser.add_argument(
        "--cases",
        default=None,
        help="comma-separated phantom sets: benchmark, appearance, severe, fine, "
        "realistic, all, or none (default: benchmark without --cases-dir, "
        "none with it)",
    )
    parser.add_argument(
        "--method",
        action="append",
        help="regtrack, regtrack:<preset> or a peer; repeat (default: all)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="use only the first N frames of every case (quick runs)",
    )
    parser.add_argument(
        "--peer-scaling",
        choices=PEER_SCALINGS,
        default="sequence",
        help="flow peers' input scaling: frame 0's range for every frame "
        "(sequence) or each frame's own min-max (frame)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line; ``--cases`` becomes a checked list of phantom set names."""
    parser = _parser()
    args = parser.parse_args(argv)
    sets = phantom_sets()
    text = args.cases if args.cases is not None else ("none" if args.cases_dir else "benchmark")
    names = [] if text == "none" else list(sets) if text == "all" else text.split(",")
    unknown = [n for n in names if n not in sets]
    if unknown:
        parser.error(f"--cases: unknown set(s) {unknown}; valid: {[*sets, 'all', 'none']}")
    if args.max_frames is not None and args.max_frames < 2:
        parser.error(f"--max-frames must be >= 2, got {args.max_frames}")
    args.cases = names
    return args


if __name__ == "__main__":
    sys.exit(main())
