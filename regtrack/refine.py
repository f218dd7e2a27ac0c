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

from .intensity import flatten_intensity

__all__ = ["Refinement", "refine_points", "sample"]

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
    source = np.ascontiguousarray(frame0, dtype=np.float32)
    before = _sample(cv2, source, points / spacing)
    target = np.ascontiguousarray(frame, dtype=np.float32)
    # Flattened: the motion left is small, so removing the large scales costs nothing here,
    # and a bias field that moves with the coil, not the anatomy, goes.
    flat_target, flat_before = (
        flatten_intensity(x, _FLATTEN_PX, (1.0, 1.0), np.float64) for x in (target, before)
    )
    flow_xy = _flow(cv2, _to_uint8(flat_target), _to_uint8(flat_before))
    rows, cols = np.indices(target.shape, dtype=np.float32)
    at = np.stack([rows + flow_xy[..., 1], cols + flow_xy[..., 0]])
    refined = np.stack([_sample(cv2, points[k], at) for k in range(2)]).astype(np.float64)
    after = _sample(cv2, source, refined / spacing)
    check = np.ones(target.shape, bool) if region is None else region
    ncc_before, ncc_after = _ncc(cv2, target, (before, after), check)
    if not ncc_after > ncc_before:
        return Refinement(points, False, ncc_before, ncc_after)
    return Refinement(refined, True, ncc_before, ncc_after)


def sample(image: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``image`` at the (row, col) pixel positions ``at`` (2, h, w), linear, edge values
    outside."""
    import cv2

    return _sample(cv2, image, at)


def _sample(cv2, image: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``image`` at the (row, col) pixel positions ``at`` (2, h, w), linear, edge values
    outside (as ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``, a tenth of its
    time; OpenCV rounds the position to 1/32 pixel)."""
    xs, ys = (np.ascontiguousarray(at[k], dtype=np.float32) for k in (1, 0))
    image = np.ascontiguousarray(image, dtype=np.float32)
    return cv2.remap(image, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


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


def _ncc(cv2, a: np.ndarray, others, where: np.ndarray) -> list[float]:
    """Mean local normalised correlation of ``a`` with each of ``others`` (windows of
    ``_WINDOW_PX``): a smooth bias field that a global correlation would mistake for
    misalignment cancels in each window."""
    window = (_WINDOW_PX, _WINDOW_PX)
    mean = lambda x: cv2.boxFilter(x, cv2.CV_64F, window, borderType=cv2.BORDER_REPLICATE)
    a = a.astype(np.float64)
    mean_a = mean(a)
    var_a = np.maximum(mean(a * a) - mean_a**2, 0)
    scores = []
    for b in others:
        b = b.astype(np.float64)
        mean_b = mean(b)
        cov = mean(a * b) - mean_a * mean_b
        var_b = np.maximum(mean(b * b) - mean_b**2, 0)
        local = cov / np.sqrt(var_a * var_b + 1e-12)
        scores.append(float(local[where].mean()))
    return scores
