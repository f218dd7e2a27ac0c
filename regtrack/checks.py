"""Input checks shared by the engine, the SAM tracker and case I/O: one clear error per problem.

Each check names what is wrong and how to fix it, and returns the input in the form the rest
of regtrack works on (C-contiguous float32 frames, bool masks).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "as_binary_mask",
    "check_first_mask_extent",
    "check_frame",
    "check_frame_rate",
    "check_frames",
    "check_mask",
    "check_sequence",
    "check_spacing",
    "check_tracker_settings",
    "has_signal",
]


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


def has_signal(image: np.ndarray) -> bool:
    """Whether an image varies at all: a constant one (a dropped frame, all zeros) gives
    elastix nothing to register, and it would answer "converged" with frame 0's mask."""
    image = np.asarray(image)
    return bool(image.size) and float(np.ptp(image)) > 1e-6 * max(float(np.abs(image).max()), 1e-12)


# --------------------------------------------------------------------------- settings

#: Where a registration may start (TrackerSettings.start).
START_KINDS = ("translation", "flow", "auto")
REFERENCE_KINDS = ("average", "first")

#: Settings that are lengths or areas: (field, CLI flag, zero allowed).
_SIZES = (
    ("roi_margin_mm", "--roi-margin-mm", True),
    ("flatten_sigma_mm", "--flatten-sigma-mm", True),
    ("roi_max_area_mm2", None, True),
    ("roi_grid_spacing_mm", None, False),
    ("min_area_ratio", None, False),
    ("max_area_ratio", None, False),
    ("max_jump_mm", None, False),
    ("agree_mm", None, False),
    ("candidate_agree_mm", None, False),
    ("flow_max_shift_mm", None, True),
    ("sam_image_size", "--sam-image-size", False),
)


def check_tracker_settings(settings) -> None:
    """Raise ValueError on the first setting the tracker would misuse, before any work.

    Lengths and sigmas must be finite and >= 0 (> 0 where 0 means nothing), the preset must
    exist and every elastix value, in an override or the preset's files, must be of the right
    type and range.
    """
    from .parameters import check_parameter_names, check_parameter_values, check_preset_values

    for name, flag, zero_ok in _SIZES:
        value = getattr(settings, name, None)
        if value is not None:
            _check_number(value, name + (f" ({flag})" if flag else ""), zero_ok=zero_ok)
    if settings.min_area_ratio >= settings.max_area_ratio:
        raise ValueError(
            f"min_area_ratio ({settings.min_area_ratio}) must be below max_area_ratio "
            f"({settings.max_area_ratio})"
        )
    if settings.start not in START_KINDS:
        raise ValueError(
            f"start must be one of {START_KINDS}, got {settings.start!r}: 'translation' starts "
            "each registration from the previous answer's shift, 'flow' from the fast "
            "tracker's dense map, 'auto' from the dense map while the motion is fine"
        )
    if settings.start_only and settings.start == "translation":
        raise ValueError(
            "start_only=True answers with the flow's start: set start='flow' (or 'auto') too"
        )
    if settings.reference not in REFERENCE_KINDS:
        raise ValueError(
            f"reference must be one of {REFERENCE_KINDS}, got {settings.reference!r}: 'average' "
            "maps frames onto frame 0 averaged with the frames tracked so far, 'first' onto "
            "frame 0 alone"
        )
    check_parameter_names(list(settings.overrides))
    check_parameter_values(settings.overrides)
    check_preset_values(settings.preset, settings.overrides)


#: Pixel spacings outside this range (mm) come from no scanner: a header written wrongly.
SPACING_RANGE_MM = (0.01, 100.0)
#: Frame rates above this (Hz) come from no cine acquisition.
MAX_FRAME_RATE_HZ = 1000.0


def check_spacing(spacing_mm, what: str) -> tuple[float, ...]:
    """The (row, col) pixel spacing as floats, else ValueError naming the value and ``what``.

    Each value must be finite and within :data:`SPACING_RANGE_MM`: elastix turns a spacing of
    1e6 mm into an allocation failure or a crash, and 1000 mm into a registration that never
    ends; a spacing of 1e-6 mm makes every length setting (margins, grid spacing) meaningless.
    """
    low, high = SPACING_RANGE_MM
    values = []
    for value in spacing_mm:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not (np.isfinite(number) and low <= number <= high):
            shown = ", ".join(
                f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in spacing_mm
            )
            raise ValueError(
                f"{what} has a pixel spacing of ({shown}) mm; a spacing must be a finite number "
                f"from {low:g} to {high:g} mm. Correct the spacing in the file's header"
            )
        values.append(number)
    return tuple(values)


def check_frame_rate(hz, name: str = "frame_rate_hz") -> float:
    """A frame rate as a finite float in (0, :data:`MAX_FRAME_RATE_HZ`], else ValueError."""
    rate = _check_number(hz, name, zero_ok=False)
    if rate > MAX_FRAME_RATE_HZ:
        raise ValueError(
            f"{name} must be a frame rate from > 0 to {MAX_FRAME_RATE_HZ:g} Hz, got {hz!r}"
        )
    return rate


def _check_number(value, name: str, *, zero_ok: bool) -> float:
    """``value`` as a finite float >= 0 (> 0 unless ``zero_ok``), else ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        wanted = "a number >= 0" if zero_ok else "a number > 0"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return number


# --------------------------------------------------------------------------- whole input

#: A sequence whose later frames are more than this fraction blank is refused.
MAX_BLANK_FRACTION = 0.5
#: A first mask covering more than this fraction of the frame is warned about.
MAX_MASK_FRACTION = 0.5


def check_sequence(frames, what: str = "the sequence") -> list[int]:
    """Read every frame once (``frames``: any iterable of (H, W) frames); refuse NaN, unreadable and blank sequences; return blank frames.

    Frame 0 must hold an image (its mask is carried from it), and at most
    :data:`MAX_BLANK_FRACTION` of the later frames may be blank (constant, e.g. all zero);
    fewer blank frames give a RuntimeWarning. NaN/inf or a truncated file raise ValueError
    from the reader (or here, for arrays).
    """
    blank, n_later = [], -1
    for t, frame in enumerate(_frames_in_order(frames)):
        n_later = t
        if not has_signal(frame):
            blank.append(t)
    if blank[:1] == [0]:
        raise ValueError(
            f"frame 0 of {what} holds no image (one constant value); the first mask is carried "
            "from frame 0, so it must be a real frame. Check the file or the time axis"
        )
    if len(blank) > MAX_BLANK_FRACTION * n_later:
        raise ValueError(
            f"{what} holds no image in {len(blank)} of its {n_later} frames after frame 0 "
            f"(first: {blank[0]}); there is nothing to track. Check the file or the time axis"
        )
    if blank:
        warnings.warn(
            f"{what} holds no image in {len(blank)} frames (first: {blank[0]}); their masks "
            "will be fallbacks",
            RuntimeWarning,
            stacklevel=2,
        )
    return blank


def _frames_in_order(frames):
    """Frames one by one, refusing NaN/inf (a lazy reader checks as it reads)."""
    for index, frame in enumerate(frames):
        if not np.isfinite(frame).all():
            check_frame(frame, index)
        yield frame


def check_first_mask_extent(mask: np.ndarray, what: str = "the first mask") -> None:
    """Warn when a first mask has several separate parts or covers most of the frame."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    _, n_parts = ndimage.label(mask)
    if n_parts > 1:
        warnings.warn(
            f"{what} has {n_parts} separate parts; they are tracked as one target. Pass one "
            "target per run if they move independently",
            RuntimeWarning,
            stacklevel=2,
        )
    covered = mask.mean()
    if covered > MAX_MASK_FRACTION:
        warnings.warn(
            f"{what} covers {covered:.0%} of the frame; a tumour outline covers far less. "
            "Check that it is not inverted (foreground = 1) or a body mask",
            RuntimeWarning,
            stacklevel=2,
        )
