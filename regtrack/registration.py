"""The registration engine over itk-elastix: register a pair, warp a mask, get a field.

Convention (as elastix and ITKElastix Example09): **fixed = the new frame t, moving = frame 0**,
whose mask is known. Elastix finds T mapping fixed-space points into moving space, so warping
the frame-0 mask with transformix lands it on frame t. Arrays are numpy (H, W) with
``spacing_mm`` in (row, col) order; ITK sees them as (x = col, y = row).
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import itk_elastix
from .parameters import to_elastix_values
from .transform import mapped_points

__all__ = [
    "Registration",
    "RegistrationError",
    "as_channels",
    "displacement_field",
    "field_from_points",
    "register_pair",
    "to_itk_image",
    "warp_mask",
    "warp_mask_to",
]

logger = logging.getLogger(__name__)

_ITERATION_LINE = re.compile(r"^(\d+)\t(\S+)", re.MULTILINE)
# ASGD logs what its automatic parameter estimation found, one block per resolution.
_STEP_SIZE_BLOCK = re.compile(
    r"Settings of AdaptiveStochasticGradientDescent in resolution (\d+):\n((?:\( \w+ \S+ \)\n)+)"
)
_STEP_SIZE_ENTRY = re.compile(r"\( (\w+) (\S+) \)")


class RegistrationError(RuntimeError):
    """elastix failed on a pair of images (bad parameter value, too few samples, ...)."""


@dataclass(frozen=True)
class Registration:
    """The result of one elastix registration.

    Attributes
    ----------
    transform_parameters : itk.ParameterObject
        Elastix transform parameter maps (initial translation first, then each stage);
        they map fixed-image (frame t) points into moving-image (frame 0) space.
    metric_value : float
        Metric value at the last iteration of the last resolution (sampled, as elastix logs it;
        NaN when elastix logged no iteration).
    iterations : int
        Iterations run, summed over resolutions and stages.
    elapsed_ms : float
        Wall-clock time of the elastix call.
    shape : tuple of int
        (H, W) of the fixed image.
    spacing_mm : tuple of float
        (row, col) pixel spacing.
    step_sizes : dict
        What ASGD's automatic parameter estimation chose, per resolution (``SP_a``, ``SP_A``,
        ``SP_alpha``, ``SigmoidMax``, ``SigmoidMin``, ``SigmoidScale`` -> one value per
        level); empty when the estimation did not run.
    """

    transform_parameters: Any
    metric_value: float
    iterations: int
    elapsed_ms: float
    shape: tuple[int, int]
    spacing_mm: tuple[float, float]
    step_sizes: dict = field(default_factory=dict)


def to_itk_image(
    array: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    offset_px: Sequence[int] = (0, 0),
    dtype=np.float32,
):
    """Convert a (H, W) numpy array to an ``itk.Image`` with the given (row, col) spacing.

    ``offset_px`` (row, col) places a crop where it was cut from: pixel (0, 0) of the array
    lands at the physical position of pixel ``offset_px`` of the full frame. The array is made
    C-contiguous first: ``itk.image_from_array`` on a strided view builds a scrambled image
    without complaint.
    """
    image = itk_elastix.image_from_array(np.ascontiguousarray(array, dtype=dtype))
    image.SetSpacing([float(spacing_mm[1]), float(spacing_mm[0])])
    image.SetOrigin([float(offset_px[1] * spacing_mm[1]), float(offset_px[0] * spacing_mm[0])])
    return image


def _translation_map(shape: tuple[int, int], spacing_mm: Sequence[float], shift_mm) -> dict:
    """An elastix TranslationTransform map over the fixed image's grid; ``shift_mm`` is (row, col)."""
    rows, cols = shape
    values = {
        "Transform": "TranslationTransform",
        "NumberOfParameters": 2,
        "TransformParameters": [float(shift_mm[1]), float(shift_mm[0])],
        "InitialTransformParameterFileName": "NoInitialTransform",
        "HowToCombineTransforms": "Compose",
        "FixedImageDimension": 2,
        "MovingImageDimension": 2,
        "FixedInternalImagePixelType": "float",
        "MovingInternalImagePixelType": "float",
        "Size": [cols, rows],
        "Index": [0, 0],
        "Spacing": [float(spacing_mm[1]), float(spacing_mm[0])],
        "Origin": [0.0, 0.0],
        "Direction": [1, 0, 0, 1],
        "UseDirectionCosines": True,
        "ResampleInterpolator": "FinalBSplineInterpolator",
        "FinalBSplineInterpolationOrder": 1,
        "Resampler": "DefaultResampler",
        "DefaultPixelValue": 0,
    }
    return {name: to_elastix_values(value) for name, value in values.items()}


def register_pair(
    fixed: np.ndarray | Sequence[np.ndarray],
    moving: np.ndarray | Sequence[np.ndarray],
    parameter_maps,
    *,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    fixed_box: tuple[slice, slice] | None = None,
    moving_box: tuple[slice, slice] | None = None,
    fixed_mask: np.ndarray | None = None,
    initial_shift_mm: Sequence[float] | None = None,
) -> Registration:
    """Register ``moving`` onto ``fixed`` with elastix.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W), or list of such arrays
        The images; a list gives one fixed/moving pair per channel (feature maps), which the
        parameter maps must match (``MultiMetricMultiResolutionRegistration``, one metric each).
    parameter_maps : itk.ParameterObject
        From :func:`regtrack.parameters.load_parameter_maps`.
    spacing_mm : (float, float)
        Pixel spacing (row, col) in mm.
    fixed_box : (slice, slice), optional
        Region of interest: the fixed image is cropped to these (row, col) slices, so the
        metric and the B-spline grid cover only that box (cheaper than a mask, and the
        target moves free of the structures outside it). Results stay in full-frame space.
    moving_box : (slice, slice), optional
        The moving image is cropped to these slices, in place: elastix builds its pyramid
        for every level on the whole moving image, so a crop that still holds every point
        the fixed box can map to saves most of a small registration's time. Samples that
        map outside it are skipped, as outside any moving image.
    fixed_mask : ndarray of bool, shape (H, W), optional
        Fixed-image mask (full frame): the metric is sampled only there.
    initial_shift_mm : (float, float), optional
        Initial translation (row, col) in mm taking fixed-image points to moving-image points,
        e.g. (target centroid in frame 0) - (its centroid a frame ago).

    Returns
    -------
    Registration
    """
    fixed_list, moving_list = as_channels(fixed), as_channels(moving)
    shape = fixed_list[0].shape
    box = fixed_box or (slice(0, shape[0]), slice(0, shape[1]))
    part = moving_box or (slice(None), slice(None))
    offset = (box[0].start or 0, box[1].start or 0)
    moving_offset = (part[0].start or 0, part[1].start or 0)
    method = itk_elastix.registration_method()
    for fixed_channel, moving_channel in zip(fixed_list, moving_list, strict=True):
        method.AddFixedImage(to_itk_image(fixed_channel[box], spacing_mm, offset))
        method.AddMovingImage(to_itk_image(moving_channel[part], spacing_mm, moving_offset))
    method.SetParameterObject(parameter_maps)
    if fixed_mask is not None:
        method.SetFixedMask(to_itk_image(fixed_mask[box], spacing_mm, offset, dtype=np.uint8))
    if initial_shift_mm is not None:
        initial = itk_elastix.parameter_object()
        initial.AddParameterMap(_translation_map(shape, spacing_mm, initial_shift_mm))
        method.SetInitialTransformParameterObject(initial)
    with tempfile.TemporaryDirectory(prefix="regtrack-elastix-") as log_dir:
        method.SetLogToConsole(False)
        method.SetLogToFile(True)
        method.SetOutputDirectory(log_dir)
        start = time.perf_counter()
        try:
            method.UpdateLargestPossibleRegion()
        except RuntimeError as error:
            log = _read_text(Path(log_dir) / "elastix.log")
            raise RegistrationError(_elastix_error_summary(log or str(error))) from error
        elapsed_ms = (time.perf_counter() - start) * 1e3
        log = _read_text(Path(log_dir) / "elastix.log")
    metric_value, iterations = _read_log(log)
    return Registration(
        transform_parameters=method.GetTransformParameterObject(),
        metric_value=metric_value,
        iterations=iterations,
        elapsed_ms=elapsed_ms,
        shape=tuple(shape),
        spacing_mm=(float(spacing_mm[0]), float(spacing_mm[1])),
        step_sizes=read_step_sizes(log),
    )


def as_channels(images) -> list[np.ndarray]:
    """One (H, W) image or a list of channels, as a list of channels."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        return [images]
    return list(images)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_log(log: str) -> tuple[float, int]:
    """Final metric value and iteration count from elastix's iteration table in its log."""
    rows = _ITERATION_LINE.findall(log)
    if not rows:
        return float("nan"), 0
    return float(rows[-1][1]), len(rows)


def read_step_sizes(log: str) -> dict[str, list[float]]:
    """The ASGD step-size parameters an elastix log reports, name -> one value per level."""
    step_sizes: dict[str, list[float]] = {}
    for _, body in _STEP_SIZE_BLOCK.findall(log):  # log order: stage by stage, level by level
        for name, value in _STEP_SIZE_ENTRY.findall(body):
            step_sizes.setdefault(name, []).append(float(value))
    return step_sizes


def _elastix_error_summary(text: str) -> str:
    """The lines of an elastix log or exception that say what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if re.search(r"ERROR|Description", ln)] or lines[-3:]
    return "elastix failed: " + " | ".join(dict.fromkeys(useful))


def _transformix_parameters(registration: Registration, interpolation_order: int):
    rows, cols = registration.shape
    # Output on the full frame, even when the fixed image was cropped to a region of interest.
    full_frame = {
        "Size": [cols, rows],
        "Index": [0, 0],
        "Origin": [0.0, 0.0],
        "FinalBSplineInterpolationOrder": interpolation_order,
        "DefaultPixelValue": 0,
    }
    parameters = itk_elastix.parameter_object()
    source = registration.transform_parameters
    for index in range(source.GetNumberOfParameterMaps()):
        parameter_map = source.GetParameterMap(index)
        for name, value in full_frame.items():
            parameter_map[name] = to_elastix_values(value)
        parameters.AddParameterMap(parameter_map)
    return parameters


def warp_mask(mask: np.ndarray, registration: Registration) -> np.ndarray:
    """Carry a moving-image (frame 0) mask into fixed-image (frame t) space.

    The mask is resampled with linear interpolation and thresholded at 0.5, which places the
    boundary with sub-pixel accuracy (nearest neighbour would add up to half a pixel of error).

    Parameters
    ----------
    mask : ndarray, shape (H, W)
        Binary mask on the moving image.
    registration : Registration

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    points = mapped_points(registration.transform_parameters, mask.shape, registration.spacing_mm)
    if points is None:
        return _transformix_warp(mask, registration)
    return warp_mask_to(mask, points, registration.spacing_mm)


def warp_mask_to(mask: np.ndarray, points: np.ndarray, spacing_mm) -> np.ndarray:
    """The mask sampled at ``points`` ((2, H, W) positions in mm), linear, thresholded at 0.5.

    OpenCV's remap (a tenth of ``scipy.ndimage.map_coordinates``' time here) rounds each
    position to 1/32 pixel, which moves a thresholded boundary by at most 1/64 pixel.
    """
    import cv2

    index = (points / np.asarray(spacing_mm, dtype=float)[:, None, None]).astype(np.float32)
    values = cv2.remap(
        np.ascontiguousarray(mask, dtype=np.float32),
        index[1],
        index[0],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return values >= 0.5


def _transformix_warp(mask: np.ndarray, registration: Registration) -> np.ndarray:
    """:func:`warp_mask` by transformix, for any transform elastix knows."""
    image = to_itk_image(mask.astype(np.float32), registration.spacing_mm)
    transformix = itk_elastix.transformix_filter(image)
    transformix.SetTransformParameterObject(_transformix_parameters(registration, 1))
    transformix.SetLogToConsole(False)
    return itk_elastix.array_from_image(transformix) >= 0.5


def displacement_field(registration: Registration) -> np.ndarray:
    """The displacement u(x) (mm, (row, col)) such that fixed point x maps to x + u(x) in moving.

    Returns
    -------
    ndarray of float32, shape (H, W, 2)
    """
    shape, spacing = registration.shape, registration.spacing_mm
    points = mapped_points(registration.transform_parameters, shape, spacing)
    if points is None:
        return _transformix_field(registration)
    return field_from_points(points, spacing)


def field_from_points(points: np.ndarray, spacing_mm) -> np.ndarray:
    """u(x) = T(x) - x, (H, W, 2) float32 mm, from the mapped points (2, H, W) of a whole
    frame (:func:`regtrack.transform.mapped_points`)."""
    grid = np.indices(points.shape[1:], dtype=float) * np.asarray(spacing_mm, float)[:, None, None]
    return np.ascontiguousarray(np.moveaxis(points - grid, 0, -1), dtype=np.float32)


def _transformix_field(registration: Registration) -> np.ndarray:
    """:func:`displacement_field` by transformix, for any transform elastix knows."""
    reference = to_itk_image(np.zeros(registration.shape, np.float32), registration.spacing_mm)
    transformix = itk_elastix.transformix_filter(reference)
    transformix.SetTransformParameterObject(_transformix_parameters(registration, 1))
    transformix.ComputeDeformationFieldOn()
    transformix.SetLogToConsole(False)
    with tempfile.TemporaryDirectory(prefix="regtrack-transformix-") as out_dir:
        transformix.SetOutputDirectory(out_dir)  # it writes deformationField.mha there
        transformix.UpdateLargestPossibleRegion()
        field = transformix.GetOutputDeformationField()
        xy = itk_elastix.array_from_image(field).astype(np.float32)
    return np.ascontiguousarray(xy[..., ::-1])
