"""regtrack: tumour tracking in 2D cine-MRI by deformable image registration.

Frame 0 comes with a tumour mask; regtrack registers frame 0 onto every later frame with
elastix (B-spline, multi-resolution) and carries the mask along.

>>> import regtrack
>>> result = regtrack.track(frames, first_mask)          # doctest: +SKIP
>>> result.masks.shape                                    # (T, H, W) uint8
"""

from .engine import Engine, FrameResult, TrackerSettings
from .io import Case, FrameReader, case_from_arrays, read_case, write_masks
from .parameters import DEFAULT_PRESET, available_presets, load_parameter_maps
from .registration import Registration, displacement_field, register_pair, warp_mask
from .tracking import TrackResult, iter_track, replay, track

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PRESET",
    "Case",
    "Engine",
    "FrameReader",
    "FrameResult",
    "Registration",
    "TrackResult",
    "TrackerSettings",
    "available_presets",
    "case_from_arrays",
    "displacement_field",
    "iter_track",
    "load_parameter_maps",
    "read_case",
    "register_pair",
    "replay",
    "track",
    "warp_mask",
    "write_masks",
]
