"""The registration started from the fast tracker's dense answer.

The fast tracker (DIS optical flow here; :func:`regtrack.candidates.flow_candidate`) maps
every pixel of the target's neighbourhood in frame t to frame 0, sliding included. Frame 0
(and its feature channels) pulled back by that map is the registration's moving image: elastix
then starts from the flow's whole answer, not only a translation, and its B-spline corrects
what the flow got wrong. The final map is the flow's map after the registration's:
frame-t pixel x -> R(x) (elastix, on the pulled-back frame 0) -> P_flow(R(x)) in frame 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .refine import sample
from .registration import Registration, as_channels, register_pair
from .transform import mapped_points

__all__ = ["StartedRegistration", "register_from_start"]


@dataclass(frozen=True)
class StartedRegistration:
    registration: Registration
    points: np.ndarray  # (2, h, w) frame-0 positions (mm) of the box's pixels


def register_from_start(
    fixed, moving, start_points, start_box, box, parameter_maps, spacing_mm
) -> StartedRegistration:
    """Register ``moving`` (frame 0 channels) pulled back by ``start_points`` onto ``fixed``.

    ``start_points`` (2, H', W') are frame-0 positions (mm) of the pixels of ``start_box``, a
    part of the frame that holds ``box`` with some room around it; the registration's metric
    and grid cover ``box``.
    """
    spacing = np.asarray(spacing_mm, float)[:, None, None]
    shape = as_channels(fixed)[0].shape
    at = start_points / spacing
    pulled = []
    for channel in as_channels(moving):
        image = np.zeros(shape, np.float32)
        image[start_box] = sample(channel, at)
        pulled.append(image)
    registration = register_pair(
        fixed,
        pulled,
        parameter_maps,
        spacing_mm=spacing_mm,
        fixed_box=box,
        moving_box=start_box,
    )
    residual = mapped_points(registration.transform_parameters, shape, spacing_mm, box=box)
    offset = np.array([start_box[0].start or 0, start_box[1].start or 0], float)[:, None, None]
    where = residual / spacing - offset
    points = np.stack([sample(start_points[k], where) for k in range(2)]).astype(np.float64)
    return StartedRegistration(registration, points)
