"""Scoring predictions on disk with the official metrics (``regtrack evaluate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["evaluate_paths", "read_mask_sequence"]


def read_mask_sequence(path: Path, *, time_axis: int | None = None) -> np.ndarray:
    """(T, H, W) uint8 masks from a file that holds only 0 and 1, whatever its pixel type.

    Raises ValueError naming the values the file really holds (e.g. 0 and 0.7 in a float
    file, -1 and 2 in an int16 file) or its NaN, instead of casting them to something else.
    """
    return _read_masks(path, time_axis)[0]


def _read_masks(path: Path, time_axis: int | None = None):
    """(T, H, W) uint8 0/1 masks and the file's (row, col) spacing in mm."""
    from .io import FrameReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist; check the path.")
    reader = FrameReader(path, time_axis=time_axis, dtype=np.float64, what="mask file")
    try:
        values = np.asarray(reader[:])
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        raise ValueError(
            f"{path} holds NaN or inf values ({reader.pixel_type} file), which no mask can; "
            "write the prediction as uint8 0/1"
        ) from None
    _check_zero_one(values, path, reader.pixel_type)
    return values.astype(np.uint8), reader.geometry.spacing_mm


def _check_zero_one(values: np.ndarray, path: Path, pixel_type: str) -> None:
    """ValueError naming what ``values`` really hold unless they are all 0 or 1."""
    if np.all((values == 0) | (values == 1)):
        return
    found = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in found[:8]) + (", ..." if len(found) > 8 else "")
    raise ValueError(
        f"{path} is not a 0/1 mask: it holds the values {{{shown}}} ({pixel_type} file); the "
        "official metrics need 0/1 masks: threshold it (e.g. > 0.5) or divide 0/255 by 255"
    )


def _ground_truth(path: Path):
    """(T, H, W) ground truth, its (row, col) spacing and scanned region, from a case folder
    or a labels file."""
    from .io import read_case

    if not path.is_dir():
        truth, spacing = _read_masks(path)
        return truth, spacing, None
    case = read_case(path)
    if case.labels is None:
        raise ValueError(
            f"case folder {path} has no targets/*_labels.mha; ground truth is needed to score."
        )
    truth = np.asarray(case.labels[:], dtype=np.uint8)
    return truth, case.spacing_mm, case.scanned_region


def _check_same_spacing(pred_path: Path, pred_mm, gt_path: Path, gt_mm) -> None:
    """ValueError when prediction and ground truth are not on the same pixel grid."""
    from .io import SPACING_TOLERANCE_MM

    if max(abs(a - b) for a, b in zip(pred_mm, gt_mm)) > SPACING_TOLERANCE_MM:
        raise ValueError(
            f"{pred_path} has (row, col) spacing {tuple(pred_mm)} mm but the ground truth "
            f"{gt_path} has {tuple(gt_mm)} mm; write the prediction on the input's grid"
        )


def _pairs(pred: Path, gt: Path) -> tuple[dict[str, tuple[Path, Path]], dict[str, str]]:
    """Case name -> (prediction, ground truth), and case name -> why it has no prediction;
    folders are matched by case name, and every ground-truth case folder is listed."""
    if not pred.is_dir():
        return {gt.name if gt.is_dir() else pred.stem: (pred, gt)}, {}
    if not gt.is_dir():
        raise ValueError(
            f"{pred} is a folder of predictions but the ground truth {gt} is not a folder; "
            "pass the folder of TrackRAD case folders"
        )
    pairs, missing = {}, {}
    for case_dir in sorted(p for p in gt.iterdir() if p.is_dir()):
        candidates = (pred / case_dir.name / "output.mha", pred / f"{case_dir.name}.mha")
        found = next((c for c in candidates if c.exists()), None)
        if found is not None:
            pairs[case_dir.name] = (found, case_dir)
        elif (case_dir / "images").is_dir():
            missing[case_dir.name] = (
                f"no prediction: expected {candidates[0]} or {candidates[1]}; a case without "
                "a prediction counts as failed"
            )
    if not pairs:
        raise ValueError(
            f"no prediction in {pred} matches a case folder in {gt}; expected "
            f"{pred}/<case>/output.mha or {pred}/<case>.mha for each <case> folder in {gt}."
        )
    return pairs, missing


def evaluate_paths(pred: Path, gt: Path) -> tuple[dict, str]:
    """Score prediction file(s) against ground truth; returns (scores, printable table).

    ``scores`` holds ``per_case`` (metric values per case), ``summary`` (mean, std, min) and
    ``failed`` (case name -> why it could not be scored, including every ground-truth case
    that has no prediction; the summary is over the scored cases only). A single pair that cannot be scored
    raises ValueError; in a folder every other case is still scored.
    """
    from .metrics import format_table, summarize

    pairs, missing = _pairs(Path(pred), Path(gt))
    per_case, failed = {}, dict(missing)
    for name, (pred_path, gt_path) in pairs.items():
        try:
            per_case[name] = _score_pair(pred_path, gt_path)
        except ValueError as err:
            if len(pairs) == 1 and not Path(pred).is_dir():
                raise
            failed[name] = str(err)
    summary = summarize(per_case) if per_case else {}
    table = format_table(per_case, summary or None) if per_case else "no case could be scored"
    table += "".join(f"\nnot scored: {name}: {why}" for name, why in sorted(failed.items()))
    return {"per_case": per_case, "summary": summary, "failed": failed}, table


def _score_pair(pred_path: Path, gt_path: Path) -> dict:
    """Official metrics of one prediction file against its ground truth."""
    from .metrics import evaluate_case

    truth, gt_mm, region = _ground_truth(gt_path)
    predicted, pred_mm = _read_masks(pred_path)
    _check_same_spacing(pred_path, pred_mm, gt_path, gt_mm)
    return evaluate_case(predicted, truth, scanned_region=region)
