"""Input checks shared by the engine, the SAM tracker and case I/O: one clear error per problem.

Each check names what is wrong and how to fix it, and returns the input in the form the rest
of regtrack works on (C-contiguous float32 frames, bool masks).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["as_binary_mask", "check_frame", "check_frames", "check_mask"]


def check_frames(frames) -> tuple[int, tuple[int, int]]:
    """Validate a (T, H, W) sequence (array or lazy reader); return T and (H, W)."""
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) != 3:
        found = f"{len(shape)}D" if shape is not None else type(frames).__name__
        raise ValueError(
            f"frames must be a (T, H, W) sequence, but it is {found}; "
            "stack 2D frames with np.stack(frames)."
        )
    if shape[0] < 2:
        raise ValueError(
            f"frames holds {shape[0]} frame; tracking needs at least 2 (frame 0 with its mask "
            "and one frame to propagate it to)."
        )
    return int(shape[0]), (int(shape[1]), int(shape[2]))


def check_frame(frame: np.ndarray, index: int) -> np.ndarray:
    """Return frame ``index`` as C-contiguous float32, refusing NaN/inf."""
    frame = np.ascontiguousarray(frame, dtype=np.float32)
    if not np.isfinite(frame).all():
        raise ValueError(
            f"frame {index} contains NaN or inf values; replace them (e.g. np.nan_to_num) "
            "or drop the frame before tracking."
        )
    return frame


def check_mask(mask: np.ndarray, frame_shape: tuple[int, int], *, name: str = "first_mask"):
    """Validate a binary (H, W) mask on the frames' grid; 0/k is converted with a warning."""
    mask = np.asarray(mask)
    if mask.shape != frame_shape:
        raise ValueError(
            f"{name} has shape {mask.shape} but the frames are {frame_shape}; "
            "give the mask of frame 0 on the same grid as the frames."
        )
    return as_binary_mask(mask, name)


def as_binary_mask(values: np.ndarray, what: str, *, allow_empty: bool = False) -> np.ndarray:
    """Bool mask from 0/1 values; 0/k warns, empty or more than two values raise."""
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{what} holds NaN or inf; a mask must hold only 0 and 1")
    nonzero = np.unique(values[values != 0])
    if nonzero.size == 0:
        if allow_empty:
            return np.zeros(values.shape, dtype=bool)
        raise ValueError(f"{what} is empty (all zero); pass the mask of the tumour in frame 0")
    if nonzero.size > 1:
        shown = ", ".join(str(v) for v in nonzero[:5])
        raise ValueError(
            f"{what} is not binary: besides 0 it holds the values {shown}"
            f"{' ...' if nonzero.size > 5 else ''}; pass a 0/1 mask (e.g. labels == tumour_id)"
        )
    if nonzero[0] != 1:
        warnings.warn(
            f"{what} holds 0/{nonzero[0]} instead of 0/1; treating every non-zero pixel as "
            "foreground",
            RuntimeWarning,
            stacklevel=3,
        )
    return values != 0
