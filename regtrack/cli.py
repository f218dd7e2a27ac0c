"""The ``regtrack`` command: one program, one subcommand per job, each a thin wrapper.

Heavy libraries (itk, torch) are imported inside the commands so ``regtrack --help`` is quick.
``main(argv) -> int`` is what tests call.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from .extras import MissingExtraError, need_extra

__all__ = ["main", "parser"]

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SEQUENCE_SUFFIXES = (".nii.gz", ".mha", ".mhd", ".nii", ".nrrd")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``regtrack`` command."""
    main_parser = argparse.ArgumentParser(
        prog="regtrack",
        description="Track a tumour through 2D cine-MRI by deformable image registration.",
    )
    main_parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="WARNING",
        help="what regtrack logs to stderr (default WARNING; any case)",
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_track(commands)
    _add_evaluate(commands)
    _add_phantom(commands)
    _add_impact(commands)
    _add_realtime(commands)
    _add_trackrad(commands)
    _add_report(commands)
    _add_sweep(commands)
    presets = commands.add_parser("presets", help="list the elastix presets")
    presets.set_defaults(func=_presets)
    return main_parser


def _add_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_input_options(command: argparse.ArgumentParser, many: bool = False) -> None:
    """INPUT (one, or ``many``), --mask and --out, as every command that tracks a case takes them."""
    command.add_argument(
        "input",
        type=Path,
        nargs="+" if many else None,
        metavar="INPUT",
        help="TrackRAD case folder, or sequence file with --mask"
        + (" (several, a glob or a folder of case folders: a batch)" if many else ""),
    )
    command.add_argument("--mask", type=Path, help="frame-0 mask file (for a sequence file)")
    command.add_argument(
        "--out",
        type=Path,
        metavar="OUT",
        help="output folder (default: ./regtrack-<case name>, ./regtrack-batch for a batch)",
    )


def _add_tracking_options(command: argparse.ArgumentParser) -> None:
    from .parameters import DEFAULT_PRESET

    command.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"elastix preset name or parameter file (default {DEFAULT_PRESET}; see `regtrack presets`)",
    )
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an elastix parameter, e.g. --set MaximumNumberOfIterations=100,100,100",
    )
    roi = command.add_mutually_exclusive_group()
    roi.add_argument(
        "--roi",
        dest="roi",
        action="store_true",
        default=True,
        help="restrict the metric to the target's neighbourhood",
    )
    roi.add_argument(
        "--no-roi",
        dest="roi",
        action="store_false",
        help="use the whole frame (default: the target's neighbourhood)",
    )
    command.add_argument(
        "--roi-margin-mm",
        type=float,
        default=30.0,
        help="how far around the target the metric looks, mm (default 30)",
    )
    command.add_argument(
        "--flatten-sigma-mm",
        type=float,
        default=0.0,
        help="divide frames by their smoothed copy (bias field); default 0: off",
    )
    command.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="time per frame: the registration schedule is fitted to it",
    )
    command.add_argument(
        "--total-budget",
        type=float,
        metavar="SECONDS",
        help="time for the whole sequence (offline), shared over the frames",
    )
    command.add_argument(
        "--method",
        choices=("registration", "sam", "hybrid"),
        default="registration",
        help="registration alone, the SAM2.1 tracker alone, or SAM as "
        "initialiser and fallback of the registration",
    )
    command.add_argument(
        "--sam-checkpoint",
        type=Path,
        metavar="PATH",
        help="SAM2.1 checkpoint (default: $REGTRACK_SAM2_CHECKPOINT)",
    )
    command.add_argument(
        "--sam-image-size",
        type=int,
        metavar="PX",
        help="SAM2.1 input side (default 1024; smaller is faster on a CPU)",
    )


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="track a generated sequence with known motion and score it"
    )
    demo.add_argument("--out", type=Path, default=Path("regtrack-demo"), help="output folder")
    demo.add_argument("--case", default="lung_slide", help="phantom case name")
    demo.add_argument("--frames", type=int, default=None, help="number of frames")
    demo.add_argument("--report", action="store_true", help="also write the HTML report")
    _add_progress(demo)
    demo.set_defaults(func=_demo)


def _add_track(commands) -> None:
    track = commands.add_parser(
        "track",
        help="propagate frame 0's mask through a sequence",
        description="INPUT is a TrackRAD case folder, the challenge's /input folder, or a "
        "sequence file (.mha, .nii.gz, .nrrd) with --mask. Several case folders, a glob or a "
        "folder of case folders make a batch: OUT/<case>/ per case plus OUT/summary.csv and "
        "OUT/summary.json. A rerun resumes an interrupted run.",
    )
    _add_input_options(track, many=True)
    track.add_argument("--output-file", type=Path, help="final masks file (default OUT/output.mha)")
    _add_tracking_options(track)
    track.add_argument("--fields", action="store_true", help="also keep displacement fields")
    track.add_argument("--restart", action="store_true", help="discard a previous run in OUT")
    track.add_argument(
        "--report", action="store_true", help="also write OUT/report/ (movie, plots, index.html)"
    )
    _add_cluster_options(track, "batch: ")
    _add_progress(track)
    track.set_defaults(func=_track)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="score predictions with the official TrackRAD2025 metrics",
        description="PRED and GT are mask files (T frames), or folders: PRED holding "
        "<case>/output.mha or <case>.mha, GT holding TrackRAD case folders.",
    )
    evaluate.add_argument("pred", type=Path, help="predicted masks: a file or a folder")
    evaluate.add_argument("gt", type=Path, help="ground truth: a file or TrackRAD case folders")
    evaluate.add_argument(
        "--json", type=Path, help="where to write the scores (default PRED's folder)"
    )
    evaluate.set_defaults(func=_evaluate)


def _add_phantom(commands) -> None:
    phantom = commands.add_parser(
        "phantom", help="write synthetic cases with known motion in the TrackRAD layout"
    )
    phantom.add_argument(
        "--out",
        type=Path,
        default=Path("regtrack-phantoms"),
        help="folder to write the case folders into (default ./regtrack-phantoms)",
    )
    phantom.add_argument("legacy_out", type=Path, nargs="?", help=argparse.SUPPRESS)
    phantom.add_argument("--case", action="append", help="case name (default: benchmark set)")
    phantom.add_argument(
        "--frames", type=int, default=None, help="number of frames (default: the case's own)"
    )
    phantom.set_defaults(func=_phantom)


def _add_impact(commands) -> None:
    impact = commands.add_parser("impact", help="IMPACT feature extractors")
    actions = impact.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write an extractor as TorchScript (for regtrack or elastix's IMPACT metric)",
    )
    export.add_argument("model", help="mind, sam2.1_tiny, sam2.1_small, sam2.1_base_plus, ...")
    export.add_argument("--out", type=Path, required=True, help="TorchScript file to write")
    export.add_argument(
        "--native",
        action="store_true",
        help="elastix IMPACT's interface forward(x, nb_layers, stats, direction)",
    )
    export.add_argument(
        "--patch-size",
        type=int,
        default=29,
        help="native: the ImpactPatchSize the model is traced at",
    )
    export.add_argument(
        "--checkpoint", type=Path, help="SAM2.1 checkpoint (or REGTRACK_SAM2_CHECKPOINT)"
    )
    export.add_argument("--layers", type=int, nargs="+", help="SAM2.1 stages to return, e.g. 0 1")
    export.add_argument("--input-size", type=int, help="SAM2.1 encoder input side (default 1024)")
    export.add_argument(
        "--pca", type=int, help="SAM2.1: channels kept per layer (needs --reference)"
    )
    export.add_argument("--reference", type=Path, help="image file whose first frame fits the PCA")
    export.set_defaults(func=_impact_export)


def _impact_export(args) -> int:
    need_extra("impact", "regtrack impact export")
    from impact import NativeImpactWrapper, export_torchscript, info_path, load_extractor

    options = {
        k: v
        for k, v in (
            ("checkpoint", args.checkpoint),
            ("layers", args.layers),
            ("input_size", args.input_size),
            ("pca_components", args.pca),
        )
        if v
    }
    if args.pca and not args.reference:
        raise ValueError("--pca needs --reference IMAGE, the frame the PCA is fitted on")
    extractor = load_extractor(args.model, **options)
    if args.reference:
        from .io import FrameReader

        extractor.fit_pca(FrameReader(args.reference)[0])
    module, shape = extractor, (1, 1, 256, 256)
    if args.native:
        module, shape = NativeImpactWrapper(extractor), (1, 1, args.patch_size, args.patch_size)
    path = export_torchscript(module, args.out, example_shape=shape)
    print(f"model: {path}\nmetadata: {info_path(path)}")
    return 0


def _settings(args):
    from .parameters import parameter_overrides_from_strings
    from .tracking import TrackerSettings

    return TrackerSettings(
        preset=args.preset,
        overrides=parameter_overrides_from_strings(args.overrides),
        roi=args.roi,
        roi_margin_mm=args.roi_margin_mm,
        flatten_sigma_mm=args.flatten_sigma_mm,
        budget_s=args.budget,
        total_budget_s=getattr(args, "total_budget", None),
        method=args.method,
        sam_image_size=args.sam_image_size,
        sam_checkpoint=str(args.sam_checkpoint) if args.sam_checkpoint else None,
    )


def _default_out(inputs: list[Path]) -> Path:
    """./regtrack-<case name> for one case, ./regtrack-batch for a batch; said on stderr."""
    name = inputs[0].resolve().name if len(inputs) == 1 else ""
    for suffix in _SEQUENCE_SUFFIXES:
        name = name.removesuffix(suffix)
    if not name or any(c in name for c in "*?["):
        name = "batch"
    print(f"output folder: regtrack-{name} (--out OUT to choose)", file=sys.stderr)
    return Path(f"regtrack-{name}")


def _track(args) -> int:
    from .batch import is_batch

    if args.out is None:
        args.out = _default_out(args.input)
    if is_batch(args.input):
        return _track_batch(args)
    if args.workers is not None or args.scheduler or args.threads_per_task is not None:
        raise ValueError(
            f"{args.input[0]} is one case; --workers, --scheduler and --threads-per-task run "
            "a batch (several case folders, a glob or a folder of case folders): drop them"
        )
    args.input = args.input[0]
    return _track_one(args)


def _track_batch(args) -> int:
    from .batch import run_batch, summary_line

    for option, given in (("--mask", args.mask), ("--output-file", args.output_file)):
        if given:
            raise ValueError(
                f"{option} belongs to one case; a batch reads each case folder's own files and "
                "writes OUT/<case>/output.mha: drop it"
            )
    if args.report:
        raise ValueError(
            "--report is for one case; after a batch run `regtrack report OUT/<case>` for "
            "the cases you want to see"
        )
    with _say_on_stdout("regtrack.batch"):
        summary = run_batch(
            args.input,
            args.out,
            settings=_checked_settings(args, args.out, None),
            workers=args.workers,
            scheduler=args.scheduler,
            threads_per_task=args.threads_per_task,
            restart=args.restart,
            return_fields=args.fields,
            progress=not args.no_progress,
        )
    print(summary_line(summary))
    print(f"summary: {summary.out / 'summary.csv'}, {summary.out / 'summary.json'}")
    return 1 if summary.failed else 0


def _track_one(args) -> int:
    from .io import read_case
    from .run import track_case

    settings = _checked_settings(args, args.out, args.output_file)
    case = read_case(args.input, mask=args.mask)
    output = track_case(
        case,
        args.out,
        settings=settings,
        output_path=args.output_file,
        return_fields=args.fields,
        restart=args.restart,
        progress=not args.no_progress,
    )
    print(run_summary(args.out / "frames.jsonl"))
    print(f"masks: {output}\nper-frame record: {args.out / 'frames.jsonl'}")
    _report_if_asked(args)
    return 0


def _checked_settings(args, out_dir: Path, output_file: Path | None):
    """The tracker settings, every value and output path checked before ITK or any input."""
    from .checks import check_tracker_settings
    from .runfolder import check_output_paths

    if getattr(args, "report", False):
        need_extra("report", "--report")
    settings = _settings(args)
    check_tracker_settings(settings)
    check_output_paths(out_dir, output_file)
    return settings


def run_summary(records_path: Path) -> str:
    """One line from frames.jsonl: frames answered, fallbacks, the long runs of fallbacks, and
    how far the registrations started from the fast tracker's map moved it."""
    from .runfolder import LONG_FALLBACK_FRAMES, fallback_runs, read_records, start_corrections

    records = read_records(records_path)
    runs = fallback_runs(records)
    n_fallback = sum(length for _, length in runs)
    line = f"{len(records)} frames, {n_fallback} fallback answers"
    long_runs = [run for run in runs if run[1] >= LONG_FALLBACK_FRAMES]
    if long_runs:
        first, length = max(long_runs, key=lambda run: run[1])
        line += (
            f"; {len(long_runs)} runs of {LONG_FALLBACK_FRAMES}+ fallback frames (longest: "
            f"{length} frames from frame {first}): check those frames before trusting them"
        )
    moved = start_corrections(records)
    if moved:
        line += (
            f"; on {moved['frames']} frames the registration moved the fast tracker's start by "
            f"{moved['median']:.2f} mm (median; largest {moved['max']:.2f})"
        )
    return line


def _report_if_asked(args) -> None:
    """``--report``: write OUT/report/ after the run."""
    if args.report:
        from .report import write_report

        print(f"report: {write_report(args.out)}")


def _add_realtime(commands) -> None:
    realtime = commands.add_parser(
        "realtime",
        help="replay a sequence at its frame rate, each frame answered within --budget",
        description="Frames arrive at the acquisition rate (frame-rate.json, or --frame-rate); "
        "each is answered within --budget seconds of its arrival, by registration when it "
        "finishes in time, else by the last good mask. Prints latency percentiles and misses.",
    )
    _add_input_options(realtime)
    realtime.add_argument(
        "--frame-rate", type=float, help="frames per second, Hz (default: the case's own)"
    )
    _add_tracking_options(realtime)
    realtime.set_defaults(budget=0.25)
    realtime.add_argument(
        "--restart", action="store_true", help="discard a previous run in OUT (default: resume)"
    )
    realtime.add_argument("--report", action="store_true", help="also write OUT/report/")
    _add_progress(realtime)
    realtime.set_defaults(func=_realtime)


def _realtime(args) -> int:
    from .checks import check_frame_rate
    from .io import read_case
    from .realtime import start_worker_server
    from .run import track_case

    if args.out is None:
        args.out = _default_out([args.input])
    settings = _checked_settings(args, args.out, None)
    if settings.budget_s is None:
        raise ValueError("realtime needs a per-frame --budget in seconds, e.g. --budget 0.25")
    if args.frame_rate is not None:
        check_frame_rate(args.frame_rate, "--frame-rate")
    start_worker_server()  # the workers' fork server loads ITK while the case is read
    case = read_case(args.input, mask=args.mask)
    rate = args.frame_rate if args.frame_rate is not None else case.frame_rate_hz
    if not rate:
        raise ValueError(f"{args.input} has no frame rate (frame-rate.json); pass --frame-rate HZ")
    output = track_case(
        case,
        args.out,
        settings=settings,
        restart=args.restart,
        frame_rate_hz=rate,
        progress=not args.no_progress,
    )
    print(latency_summary(args.out / "frames.jsonl", settings.budget_s))
    print(run_summary(args.out / "frames.jsonl"))
    print(f"masks: {output}\nper-frame record: {args.out / 'frames.jsonl'}")
    _report_if_asked(args)
    return 0


def latency_summary(records_path: Path, budget_s: float) -> str:
    """Latency percentiles, misses and answer sources of a run's frames.jsonl, as text."""
    import numpy as np

    from .engine import answered_with
    from .runfolder import read_records

    records = read_records(records_path)[1:]
    latency = np.array([r["latency_ms"] for r in records], float)
    kinds = [answered_with(r["source"], r.get("candidate", "")) for r in records]
    sources = {kind: kinds.count(kind) for kind in set(kinds)}
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    misses = int((latency > budget_s * 1e3).sum())
    return (
        f"{len(records)} frames, budget {budget_s * 1e3:.0f} ms: latency p50 {p50:.0f} ms, "
        f"p95 {p95:.0f} ms, p99 {p99:.0f} ms, max {latency.max():.0f} ms; "
        f"{misses} deadline misses; answers: "
        + ", ".join(f"{n} {s}" for s, n in sorted(sources.items()))
    )


def _add_trackrad(commands) -> None:
    trackrad = commands.add_parser(
        "trackrad",
        help="the TrackRAD2025 container contract: /input -> /output",
        description="Reads the challenge's input folder (images/mri-linacs/*.mha, "
        "images/mri-linac-target/*.mha, frame-rate.json, ...) and writes "
        "output/images/mri-linac-series-targets/output.mha, uint8, compressed.",
    )
    trackrad.add_argument(
        "--input", type=Path, default=Path("/input"), help="the challenge's input folder"
    )
    trackrad.add_argument(
        "--output", type=Path, default=Path("/output"), help="the challenge's output folder"
    )
    _add_tracking_options(trackrad)
    trackrad.set_defaults(budget=0.5)  # the challenge allows 1 s per frame on its GPU
    _add_progress(trackrad)
    trackrad.set_defaults(func=_trackrad)


def _trackrad(args) -> int:
    import tempfile

    from .io import container_output_path, read_case
    from .realtime import start_worker_server
    from .run import track_case

    output = container_output_path(args.output)
    settings = _checked_settings(args, args.output, output)
    if settings.budget_s is not None:
        start_worker_server()  # the workers' fork server loads ITK while the case is read
    case = read_case(args.input)
    with tempfile.TemporaryDirectory(prefix="regtrack-trackrad-") as work:
        track_case(case, work, settings=settings, output_path=output, progress=not args.no_progress)
    print(f"masks: {output}")
    return 0


def _evaluate(args) -> int:
    from .evaluation import evaluate_paths
    from .runfolder import check_not_inputs, strict_json, writing

    out = args.json or (args.pred if args.pred.is_dir() else args.pred.parent) / "scores.json"
    if out.suffix.lower() != ".json":
        raise ValueError(f"--json {out} must name a .json file, e.g. {out.with_suffix('.json')}")
    read = [args.gt, args.pred]
    if args.pred.is_dir():  # its case folders and files are read; scores.json goes beside them
        read = [args.gt, *(p for p in args.pred.iterdir() if p.is_dir() or p.suffix != ".json")]
    check_not_inputs({"--json": out}, read)
    with writing([out], fix="pass --json with another file"):
        scores, table = evaluate_paths(args.pred, args.gt)
        out.write_text(strict_json(scores, indent=2))
    print(table)
    print(f"scores: {out}")
    if scores["failed"]:
        print(
            f"regtrack evaluate: {len(scores['failed'])} case(s) not scored: "
            f"{', '.join(scores['failed'])} (reasons above)",
            file=sys.stderr,
        )
        return 1
    return 0


def _phantom(args) -> int:
    from .phantom import BENCHMARK_SPECS, NAMED_SPECS, generate_phantom, write_phantom_case

    specs = NAMED_SPECS
    names = args.case or list(BENCHMARK_SPECS)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown phantom case {unknown}; valid names are {sorted(specs)}")
    for name in names:
        overrides = {"n_frames": args.frames} if args.frames else {}
        out = args.legacy_out or args.out  # `regtrack phantom OUT` still works
        folder = write_phantom_case(generate_phantom(specs[name], **overrides), out)
        print(folder)
    return 0


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report",
        help="write an HTML report of a tracking run or a benchmark JSON",
        description="RESULTS is the --out folder of `regtrack track` (writes RESULTS/report/: "
        "overlay movie, trajectory and quality plots, metrics, index.html), or a benchmark "
        "JSON such as benchmarks/results/accuracy.json (writes accuracy.html beside it).",
    )
    report.add_argument(
        "results", type=Path, metavar="RESULTS", help="a run folder or a benchmark JSON"
    )
    report.add_argument("--out", type=Path, help="report folder (run) or page (benchmark)")
    report.add_argument("--gif", action="store_true", help="movie as an animated GIF, not MP4")
    report.add_argument("--fps", type=float, help="movie playback rate (default: acquisition)")
    report.set_defaults(func=_report)


def _report(args) -> int:
    from .report import report_benchmark, write_report

    if args.results.suffix.lower() == ".json":
        print(f"page: {report_benchmark(args.results, out=args.out)}")
        return 0
    page = write_report(args.results, out=args.out, gif=args.gif, fps=args.fps)
    print(f"report: {page}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    if args.report:
        need_extra("report", "--report")
    report = run_demo(
        args.out,
        case=args.case,
        n_frames=args.frames,
        progress=not args.no_progress,
        report=args.report,
    )
    print(report)
    return 0


def _presets(args) -> int:
    from .parameters import DEFAULT_PRESET, available_presets, preset_files

    for name in available_presets():
        marker = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name}{marker}: {', '.join(str(p) for p in preset_files(name))}")
    return 0


def _add_cluster_options(command: argparse.ArgumentParser, what: str = "") -> None:
    """--scheduler, --workers and --threads-per-task: where many tasks run on dask."""
    command.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help=f"{what}tcp://host:port of a running dask scheduler "
        "(used as it is), or `synchronous` (no dask, one task at a time)",
    )
    default = "one per core" if not what else "none: one case after another here"
    command.add_argument(
        "--workers", type=int, help=f"{what}local dask worker processes (default: {default})"
    )
    command.add_argument(
        "--threads-per-task",
        type=int,
        help=f"{what}ITK threads per task (default: cores / task slots)",
    )


def _add_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="run a grid of registration settings over many cases (dask), or report one",
        description="`regtrack sweep SPEC --out RESULTS` runs the sweep SPEC (a TOML file) on "
        "dask.distributed; `regtrack sweep report RESULTS` ranks its settings and plots them.",
    )
    sweep.add_argument("target", metavar="SPEC | report", help="sweep spec (TOML), or `report`")
    sweep.add_argument(
        "results", nargs="?", type=Path, metavar="RESULTS", help="with `report`: the results folder"
    )
    sweep.add_argument("--out", type=Path, help="results folder (required to run)")
    _add_cluster_options(sweep)
    sweep.add_argument("--resume", action="store_true", help="run only what RESULTS lacks")
    sweep.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume, also rerun the tasks recorded as failed",
    )
    sweep.add_argument("--by", default="dsc", help="report: metric to rank by (default dsc)")
    sweep.add_argument("--no-plots", action="store_true", help="report: skip the PNG plots")
    _add_progress(sweep)
    sweep.set_defaults(func=_sweep)


def _sweep(args) -> int:
    if args.target == "report":
        if args.results is None:
            raise ValueError(
                "`regtrack sweep report` needs the results folder: regtrack sweep report RESULTS"
            )
        from .sweep import format_report, sweep_report

        report = sweep_report(args.results, by=args.by, plots=not args.no_plots)
        print(format_report(report))
        return 0
    spec = args.results if args.target == "run" else Path(args.target)
    if spec is None or (args.target != "run" and args.results is not None):
        raise ValueError(
            "usage: regtrack sweep SPEC --out RESULTS, or regtrack sweep report RESULTS"
        )
    if args.out is None:
        raise ValueError("running a sweep needs --out RESULTS, the folder for its results")
    from .sweep import run_sweep

    try:
        with _say_on_stdout("regtrack.sweep"):
            summary = run_sweep(
                spec,
                args.out,
                scheduler=args.scheduler,
                workers=args.workers,
                threads_per_task=args.threads_per_task,
                resume=args.resume,
                retry_failed=args.retry_failed,
                progress=not args.no_progress,
            )
    except KeyboardInterrupt:
        print(
            f"interrupted; finished rows are in {args.out}. Rerun with --resume to run "
            "only what is missing",
            file=sys.stderr,
        )
        return 130
    print(f"report: regtrack sweep report {args.out}")
    return 1 if summary.failed else 0


@contextmanager
def _say_on_stdout(name: str):
    """What logger ``name`` reports at INFO (a sweep's progress), as plain lines on stdout
    while the command runs; its warnings and errors go to stderr as usual."""
    logger = logging.getLogger(name)
    before = logger.level, logger.propagate
    plain = logging.StreamHandler(sys.stdout)
    plain.addFilter(lambda record: record.levelno < logging.WARNING)
    loud = logging.StreamHandler(sys.stderr)
    loud.setLevel(logging.WARNING)
    loud.setFormatter(logging.Formatter(_LOG_FORMAT))
    logger.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    logger.propagate = False
    logger.addHandler(plain)
    logger.addHandler(loud)
    try:
        yield
    finally:
        logger.removeHandler(plain)
        logger.removeHandler(loud)
        logger.setLevel(before[0])  # (setLevel, not .level =: it clears the levels' cache)
        logger.propagate = before[1]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and ``with`` cleans up."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the ``regtrack`` command; returns the exit code (2 for bad input).

    SIGTERM is handled like Ctrl-C (exit 143 instead of 130): the run lock is released, the
    records stay whole, and the temporary folders of the command and its workers are removed.
    """
    from .runfolder import private_temp_dir

    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=_LOG_FORMAT)
    warnings.simplefilter("default", RuntimeWarning)
    previous = _handle_sigterm()
    try:
        with private_temp_dir():
            return args.func(args)
    except (ValueError, OSError, MissingExtraError) as error:
        print(f"regtrack {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        why = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"{why}; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _handle_sigterm():
    """Route SIGTERM to :class:`Terminated` (main thread only); return the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


if __name__ == "__main__":
    sys.exit(main())
