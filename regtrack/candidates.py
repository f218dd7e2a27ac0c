"""Two answers per frame: the registration's and optical flow's, one chosen by the motion.

The registration wins large motion (its coarse levels see whole organs) but settles a few
tenths of a millimetre off where the motion is fine and slides (lung against the chest wall)
and the target is faint; plain optical flow from frame t straight to frame 0 is the reverse:
exact for fine motion, lost after a jump. Each frame therefore gets both maps of the target's
neighbourhood (frame-t pixel -> frame-0 position):

- ``registration``: the B-spline registration (refined by :mod:`.refine` when it answers);
- ``flow``: DIS optical flow from frame t to frame 0 at full resolution over the target's
  neighbourhood plus some context, started from the translation that carries the previous
  answer back to frame 0.

"Frame 0" for the flow is the engine's reference (:mod:`.reference`): frame 0 averaged with
the frames answered so far, which removes frame 0's own noise from every answer.

The flow answers while the motion is fine: the target is within ``max_shift_mm`` of where it
was in frame 0 and the flow's target lands within ``agree_mm`` of the registration's.
Otherwise the registration answers. Measured on the development data (whole-frame flow at
half resolution against the refined registration), the flow was as good as or better than
the registration below 20 mm from frame 0 and lost 0.02 DSC a frame beyond (the real case
after its 40 mm jump). A local similarity (NCC in 9 or 21 px windows, on
intensities or gradients, SSD) did not pick the better of the two: the registration, which
maximises a similarity, also scores best on one where it is wrong (slab blending, noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .intensity import matched
from .refine import sample

__all__ = [
    "Candidate",
    "Choice",
    "choose_candidate",
    "dis_flow",
    "flow_candidate",
    "flow_context",
    "grown",
    "keyframe_mask",
]

_FLOW_PRESET = "MEDIUM"
# The preset's flow stops at half resolution; at full resolution it follows fine motion better
# (synthetic_dev mean CD 0.51 mm whole-frame at half resolution, 0.49 at full resolution over
# the crop; d09 0.57 -> 0.45), at 4-6x the cost of the flow (350 x 350: 11 -> 46-65 ms), which
# the crop to the target's neighbourhood plus this much context cuts. Without the context the
# flow lost the lung target by the chest wall (d11 1.17 mm against 1.01).
_FLOW_FINEST_SCALE = 0
_FLOW_CONTEXT_MM = 30.0


@dataclass(frozen=True)
class Candidate:
    """One answer for the target's neighbourhood: where each of its pixels lands in frame 0."""

    name: str
    points: np.ndarray  # (2, h, w) frame-0 positions in mm, (row, col)


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and, when the flow was passed over, why."""

    chosen: Candidate
    reason: str = ""


def flow_candidate(
    frame, frame0, part, shift_mm, spacing_mm, value_range, finest_scale=_FLOW_FINEST_SCALE
) -> Candidate:
    """DIS flow of frame t onto frame 0 shifted by ``shift_mm`` (the translation carry), over
    the ``part`` slices grown by ``_FLOW_CONTEXT_MM`` (the flow's coarse levels need context),
    kept at ``part``; both 8-bit over frame 0's ``value_range``, the input the flow peer is
    given, so drifting grey values are left as they are. ``finest_scale`` 1 stops the flow at
    half resolution (a third of the cost, for the real-time flow rung)."""
    spacing = np.asarray(spacing_mm, float)[:, None, None]
    context = flow_context(part, frame.shape, spacing_mm)
    rows, cols = np.indices(frame.shape, dtype=np.float64)
    start = np.stack([rows[context], cols[context]])
    start += np.asarray(shift_mm, float)[:, None, None] / spacing
    moved0 = sample(frame0, start)
    flow_rc = dis_flow(frame[context], moved0, value_range, finest_scale)
    inner = tuple(
        slice(p.start - c.start, p.stop - c.start) for p, c in zip(part, context, strict=True)
    )
    return Candidate("flow", ((start + flow_rc) * spacing)[:, inner[0], inner[1]])


def keyframe_mask(frame, keyframe, keyframe_mask_, part, spacing_mm, finest_scale=1):
    """The ``keyframe_mask_`` of a recent frame ``keyframe`` carried onto ``frame`` by DIS flow
    from ``frame`` to it, over ``part`` grown by the flow's context (bool, ``frame``'s shape).

    Consecutive frames differ by a few millimetres where frame 0 may lie 40 mm and a whole
    organ's deformation away, so a registered keyframe a few frames old is the flow's nearer
    reference after a jump. The keyframe is brought onto ``frame``'s grey values first
    (sequences are rescaled frame by frame); both are 8-bit over ``frame``'s range there.
    """
    context = flow_context(part, frame.shape, spacing_mm)
    here = np.asarray(frame[context], np.float64)
    there = matched(np.asarray(keyframe[context], np.float64), here)
    flow_rc = dis_flow(here, there, (float(here.min()), float(here.max())), finest_scale)
    rows, cols = np.indices(here.shape, dtype=np.float64)
    carried = sample(
        np.asarray(keyframe_mask_[context], np.float64), np.stack([rows, cols]) + flow_rc
    )
    mask = np.zeros(frame.shape, bool)
    mask[context] = carried >= 0.5
    return mask


def dis_flow(first, second, value_range, finest_scale=_FLOW_FINEST_SCALE) -> np.ndarray:
    """DIS flow (2, H, W), (row, col) pixels, with ``first(x) ~ second(x + flow(x))``; both
    images 8-bit over ``value_range``."""
    import cv2

    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{_FLOW_PRESET}"))
    dis.setFinestScale(finest_scale)
    flow_xy = dis.calc(_to_uint8(first, value_range), _to_uint8(second, value_range), None)
    return flow_xy.transpose(2, 0, 1)[::-1].astype(np.float64)


def flow_context(part, shape, spacing_mm) -> tuple[slice, slice]:
    """``part`` with the context the flow's coarse levels need around it."""
    return grown(part, shape, _FLOW_CONTEXT_MM / np.asarray(spacing_mm, float))


def grown(part, shape, margin_px) -> tuple[slice, slice]:
    """``part`` grown by ``margin_px`` (rows, cols) on every side, clipped to ``shape``."""
    return tuple(
        slice(max(0, (p.start or 0) - int(m)), min(n, (p.stop or n) + int(m)))
        for p, m, n in zip(part, margin_px, shape, strict=True)
    )


def choose_candidate(
    registration: Candidate,
    flow: Candidate,
    *,
    centroids_mm,
    target_shift_mm: float,
    agree_mm: float,
    max_shift_mm: float,
) -> Choice:
    """The flow while the motion is fine and the flow agrees with the registration, else the
    registration.

    ``centroids_mm``: the target centroid under each map (None: the map lost the target);
    ``target_shift_mm``: how far the previous answer lies from the target's frame-0 place.
    """
    if target_shift_mm > max_shift_mm:
        return Choice(registration, f"target {target_shift_mm:.0f} mm from frame 0")
    anchor, centre = centroids_mm
    if centre is None or anchor is None:
        return Choice(registration, "flow lost the target")
    apart = float(np.hypot(*(np.asarray(centre) - np.asarray(anchor))))
    if apart > agree_mm:
        return Choice(registration, f"flow {apart:.1f} mm from the registration")
    return Choice(flow)


def _to_uint8(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    scaled = (np.asarray(image, np.float64) - low) / max(high - low, 1e-6) * 255.0
    return np.ascontiguousarray(np.clip(np.round(scaled), 0, 255), dtype=np.uint8)
