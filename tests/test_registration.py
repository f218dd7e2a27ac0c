import numpy as np
import pytest
from scipy import ndimage

from regtrack.parameters import load_parameter_maps
from regtrack.registration import (
    RegistrationError,
    displacement_field,
    register_pair,
    warp_mask,
)


@pytest.fixture(scope="module")
def maps():
    return load_parameter_maps("bspline_ncc")


def test_recovers_known_shift_under_intensity_rescaling(maps, translated):
    frames, masks = translated([(0, 0), (6, -4)])
    registration = register_pair(frames[1], frames[0], maps, initial_shift_mm=(-5, 3))
    warped = warp_mask(masks[0], registration)
    centroid = np.array(ndimage.center_of_mass(warped))
    assert np.abs(centroid - ndimage.center_of_mass(masks[1])).max() < 0.3
    assert registration.iterations > 0
    assert np.isfinite(registration.metric_value)
    assert registration.elapsed_ms > 0


def test_identical_frames_leave_the_mask_unchanged(maps, translated):
    frames, masks = translated([(0, 0), (0, 0)])
    registration = register_pair(frames[1], frames[0], maps)
    np.testing.assert_array_equal(warp_mask(masks[0], registration), masks[0].astype(bool))


def test_displacement_field_maps_frame_t_to_frame_0(maps, translated):
    """Content at x in frame t sits at x - shift in frame 0: u = -shift (mm) near the centre."""
    frames, _ = translated([(0, 0), (5, 3)])
    spacing = (1.5, 1.0)
    registration = register_pair(frames[1], frames[0], maps, spacing_mm=spacing)
    field = displacement_field(registration)
    assert field.shape == (96, 96, 2)
    centre = field[36:60, 36:60].reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(centre, [-5 * 1.5, -3 * 1.0], atol=0.3)


def test_fixed_mask_restricts_the_metric(maps, translated):
    frames, masks = translated([(0, 0), (4, 2)])
    roi = ndimage.binary_dilation(masks[1], iterations=15)
    registration = register_pair(frames[1], frames[0], maps, fixed_mask=roi)
    warped = warp_mask(masks[0], registration)
    dice = 2 * (warped & masks[1].astype(bool)).sum() / (warped.sum() + masks[1].sum())
    assert dice > 0.95


def test_several_channels_register_together(translated):
    frames, masks = translated([(0, 0), (4, -3)])
    gradient = [ndimage.gaussian_gradient_magnitude(f, 2) for f in frames]
    maps = load_parameter_maps(
        "bspline_ncc",
        {
            "Registration": "MultiMetricMultiResolutionRegistration",
            "Metric": ["AdvancedNormalizedCorrelation"] * 2,
            "Metric0Weight": 1.0,
            "Metric1Weight": 1.0,
            "FixedImagePyramid": ["FixedSmoothingImagePyramid"] * 2,
            "MovingImagePyramid": ["MovingSmoothingImagePyramid"] * 2,
            "Interpolator": ["BSplineInterpolator"] * 2,
            "ImageSampler": ["RandomCoordinate"] * 2,
        },
    )
    registration = register_pair([frames[1], gradient[1]], [frames[0], gradient[0]], maps)
    centroid = ndimage.center_of_mass(warp_mask(masks[0], registration))
    np.testing.assert_allclose(centroid, ndimage.center_of_mass(masks[1]), atol=0.3)


def test_unknown_component_raises_with_elastix_reason(maps, translated):
    frames, _ = translated([(0, 0), (1, 1)])
    bad = load_parameter_maps("bspline_ncc", {"Metric": "NoSuchMetric"})
    with pytest.raises(RegistrationError, match="NoSuchMetric"):
        register_pair(frames[1], frames[0], bad)


def test_a_cropped_moving_image_stays_in_place(maps, translated):
    """Frame 0 cut to a box away from the origin: the shift found is the same, in full-frame
    millimetres (an offset lost in the crop would move the answer by the box's corner)."""
    frames, masks = translated([(0, 0), (5, -3)], shape=(128, 128))
    spacing = (1.5, 1.0)
    kwargs = {"spacing_mm": spacing, "fixed_box": (slice(30, 100), slice(25, 105))}
    whole = register_pair(frames[1], frames[0], maps, **kwargs)
    cropped = register_pair(
        frames[1], frames[0], maps, moving_box=(slice(20, 110), slice(15, 115)), **kwargs
    )
    centre = (slice(50, 80), slice(50, 80))
    for registration in (whole, cropped):
        field = displacement_field(registration)[centre].reshape(-1, 2).mean(axis=0)
        np.testing.assert_allclose(field, [-5 * 1.5, 3 * 1.0], atol=0.3)
    np.testing.assert_array_equal(
        warp_mask(masks[0], cropped)[centre], masks[1][centre].astype(bool)
    )
