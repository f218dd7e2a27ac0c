"""Quality gates: is a registered mask plausible, and in hybrid mode, whose answer is kept.

Two levels:
- :func:`registration_gate` runs beside elastix on every registration: an empty mask, a
  non-finite metric, an area jump from the previous frame, or a fold of the B-spline
  (non-positive Jacobian determinant) around the target reject it.
- :func:`hybrid_decision` weighs a passing registration against the SAM tracker's mask of the
  same frame: a metric far worse than its recent history, or a centroid jump that SAM does not
  share, hands the frame to SAM. When SAM moves and registration does not, registration is
  kept: SAM jumping to a look-alike structure is what registration guards against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "centroid_mm",
    "folded_fraction",
    "hybrid_decision",
    "metric_outlier",
    "registration_gate",
]

_CHUNK = 64  # masks of a stack summed at once


def centroid_mm(masks: np.ndarray, spacing_mm) -> np.ndarray:
    """Centre of mass (row, col) of a mask, or of each mask of a stack, in mm; NaN when empty.

    Parameters
    ----------
    masks : ndarray, shape (H, W) or (T, H, W)
        A memmap stack is read in chunks, never whole.
    spacing_mm : (float, float)
        (row, col) pixel spacing; position 0 is the centre of the first row / column.

    Returns
    -------
    ndarray of float64, shape (2,) for one mask, (T, 2) for a stack
    """
    masks = masks if isinstance(masks, np.ndarray) else np.asarray(masks)
    stack = masks if masks.ndim == 3 else masks[None]
    centres = np.full((len(stack), 2), np.nan)
    rows, cols = np.arange(stack.shape[1]), np.arange(stack.shape[2])
    for start in range(0, len(stack), _CHUNK):
        block = np.asarray(stack[start : start + _CHUNK], dtype=np.float64)
        area = block.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            centres[start : start + len(block), 0] = block.sum(axis=2) @ rows / area
            centres[start : start + len(block), 1] = block.sum(axis=1) @ cols / area
    centres *= np.asarray(spacing_mm, dtype=np.float64)
    return centres if masks.ndim == 3 else centres[0]


def folded_fraction(displacement_mm: np.ndarray, spacing_mm, region: np.ndarray) -> float:
    """Share of ``region`` where the map x -> x + u(x) folds (Jacobian determinant <= 0).

    Parameters
    ----------
    displacement_mm : ndarray, shape (H, W, 2)
        u(x) in mm, (row, col) components.
    spacing_mm : (float, float)
    region : ndarray of bool, shape (H, W)
    """
    d_row = np.gradient(displacement_mm[..., 0], *spacing_mm)
    d_col = np.gradient(displacement_mm[..., 1], *spacing_mm)
    determinant = (1 + d_row[0]) * (1 + d_col[1]) - d_row[1] * d_col[0]
    inside = region.astype(bool)
    return float((determinant[inside] <= 0).mean()) if inside.any() else 0.0


def registration_gate(mask, metric_value, previous_area, settings, fold_fraction=0.0) -> str:
    """Why a registered mask is rejected, or '' when it passes."""
    if not np.isfinite(metric_value):
        return "elastix reported no finite metric value"
    area = int(mask.sum())
    if area == 0:
        return "registered mask is empty"
    ratio = area / previous_area
    if not settings.min_area_ratio <= ratio <= settings.max_area_ratio:
        return f"registered mask area changed x{ratio:.2f} from the previous frame"
    if fold_fraction > 0:
        return f"the B-spline folds (Jacobian <= 0) on {100 * fold_fraction:.1f} % of the ROI"
    return ""


def metric_outlier(value: float, history: Sequence[float], *, spread: float = 4.0) -> str:
    """Why ``value`` is far worse (higher: elastix minimises) than its history, or ''.

    Worse means above the median by more than ``spread`` robust standard deviations (MAD),
    and by at least 5 % of the median's size (a flat history must not reject noise).
    """
    if len(history) < 5 or not np.isfinite(value):
        return ""
    median = float(np.median(history))
    mad = 1.4826 * float(np.median(np.abs(np.asarray(history) - median)))
    limit = median + max(spread * mad, 0.05 * abs(median))
    if value > limit:
        return (
            f"metric {value:.4g} is worse than the recent median {median:.4g} (limit {limit:.4g})"
        )
    return ""


def hybrid_decision(
    registered: np.ndarray,
    sam_mask: np.ndarray,
    previous: np.ndarray,
    spacing_mm,
    *,
    max_jump_mm: float,
    agree_mm: float,
) -> tuple[bool, str]:
    """Keep the registration (True) or hand the frame to SAM (False), and why.

    The registration is replaced when its centroid jumped more than ``max_jump_mm`` from the
    previous answer while SAM's stayed within it, and the two disagree by more than
    ``agree_mm``. Every other disagreement keeps the registration (and says so).
    """
    if not sam_mask.any():
        return True, "SAM lost the target (empty mask); kept registration"
    reg, sam, before = (centroid_mm(m, spacing_mm) for m in (registered, sam_mask, previous))
    apart = float(np.linalg.norm(reg - sam))
    if apart <= agree_mm:
        return True, ""
    reg_jump, sam_jump = float(np.linalg.norm(reg - before)), float(np.linalg.norm(sam - before))
    if reg_jump > max_jump_mm and sam_jump <= max_jump_mm:
        return False, (
            f"registration jumped {reg_jump:.1f} mm from the previous frame, SAM "
            f"{sam_jump:.1f} mm; answers {apart:.1f} mm apart"
        )
    return True, f"SAM disagreed by {apart:.1f} mm (moved {sam_jump:.1f} mm); kept registration"
