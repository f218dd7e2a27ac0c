"""TrackRAD2025 official metrics, computed as the organisers' ``evaluation/evaluate.py`` does.

The organisers' code (LMUK-RADONC-PHYS-RES/trackrad2025, ``evaluation/evaluate.py`` and
``evaluation/monai_metrics.py``) defines the leaderboard numbers, so its quirks are kept on
purpose and pointed out where they happen:

- per-frame DSC, HD95 and MASD are stored as float32 before averaging;
- frames with an empty ground truth are not scored;
- a frame with an empty prediction scores DSC 0 and distances of ``max(H, W)``;
- the per-case mean drops the first element of the per-frame list, which holds the frames
  with a prediction (in order) followed by the empty-prediction penalties;
- MASD is one-directional (prediction boundary to ground-truth boundary);
- the pixel spacing is taken as 1 mm.

All arrays are (T, H, W) sequences or (H, W) frames; masks are 0/1 or bool.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

METRIC_NAMES = ("dsc", "hd95_mm", "masd_mm", "centre_distance_mm", "relative_d98")

_SPACING_MM = (1.0, 1.0)  # the official evaluation ignores the image spacing
_HD_PERCENTILE = 95
_CTV_MARGIN_PX = 3  # GTV -> CTV expansion, 3 dilations with a 4-connected cross
_CTV_THRESHOLD = 0.25
_DOSE_BIN_WIDTH = 0.1
_D98_FRACTION = 0.98


# --- per-frame metrics -------------------------------------------------------------------


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient of one frame, on the values as given.

    Parameters
    ----------
    pred, gt : ndarray, shape (H, W)
        Predicted and ground-truth masks. The values enter the volume sums as they are, as in
        the official code, so a 0/255 prediction scores about 0.008 against a 0/1 ground truth.

    Returns
    -------
    float
        ``2 |A & B| / (sum(A) + sum(B))``, rounded to float32 like the official per-frame
        values; nan when the ground truth is empty (such frames are not scored).

    Examples
    --------
    >>> a = np.zeros((8, 8), np.uint8); a[2:6, 2:6] = 1
    >>> dice(a, a)
    1.0
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if not gt.any():
        return math.nan
    intersection = np.logical_and(pred, gt).sum()
    return float(np.float32(2 * intersection / (pred.sum() + gt.sum())))


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """95th-percentile symmetric surface distance ("HD95", "SD95") of one frame, in mm.

    Parameters
    ----------
    pred, gt : ndarray, shape (H, W)
        Predicted and ground-truth masks (nonzero = inside).

    Returns
    -------
    float
        The larger of the two directed 95th percentiles of boundary-to-boundary distances,
        with 1 mm pixels. ``max(H, W)`` for an empty prediction (the official penalty), nan
        for an empty ground truth.
        inf when a boundary falls outside the official crop, which clips columns at H
        (possible only when W > H).
    """
    pred, gt = _as_bool_frames(pred, gt)
    special = _unscorable_value(pred, gt)
    if special is not None:
        return special
    edges = _cropped_boundaries(pred, gt)
    if edges is None:
        return math.inf
    pred_edges, gt_edges = edges
    forward = np.quantile(_boundary_distances(pred_edges, gt_edges), _HD_PERCENTILE / 100)
    backward = np.quantile(_boundary_distances(gt_edges, pred_edges), _HD_PERCENTILE / 100)
    return float(max(forward, backward))


def masd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean surface distance ("SDavg", "MASD") of one frame, in mm, as officially implemented.

    Only the prediction-boundary to ground-truth-boundary direction is averaged: the
    official code does not symmetrise it.

    Parameters
    ----------
    pred, gt : ndarray, shape (H, W)
        Predicted and ground-truth masks (nonzero = inside).

    Returns
    -------
    float
        Mean distance from each prediction-boundary pixel to the nearest ground-truth-boundary
        pixel. ``max(H, W)`` for an empty prediction, nan for an empty ground truth.
        inf when a boundary falls outside the official crop, which clips columns at H
        (possible only when W > H).
    """
    pred, gt = _as_bool_frames(pred, gt)
    special = _unscorable_value(pred, gt)
    if special is not None:
        return special
    edges = _cropped_boundaries(pred, gt)
    if edges is None:
        return math.inf
    return float(np.mean(_boundary_distances(*edges)))


def centre_distance(pred: np.ndarray, gt: np.ndarray) -> float:
    """Euclidean distance between the centres of mass of one frame's masks, in mm.

    Parameters
    ----------
    pred, gt : ndarray, shape (H, W)
        Predicted and ground-truth masks; the centres are weighted by the values as given.

    Returns
    -------
    float
        Distance in pixels (= mm). ``max(H, W)`` for an empty prediction, nan for an empty
        ground truth.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    special = _unscorable_value(pred, gt)
    if special is not None:
        return special
    offset = np.subtract(ndimage.center_of_mass(gt), ndimage.center_of_mass(pred))
    return float(np.linalg.norm(offset))


# --- dose metric ---------------------------------------------------------------------------


def relative_d98(preds: np.ndarray, gts: np.ndarray, *, scanned_region: str | None = None) -> float:
    """Relative GTV D98 of a centroid-shifted dose, the official dosimetric metric.

    A dose is approximated by the CTV (the first ground-truth mask expanded by 3 px and
    smoothed); for every frame it is shifted by the centroid error, and the shifts are
    averaged. The GTV D98 of that dose is divided by the D98 of the unshifted dose.

    Parameters
    ----------
    preds, gts : ndarray, shape (T, H, W)
        Predicted and ground-truth masks. Frames with an empty ground truth are dropped;
        unlike the geometric metrics, frame 0 is included.
    scanned_region : str, optional
        The case's ``scanned-region.json`` value. Only ``"lung"`` selects the wider
        smoothing (sigma 6 px instead of 4); TrackRAD's regions are thorax, abdomen and
        pelvis, so sigma 4 applies in practice.

    Returns
    -------
    float
        1.0 while centroid errors stay within the margin, falling towards 0 beyond it. A
        frame with an empty prediction contributes zero dose.

    Raises
    ------
    ValueError
        If the ground truth is empty in every frame.
    """
    preds, gts = np.asarray(preds), np.asarray(gts)
    keep = _nonempty_frames(gts)
    if not keep.any():
        raise ValueError(
            "relative_d98() 'gts' is empty in every frame; there is no target to dose: "
            "check that the ground-truth labels were read correctly"
        )
    preds, gts = preds[keep], gts[keep]
    gtv = gts[0] != 0
    ctv = _clinical_target_volume(gtv, sigma=6.0 if scanned_region == "lung" else 4.0)
    if not ctv.any():
        # Officially 0 / 0 = nan: smoothing erased the CTV of a GTV of a few pixels.
        warnings.warn(
            f"relative_d98(): the first ground-truth mask ({gtv.sum()} px) is too small for "
            "the official CTV construction; the relative D98 is nan",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    shifted_dose = _mean_shifted_dose(ctv, preds, gts)
    return float(_d98(shifted_dose, gtv) / _d98(ctv, gtv))


def _clinical_target_volume(gtv: np.ndarray, *, sigma: float) -> np.ndarray:
    """Expanded, smoothed and re-thresholded GTV, uint8 0/1 (the unshifted 'dose')."""
    cross = ndimage.generate_binary_structure(2, 1)
    expanded = ndimage.binary_dilation(gtv, structure=cross, iterations=_CTV_MARGIN_PX)
    smoothed = ndimage.gaussian_filter(expanded.astype(np.float32), sigma=sigma)
    # Kept uint8: the shift below then rounds its cubic interpolation back to 0/1.
    return (smoothed > _CTV_THRESHOLD).astype(np.uint8)


def _mean_shifted_dose(ctv: np.ndarray, preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """CTV shifted by each frame's centroid error, averaged over frames (float32)."""
    dose = np.zeros(ctv.shape, dtype=np.float32)
    for pred, gt in zip(preds, gts):
        # An empty prediction has no centroid; officially its NaN shift yields zero dose.
        if pred.any():
            error = np.subtract(ndimage.center_of_mass(pred), ndimage.center_of_mass(gt))
            dose += ndimage.shift(ctv, error, order=3, mode="nearest")
    return dose / len(preds)


def _d98(dose: np.ndarray, gtv: np.ndarray) -> float:
    """GTV D98 from the cumulative DVH (0.1-wide bins centred on 0, 0.1, ...)."""
    edges = np.arange(-_DOSE_BIN_WIDTH / 2, dose.max() + _DOSE_BIN_WIDTH, _DOSE_BIN_WIDTH)
    counts, edges = np.histogram(dose[gtv], bins=edges)
    centres = np.round((edges[1:] + edges[:-1]) / 2.0, decimals=10)
    volume = np.cumsum(counts[::-1])[::-1]  # pixels receiving at least each bin's dose
    if volume.any():
        volume = volume / volume.max()
    # All volume in the lowest bin (or none at all): the DVH code reports D98 = 0.
    if volume[0] == np.sum(volume):
        return 0.0
    return float(np.interp(_D98_FRACTION, volume[::-1], centres[::-1]))


# --- per case and across cases -------------------------------------------------------------


def evaluate_case(
    pred: np.ndarray, gt: np.ndarray, *, scanned_region: str | None = None
) -> dict[str, float]:
    """Score one case as the official evaluation does.

    Parameters
    ----------
    pred, gt : ndarray, shape (T, H, W)
        Predicted and ground-truth masks with values in {0, 1} (or bool), time first. Arrays
        from ``SimpleITK.GetArrayFromImage`` of a TrackRAD file are (W, H, T): pass
        ``array.transpose(2, 0, 1)``, as the official evaluation does.
    scanned_region : str, optional
        Passed to :func:`relative_d98`.

    Returns
    -------
    dict of str to float
        One value per name in ``METRIC_NAMES`` plus ``"n_frames_scored"``, the number of
        frames averaged in the geometric metrics. Frames with an empty ground truth are
        skipped; empty predictions score penalties; then the first element of the per-frame
        list is dropped (frame 0, unless frame 0's prediction is empty).

    Raises
    ------
    ValueError
        If the arrays are not 3D, differ in shape or hold values other than 0/1; if fewer
        than 2 frames have a ground truth, or the prediction is empty in all of them (cases
        the official evaluation fails on).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_case(pred, gt)
    keep = _nonempty_frames(gt)
    scored_pred, scored_gt = pred[keep], gt[keep]
    _check_scored_frames(scored_pred)
    has_pred = _nonempty_frames(scored_pred)
    # Official order: frames with a prediction, then the empty-prediction penalties.
    order = np.concatenate([np.flatnonzero(has_pred), np.flatnonzero(~has_pred)])
    frame_metrics = (dice, hd95, masd, centre_distance)
    per_frame = np.array(
        [[metric(scored_pred[t], scored_gt[t]) for metric in frame_metrics] for t in order]
    ).reshape(len(order), len(frame_metrics))
    # Official per-case value: values[1:].mean(), column by column so that each is numpy's
    # 1D pairwise sum exactly as there.
    means = [np.ascontiguousarray(column).mean() for column in per_frame[1:].T]
    result = {name: float(value) for name, value in zip(METRIC_NAMES, means)}
    result["relative_d98"] = relative_d98(pred, gt, scanned_region=scanned_region)
    result["n_frames_scored"] = float(len(order) - 1)
    return result


def summarize(per_case: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and minimum of each metric across cases.

    Parameters
    ----------
    per_case : dict of str to dict
        Case id to the output of :func:`evaluate_case`.

    Returns
    -------
    dict of str to dict
        For each name in ``METRIC_NAMES``, ``{"mean": ..., "std": ..., "min": ...}``. The
        mean is the plain mean over cases (``statistics.mean``, as the organisers); the
        standard deviation is the population one (ddof 0, as numpy's default).
    """
    if not per_case:
        raise ValueError("summarize() 'per_case' is empty; score at least one case first")
    summary = {}
    for name in METRIC_NAMES:
        values = [float(case[name]) for case in per_case.values()]
        summary[name] = {
            "mean": float(statistics.mean(values)),
            "std": float(np.std(values)),
            "min": float(np.min(values)),
        }
    return summary


_COLUMNS = (  # (key, header, decimals)
    ("dsc", "DSC", 4),
    ("hd95_mm", "HD95 mm", 2),
    ("masd_mm", "MASD mm", 2),
    ("centre_distance_mm", "CD mm", 2),
    ("relative_d98", "rel D98", 4),
)


def format_table(
    per_case: dict[str, dict[str, float]], summary: dict[str, dict[str, float]] | None = None
) -> str:
    """Fixed-width text table: one row per case, then the mean, std and min rows.

    Parameters
    ----------
    per_case : dict of str to dict
        Case id to the output of :func:`evaluate_case`.
    summary : dict of str to dict, optional
        The output of :func:`summarize`; without it, no summary rows.

    Returns
    -------
    str
        The table, lines joined by newlines, without a trailing newline.
    """
    width = max([len("case"), *map(len, per_case)])
    header = f"{'case':<{width}}" + "".join(f"{title:>10}" for _, title, _ in _COLUMNS)
    lines = [header + f"{'frames':>8}", "-" * (len(header) + 8)]
    for case_id, values in per_case.items():
        frames = f"{int(values.get('n_frames_scored', 0)):>8d}"
        lines.append(f"{case_id:<{width}}" + _format_values(values) + frames)
    if summary is None:
        return "\n".join(lines)
    lines.append("-" * (len(header) + 8))
    for stat in ("mean", "std", "min"):
        values = {name: summary[name][stat] for name in METRIC_NAMES}
        lines.append(f"{stat:<{width}}" + _format_values(values))
    return "\n".join(lines)


def _format_values(values: dict[str, float]) -> str:
    """One row's metric cells."""
    return "".join(f"{values[key]:>10.{decimals}f}" for key, _, decimals in _COLUMNS)


# --- helpers -------------------------------------------------------------------------------


def _as_bool_frames(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero-is-inside boolean copies of two frames."""
    return np.asarray(pred) != 0, np.asarray(gt) != 0


def _unscorable_value(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """nan for an empty ground truth, the max(H, W) penalty for an empty prediction."""
    if not gt.any():
        return math.nan
    if not pred.any():
        return float(max(pred.shape))
    return None


def _cropped_boundaries(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Boundary pixels of both masks inside the official crop; None if either has none."""
    rows, cols = np.nonzero(pred | gt)
    # Official crop: one pixel before the union's box, none after it (the end index is
    # exclusive), and both axes clipped to the row count H. The EDT is unaffected, except
    # that columns >= H are cut off when W > H (TrackRAD frames are square).
    start = np.clip([rows.min() - 1, cols.min() - 1], 0, pred.shape[0])
    stop = np.clip([rows.max() + 1, cols.max() + 1], 0, pred.shape[0])
    box = np.s_[start[0] : stop[0], start[1] : stop[1]]
    pred_edges, gt_edges = _boundary(pred[box]), _boundary(gt[box])
    if not pred_edges.any() or not gt_edges.any():
        return None  # officially an infinite distance
    return pred_edges, gt_edges


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (mask XOR its erosion)."""
    return mask ^ ndimage.binary_erosion(mask)


def _boundary_distances(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float32 distance (mm) from each source-boundary pixel to the nearest target one."""
    distance_map = ndimage.distance_transform_edt(~target, sampling=_SPACING_MM)
    return distance_map.astype(np.float32)[source]


def _nonempty_frames(masks: np.ndarray) -> np.ndarray:
    """Boolean (T,) flags of the frames with any nonzero pixel."""
    return masks.reshape(len(masks), -1).any(axis=1)


def _check_case(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise ValueError for inputs the official evaluation would reject or misread."""
    for name, array in (("pred", pred), ("gt", gt)):
        if array.ndim != 3:
            raise ValueError(
                f"evaluate_case() '{name}' must be 3D (T, H, W), but it is {array.ndim}D "
                f"with shape {array.shape}; stack the frames along the first axis"
            )
    if pred.shape != gt.shape:
        raise ValueError(
            f"evaluate_case() 'pred' has shape {pred.shape} but 'gt' has shape {gt.shape}; "
            "predict one mask per ground-truth frame, both laid out (T, H, W)"
        )
    for name, array in (("pred", pred), ("gt", gt)):
        _check_binary(name, array)


def _check_scored_frames(scored_pred: np.ndarray) -> None:
    """Raise ValueError where the official evaluation fails (given the non-empty-GT frames)."""
    if len(scored_pred) < 2:
        raise ValueError(
            f"evaluate_case() 'gt' has {len(scored_pred)} non-empty frame(s); the official "
            "evaluation drops the first one and needs at least 2: check that the labels file "
            "(not the first-label file) was read"
        )
    if not scored_pred.any():
        raise ValueError(
            "evaluate_case() 'pred' is empty in every frame that has a ground truth, which "
            "the official evaluation rejects; check that the tracker produced masks and that "
            "they were written"
        )


def _check_binary(name: str, array: np.ndarray) -> None:
    """Raise ValueError unless the mask holds only 0 and 1."""
    if array.dtype == bool or not np.any((array != 0) & (array != 1)):
        return
    values = np.unique(array)
    shown = ", ".join(f"{value:g}" for value in values[:8])
    if len(values) > 8:
        shown += ", ..."
    raise ValueError(
        f"{name} contains values {{{shown}}}; "
        "the official metrics need 0/1 masks: divide by 255 or threshold"
    )
