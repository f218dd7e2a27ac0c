"""Semi-synthetic cases: a real frame warped by known motion.

:func:`semisynthetic_from_case` takes frame 0 of a real case and its mask and moves them by
known motion (breathing, a sudden jump, a smooth deformation that fades with the distance from
the target), adding bias change and Rician noise: real anatomy and texture, exactly known
masks. The accuracy benchmark builds :data:`SEMI_SYNTHETIC_SPECS` from each real case.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .signals import minmax_scale, noise_field, smooth_signal, smoothstep

__all__ = [
    "SEMI_SYNTHETIC_SPECS",
    "SemiSyntheticCase",
    "SemiSyntheticSpec",
    "generate_semisynthetic",
    "semisynthetic_from_case",
]


@dataclass(frozen=True)
class SemiSyntheticSpec:
    """Known motion applied to a real frame: breathing, a sudden jump and a smooth deformation.

    The target moves whole and its neighbourhood with it: the displacement falls off as a
    Gaussian of ``window_sigma_mm`` with the distance from the target's outline, so far anatomy (spine, body wall)
    stays nearly still, as sliding organs do against the static wall. Lengths in mm, times in s.

    Attributes
    ----------
    name : str
    n_frames : int
        Number of frames T (>= 2).
    frame_rate_hz : float
    breathing_amplitude_mm : float
        Mean peak-to-peak excursion of the target per breath (cycle-to-cycle variation +-20 %).
    breathing_period_s : float
    breathing_direction : tuple of float
        (row, col) direction of the breathing motion in the image; normalised.
    jump_mm : tuple of float
        (row, col) sudden, lasting displacement of the target (a breath hold released, a
        patient shift); (0, 0) for none.
    jump_frame : int or None
        Frame at which the jump starts; None puts it in the middle of the sequence.
    jump_frames : int
        Frames over which it happens (smooth ramp).
    window_sigma_mm : float
        Fall-off of the motion with the distance from the target's outline (>= 20 mm; inf
        moves the whole image).
    deformation_mm : float
        Peak amplitude of a smooth random deformation that grows with breathing, so the
        target's outline changes a little as well as moving.
    snr : float
        Mean foreground signal over the standard deviation of added Rician noise (inf: none).
    bias_strength : float
        Amplitude of a smooth multiplicative bias that changes over the sequence.
    minmax_scale : bool
        Rescale every frame to 0..255 on its own and round, as exported cine frames are; the
        intensity scale then says nothing from frame to frame.
    seed : int
    """

    name: str = "semi_synthetic"
    n_frames: int = 80
    frame_rate_hz: float = 8.0
    breathing_amplitude_mm: float = 12.0
    breathing_period_s: float = 4.0
    breathing_direction: tuple[float, float] = (0.45, 0.9)
    jump_mm: tuple[float, float] = (-20.0, -35.0)
    jump_frame: int | None = None
    jump_frames: int = 8
    window_sigma_mm: float = 60.0
    deformation_mm: float = 2.0
    snr: float = 25.0
    bias_strength: float = 0.1
    minmax_scale: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("breathing_direction", "jump_mm"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        checks = [
            (int(self.n_frames) >= 2, f"n_frames must be >= 2, got {self.n_frames}"),
            (self.frame_rate_hz > 0, f"frame_rate_hz must be > 0, got {self.frame_rate_hz}"),
            (
                self.breathing_period_s >= 0.5,
                f"breathing_period_s must be >= 0.5, got {self.breathing_period_s}",
            ),
            (
                len(self.breathing_direction) == 2 and any(self.breathing_direction),
                f"breathing_direction must be a non-zero (row, col), got {self.breathing_direction}",
            ),
            (len(self.jump_mm) == 2, f"jump_mm must be (row, col), got {self.jump_mm}"),
            (
                self.jump_frame is None or 0 <= self.jump_frame < self.n_frames,
                f"jump_frame must be in [0, n_frames), got {self.jump_frame}",
            ),
            (self.jump_frames >= 1, f"jump_frames must be >= 1, got {self.jump_frames}"),
            (
                self.window_sigma_mm >= 20.0,
                f"window_sigma_mm must be >= 20 (inf for a translation), got {self.window_sigma_mm}",
            ),
            (self.deformation_mm >= 0, f"deformation_mm must be >= 0, got {self.deformation_mm}"),
            (self.snr > 0, f"snr must be > 0 (inf for no noise), got {self.snr}"),
            (self.bias_strength >= 0, f"bias_strength must be >= 0, got {self.bias_strength}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SemiSyntheticSpec: {message}")


@dataclass
class SemiSyntheticCase:
    """A real frame warped by known motion: frames, exact masks and the motion.

    Attributes
    ----------
    spec : SemiSyntheticSpec
    frames : ndarray, shape (T, H, W), float32
        Frame 0 is the source frame (with the same noise and scaling as the others).
    masks : ndarray, shape (T, H, W), uint8
        The source mask carried by the same motion (linear interpolation, >= 0.5).
    displacement_mm : ndarray, shape (T, H, W, 2), float32
        Pull-back field: frame t at ``x`` shows the source frame at ``x - u_t(x)``.
    target_shift_mm : ndarray, shape (T, 2)
        Displacement (row, col) of the target centre, frame 0 to frame t.
    spacing_mm : tuple of float
    scanned_region : str or None
    info : dict
        ``source`` (where the frame came from), ``jump_frame``, ``min_jacobian``.
    """

    spec: SemiSyntheticSpec
    frames: np.ndarray
    masks: np.ndarray
    displacement_mm: np.ndarray
    target_shift_mm: np.ndarray
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    scanned_region: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def first_mask(self) -> np.ndarray:
        """Mask of frame 0, shape (H, W), bool."""
        return self.masks[0].astype(bool)


def generate_semisynthetic(
    frame: np.ndarray,
    mask: np.ndarray,
    spec: SemiSyntheticSpec | None = None,
    *,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    scanned_region: str | None = None,
    **overrides: Any,
) -> SemiSyntheticCase:
    """Warp one real frame and its mask by known breathing, jump and deformation.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        The source frame (e.g. frame 0 of a real case), any intensity scale.
    mask : ndarray, shape (H, W)
        Its target mask (0/1 or bool, not empty).
    spec : SemiSyntheticSpec, optional
    spacing_mm : (float, float)
        Pixel spacing (row, col); the motion is specified in mm.
    scanned_region : str, optional
        Carried through to the case (for the dose metric).
    **overrides
        Fields of :class:`SemiSyntheticSpec` to change.

    Returns
    -------
    SemiSyntheticCase

    Examples
    --------
    >>> frame = np.random.default_rng(0).random((64, 64))
    >>> mask = np.zeros((64, 64), bool); mask[24:40, 24:40] = True
    >>> case = generate_semisynthetic(frame, mask, n_frames=6, jump_mm=(4, 0), jump_frame=2)
    >>> case.frames.shape, float(case.frames[3].max())
    ((6, 64, 64), 255.0)
    """
    spec = _resolve_semi_spec(spec, overrides)
    frame, mask = _checked_source(frame, mask)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3)]
    shift_mm, jump_frame = _semi_target_shift(spec, rngs[0])
    field_mm = _semi_field(spec, mask, spacing, shift_mm, rngs[1])
    coords = _pullback_coords(field_mm, spacing)
    masks = np.stack(
        [
            ndimage.map_coordinates(mask.astype(np.float32), c, order=1, mode="constant") >= 0.5
            for c in coords
        ]
    )
    warped = np.stack([ndimage.map_coordinates(frame, c, order=3, mode="nearest") for c in coords])
    frames = _semi_appearance(warped, frame, spec, rngs[2])
    info = {"jump_frame": jump_frame, "min_jacobian": _field_min_jacobian(field_mm, spacing)}
    return SemiSyntheticCase(
        spec=spec,
        frames=frames,
        masks=masks.astype(np.uint8),
        displacement_mm=field_mm,
        target_shift_mm=shift_mm,
        spacing_mm=tuple(float(v) for v in spacing),
        scanned_region=scanned_region,
        info=info,
    )


def semisynthetic_from_case(
    path: str | os.PathLike[str], spec: SemiSyntheticSpec | None = None, **overrides: Any
) -> SemiSyntheticCase:
    """Read a TrackRAD case folder and warp its frame 0 and first label by known motion.

    Nothing of the case is stored: the real frame is read at run time, so a benchmark can
    build known-truth cases with real texture from data it may not redistribute.

    Parameters
    ----------
    path : str or Path
        A TrackRAD case folder (anything :func:`regtrack.io.read_case` reads).
    spec : SemiSyntheticSpec, optional
    **overrides
        Fields of :class:`SemiSyntheticSpec` to change.
    """
    from regtrack.io import read_case

    case = read_case(path)
    semi = generate_semisynthetic(
        np.asarray(case.frames[0], dtype=np.float32),
        case.first_mask,
        spec,
        spacing_mm=case.spacing_mm,
        scanned_region=case.scanned_region,
        **overrides,
    )
    semi.info["source"] = f"{case.name} frame 0"
    return semi


def _resolve_semi_spec(
    spec: SemiSyntheticSpec | None, overrides: dict[str, Any]
) -> SemiSyntheticSpec:
    """Apply keyword overrides to a semi-synthetic spec, naming unknown settings."""
    spec = SemiSyntheticSpec() if spec is None else spec
    if not isinstance(spec, SemiSyntheticSpec):
        raise TypeError(
            f"generate_semisynthetic() 'spec' must be a SemiSyntheticSpec, got {type(spec)}"
        )
    valid = {f.name for f in dataclasses.fields(SemiSyntheticSpec)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(
            f"generate_semisynthetic() got unknown setting(s) {unknown}; valid"
            f" names are {sorted(valid)}"
        )
    return dataclasses.replace(spec, **overrides)


def _checked_source(frame: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source frame as float32 (H, W) and its mask as bool, checked."""
    frame, mask = np.asarray(frame), np.asarray(mask)
    if frame.ndim != 2 or mask.shape != frame.shape:
        raise ValueError(
            f"generate_semisynthetic() needs a 2D frame and a mask of its shape,"
            f" got frame {frame.shape} and mask {mask.shape}"
        )
    if not np.isfinite(frame).all():
        raise ValueError("generate_semisynthetic() 'frame' holds NaN or inf")
    if not mask.any():
        raise ValueError("generate_semisynthetic() 'mask' is empty; give the target's mask")
    return frame.astype(np.float32), mask.astype(bool)


def _semi_target_shift(
    spec: SemiSyntheticSpec, rng: np.random.Generator
) -> tuple[np.ndarray, int | None]:
    """Target displacement (T, 2) in mm relative to frame 0, and the jump's first frame."""
    times = np.arange(spec.n_frames) / spec.frame_rate_hz
    period = spec.breathing_period_s
    phase = np.pi * (times / period + 0.1 * smooth_signal(times, 3.0 * period, rng))
    amplitude = spec.breathing_amplitude_mm * (1.0 + 0.2 * smooth_signal(times, 2.0 * period, rng))
    breathing = amplitude * np.sin(phase + rng.uniform(0.0, np.pi)) ** 2
    direction = np.asarray(spec.breathing_direction) / np.hypot(*spec.breathing_direction)
    shift = breathing[:, None] * direction
    jump_frame = None
    if any(spec.jump_mm):
        jump_frame = spec.n_frames // 2 if spec.jump_frame is None else spec.jump_frame
        ramp = smoothstep((np.arange(spec.n_frames) - jump_frame) / spec.jump_frames)
        shift = shift + ramp[:, None] * np.asarray(spec.jump_mm)
    return shift - shift[:1], jump_frame


def _semi_field(
    spec: SemiSyntheticSpec,
    mask: np.ndarray,
    spacing: np.ndarray,
    shift_mm: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pull-back field (T, H, W, 2) in mm: the target shift, carried whole across the target
    and falling off with the distance from it, plus a smooth deformation."""
    outside_mm = ndimage.distance_transform_edt(~mask, sampling=spacing).astype(np.float32)
    grid = np.indices(mask.shape, dtype=np.float32)
    distance = np.linalg.norm(shift_mm, axis=1)  # the deformation grows with the motion
    scale = distance / max(float(distance.max()), 1e-9)
    deformation = np.stack([noise_field(mask.shape, 20.0 / s, rng) for s in spacing], axis=-1)
    deformation *= spec.deformation_mm / max(float(np.abs(deformation).max()), 1e-9)
    field_mm = np.zeros((len(shift_mm), *mask.shape, 2), dtype=np.float32)
    for t in range(1, len(shift_mm)):
        # the window follows the target: it is 1 over the shifted target and decays outside
        source = grid - (shift_mm[t] / spacing)[:, None, None]
        away = ndimage.map_coordinates(outside_mm, source, order=1, mode="nearest")
        window = np.exp(-0.5 * (away / spec.window_sigma_mm) ** 2)
        field_mm[t] = window[..., None] * (shift_mm[t] + scale[t] * deformation)
    return field_mm


def _pullback_coords(field_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Source pixel coordinates (T, 2, H, W) of every frame's pixels."""
    grid = np.indices(field_mm.shape[1:3], dtype=np.float32)
    return grid[None] - np.moveaxis(field_mm, -1, 1) / spacing[None, :, None, None]


def _field_min_jacobian(field_mm: np.ndarray, spacing: np.ndarray) -> float:
    """Smallest determinant of x -> x - u_t(x) over all pixels and frames."""
    d_row = np.gradient(field_mm, spacing[0], axis=1)
    d_col = np.gradient(field_mm, spacing[1], axis=2)
    det = (1.0 - d_row[..., 0]) * (1.0 - d_col[..., 1]) - d_col[..., 0] * d_row[..., 1]
    return float(det.min())


def _semi_appearance(
    warped: np.ndarray, source: np.ndarray, spec: SemiSyntheticSpec, rng: np.random.Generator
) -> np.ndarray:
    """Bias change, Rician noise and per-frame min-max scaling of the warped frames."""
    n, shape = warped.shape[0], warped.shape[1:]
    warped = np.maximum(warped, 0.0)
    foreground = source > 0.1 * float(source.max())
    level = float(source[foreground].mean()) if foreground.any() else float(source.mean())
    sigma = 0.0 if math.isinf(spec.snr) else level / spec.snr
    bias_a, bias_b = (
        spec.bias_strength * noise_field(shape, 0.3 * min(shape), rng) for _ in range(2)
    )
    change = np.linspace(0.0, 1.0, n)
    frames = np.empty(warped.shape, dtype=np.float32)
    for t in range(n):
        signal = warped[t] * np.exp(bias_a + change[t] * (bias_b - bias_a))
        if sigma > 0:
            noise = rng.standard_normal((2, *shape)) * sigma
            signal = np.hypot(signal + noise[0], noise[1])
        frames[t] = minmax_scale(signal) if spec.minmax_scale else signal
    return frames


SEMI_SYNTHETIC_SPECS: dict[str, SemiSyntheticSpec] = {
    "semi_breath_jump": SemiSyntheticSpec(name="semi_breath_jump", jump_frame=40, seed=401),
    "semi_breath": SemiSyntheticSpec(name="semi_breath", jump_mm=(0.0, 0.0), seed=402),
    "semi_jump_deform": SemiSyntheticSpec(
        name="semi_jump_deform",
        jump_frame=40,
        deformation_mm=5.0,
        snr=12.0,
        bias_strength=0.2,
        seed=403,
    ),
}
"""Semi-synthetic cases the accuracy benchmark builds from each real case's frame 0: 80 frames
at 8 Hz, 12 mm breathing, and a (-20, -35) mm jump over frames 40-48 (like the development
case's), or no jump, or the jump with a stronger deformation, more noise and bias."""
