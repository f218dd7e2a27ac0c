"""The fast tracker's reference: frame 0 averaged with the frames tracked so far.

Every frame is mapped to frame 0, so frame 0's own noise is in every answer: on a noisy,
faint target the flow settles at the same offset frame after frame (a steady bias, not
scatter). The reference cuts that noise where the target's neighbourhood lies in frame 0:
each answered frame is pulled back onto frame 0 and averaged in. The pull-back is DIS flow
computed *from frame 0* to the frame, so every frame lands on frame 0's geometry: the
average stays anchored to frame 0 (flow from the running average instead lets it drift;
measured on ``synthetic_dev``: d11 0.36 mm from frame 0, 0.49 from the average). The
average enters over a ramp at the region's edge, so no seam is left for the flow to follow.

Only frames answered while the motion is fine (the target within ``max_shift_mm`` of its
frame-0 place) are averaged in: after a jump the pull-back is least sure, and frame 0 is
what the registration and the mask are defined on.
"""

from __future__ import annotations

import numpy as np

from .candidates import dis_flow
from .intensity import matched
from .refine import sample

__all__ = ["Reference"]

_EDGE_RAMP_PX = 10  # the average enters over this many pixels at the region's edge


class Reference:
    """Frame 0 averaged with frames pulled back onto it, over a region of frame 0.

    Parameters
    ----------
    frame0 : ndarray (H, W)
    region : (slice, slice)
        The part of frame 0 that is averaged (the target's neighbourhood and the flow's
        context); elsewhere the reference stays frame 0.
    value_range : (float, float)
        Frame 0's grey-value range: the 8-bit scale the flow sees.
    spacing_mm : (float, float)
    """

    def __init__(self, frame0, region, value_range, spacing_mm) -> None:
        frame0 = np.asarray(frame0, np.float64)
        self._region = region
        self._range = value_range
        self._spacing = np.asarray(spacing_mm, float)[:, None, None]
        self._first = frame0[region].copy()  # frame 0 over the region: what frames land on
        rows, cols = np.indices(frame0.shape, dtype=np.float64)
        self._grid = np.stack([rows[region], cols[region]])  # the region's pixels, (row, col)
        self._sum = self._first.copy()
        self._weight = np.ones(self._sum.shape)
        self.image = frame0.astype(np.float32)
        self.frames = 0  # how many frames were averaged in
        rows, cols = (np.minimum(np.arange(n), np.arange(n)[::-1]) for n in self._sum.shape)
        self._ramp = np.clip(np.minimum.outer(rows, cols) / _EDGE_RAMP_PX, 0.0, 1.0)

    def add(self, frame, shift_mm) -> None:
        """Average ``frame`` in; ``shift_mm`` (row, col) carries its answer back to frame 0
        (frame-0 centroid minus the answer's), the flow's start."""
        at = self._grid - np.asarray(shift_mm, float)[:, None, None] / self._spacing
        frame = np.asarray(frame, np.float64)
        # Frames may be rescaled one by one (TrackRAD's are): the flow and the average see
        # them on frame 0's grey values (matched where they are placed, before and after).
        flow = dis_flow(self._first, matched(sample(frame, at), self._first), self._range)
        pulled = matched(sample(frame, at + flow), self._first)
        self._sum += self._ramp * pulled
        self._weight += self._ramp
        self.image[self._region] = self._sum / self._weight
        self.frames += 1
