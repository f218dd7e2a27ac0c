"""Scoring predictions on disk with the official metrics (``regtrack evaluate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["evaluate_paths", "read_mask_sequence"]


def read_mask_sequence(path: Path, *, time_axis: int | None = None) -> np.ndarray:
    """(T, H, W) uint8 masks from a file."""
    from .io import FrameReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist; check the path.")
    return np.asarray(FrameReader(path, time_axis=time_axis, dtype=np.uint8)[:])


def _ground_truth(path: Path) -> tuple[np.ndarray, str | None]:
    """(T, H, W) ground truth and scanned region from a case folder or a labels file."""
    from .io import read_case

    if not path.is_dir():
        return read_mask_sequence(path), None
    case = read_case(path)
    if case.labels is None:
        raise ValueError(
            f"case folder {path} has no targets/*_labels.mha; ground truth is needed to score."
        )
    return np.asarray(case.labels[:], dtype=np.uint8), case.scanned_region


def _pairs(pred: Path, gt: Path) -> dict[str, tuple[Path, Path]]:
    """Case name -> (prediction, ground truth); folders are matched by case name."""
    if not pred.is_dir():
        return {gt.name if gt.is_dir() else pred.stem: (pred, gt)}
    pairs = {}
    for case_dir in sorted(p for p in gt.iterdir() if p.is_dir()):
        for candidate in (pred / case_dir.name / "output.mha", pred / f"{case_dir.name}.mha"):
            if candidate.exists():
                pairs[case_dir.name] = (candidate, case_dir)
                break
    if not pairs:
        raise ValueError(
            f"no prediction in {pred} matches a case folder in {gt}; expected "
            f"{pred}/<case>/output.mha or {pred}/<case>.mha for each <case> folder in {gt}."
        )
    return pairs


def evaluate_paths(pred: Path, gt: Path) -> tuple[dict, str]:
    """Score prediction file(s) against ground truth; returns (scores, printable table).

    ``scores`` holds ``per_case`` (metric values per case) and ``summary`` (mean, std, min).
    """
    from .metrics import evaluate_case, format_table, summarize

    per_case = {}
    for name, (pred_path, gt_path) in _pairs(Path(pred), Path(gt)).items():
        truth, region = _ground_truth(gt_path)
        predicted = read_mask_sequence(pred_path)
        per_case[name] = evaluate_case(predicted, truth, scanned_region=region)
    summary = summarize(per_case)
    return {"per_case": per_case, "summary": summary}, format_table(per_case, summary)
