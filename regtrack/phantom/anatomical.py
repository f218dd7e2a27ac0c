"""Synthetic sagittal cine-MRI cases with exactly known motion.

A phantom case is a 2D+t sequence that looks like a sagittal MR-linac cine (thorax and upper
abdomen), with the tumour's ground-truth mask on every frame and the displacement field that
produced every frame. It feeds the demo, the tests and the accuracy benchmarks, so it is built
to be hard in the ways real TrackRAD sequences are hard:

- **Sliding.** Static anatomy (body outline, subcutaneous fat, chest/abdominal wall with
  ribs, aorta, spine with vertebral bodies, discs and spinal canal) surrounds a body cavity
  whose boundary never moves. The cavity content (lung with vessels, diaphragm, liver with
  vessels and gallbladder, kidney in perirenal fat, bowel loops) slides inside it, so the
  displacement field is discontinuous at the cavity wall.
- **Irregular breathing.** Cycle-to-cycle period and amplitude variation, asymmetric cycles
  with an end-exhale rest, wandering end-exhale level, hysteresis (the anterior-posterior
  component lags the superior-inferior one), slow baseline drift and optional sudden baseline
  shifts (a large translation within a dozen frames that persists).
- **Appearance changes.** Rician noise, a smooth bias field that can change over the
  sequence, per-frame global gain/offset rescaling, a faint or strong tumour, through-plane
  change of the tumour's cross-section and texture, and optional slow contrast change.

Orientation and units
---------------------
Frames are ``(H, W)`` arrays with 1 mm square pixels. Rows run superior -> inferior (row 0
is the head end), columns run anterior -> posterior (column 0 is in front of the patient, the
spine is on the right-hand side of the image). Coordinates in mm equal pixel indices.

Displacement convention
-----------------------
``displacement_mm[t]`` is a pull-back field in frame-t coordinates: the pixel at ``x`` of
frame t shows the cavity content that sat at ``x - u_t(x)`` in frame 0,

    frame_t(x) = content_0(x - u_t(x))   inside the cavity,
    frame_t(x) = static(x)               outside it (where u_t = 0),

and ``u_0 = 0``. Positive row components move content inferiorly, positive column components
posteriorly. With ``through_plane == 0`` the masks obey the same law exactly:
``mask_t(x) = mask_0(x - u_t(x))``. With ``through_plane > 0`` the tumour's cross-section also
changes (scale and lobulation about its own centre, in frame-0 coordinates) before it is
carried by the same field.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..gate import centroid_mm
from .signals import minmax_scale, noise_field, smooth_signal, smoothstep

logger = logging.getLogger(__name__)

__all__ = [
    "APPEARANCE_SPECS",
    "BENCHMARK_SPECS",
    "CASE_SETS",
    "FINE_MOTION_SPECS",
    "NAMED_SPECS",
    "REALISTIC_SPECS",
    "SEVERE_SPECS",
    "SITES",
    "PhantomCase",
    "PhantomSpec",
    "generate_phantom",
    "write_phantom_case",
]

SITES = ("lung", "liver", "kidney")
"""Tumour sites understood by :class:`PhantomSpec`."""

_SCANNED_REGION = {"lung": "thorax", "liver": "abdomen", "kidney": "abdomen"}
_DESIGN_MM = 256.0  # the anatomy is laid out for a 256 mm field of view and scaled to `shape`
_PAD = (128, 48)  # margin (rows, cols) of the content canvas around the frame, px
_MAX_MOTION_MM = _PAD[0] - 16.0
_SIGNAL_SCALE = 1000.0  # frames are returned in arbitrary MR-like units around 0-1000


# --------------------------------------------------------------------------------------------
# Public configuration and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSpec:
    """Settings of one synthetic case.

    All lengths are in mm (1 mm pixels), times in seconds, intensities as fractions of the
    anatomy's dynamic range (fat ~0.85, liver ~0.42, lung ~0.07) before noise and rescaling.

    Attributes
    ----------
    name : str
        Case name, used as the TrackRAD folder name.
    n_frames : int
        Number of frames T (>= 2).
    shape : tuple of int
        Frame shape (H, W) in pixels (>= 96 each). The anatomy is scaled to fit; tumour size
        and motion are not.
    frame_rate_hz : float
        Frames per second; at 1-2 Hz consecutive frames differ a lot.
    site : str
        Tumour site: ``"lung"`` (in the lower lung, a few mm from the posterior chest wall),
        ``"liver"`` (in the liver, below the dome) or ``"kidney"`` (in the kidney).
    tumour_radius_mm : float
        Mean radius of the tumour cross-section (1-60 mm; 56 mm is about 100 cm2).
    tumour_contrast : float
        Tumour intensity minus the mean intensity of the tissue it sits in, as a fraction of
        the dynamic range; negative values make a dark tumour. Faint tumours: ~0.05.
    tumour_contrast_change : float
        Relative change of the contrast over the sequence (linear): -0.5 halves it by the
        last frame.
    tumour_lobulation : float
        Irregularity of the tumour outline, 0 (disc) to 1 (strongly lobulated).
    tumour_position_mm : tuple of float or None
        Tumour centre (row, col) in frame-0 coordinates; None picks a site-specific place.
    breathing_amplitude_mm : float
        Mean peak-to-peak superior-inferior excursion of the diaphragm per breath.
    breathing_period_s : float
        Mean breathing period.
    irregularity : float
        0 gives a regular sin^2 breathing trace; 1 gives strong cycle-to-cycle variation of
        period (~20 %), amplitude (~35 %), cycle shape and end-exhale level.
    hysteresis : float
        Lag of the anterior-posterior motion behind the superior-inferior motion, as a
        fraction of the breathing period (gives elliptical trajectories).
    drift_mm : float
        Slow superior-inferior baseline drift reached by the last frame (positive: inferior).
    baseline_shift_mm : float
        Sudden superior-inferior baseline shift (positive: inferior), e.g. 40 for a patient
        shift or a deep breath hold; 0 for none. The content translates by this amount (plus
        a tenth of it anteriorly) and stays there.
    baseline_shift_frame : int or None
        Frame at which the shift starts; None draws one in the middle third of the sequence.
    baseline_shift_frames : int
        Number of frames over which the shift happens (smooth ramp).
    through_plane : float
        Relative change of the tumour cross-section (radius scale within about
        ``1 +- through_plane``, with breathing and slowly over time), plus matching change of
        lobulation and decorrelation of the tumour texture. 0 keeps the cross-section fixed.
    anatomy_change : float
        Through-plane change of the anatomy around the tumour: breathing also moves the body
        across the slice, so vessels and bowel come and go. Each frame blends the frame-0
        content with that of a neighbouring slice (other vessels, bowel, texture; same organs)
        by up to this weight, growing with the distance from the frame-0 breathing position.
        It changes appearance only; the motion and the masks stay exact. 0 for none.
    snr : float
        Mean body signal over the noise standard deviation of the (Rician) noise; ``inf``
        gives no noise.
    bias_strength : float
        Amplitude of the smooth multiplicative bias field (0.15 gives about +-15 %).
    intensity_drift : float
        Strength of the per-frame global gain/offset rescaling (frame-to-frame jitter plus a
        slow drift) and of the change of the bias field over the sequence.
    texture : float
        Strength of the fine parenchymal texture of organs and body wall (1: the default rich
        texture; 0.2: smooth organs with few edges besides vessels, as bSSFP cines look).
    minmax_scale : bool
        Rescale every frame to 0..255 on its own and round it, as exported cine frames are
        (then a frame's intensity scale says nothing about the next one's).
    seed : int
        Seed of the numpy random generator; a case is a deterministic function of its spec.
    """

    name: str = "phantom"
    n_frames: int = 60
    shape: tuple[int, int] = (256, 256)
    frame_rate_hz: float = 4.0
    site: str = "liver"
    tumour_radius_mm: float = 15.0
    tumour_contrast: float = 0.3
    tumour_contrast_change: float = 0.0
    tumour_lobulation: float = 0.5
    tumour_position_mm: tuple[float, float] | None = None
    breathing_amplitude_mm: float = 12.0
    breathing_period_s: float = 4.0
    irregularity: float = 0.3
    hysteresis: float = 0.1
    drift_mm: float = 3.0
    baseline_shift_mm: float = 0.0
    baseline_shift_frame: int | None = None
    baseline_shift_frames: int = 12
    through_plane: float = 0.1
    anatomy_change: float = 0.0
    snr: float = 20.0
    bias_strength: float = 0.15
    intensity_drift: float = 0.2
    texture: float = 1.0
    minmax_scale: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        if self.tumour_position_mm is not None:
            object.__setattr__(
                self, "tumour_position_mm", tuple(float(v) for v in self.tumour_position_mm)
            )
        for message in _spec_problems(self):
            raise ValueError(f"PhantomSpec: {message}")

    @property
    def scanned_region(self) -> str:
        """TrackRAD scanned region of the site: ``"thorax"`` or ``"abdomen"``."""
        return _SCANNED_REGION[self.site]


def _spec_problems(spec: PhantomSpec) -> list[str]:
    """List what is wrong with a spec (empty when it is valid)."""
    checks = [
        (spec.site in SITES, f"site must be one of {list(SITES)}, got {spec.site!r}"),
        (int(spec.n_frames) >= 2, f"n_frames must be >= 2, got {spec.n_frames}"),
        (
            len(spec.shape) == 2 and min(spec.shape) >= 96,
            f"shape must be (H, W) with H, W >= 96, got {spec.shape}",
        ),
        (spec.frame_rate_hz > 0, f"frame_rate_hz must be > 0, got {spec.frame_rate_hz}"),
        (
            1.0 <= spec.tumour_radius_mm <= 60.0,
            f"tumour_radius_mm must be in [1, 60], got {spec.tumour_radius_mm}",
        ),
        (
            abs(spec.tumour_contrast) <= 1.0,
            f"tumour_contrast must be in [-1, 1], got {spec.tumour_contrast}",
        ),
        (
            0.0 <= spec.tumour_lobulation <= 1.0,
            f"tumour_lobulation must be in [0, 1], got {spec.tumour_lobulation}",
        ),
        (
            spec.breathing_amplitude_mm >= 0,
            f"breathing_amplitude_mm must be >= 0, got {spec.breathing_amplitude_mm}",
        ),
        (
            spec.breathing_period_s >= 0.5,
            f"breathing_period_s must be >= 0.5, got {spec.breathing_period_s}",
        ),
        (
            0.0 <= spec.irregularity <= 1.0,
            f"irregularity must be in [0, 1], got {spec.irregularity}",
        ),
        (0.0 <= spec.hysteresis <= 0.5, f"hysteresis must be in [0, 0.5], got {spec.hysteresis}"),
        (
            _motion_bound_mm(spec) <= _MAX_MOTION_MM,
            (
                f"breathing_amplitude_mm, drift_mm and baseline_shift_mm together may move content"
                f" up to {_motion_bound_mm(spec):.0f} mm; at most {_MAX_MOTION_MM:.0f} mm is supported"
            ),
        ),
        (
            spec.baseline_shift_frames >= 1,
            f"baseline_shift_frames must be >= 1, got {spec.baseline_shift_frames}",
        ),
        (
            spec.baseline_shift_frame is None or 0 <= spec.baseline_shift_frame < spec.n_frames,
            f"baseline_shift_frame must be in [0, n_frames), got {spec.baseline_shift_frame}",
        ),
        (
            0.0 <= spec.through_plane <= 0.5,
            f"through_plane must be in [0, 0.5], got {spec.through_plane}",
        ),
        (
            0.0 <= spec.anatomy_change <= 1.0,
            f"anatomy_change must be in [0, 1], got {spec.anatomy_change}",
        ),
        (spec.snr > 0, f"snr must be > 0 (inf for no noise), got {spec.snr}"),
        (spec.bias_strength >= 0, f"bias_strength must be >= 0, got {spec.bias_strength}"),
        (spec.intensity_drift >= 0, f"intensity_drift must be >= 0, got {spec.intensity_drift}"),
        (spec.texture >= 0, f"texture must be >= 0, got {spec.texture}"),
    ]
    return [message for ok, message in checks if not ok]


def _motion_bound_mm(spec: PhantomSpec) -> float:
    """Upper bound of the content displacement a spec can produce, mm."""
    breathing = 1.8 * spec.breathing_amplitude_mm * (1.0 + 0.5 * spec.irregularity)
    return breathing + 2.0 + abs(spec.drift_mm) + abs(spec.baseline_shift_mm)


@dataclass
class PhantomCase:
    """A generated case: frames, ground-truth masks and the motion that made them.

    Attributes
    ----------
    spec : PhantomSpec
        The settings it was generated from.
    frames : ndarray, shape (T, H, W), float32
        MR-like magnitude frames (arbitrary units, roughly 0-1000, rescaled per frame; 0..255
        integers with ``minmax_scale``).
    masks : ndarray, shape (T, H, W), uint8
        Ground-truth tumour masks, 0/1, non-empty on every frame.
    displacement_mm : ndarray, shape (T, H, W, 2), float32
        Pull-back displacement (row, col) in mm: frame t at ``x`` shows the frame-0 content
        at ``x - u_t(x)``; ``u_0 = 0`` and ``u_t = 0`` outside the cavity (sliding).
    cavity_mask : ndarray, shape (H, W), bool
        The static region whose content moves; everything outside it is static.
    breathing_mm : ndarray, shape (T,), float32
        Superior-inferior diaphragm position relative to frame 0 (breathing, drift and
        shift), mm, positive inferior.
    spacing_mm : tuple of float
        (row, col) pixel spacing, always (1.0, 1.0).
    info : dict
        Extra facts: ``tumour_centre_mm`` and ``tumour_area_mm2`` (frame 0),
        ``tumour_intensity`` and ``local_tissue_intensity`` (frame 0, dynamic-range units
        before bias, noise and rescaling), ``baseline_shift_frame`` (None without a shift),
        ``min_jacobian`` (smallest determinant of the content mapping inside the cavity over
        all frames), ``noise_sigma`` (Rician noise level, dynamic-range units).
    """

    spec: PhantomSpec
    frames: np.ndarray
    masks: np.ndarray
    displacement_mm: np.ndarray
    cavity_mask: np.ndarray
    breathing_mm: np.ndarray
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def first_mask(self) -> np.ndarray:
        """Mask of frame 0, shape (H, W), bool."""
        return self.masks[0].astype(bool)

    @property
    def centroids_mm(self) -> np.ndarray:
        """Tumour centroid (row, col) per frame in mm, shape (T, 2), float64."""
        return centroid_mm(self.masks, self.spacing_mm)

    @property
    def times_s(self) -> np.ndarray:
        """Acquisition time of each frame in s, shape (T,)."""
        return np.arange(len(self.frames)) / self.spec.frame_rate_hz


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def generate_phantom(spec: PhantomSpec | None = None, **overrides: Any) -> PhantomCase:
    """Generate a synthetic sagittal cine-MRI case with known motion.

    Parameters
    ----------
    spec : PhantomSpec, optional
        Settings; the defaults of :class:`PhantomSpec` when omitted.
    **overrides
        Fields of :class:`PhantomSpec` to replace, e.g. ``n_frames=20, seed=3``.

    Returns
    -------
    PhantomCase
        Frames ``(T, H, W)`` float32, masks ``(T, H, W)`` uint8, displacement
        ``(T, H, W, 2)`` float32 in mm (see the module docstring for the convention).

    Raises
    ------
    TypeError
        If an override names no field of :class:`PhantomSpec`.
    ValueError
        If a setting is out of range, or ``tumour_position_mm`` lies outside the cavity.

    Examples
    --------
    >>> case = generate_phantom(n_frames=8, shape=(128, 128), seed=1)
    >>> case.frames.shape, case.masks.dtype
    ((8, 128, 128), dtype('uint8'))
    >>> bool(case.masks.any(axis=(1, 2)).all())
    True
    """
    spec = _resolve_spec(spec, overrides)
    geometry = _Geometry(spec.shape)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(6)]
    static, body, cavity_weight = _static_anatomy(geometry, rngs[0], spec.texture)
    content = _content_anatomy(geometry, rngs[1], spec.texture)
    traces, shift_frame = _motion_traces(spec, rngs[2])
    maps = _motion_maps(geometry, rngs[2])
    field_mm = _displacement(maps, traces)
    tumour = _make_tumour(spec, geometry, content, traces[:, 0], rngs[3])
    neighbour = (
        _content_anatomy(geometry, rngs[5], spec.texture) if spec.anatomy_change > 0 else None
    )
    blend = _anatomy_blend(traces[:, 0], spec)
    images, masks = _render(static, cavity_weight, (content, neighbour, blend), field_mm, tumour)
    if not masks[0].any():
        raise ValueError(
            f"PhantomSpec: tumour_position_mm={spec.tumour_position_mm} puts the"
            " tumour outside the sliding body cavity; move it inside"
        )
    frames, sigma = _apply_appearance(images, body, spec, rngs[4])
    cavity = cavity_weight >= 0.5
    field_mm *= cavity[None, :, :, None]
    info = _case_info(tumour, masks, _min_jacobian(maps, traces, cavity), shift_frame, sigma)
    _warn_if_unrealistic(spec, masks, info)
    return PhantomCase(
        spec=spec,
        frames=frames,
        masks=masks,
        displacement_mm=field_mm,
        cavity_mask=cavity,
        breathing_mm=(traces[:, 0] + traces[:, 3]).astype(np.float32),
        info=info,
    )


def write_phantom_case(case: PhantomCase, directory: str | os.PathLike[str]) -> Path:
    """Write a phantom case in the TrackRAD folder layout.

    Parameters
    ----------
    case : PhantomCase
        The case; its ``spec.name`` names the folder.
    directory : str or Path
        Folder that receives ``<name>/images``, ``<name>/targets`` and the JSON metadata.

    Returns
    -------
    Path
        The case folder ``directory / case.spec.name``.
    """
    from regtrack.io import write_trackrad_case

    return write_trackrad_case(
        directory,
        case.spec.name,
        case.frames,
        case.first_mask.astype(np.uint8),
        labels=case.masks,
        spacing_mm=case.spacing_mm,
        frame_rate_hz=case.spec.frame_rate_hz,
        field_strength_t=0.35,
        scanned_region=case.spec.scanned_region,
    )


def _resolve_spec(spec: PhantomSpec | None, overrides: dict[str, Any]) -> PhantomSpec:
    """Apply keyword overrides to a spec, with a helpful error for unknown names."""
    spec = PhantomSpec() if spec is None else spec
    if not isinstance(spec, PhantomSpec):
        raise TypeError(f"generate_phantom() 'spec' must be a PhantomSpec, got {type(spec)}")
    valid = {f.name for f in dataclasses.fields(PhantomSpec)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(
            f"generate_phantom() got unknown setting(s) {unknown}; valid names are {sorted(valid)}"
        )
    return dataclasses.replace(spec, **overrides)


def _case_info(
    tumour: _Tumour, masks: np.ndarray, min_jacobian: float, shift_frame: int | None, sigma: float
) -> dict[str, Any]:
    """Collect the extra facts stored in ``PhantomCase.info``."""
    return {
        "tumour_centre_mm": tuple(float(v) for v in centroid_mm(masks[0], (1.0, 1.0))),
        "tumour_area_mm2": float(masks[0].sum()),
        "tumour_intensity": float(tumour.intensity[0]),
        "local_tissue_intensity": float(tumour.intensity[0] - tumour.contrast[0]),
        "baseline_shift_frame": shift_frame,
        "min_jacobian": min_jacobian,
        "noise_sigma": sigma,
    }


def _warn_if_unrealistic(spec: PhantomSpec, masks: np.ndarray, info: dict[str, Any]) -> None:
    """Log what makes a case less realistic than intended (tumour clipped, folding)."""
    edge = masks[:, [0, -1], :].any() or masks[:, :, [0, -1]].any()
    if edge:
        logger.warning("phantom %r: the tumour touches the frame border", spec.name)
    if info["min_jacobian"] < 0.2:
        logger.warning(
            "phantom %r: strong compression, min Jacobian %.2f", spec.name, info["min_jacobian"]
        )
    expected = math.pi * spec.tumour_radius_mm**2
    if info["tumour_area_mm2"] < 0.6 * expected:
        logger.warning(
            "phantom %r: frame-0 tumour area %.0f mm2 of about %.0f expected; is the"
            " tumour outside the cavity?",
            spec.name,
            info["tumour_area_mm2"],
            expected,
        )
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        logger.warning("phantom %r: empty mask on frames %s", spec.name, empty[:10].tolist())


def _min_jacobian(maps: np.ndarray, traces: np.ndarray, cavity: np.ndarray) -> float:
    """Smallest determinant of x -> x - u_t(x) over the cavity and all frames."""
    # u_t = sum_k traces[t, k] maps[k], so its gradient is the same sum of the maps' gradients
    grads = np.stack(np.gradient(maps, axis=(1, 2)), axis=-1)[:, cavity]  # (K, N, 2, 2)
    jac = np.tensordot(traces, grads, axes=(1, 0))  # (T, N, 2, 2)
    det = (1.0 - jac[..., 0, 0]) * (1.0 - jac[..., 1, 1]) - jac[..., 0, 1] * jac[..., 1, 0]
    return float(det.min())


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60.0, 60.0)))


def _window(shape: tuple[int, ...], centre: np.ndarray, half: int) -> tuple[slice, slice]:
    """Slices of a (2 half + 1)-wide square window around an integer centre, clipped."""
    rows, cols = (
        slice(max(int(c) - half, 0), min(int(c) + half + 1, n)) for c, n in zip(centre, shape)
    )
    return rows, cols


def _ellipse(
    rows: np.ndarray,
    cols: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float = 0.0,
) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside) of an ellipse with semi-axes (row, col)."""
    dr, dc = rows - centre[0], cols - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * dr + sin * dc, -sin * dr + cos * dc
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Anatomical landmarks as smooth curves, in pixels, scaled from a 256 mm design."""

    shape: tuple[int, int]

    @property
    def sy(self) -> float:
        """Row scale of the design."""
        return self.shape[0] / _DESIGN_MM

    @property
    def sx(self) -> float:
        """Column scale of the design."""
        return self.shape[1] / _DESIGN_MM

    def ant_skin(self, rows: np.ndarray) -> np.ndarray:
        """Column of the anterior skin (abdomen bulges forward inferiorly)."""
        d = rows / self.sy
        return self.sx * (24.0 - 10.0 * np.exp(-(((d - 215.0) / 70.0) ** 2)))

    def post_skin(self, rows: np.ndarray) -> np.ndarray:
        """Column of the posterior skin."""
        return self.sx * (243.0 + 3.0 * np.sin(rows / self.sy / 70.0))

    def ant_fat(self, rows: np.ndarray) -> np.ndarray:
        """Thickness of the anterior subcutaneous fat (thicker over the abdomen)."""
        return self.sx * (5.0 + 6.0 * _sigmoid((rows / self.sy - 140.0) / 25.0))

    def ant_wall(self, rows: np.ndarray) -> np.ndarray:
        """Thickness of the chest (with ribs) / abdominal wall muscle."""
        return self.sx * (13.0 - 5.0 * _sigmoid((rows / self.sy - 130.0) / 20.0))

    def cavity_ant(self, rows: np.ndarray) -> np.ndarray:
        """Anterior boundary (column) of the sliding cavity."""
        return self.ant_skin(rows) + self.ant_fat(rows) + self.ant_wall(rows)

    def spine_ant(self, rows: np.ndarray) -> np.ndarray:
        """Anterior edge (column) of the vertebral bodies."""
        return self.sx * (179.0 + 4.0 * np.sin((rows / self.sy + 20.0) / 80.0))

    def cavity_post(self, rows: np.ndarray) -> np.ndarray:
        """Posterior boundary (column) of the sliding cavity, in front of the aorta."""
        return self.spine_ant(rows) - 17.0 * self.sx

    def dome(self, cols: np.ndarray) -> np.ndarray:
        """Row of the diaphragm dome in frame 0 (deep posterior recess)."""
        d = cols / self.sx
        return self.sy * (96.0 + 0.003 * (d - 95.0) ** 2 + 24.0 * _sigmoid((d - 140.0) / 9.0))

    def liver_bottom(self, cols: np.ndarray) -> np.ndarray:
        """Row of the inferior liver edge."""
        return self.sy * (200.0 + 0.3 * (cols / self.sx - 50.0))

    @property
    def kidney(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Centre (row, col) and semi-axes of the kidney."""
        return (212.0 * self.sy, 140.0 * self.sx), (36.0 * self.sy, 14.0 * self.sx)


def _static_anatomy(
    geometry: _Geometry, rng: np.random.Generator, texture: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static image (H, W), body mask and soft cavity weight (0-1)."""
    height, width = geometry.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    line = np.arange(height, dtype=np.float64)[:, None]
    image = _body_layers(geometry, line, cols)
    image = _paint_spine(image, geometry, line, rows, cols, rng)
    image = _paint_ribs(image, geometry, line, rows, cols)
    body = (cols >= geometry.ant_skin(line)) & (cols <= geometry.post_skin(line))
    image = np.where(
        body, image * (1.0 + 0.05 * texture * noise_field(image.shape, 2.0, rng)), image
    )
    image = ndimage.gaussian_filter(image, 0.6)
    to_wall = np.minimum(cols - geometry.cavity_ant(line), geometry.cavity_post(line) - cols)
    cavity_weight = np.clip(to_wall + 0.5, 0.0, 1.0)
    return image, body, cavity_weight


def _body_layers(geometry: _Geometry, line: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Skin, fat, wall muscle, prevertebral fat, aorta and back layers, column-wise."""
    sx = geometry.sx
    ant, post = geometry.ant_skin(line), geometry.post_skin(line)
    fat_end = ant + geometry.ant_fat(line)
    spine = geometry.spine_ant(line)
    layers = [  # (start column, intensity), painted left to right
        (ant, 0.45),
        (ant + 1.5 * sx, 0.85),
        (fat_end, 0.30),
        (geometry.cavity_ant(line), 0.35),
        (geometry.cavity_post(line), 0.75),
        (spine - 15.0 * sx, 0.82),
        (spine - 2.0 * sx, 0.7),
        (spine + 39.0 * sx, 0.30),
        (post - 9.0 * sx, 0.85),
        (post - 1.5 * sx, 0.45),
        (post, 0.0),
    ]
    image = np.zeros(np.broadcast_shapes(line.shape, cols.shape))
    for start, value in layers:
        image = np.where(cols >= start, value, image)
    return image


def _paint_spine(
    image: np.ndarray,
    geometry: _Geometry,
    line: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vertebral bodies, bright discs, dark endplates, spinal canal and spinous processes."""
    sx, sy = geometry.sx, geometry.sy
    spine = geometry.spine_ant(line)
    period, disc = 31.0 * sy, 7.0 * sy
    offset = rng.uniform(0.0, period)
    within = (line + offset) % period
    body_value = np.where(within < disc, 0.72, 0.48)
    endplate = (np.abs(within - disc) < 1.2 * sy) | (within > period - 1.2 * sy)
    body_value = np.where(endplate, 0.12, body_value)
    cortex = (cols < spine + 1.2 * sx) | (cols > spine + 24.8 * sx)
    in_body = (cols >= spine) & (cols < spine + 26.0 * sx)
    image = np.where(in_body, np.where(cortex & (within >= disc), 0.15, body_value), image)
    canal = (cols >= spine + 27.0 * sx) & (cols < spine + 38.0 * sx)
    cord = (cols >= spine + 30.0 * sx) & (cols < spine + 35.0 * sx)
    image = np.where(canal, np.where(cord, 0.42, 0.92), image)
    image = np.where((cols >= spine + 26.0 * sx) & (cols < spine + 27.0 * sx), 0.2, image)
    image = np.where((cols >= spine + 38.0 * sx) & (cols < spine + 39.0 * sx), 0.2, image)
    n_levels = int(np.ceil(geometry.shape[0] / period)) + 2
    for level in range(-1, n_levels):
        centre_row = level * period - offset + disc + 0.6 * period
        centre = (centre_row, float(geometry.spine_ant(np.array(centre_row))) + 49.0 * sx)
        radius = _ellipse(rows, cols, centre, (6.0 * sy, 8.0 * sx), angle=0.5)
        image = np.where(radius < 1.0, np.where(radius < 0.65, 0.42, 0.12), image)
    return image


def _paint_ribs(
    image: np.ndarray, geometry: _Geometry, line: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Rib cross-sections (dark cortex, grey marrow) in the anterior chest wall."""
    sx, sy = geometry.sx, geometry.sy
    for row in np.arange(10.0, 128.0, 22.0) * sy:
        r = np.array(row)
        col = float(geometry.ant_skin(r) + geometry.ant_fat(r) + 0.5 * geometry.ant_wall(r))
        radius = _ellipse(rows, cols, (float(row), col), (5.0 * sy, 3.5 * sx), angle=-0.3)
        image = np.where(radius < 1.0, np.where(radius < 0.6, 0.45, 0.1), image)
    return image


@dataclass
class _Content:
    """Frame-0 cavity content on a canvas padded by `_PAD` around the frame."""

    image: np.ndarray  # (H + 2 pad_r, W + 2 pad_c)
    liver: np.ndarray  # bool, same shape
    lung: np.ndarray  # bool, same shape

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Intensity at frame-0 coordinates (linear interpolation), float32."""
        return self.sample_canvas(np.stack([rows + _PAD[0], cols + _PAD[1]]))

    def sample_canvas(self, coords: np.ndarray) -> np.ndarray:
        """Intensity at canvas coordinates, shape (2, ...) -> (...)."""
        flat = coords.reshape(2, -1)
        values = ndimage.map_coordinates(self.image, flat, order=1, mode="nearest")
        return values.reshape(coords.shape[1:])


def _content_anatomy(
    geometry: _Geometry, rng: np.random.Generator, texture: float = 1.0
) -> _Content:
    """Lung, diaphragm, liver, gallbladder, kidney and bowel in frame-0 coordinates."""
    height, width = geometry.shape
    rows, cols = np.mgrid[-_PAD[0] : height + _PAD[0], -_PAD[1] : width + _PAD[1]].astype(
        np.float64
    )
    dome = geometry.dome(cols[:1])
    lung = rows < dome - 2.0 * geometry.sy
    liver = (rows >= dome + 3.0 * geometry.sy) & (rows < geometry.liver_bottom(cols[:1]))
    image = np.where(lung, 0.07, np.where(liver, 0.42, 0.27))
    below = rows >= geometry.liver_bottom(cols[:1])
    image = np.where(below, 0.34, image)
    image = image + texture * np.where(lung, 0.012, 0.03) * noise_field(image.shape, 2.5, rng)
    image = _paint_vessels(image, lung, geometry, rng, organ="lung")
    image = _paint_vessels(image, liver, geometry, rng, organ="liver")
    gallbladder = _ellipse(
        rows,
        cols,
        (185.0 * geometry.sy, 68.0 * geometry.sx),
        (17.0 * geometry.sy, 8.0 * geometry.sx),
        angle=0.5,
    )
    image = np.where(liver & (gallbladder < 1.0), 0.9, image)
    image = _paint_bowel(image, below, rows, cols, geometry, rng)
    image = _paint_kidney(image, rows, cols, geometry)
    image = ndimage.gaussian_filter(image, 0.6)
    liver &= gallbladder >= 1.0
    return _Content(image=image.astype(np.float32), liver=liver, lung=lung)


def _vessel_paths(
    origins: np.ndarray, length: float, width: float, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random tortuous branching curves (points, widths) from each of `origins` (N, 2)."""
    angles = rng.uniform(0.0, 2.0 * np.pi, len(origins))
    todo = [
        (np.asarray(o, dtype=np.float64), a, length * rng.uniform(0.6, 1.4), width, 2)
        for o, a in zip(origins, angles)
    ]
    paths = []
    while todo:
        start, angle, span, thick, depth = todo.pop()
        n = max(int(span), 2)
        heading = angle + np.cumsum(rng.normal(0.0, 0.07, n))
        points = start + np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1), axis=0)
        widths = np.linspace(thick, 0.45 * thick, n)
        paths.append((points, widths))
        for _ in range(2 if depth else 0):
            i = int(rng.integers(n // 4, max(3 * n // 4, n // 4 + 1)))
            turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.9)
            todo.append((points[i], heading[i] + turn, 0.55 * span, 0.7 * widths[i], depth - 1))
    return paths


def _tube_weight(shape: tuple[int, int], paths: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Soft occupancy (0-1) of tubes drawn along `paths` (canvas pixel coordinates)."""
    points = np.concatenate([p for p, _ in paths])
    widths = np.concatenate([w for _, w in paths])
    idx = np.round(points).astype(int)
    keep = (idx[:, 0] >= 0) & (idx[:, 0] < shape[0]) & (idx[:, 1] >= 0) & (idx[:, 1] < shape[1])
    idx, widths = idx[keep], widths[keep]
    centre = np.zeros(shape, dtype=bool)
    width_map = np.zeros(shape)
    centre[idx[:, 0], idx[:, 1]] = True
    np.maximum.at(width_map, (idx[:, 0], idx[:, 1]), widths)
    dist, (ir, ic) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return _sigmoid((0.5 * width_map[ir, ic] - dist) / 0.35)


def _paint_vessels(
    image: np.ndarray,
    region: np.ndarray,
    geometry: _Geometry,
    rng: np.random.Generator,
    *,
    organ: str,
) -> np.ndarray:
    """Bright vessel trees and cross-sections inside `region` (lung or liver)."""
    if organ == "lung":
        n_roots, length, width, value, n_dots, dot_radius = 36, 40.0, 2.2, 0.4, 40, (0.8, 2.0)
    else:
        n_roots, length, width, value, n_dots, dot_radius = 7, 45.0, 4.5, 0.72, 10, (1.5, 3.5)
    found = np.argwhere(region)
    origins = found[rng.choice(len(found), size=n_roots, replace=False)]
    paths = _vessel_paths(origins, length * (geometry.sx + geometry.sy) / 2.0, width, rng)
    weight = _tube_weight(image.shape, paths)
    for i in rng.choice(len(found), size=n_dots, replace=False):
        radius = rng.uniform(*dot_radius)
        win = _window(image.shape, found[i], int(radius) + 3)
        rr, cc = np.ogrid[win]
        dist = np.hypot(rr - found[i][0], cc - found[i][1])
        weight[win] = np.maximum(weight[win], _sigmoid((radius - dist) / 0.35))
    return np.where(region, image + (value - image) * weight, image)


def _paint_bowel(
    image: np.ndarray,
    region: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    geometry: _Geometry,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bowel loops (wall ring around fluid, gas or chyme) below the liver."""
    found = np.argwhere(region & (cols < geometry.spine_ant(rows)))
    image = image.copy()
    for i in rng.choice(len(found), size=40, replace=False):
        centre = (rows[tuple(found[i])], cols[tuple(found[i])])
        size = rng.uniform(7.0, 14.0)
        win = _window(image.shape, found[i], int(size) + 2)
        radius = _ellipse(
            rows[win],
            cols[win],
            centre,
            (size, size * rng.uniform(0.6, 1.0)),
            angle=rng.uniform(0.0, np.pi),
        )
        lumen = rng.choice([0.88, 0.04, 0.3], p=[0.5, 0.25, 0.25])
        loop = np.where(radius < 1.0 - 2.0 / size, lumen, 0.52)
        image[win] = np.where(region[win] & (radius < 1.0), loop, image[win])
    return image


def _paint_kidney(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, geometry: _Geometry
) -> np.ndarray:
    """Kidney (cortex, medulla, sinus fat) in perirenal fat, posterior-inferior."""
    centre, axes = geometry.kidney
    fat = _ellipse(
        rows,
        cols,
        (centre[0], centre[1] + 3.0 * geometry.sx),
        (axes[0] + 12.0 * geometry.sy, axes[1] + 11.0 * geometry.sx),
        angle=0.15,
    )
    kidney = _ellipse(rows, cols, centre, axes, angle=0.15)
    sinus = _ellipse(
        rows,
        cols,
        (centre[0], centre[1] + 4.0 * geometry.sx),
        (0.45 * axes[0], 0.3 * axes[1]),
        angle=0.15,
    )
    theta = np.arctan2((rows - centre[0]) / axes[0], (cols - centre[1]) / axes[1])
    medulla = (kidney > 0.55) & (kidney < 0.82) & (np.cos(7.0 * theta) > 0.2)
    image = np.where(fat < 1.0, 0.8, image)
    image = np.where(kidney < 1.0, np.where(medulla, 0.33, 0.56), image)
    return np.where(sinus < 1.0, 0.78, image)


# --------------------------------------------------------------------------------------------
# Motion
# --------------------------------------------------------------------------------------------


def _breathing_trace(times: np.ndarray, spec: PhantomSpec, rng: np.random.Generator) -> np.ndarray:
    """Irregular diaphragm SI position (mm, >= about 0, inferior positive) at `times`."""
    irr, period = spec.irregularity, spec.breathing_period_s
    starts, periods, amplitudes, exponents, skews = [], [], [], [], []
    start = -rng.uniform(0.0, period)
    while start <= times[-1]:
        z = rng.standard_normal(3)
        periods.append(period * float(np.clip(np.exp(0.2 * irr * z[0]), 0.6, 1.6)))
        amplitudes.append(
            spec.breathing_amplitude_mm * float(np.clip(np.exp(0.35 * irr * z[1]), 0.3, 1.8))
        )
        exponents.append(1.0 + irr * rng.uniform(0.0, 1.5))
        skews.append(1.0 - 0.25 * irr * rng.uniform(0.5, 1.0))
        starts.append(start)
        start += periods[-1]
    k = np.searchsorted(np.asarray(starts), times, side="right") - 1
    phase = (times - np.asarray(starts)[k]) / np.asarray(periods)[k]
    phase = phase ** np.asarray(skews)[k]
    trace = np.asarray(amplitudes)[k] * np.sin(np.pi * phase) ** (2.0 * np.asarray(exponents)[k])
    wander = smooth_signal(times, 6.0 * period, rng)
    return trace + 0.1 * irr * spec.breathing_amplitude_mm * wander


def _motion_traces(spec: PhantomSpec, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """Time courses (T, 4) weighting the motion maps, relative to frame 0; the shift frame."""
    n = spec.n_frames
    times = np.arange(n) / spec.frame_rate_hz
    lag = spec.hysteresis * spec.breathing_period_s
    extended = np.concatenate([times - lag, times])
    breathing = _breathing_trace(extended - extended[0], spec, rng)
    si, lagged = breathing[n:], breathing[:n]
    modulation = 1.0 + 0.5 * smooth_signal(times, 3.0 * spec.breathing_period_s, rng)
    duration = max(times[-1], 1e-6)
    drift = spec.drift_mm * (
        0.8 * times / duration + 0.2 * smooth_signal(times, duration / 2.0, rng)
    )
    shift, shift_frame = _baseline_shift(spec, rng)
    traces = np.stack([si, lagged, si * modulation, drift + shift], axis=1)
    return traces - traces[:1], shift_frame


def _baseline_shift(spec: PhantomSpec, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """Sudden SI shift trace (mm per frame) and the frame it starts at (None if no shift)."""
    n = spec.n_frames
    start = spec.baseline_shift_frame
    if start is None:
        start = int(rng.integers(n // 3, max(n // 2, n // 3 + 1)))
    if spec.baseline_shift_mm == 0:
        return np.zeros(n), None
    ramp = smoothstep((np.arange(n) - start) / spec.baseline_shift_frames)
    return spec.baseline_shift_mm * ramp, start


def _motion_maps(geometry: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Spatial motion patterns (4, H, W, 2), mm of content motion per mm of trace."""
    height, width = geometry.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    line = rows[:, :1]
    front, back = geometry.cavity_ant(line), geometry.cavity_post(line)
    depth = np.clip((cols - front) / (back - front), 0.0, 1.0)
    taper = np.sin(np.pi * depth)  # normal (AP) motion vanishes at the walls
    above = (geometry.dome(cols[:1]) - rows) / geometry.sy  # mm above the dome (design)
    si = 1.0 - 0.8 * smoothstep((above + 10.0) / 260.0)  # decays towards the apex
    si *= 1.0 - 0.35 * smoothstep(-above / 170.0)  # and slowly into the abdomen
    si *= 0.85 + 0.15 * depth  # posterior parts move more
    maps = np.zeros((4, height, width, 2))
    maps[0, ..., 0] = si  # superior-inferior breathing
    maps[1, ..., 1] = -0.15 * si * taper  # anterior on inspiration (lagged: hysteresis)
    random_r = noise_field((height, width), 40.0 * geometry.sy, rng)
    random_c = noise_field((height, width), 40.0 * geometry.sx, rng)
    maps[2, ..., 0] = 0.05 * random_r * si  # non-rigid part with its own time course
    maps[2, ..., 1] = 0.04 * random_c * taper
    maps[3, ..., 0] = 1.0  # drift and sudden shift: translation of the whole content
    maps[3, ..., 1] = -0.1 * taper
    return maps


def _displacement(maps: np.ndarray, traces: np.ndarray) -> np.ndarray:
    """Pull-back field (T, H, W, 2) = sum_k trace_k(t) map_k, before cavity masking."""
    field_mm = np.tensordot(traces.astype(np.float32), maps.astype(np.float32), axes=(1, 0))
    return np.ascontiguousarray(field_mm, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Tumour
# --------------------------------------------------------------------------------------------


@dataclass
class _Tumour:
    """A lobulated blob in frame-0 coordinates, with per-frame cross-section and intensity."""

    centre: np.ndarray  # (2,) row, col
    radius: float
    amplitudes: np.ndarray  # (K,) lobulation harmonics 2..K+1
    phases: np.ndarray  # (T, K)
    scale: np.ndarray  # (T,) through-plane scale of the radius
    intensity: np.ndarray  # (T,) mean tumour intensity
    contrast: np.ndarray  # (T,) intensity minus local tissue
    textures: np.ndarray  # (2, S, S) smooth unit-variance textures around the centre
    texture_mix: np.ndarray  # (T,) angle mixing the two textures
    texture_amplitude: float
    necrotic: bool

    @property
    def reach(self) -> float:
        """Radius beyond which no frame's tumour extends, px."""
        return self.radius * (1.0 + float(self.amplitudes.sum())) * float(self.scale.max()) + 2.0

    def outline(
        self, dr: np.ndarray, dc: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distance from the centre and outline radius along (dr, dc) for frames `t`."""
        dist = np.hypot(dr, dc)
        direction = (dc + 1j * dr) / np.maximum(dist, 1e-9)  # exp(i theta)
        rotation = np.exp(1j * self.phases)  # (T, K)
        power = direction * direction
        shape = np.ones(dist.shape)
        for k, amplitude in enumerate(self.amplitudes):  # sum_k a_k cos(k theta + phase_k)
            shape += amplitude * (power * rotation[t, k]).real
            power *= direction
        return dist, self.radius * self.scale[t] * shape


def _make_tumour(
    spec: PhantomSpec,
    geometry: _Geometry,
    content: _Content,
    breathing: np.ndarray,
    rng: np.random.Generator,
) -> _Tumour:
    """Place the tumour and fix its time-varying cross-section, intensity and texture."""
    n, tp = spec.n_frames, spec.through_plane
    times = np.arange(n) / spec.frame_rate_hz
    progress = times / max(times[-1], 1e-6)  # 0 at the first frame, 1 at the last
    amplitudes = spec.tumour_lobulation * rng.uniform(0.03, 0.09, 4) / np.sqrt(np.arange(1, 5))
    slow = np.stack(
        [smooth_signal(times, 4.0 * spec.breathing_period_s, rng) for _ in range(5)], axis=1
    )
    slow -= slow[:1]
    norm = breathing / max(spec.breathing_amplitude_mm, 1.0)
    size = 2 * int(np.ceil(spec.tumour_radius_mm * 1.6)) + 9
    tumour = _Tumour(
        centre=_tumour_centre(spec, geometry),
        radius=spec.tumour_radius_mm,
        amplitudes=amplitudes,
        phases=rng.uniform(0.0, 2.0 * np.pi, 4) + 3.0 * tp * slow[:, :4],
        scale=1.0 + tp * np.clip(-0.6 * norm + 0.6 * slow[:, 4], -1.0, 1.0),
        intensity=np.zeros(n),
        contrast=spec.tumour_contrast * (1.0 + spec.tumour_contrast_change * progress),
        textures=np.stack([noise_field((size, size), 1.5, rng) for _ in range(2)]),
        texture_mix=tp * (6.0 * progress + 0.3 * slow[:, 0]),
        texture_amplitude=0.035,
        necrotic=spec.tumour_radius_mm >= 30.0,
    )
    tumour.intensity = _local_tissue(tumour, content) + tumour.contrast
    return tumour


def _tumour_centre(spec: PhantomSpec, geometry: _Geometry) -> np.ndarray:
    """Default tumour centre (row, col) in frame-0 coordinates for the spec's site."""
    if spec.tumour_position_mm is not None:
        return np.asarray(spec.tumour_position_mm, dtype=np.float64)
    r = spec.tumour_radius_mm
    if spec.site == "kidney":
        return np.asarray(geometry.kidney[0], dtype=np.float64)
    if spec.site == "lung":
        row = 100.0 * geometry.sy
        for _ in range(3):
            col = float(geometry.cavity_post(np.array(row))) - r - 5.0
            row = float(geometry.dome(np.linspace(col - r, col + r, 21)).min()) - r - 8.0
        return np.array([row, col])
    mid_row = np.array(150.0 * geometry.sy)
    col = (
        0.5 * float(geometry.cavity_ant(mid_row) + geometry.cavity_post(mid_row))
        - 8.0 * geometry.sx
    )
    dome, bottom = float(geometry.dome(np.array(col))), float(geometry.liver_bottom(np.array(col)))
    row = max(dome + r + 8.0, min(0.5 * (dome + bottom), bottom - r - 5.0))
    return np.array([row, col])


def _local_tissue(tumour: _Tumour, content: _Content) -> float:
    """Mean frame-0 intensity of the tissue under the tumour footprint."""
    reach = int(np.ceil(tumour.reach))
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    dist, radius = tumour.outline(dr.ravel(), dc.ravel(), np.zeros(dr.size, dtype=int))
    inside = dist < radius
    values = content.sample(
        tumour.centre[0] + dr.ravel()[inside], tumour.centre[1] + dc.ravel()[inside]
    )
    return float(np.median(values))


def _tumour_appearance(
    tumour: _Tumour,
    dr: np.ndarray,
    dc: np.ndarray,
    t: np.ndarray,
    dist: np.ndarray,
    radius: np.ndarray,
) -> np.ndarray:
    """Tumour intensity (texture, necrotic core, contrast) at offsets from its centre."""
    half = (tumour.textures.shape[1] - 1) / 2.0
    coords = np.stack([dr / tumour.scale[t] + half, dc / tumour.scale[t] + half])
    tex_a = ndimage.map_coordinates(tumour.textures[0], coords, order=1, mode="mirror")
    tex_b = ndimage.map_coordinates(tumour.textures[1], coords, order=1, mode="mirror")
    mix = tumour.texture_mix[t]
    texture = np.cos(mix) * tex_a + np.sin(mix) * tex_b
    value = tumour.intensity[t] + tumour.texture_amplitude * texture
    if tumour.necrotic:
        core = 1.0 - smoothstep((dist / radius - 0.3) / 0.3)
        value = value - 0.45 * tumour.contrast[t] * core
    return value


# --------------------------------------------------------------------------------------------
# Rendering and appearance
# --------------------------------------------------------------------------------------------


def _anatomy_blend(breathing_mm: np.ndarray, spec: PhantomSpec) -> np.ndarray:
    """Per-frame weight of the neighbouring slice: 0 at frame 0's breathing position, up to
    ``anatomy_change`` a full breathing amplitude away from it."""
    distance = np.abs(breathing_mm - breathing_mm[0]) / max(spec.breathing_amplitude_mm, 1.0)
    return (spec.anatomy_change * np.clip(distance, 0.0, 1.0)).astype(np.float32)


def _render(
    static: np.ndarray,
    cavity_weight: np.ndarray,
    contents: tuple,
    field_mm: np.ndarray,
    tumour: _Tumour,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free frames (T, H, W) in [0, 1] and masks (T, H, W) uint8.

    ``contents`` is (frame-0 content, neighbouring-slice content or None, per-frame blend)."""
    content, neighbour, blend = contents
    n, height, width = field_mm.shape[:3]
    flat = np.flatnonzero(cavity_weight.ravel() > 0.0)
    rows, cols = np.divmod(flat, width)
    local = field_mm.reshape(n, height * width, 2)[:, flat]
    src = np.empty((2, n, flat.size))  # canvas coordinates of every cavity pixel's source
    np.subtract(rows + _PAD[0], local[..., 0], out=src[0])
    np.subtract(cols + _PAD[1], local[..., 1], out=src[1])
    values = content.sample_canvas(src)
    if neighbour is not None:
        values += blend[:, None] * (neighbour.sample_canvas(src) - values)
    inside = _composite_tumour(values, src, tumour)
    weight = cavity_weight.ravel()[flat].astype(np.float32)
    images = np.empty((n, height * width), dtype=np.float32)
    images[:] = static.ravel()
    images[:, flat] = (1.0 - weight) * static.ravel()[flat] + weight * values
    masks = np.zeros((n, height * width), dtype=np.uint8)
    masks[:, flat] = inside & (weight >= 0.5)
    return images.reshape(n, height, width), masks.reshape(n, height, width)


def _composite_tumour(values: np.ndarray, src: np.ndarray, tumour: _Tumour) -> np.ndarray:
    """Blend the tumour into `values` (T, N) in place; return its inside mask (T, N)."""
    dr, dc = src[0] - (tumour.centre[0] + _PAD[0]), src[1] - (tumour.centre[1] + _PAD[1])
    near = dr * dr + dc * dc < tumour.reach**2
    t = np.nonzero(near)[0]
    dr, dc = dr[near], dc[near]
    dist, radius = tumour.outline(dr, dc, t)
    cover = np.clip((radius - dist) / 1.2 + 0.5, 0.0, 1.0)
    value = _tumour_appearance(tumour, dr, dc, t, dist, radius)
    values[near] = (1.0 - cover) * values[near] + cover * value
    inside = np.zeros(values.shape, dtype=bool)
    inside[near] = dist < radius
    return inside


def _apply_appearance(
    images: np.ndarray, body: np.ndarray, spec: PhantomSpec, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Bias field, Rician noise and per-frame gain/offset; frames (T, H, W) float32."""
    n = images.shape[0]
    sigma_px = 0.35 * min(images.shape[1:])
    bias_a = spec.bias_strength * noise_field(images.shape[1:], sigma_px, rng)
    bias_b = spec.bias_strength * noise_field(images.shape[1:], sigma_px, rng)
    change = min(1.0, 1.5 * spec.intensity_drift) * np.linspace(0.0, 1.0, n)
    level = float((images[0] * np.exp(bias_a))[body].mean())
    sigma = 0.0 if math.isinf(spec.snr) else level / spec.snr
    gain, offset = _gain_offset(spec, n, rng)
    frames = np.empty(images.shape, dtype=np.float32)
    for t in range(n):
        bias = np.exp(bias_a + change[t] * (bias_b - bias_a)).astype(np.float32)
        signal = images[t] * bias
        if sigma > 0:  # Rician: magnitude of a complex signal with Gaussian noise
            noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * np.float32(sigma)
            signal = np.hypot(signal + noise[0], noise[1])
        frames[t] = np.maximum(gain[t] * signal + offset[t] * level, 0.0) * _SIGNAL_SCALE
        if spec.minmax_scale:
            frames[t] = minmax_scale(frames[t])
    return frames, sigma


def _gain_offset(
    spec: PhantomSpec, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame global gain and offset: slow drift plus frame-to-frame jitter."""
    times = np.arange(n) / spec.frame_rate_hz
    duration = max(times[-1], 1.0)
    strength = spec.intensity_drift
    slow_gain = smooth_signal(times, duration / 2.0, rng)
    slow_offset = smooth_signal(times, duration / 2.0, rng)
    jitter = rng.standard_normal((2, n))
    gain = np.exp(strength * (0.8 * (slow_gain - slow_gain[0]) + 0.3 * jitter[0]))
    offset = strength * 0.15 * (slow_offset + 0.5 * jitter[1])
    return gain.astype(np.float32), offset.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Named cases
# --------------------------------------------------------------------------------------------


BENCHMARK_SPECS: dict[str, PhantomSpec] = {
    "lung_slide": PhantomSpec(
        name="lung_slide",
        n_frames=60,
        frame_rate_hz=4.0,
        site="lung",
        tumour_radius_mm=10.0,
        tumour_contrast=0.35,
        breathing_amplitude_mm=18.0,
        breathing_period_s=4.0,
        irregularity=0.4,
        drift_mm=2.0,
        seed=101,
    ),
    "liver_large": PhantomSpec(
        name="liver_large",
        n_frames=60,
        frame_rate_hz=4.0,
        site="liver",
        tumour_radius_mm=48.0,
        tumour_contrast=0.12,
        breathing_amplitude_mm=14.0,
        breathing_period_s=4.5,
        irregularity=0.4,
        drift_mm=3.0,
        seed=102,
    ),
    "abdomen_jump": PhantomSpec(
        name="abdomen_jump",
        n_frames=70,
        frame_rate_hz=4.0,
        site="liver",
        tumour_radius_mm=20.0,
        tumour_contrast=0.25,
        breathing_amplitude_mm=10.0,
        breathing_period_s=4.0,
        irregularity=0.3,
        drift_mm=2.0,
        baseline_shift_mm=40.0,
        baseline_shift_frame=25,
        baseline_shift_frames=12,
        seed=103,
    ),
    "lung_1hz": PhantomSpec(
        name="lung_1hz",
        n_frames=40,
        frame_rate_hz=1.0,
        site="lung",
        tumour_radius_mm=12.0,
        tumour_contrast=0.3,
        breathing_amplitude_mm=16.0,
        breathing_period_s=4.2,
        irregularity=0.5,
        drift_mm=3.0,
        seed=104,
    ),
    "kidney_drift": PhantomSpec(
        name="kidney_drift",
        n_frames=60,
        frame_rate_hz=2.0,
        site="kidney",
        tumour_radius_mm=14.0,
        tumour_contrast=-0.2,
        breathing_amplitude_mm=6.0,
        breathing_period_s=5.0,
        irregularity=0.3,
        drift_mm=8.0,
        seed=105,
    ),
    "liver_8hz_irregular": PhantomSpec(
        name="liver_8hz_irregular",
        n_frames=80,
        frame_rate_hz=8.0,
        site="liver",
        tumour_radius_mm=18.0,
        tumour_contrast=0.2,
        breathing_amplitude_mm=15.0,
        breathing_period_s=3.5,
        irregularity=0.9,
        drift_mm=4.0,
        seed=106,
    ),
}
"""Named cases for the accuracy benchmarks (256 x 256, 40-80 frames each)."""

APPEARANCE_SPECS: dict[str, PhantomSpec] = {
    "faint": PhantomSpec(
        name="faint",
        n_frames=60,
        site="liver",
        tumour_radius_mm=20.0,
        tumour_contrast=0.05,
        seed=201,
    ),
    "low_snr": PhantomSpec(
        name="low_snr",
        n_frames=60,
        site="liver",
        tumour_radius_mm=20.0,
        snr=5.0,
        seed=202,
    ),
    "intensity_drift": PhantomSpec(
        name="intensity_drift",
        n_frames=60,
        site="liver",
        tumour_radius_mm=20.0,
        intensity_drift=0.6,
        bias_strength=0.3,
        tumour_contrast_change=-0.5,
        seed=203,
    ),
    "through_plane": PhantomSpec(
        name="through_plane",
        n_frames=60,
        site="lung",
        tumour_radius_mm=14.0,
        through_plane=0.35,
        seed=204,
    ),
}
"""Appearance-stress cases: faint tumour, low SNR, strong intensity drift, through-plane."""

SEVERE_SPECS: dict[str, PhantomSpec] = {
    "faint_severe": PhantomSpec(
        name="faint_severe",
        n_frames=60,
        site="liver",
        tumour_radius_mm=20.0,
        tumour_contrast=0.02,
        snr=10.0,
        seed=201,
    ),
    "snr_severe": PhantomSpec(
        name="snr_severe",
        n_frames=60,
        site="liver",
        tumour_radius_mm=20.0,
        snr=3.0,
        seed=202,
    ),
    "through_plane_severe": PhantomSpec(
        name="through_plane_severe",
        n_frames=60,
        site="lung",
        tumour_radius_mm=14.0,
        through_plane=0.5,
        seed=204,
    ),
    "lung_low_snr": PhantomSpec(
        name="lung_low_snr",
        n_frames=60,
        site="lung",
        tumour_radius_mm=10.0,
        snr=4.0,
        seed=205,
    ),
}
"""The appearance stresses pushed further: tumour contrast 0.02, SNR 3 (liver) and 4 (a 10 mm
lung tumour), tumour cross-section changing by +-50 %."""


REALISTIC_SPECS: dict[str, PhantomSpec] = {
    "mr_abdomen_jump": PhantomSpec(
        name="mr_abdomen_jump",
        n_frames=80,
        shape=(320, 320),
        frame_rate_hz=8.0,
        site="liver",
        tumour_radius_mm=45.0,
        tumour_contrast=0.1,
        breathing_amplitude_mm=10.0,
        breathing_period_s=4.0,
        irregularity=0.3,
        drift_mm=2.0,
        baseline_shift_mm=40.0,
        baseline_shift_frame=40,
        baseline_shift_frames=8,
        through_plane=0.15,
        anatomy_change=0.5,
        snr=15.0,
        texture=0.2,
        minmax_scale=True,
        seed=301,
    ),
    "mr_liver_breathing": PhantomSpec(
        name="mr_liver_breathing",
        n_frames=80,
        shape=(320, 320),
        frame_rate_hz=8.0,
        site="liver",
        tumour_radius_mm=30.0,
        tumour_contrast=0.1,
        breathing_amplitude_mm=14.0,
        breathing_period_s=4.0,
        irregularity=0.5,
        drift_mm=3.0,
        through_plane=0.15,
        anatomy_change=0.5,
        snr=15.0,
        texture=0.2,
        minmax_scale=True,
        seed=302,
    ),
}
"""MR-like phantoms: smooth organs with few edges besides vessels (``texture=0.2``), a faint
large target, through-plane change of the anatomy, every frame min-max scaled to 0..255 on its
own, and (``mr_abdomen_jump``) the 40 mm abdominal jump of the development case. Not part of
:data:`CASE_SETS`; the accuracy benchmark offers them as ``--cases realistic``."""

FINE_MOTION_SPECS: dict[str, PhantomSpec] = {
    "fine_drift": PhantomSpec(
        name="fine_drift",
        n_frames=60,
        frame_rate_hz=4.0,
        site="liver",
        tumour_radius_mm=13.0,
        tumour_contrast=0.15,
        tumour_contrast_change=-0.4,
        breathing_amplitude_mm=10.0,
        intensity_drift=0.6,
        bias_strength=0.3,
        snr=15.0,
        seed=601,
    ),
    "fine_slab_blend": PhantomSpec(
        name="fine_slab_blend",
        n_frames=60,
        frame_rate_hz=4.0,
        site="liver",
        tumour_radius_mm=13.0,
        tumour_contrast=0.15,
        breathing_amplitude_mm=10.0,
        anatomy_change=0.5,
        snr=15.0,
        seed=602,
    ),
    "fine_faint": PhantomSpec(
        name="fine_faint",
        n_frames=40,
        frame_rate_hz=2.0,
        site="liver",
        tumour_radius_mm=13.0,
        tumour_contrast=0.04,
        breathing_amplitude_mm=10.0,
        snr=10.0,
        seed=603,
    ),
    "fine_faint_blend_thorax": PhantomSpec(
        name="fine_faint_blend_thorax",
        n_frames=60,
        frame_rate_hz=4.0,
        site="lung",
        tumour_radius_mm=9.0,
        tumour_contrast=0.06,
        breathing_amplitude_mm=7.0,
        anatomy_change=0.5,
        snr=12.0,
        seed=604,
    ),
}
"""Fine motion that slides: the content moves a few mm past the still chest wall and spine
(the cavity's motion stops at its walls), each case with one more difficulty: grey values
that drift (gain, bias, fading tumour), blending in a neighbouring slab (``anatomy_change``),
a faint tumour at low SNR and 2 Hz, a faint lung tumour near the chest wall with slab
blending. The kind of case ``synthetic_dev`` holds, where plain optical flow beat the
registration; offered as ``--cases fine``."""

CASE_SETS: dict[str, dict[str, PhantomSpec]] = {
    "benchmark": BENCHMARK_SPECS,
    "appearance": APPEARANCE_SPECS,
    "severe": SEVERE_SPECS,
    "realistic": REALISTIC_SPECS,
    "fine": FINE_MOTION_SPECS,
}
"""The named case sets, in the order the README and the benchmark pages show them."""

NAMED_SPECS: dict[str, PhantomSpec] = {
    name: spec for specs in CASE_SETS.values() for name, spec in specs.items()
}
"""Every named case of :data:`CASE_SETS`, by name."""
