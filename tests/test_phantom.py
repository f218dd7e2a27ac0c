"""Tests of the synthetic cine-MRI phantom: known motion, consistent masks, sliding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from regtrack.phantom import (
    APPEARANCE_SPECS,
    BENCHMARK_SPECS,
    PhantomCase,
    PhantomSpec,
    generate_phantom,
    write_phantom_case,
)

SMALL = {"n_frames": 12, "shape": (160, 160)}
ALL_SPECS = {**BENCHMARK_SPECS, **APPEARANCE_SPECS}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _contrast(case: PhantomCase) -> float:
    """Tumour minus surrounding-ring intensity on frame 0, over the cavity's 1-99 % range."""
    frame, mask = case.frames[0], case.first_mask
    ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=2)
    low, high = np.percentile(frame[case.cavity_mask], [1, 99])
    return float(frame[mask].mean() - frame[ring].mean()) / float(high - low)


@pytest.fixture(scope="module")
def named_cases() -> dict[str, PhantomCase]:
    return {name: generate_phantom(spec) for name, spec in ALL_SPECS.items()}


def test_same_seed_same_case_and_other_seed_differs():
    first = generate_phantom(**SMALL, seed=7)
    again = generate_phantom(**SMALL, seed=7)
    other = generate_phantom(**SMALL, seed=8)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.masks, again.masks)
    np.testing.assert_array_equal(first.displacement_mm, again.displacement_mm)
    assert not np.array_equal(first.frames, other.frames)
    assert not np.array_equal(first.displacement_mm, other.displacement_mm)


def test_shapes_and_dtypes():
    case = generate_phantom(n_frames=9, shape=(128, 144), site="lung", tumour_radius_mm=8.0)
    assert case.frames.shape == (9, 128, 144) and case.frames.dtype == np.float32
    assert case.masks.shape == (9, 128, 144) and case.masks.dtype == np.uint8
    assert case.displacement_mm.shape == (9, 128, 144, 2)
    assert case.displacement_mm.dtype == np.float32
    assert case.cavity_mask.shape == (128, 144) and case.cavity_mask.dtype == bool
    assert case.first_mask.dtype == bool and case.first_mask.shape == (128, 144)
    assert case.centroids_mm.shape == (9, 2)
    assert case.breathing_mm.shape == (9,)
    assert case.spacing_mm == (1.0, 1.0)
    assert np.isfinite(case.frames).all() and case.frames.min() >= 0.0
    assert np.all(case.displacement_mm[0] == 0)


@pytest.mark.parametrize("name", sorted(ALL_SPECS))
def test_named_cases_have_a_whole_tumour_on_every_frame(named_cases, name):
    case = named_cases[name]
    assert case.spec.shape == (256, 256) and 40 <= case.spec.n_frames <= 80
    assert set(np.unique(case.masks)) == {0, 1}
    assert case.masks.any(axis=(1, 2)).all()
    border = np.zeros(case.spec.shape, dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    assert not case.masks[:, border].any(), "tumour leaves the field of view"
    assert not case.masks[:, ~case.cavity_mask].any(), "tumour outside the cavity"
    assert case.info["min_jacobian"] > 0.3, "motion folds or compresses too much"


def test_masks_are_the_frame0_tumour_warped_by_the_displacement():
    case = generate_phantom(n_frames=30, site="liver", tumour_radius_mm=20.0,
                            through_plane=0.0, breathing_amplitude_mm=15.0, seed=3)
    _, height, width = case.masks.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    moved = False
    for t in range(len(case.masks)):
        u = case.displacement_mm[t].astype(np.float64)
        warped = ndimage.map_coordinates(case.masks[0].astype(np.float64),
                                         [rows - u[..., 0], cols - u[..., 1]], order=1) >= 0.5
        assert _dice(warped, case.masks[t]) > 0.98, t
        moved |= _dice(case.masks[0], case.masks[t]) < 0.9
    assert moved, "the tumour should move away from its frame-0 position"


def test_sliding_static_outside_cavity_moving_inside():
    case = generate_phantom(n_frames=20, breathing_amplitude_mm=15.0, snr=np.inf,
                            intensity_drift=0.0, seed=4)
    outside = ~case.cavity_mask
    assert outside.sum() > 0.3 * outside.size
    assert np.all(case.displacement_mm[:, outside] == 0)
    # just inside the wall the content still slides superior-inferiorly: a discontinuity
    wall = case.cavity_mask & ~ndimage.binary_erosion(case.cavity_mask, iterations=2)
    assert np.abs(case.displacement_mm[:, wall, 0]).max() > 5.0
    # and the static anatomy (spine, back) is pixel-for-pixel the same image
    static = ndimage.binary_erosion(outside, iterations=2)
    for t in range(1, len(case.frames)):
        np.testing.assert_allclose(case.frames[t][static], case.frames[0][static], rtol=1e-5)
    interior = ndimage.binary_erosion(case.cavity_mask, iterations=3)
    changed = np.abs(case.frames[1:, interior] - case.frames[0, interior]).max(axis=1)
    assert (changed > 50.0).sum() >= len(case.frames) // 2


def test_baseline_shift_moves_the_target_and_it_stays():
    spec = PhantomSpec(n_frames=36, breathing_amplitude_mm=1.0, irregularity=0.0,
                       drift_mm=0.0, through_plane=0.0, baseline_shift_mm=40.0,
                       baseline_shift_frame=10, baseline_shift_frames=12, seed=5)
    case = generate_phantom(spec)
    row = case.centroids_mm[:, 0]
    assert np.abs(row[:11] - row[0]).max() < 2.0
    assert abs(row[22] - row[10] - 40.0) < 2.5
    assert np.abs(row[22:] - row[0] - 40.0).max() < 2.5
    assert case.info["baseline_shift_frame"] == 10
    jump = generate_phantom(BENCHMARK_SPECS["abdomen_jump"], n_frames=40)
    assert np.ptp(jump.centroids_mm[:, 0]) > 35.0


def test_lower_frame_rate_gives_larger_inter_frame_motion():
    steps = {}
    for rate in (1.0, 8.0):
        case = generate_phantom(n_frames=24, shape=(128, 128), site="lung",
                                tumour_radius_mm=8.0, frame_rate_hz=rate, snr=np.inf, seed=6)
        steps[rate] = np.linalg.norm(np.diff(case.centroids_mm, axis=0), axis=1).mean()
    assert steps[1.0] > 3.0 * steps[8.0]
    assert steps[1.0] > 3.0


def test_per_frame_intensity_rescaling_changes_frame_statistics():
    def variation(drift: float) -> float:
        case = generate_phantom(n_frames=20, shape=(128, 128), intensity_drift=drift,
                                snr=np.inf, seed=8)
        static = ndimage.binary_erosion(~case.cavity_mask, iterations=2)
        static &= case.frames[0] > 0.2 * case.frames[0].max()
        means = case.frames[:, static].mean(axis=1)
        return float(means.std() / means.mean())

    assert variation(0.0) < 1e-4
    assert variation(0.5) > 0.05


def test_faint_tumour_has_less_contrast_than_default(named_cases):
    faint = _contrast(named_cases["faint"])
    default = _contrast(generate_phantom(n_frames=2, site="liver", tumour_radius_mm=20.0,
                                         seed=201))
    assert 0.0 < faint < 0.4 * default


def test_through_plane_changes_the_cross_section():
    settings = {"n_frames": 40, "shape": (160, 160), "site": "lung", "tumour_radius_mm": 12.0,
                "seed": 9}
    fixed = generate_phantom(through_plane=0.0, **settings)
    varying = generate_phantom(through_plane=0.35, **settings)
    fixed_area = fixed.masks.sum(axis=(1, 2))
    varying_area = varying.masks.sum(axis=(1, 2))
    assert np.ptp(fixed_area) / fixed_area.mean() < 0.1
    assert np.ptp(varying_area) / varying_area.mean() > 0.3


def test_breathing_is_irregular():
    settings = {"n_frames": 80, "shape": (96, 96), "frame_rate_hz": 8.0, "drift_mm": 0.0,
                "tumour_radius_mm": 5.0, "seed": 10}
    regular = generate_phantom(irregularity=0.0, **settings)
    irregular = generate_phantom(irregularity=1.0, **settings)

    def peaks(trace: np.ndarray) -> np.ndarray:
        inner = trace[1:-1]
        return inner[(inner > trace[:-2]) & (inner >= trace[2:])]

    regular_peaks = peaks(regular.breathing_mm - regular.breathing_mm.min())
    irregular_peaks = peaks(irregular.breathing_mm - irregular.breathing_mm.min())
    assert np.ptp(regular_peaks) < 0.5
    assert np.ptp(irregular_peaks) > 2.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"site": "brain"}, "site must be one of"),
        ({"n_frames": 1}, "n_frames"),
        ({"shape": (64, 64)}, "shape"),
        ({"tumour_radius_mm": 80.0}, "tumour_radius_mm"),
        ({"baseline_shift_mm": 200.0}, "at most"),
        ({"baseline_shift_frame": 99, "n_frames": 10}, "baseline_shift_frame"),
        ({"snr": 0.0}, "snr"),
    ],
)
def test_invalid_settings_raise_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        generate_phantom(**overrides)


def test_unknown_setting_raises_type_error_listing_valid_names():
    with pytest.raises(TypeError, match="valid names"):
        generate_phantom(n_frame=10)


def test_spec_override_keeps_other_fields():
    spec = dataclasses.replace(BENCHMARK_SPECS["lung_slide"], n_frames=5, shape=(128, 128))
    case = generate_phantom(spec, seed=11)
    assert case.spec.site == "lung" and case.spec.seed == 11 and len(case.frames) == 5


def test_write_phantom_case_round_trip(tmp_path):
    io = pytest.importorskip("regtrack.io")
    case = generate_phantom(n_frames=6, shape=(128, 112), site="lung", name="ph_01")
    folder = write_phantom_case(case, tmp_path)
    assert folder == tmp_path / "ph_01"
    read = io.read_case(folder)
    np.testing.assert_allclose(np.asarray(read.frames), case.frames)
    np.testing.assert_array_equal(np.asarray(read.labels), case.masks)
    np.testing.assert_array_equal(read.first_mask.astype(bool), case.first_mask)
    assert read.frame_rate_hz == pytest.approx(case.spec.frame_rate_hz)
    assert read.scanned_region == "thorax"
