"""Intensity preprocessing shared by the engine (optional, per frame) and the refinement."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["flatten_intensity"]


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
    sigma_px = [sigma_mm / float(s) for s in spacing_mm]
    low = ndimage.gaussian_filter(frame.astype(np.float64), sigma_px, mode="nearest")
    floor = 1e-3 * float(np.abs(low).mean()) + 1e-12  # background stays finite
    return np.ascontiguousarray(frame / np.maximum(np.abs(low), floor), dtype=dtype)
