"""``regtrack demo``: track a generated sequence with known motion and score it.

Needs no downloaded weights: the phantom is generated, the default preset is intensity-based.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["run_demo"]


def run_demo(
    out_dir: str | Path,
    *,
    case: str = "lung_slide",
    n_frames: int | None = None,
    progress: bool = True,
    report: bool = False,
) -> str:
    """Write a phantom case, track it with the default preset, score it; return a summary.

    The case folder (TrackRAD layout, ground truth included) goes to ``out_dir/<case>``, the
    tracking run and its ``output.mha`` to ``out_dir/<case>/regtrack``, the scores to
    ``out_dir/scores.json``. With ``report``, the HTML report of the run (movie, plots,
    metrics) goes to ``out_dir/<case>/regtrack/report/index.html``.
    """
    from .evaluation import read_mask_sequence
    from .io import read_case
    from .metrics import evaluate_case, format_table
    from .phantom import BENCHMARK_SPECS, generate_phantom, write_phantom_case
    from .run import track_case
    from .runfolder import RunFiles, claim_outputs, read_records, strict_json, writing

    if case not in BENCHMARK_SPECS:
        raise ValueError(f"unknown demo case {case!r}; valid names are {sorted(BENCHMARK_SPECS)}")
    out_dir = Path(out_dir)
    scores_path = out_dir / "scores.json"
    claim_outputs([scores_path], fix="choose another --out folder")
    overrides = {"n_frames": n_frames} if n_frames else {}
    phantom = generate_phantom(BENCHMARK_SPECS[case], **overrides)
    folder = write_phantom_case(phantom, out_dir)
    loaded = read_case(folder)
    run_dir = folder / "regtrack"
    output = track_case(loaded, run_dir, restart=True, progress=progress)
    predicted = read_mask_sequence(output, time_axis=loaded.geometry.time_axis)
    copied = np.repeat(phantom.masks[:1], len(phantom.masks), axis=0)
    region = loaded.scanned_region
    per_method = {
        f"regtrack ({case})": evaluate_case(predicted, phantom.masks, scanned_region=region),
        f"copy first mask ({case})": evaluate_case(copied, phantom.masks, scanned_region=region),
    }
    with writing([scores_path], fix="choose another --out folder"):
        scores_path.write_text(strict_json(per_method, indent=2))
    records = read_records(RunFiles(run_dir).records)
    ms = np.median([r["elapsed_ms"] for r in records if r["source"] != "given"])
    lines = []
    if report:
        from .report import write_report

        lines.append(f"report: {write_report(run_dir)}")
    return "\n".join(
        [
            format_table(per_method),
            f"median time per frame: {ms:.0f} ms",
            f"case (TrackRAD layout, with ground truth): {folder}",
            f"predicted masks: {output}",
            f"per-frame record: {run_dir / 'frames.jsonl'}",
            f"scores: {scores_path}",
            *lines,
        ]
    )
