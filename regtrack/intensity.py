"""Intensity preprocessing shared by the engine (optional, per frame) and the refinement."""

from __future__ import annotations

import numpy as np

__all__ = ["flatten_intensity", "matched"]


def flatten_intensity(
    frame: np.ndarray, sigma_mm: float, spacing_mm, dtype=np.float32
) -> np.ndarray:
    """Divide a frame by its Gaussian-smoothed copy: a smooth multiplicative bias cancels.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
    sigma_mm : float
        Scale of the smoothing; 0 returns the frame unchanged.
    spacing_mm : (float, float)
    dtype : numpy dtype
        Of the result (float32 for elastix).

    Returns
    -------
    ndarray of ``dtype``, shape (H, W)
    """
    if sigma_mm <= 0:
        return frame
    import cv2

    sigma_rows, sigma_cols = (sigma_mm / float(s) for s in spacing_mm)
    # OpenCV's separable blur: scipy's gaussian_filter(mode="nearest") to rounding (the same
    # 4-sigma kernel, edges repeated), at a few times its speed.
    low = cv2.GaussianBlur(
        frame.astype(np.float64),
        (0, 0),
        sigmaX=sigma_cols,
        sigmaY=sigma_rows,
        borderType=cv2.BORDER_REPLICATE,
    )
    floor = 1e-3 * float(np.abs(low).mean()) + 1e-12  # background stays finite
    return np.ascontiguousarray(frame / np.maximum(np.abs(low), floor), dtype=dtype)


def matched(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``values`` under the gain and offset that bring them closest to ``target``."""
    design = np.stack([values.ravel(), np.ones(values.size)], axis=1)
    gain, offset = np.linalg.lstsq(design, target.ravel(), rcond=None)[0]
    return gain * values + offset
