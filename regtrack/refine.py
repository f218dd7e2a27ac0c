"""Local refinement: optical flow between frame t and frame 0 as the registration left it.

Registration catches large motion (its coarse levels see whole organs) but settles a few tenths
of a millimetre off on fine texture; optical flow straight to frame 0 is the reverse: exact for
small motion, lost after a jump. After the registration the motion left is small, so a dense
flow (OpenCV's DIS) between frame t and frame 0 resampled by the registration measures what
the B-spline missed. The refined map is kept only when it makes frame 0 look more like frame
t around the target (normalised correlation), so a flow led astray by noise changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .intensity import flatten_intensity

__all__ = ["Refinement", "refine_points"]

_FLOW_PRESET = "MEDIUM"
_WINDOW_PX = 9
_FLATTEN_PX = 10.0  # smoothing of the flattening, in pixels (given as mm at 1 mm spacing)


@dataclass(frozen=True)
class Refinement:
    """The refined map and the similarity check that decided it."""

    points: np.ndarray  # (2, h, w) frame-0 positions in mm (refined when accepted)
    accepted: bool
    ncc_before: float
    ncc_after: float


def refine_points(frame, frame0, points, spacing_mm, region=None) -> Refinement:
    """Correct the frame-0 positions ``points`` of a part of frame t by optical flow.

    Parameters
    ----------
    frame : ndarray, shape (h, w)
        The part of frame t (fixed) to refine: the target's neighbourhood.
    frame0 : ndarray, shape (H, W)
        Frame 0 (moving), whole.
    points : ndarray, shape (2, h, w)
        Where each pixel of that part lands in frame 0 (mm, (row, col)), from the registration.
    spacing_mm : (float, float)
    region : ndarray of bool, shape (h, w), optional
        Where the similarity check compares (default: the whole part).
    """
    import cv2

    spacing = np.asarray(spacing_mm, dtype=float)[:, None, None]
    before = ndimage.map_coordinates(frame0, points / spacing, order=1, mode="nearest")
    target = np.ascontiguousarray(frame, dtype=np.float32)
    # Flattened: the motion left is small, so removing the large scales costs nothing here,
    # and a bias field that moves with the coil, not the anatomy, goes.
    flat_target, flat_before = (
        flatten_intensity(x, _FLATTEN_PX, (1.0, 1.0), np.float64) for x in (target, before)
    )
    flow_xy = _flow(cv2, _to_uint8(flat_target), _to_uint8(flat_before))
    rows, cols = np.indices(target.shape, dtype=np.float32)
    at = np.stack([rows + flow_xy[..., 1], cols + flow_xy[..., 0]])
    refined = np.stack(
        [ndimage.map_coordinates(points[k], at, order=1, mode="nearest") for k in range(2)]
    )
    after = ndimage.map_coordinates(frame0, refined / spacing, order=1, mode="nearest")
    check = np.ones(target.shape, bool) if region is None else region
    ncc_before, ncc_after = _ncc(target, before, check), _ncc(target, after, check)
    if not ncc_after > ncc_before:
        return Refinement(points, False, ncc_before, ncc_after)
    return Refinement(refined, True, ncc_before, ncc_after)


def _flow(cv2, frame_t: np.ndarray, frame_0: np.ndarray) -> np.ndarray:
    """DIS flow (H, W, 2) in pixels (x, y): frame_t(p) ~ frame_0(p + flow(p))."""
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{_FLOW_PRESET}"))
    return dis.calc(frame_t, frame_0, None)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max (0.5-99.5 percentiles) to 0..255: flow assumes comparable brightness, and
    cine-MRI frames are rescaled one by one."""
    low, high = np.percentile(image, (0.5, 99.5))
    scaled = (image - low) / max(float(high - low), 1e-6) * 255
    return np.ascontiguousarray(np.clip(scaled, 0, 255), dtype=np.uint8)


def _ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Mean local normalised correlation (windows of ``_WINDOW_PX``): a smooth bias field
    that a global correlation would mistake for misalignment cancels in each window."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mean = lambda x: ndimage.uniform_filter(x, _WINDOW_PX, mode="nearest")
    mean_a, mean_b = mean(a), mean(b)
    cov = mean(a * b) - mean_a * mean_b
    var_a = np.maximum(mean(a * a) - mean_a**2, 0)
    var_b = np.maximum(mean(b * b) - mean_b**2, 0)
    local = cov / np.sqrt(var_a * var_b + 1e-12)
    return float(local[where].mean())
