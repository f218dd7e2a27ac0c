"""Tests of the synthetic cine-MRI phantom: known motion, consistent masks, sliding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from regtrack.io import write_trackrad_case
from regtrack.phantom import (
    APPEARANCE_SPECS,
    BENCHMARK_SPECS,
    FINE_MOTION_SPECS,
    REALISTIC_SPECS,
    SEMI_SYNTHETIC_SPECS,
    PhantomCase,
    PhantomSpec,
    SemiSyntheticSpec,
    generate_phantom,
    generate_semisynthetic,
    minmax_scale,
    semisynthetic_from_case,
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
    ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(
        mask, iterations=2
    )
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
    case = generate_phantom(
        n_frames=30,
        site="liver",
        tumour_radius_mm=20.0,
        through_plane=0.0,
        breathing_amplitude_mm=15.0,
        seed=3,
    )
    _, height, width = case.masks.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    moved = False
    for t in range(len(case.masks)):
        u = case.displacement_mm[t].astype(np.float64)
        warped = (
            ndimage.map_coordinates(
                case.masks[0].astype(np.float64), [rows - u[..., 0], cols - u[..., 1]], order=1
            )
            >= 0.5
        )
        assert _dice(warped, case.masks[t]) > 0.98, t
        moved |= _dice(case.masks[0], case.masks[t]) < 0.9
    assert moved, "the tumour should move away from its frame-0 position"


def test_sliding_static_outside_cavity_moving_inside():
    case = generate_phantom(
        n_frames=20, breathing_amplitude_mm=15.0, snr=np.inf, intensity_drift=0.0, seed=4
    )
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
    spec = PhantomSpec(
        n_frames=36,
        breathing_amplitude_mm=1.0,
        irregularity=0.0,
        drift_mm=0.0,
        through_plane=0.0,
        baseline_shift_mm=40.0,
        baseline_shift_frame=10,
        baseline_shift_frames=12,
        seed=5,
    )
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
        case = generate_phantom(
            n_frames=24,
            shape=(128, 128),
            site="lung",
            tumour_radius_mm=8.0,
            frame_rate_hz=rate,
            snr=np.inf,
            seed=6,
        )
        steps[rate] = np.linalg.norm(np.diff(case.centroids_mm, axis=0), axis=1).mean()
    assert steps[1.0] > 3.0 * steps[8.0]
    assert steps[1.0] > 3.0


def test_per_frame_intensity_rescaling_changes_frame_statistics():
    def variation(drift: float) -> float:
        case = generate_phantom(
            n_frames=20, shape=(128, 128), intensity_drift=drift, snr=np.inf, seed=8
        )
        static = ndimage.binary_erosion(~case.cavity_mask, iterations=2)
        static &= case.frames[0] > 0.2 * case.frames[0].max()
        means = case.frames[:, static].mean(axis=1)
        return float(means.std() / means.mean())

    assert variation(0.0) < 1e-4
    assert variation(0.5) > 0.05


def test_faint_tumour_has_less_contrast_than_default(named_cases):
    faint = _contrast(named_cases["faint"])
    default = _contrast(generate_phantom(n_frames=2, site="liver", tumour_radius_mm=20.0, seed=201))
    assert 0.0 < faint < 0.4 * default


def test_through_plane_changes_the_cross_section():
    settings = {
        "n_frames": 40,
        "shape": (160, 160),
        "site": "lung",
        "tumour_radius_mm": 12.0,
        "seed": 9,
    }
    fixed = generate_phantom(through_plane=0.0, **settings)
    varying = generate_phantom(through_plane=0.35, **settings)
    fixed_area = fixed.masks.sum(axis=(1, 2))
    varying_area = varying.masks.sum(axis=(1, 2))
    assert np.ptp(fixed_area) / fixed_area.mean() < 0.1
    assert np.ptp(varying_area) / varying_area.mean() > 0.3


def test_breathing_is_irregular():
    settings = {
        "n_frames": 80,
        "shape": (96, 96),
        "frame_rate_hz": 8.0,
        "drift_mm": 0.0,
        "tumour_radius_mm": 5.0,
        "seed": 10,
    }
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


# --------------------------------------------------------------------------------------------
# MR-like appearance: smooth organs, per-frame min-max scaling
# --------------------------------------------------------------------------------------------


def test_minmax_scaled_frames_span_0_255_in_whole_numbers_on_every_frame():
    case = generate_phantom(n_frames=6, shape=(128, 128), minmax_scale=True, seed=2)
    assert np.all(case.frames.min(axis=(1, 2)) == 0.0)
    assert np.all(case.frames.max(axis=(1, 2)) == 255.0)
    np.testing.assert_array_equal(case.frames, np.round(case.frames))


def test_minmax_scale_maps_each_frame_to_0_255():
    frame = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_array_equal(minmax_scale(frame), [[0, 64], [128, 255]])
    assert minmax_scale(np.full((3, 3), 7.0)).max() == 0.0


def test_low_texture_gives_smoother_organs_and_the_same_motion():
    plain = {
        "n_frames": 3,
        "shape": (128, 128),
        "snr": np.inf,
        "bias_strength": 0.0,
        "intensity_drift": 0.0,
        "seed": 9,
    }
    rich, smooth = generate_phantom(**plain), generate_phantom(**plain, texture=0.2)
    np.testing.assert_array_equal(rich.displacement_mm, smooth.displacement_mm)
    np.testing.assert_array_equal(rich.masks, smooth.masks)
    inside = ndimage.binary_erosion(rich.cavity_mask, iterations=4) & ~ndimage.binary_dilation(
        rich.first_mask, iterations=4
    )

    def roughness(frame):  # median: texture is everywhere, edges are few
        return float(np.median(np.abs(frame - ndimage.gaussian_filter(frame, 2.0))[inside]))

    assert roughness(smooth.frames[0]) < 0.8 * roughness(rich.frames[0])


def test_realistic_jump_case_moves_the_target_by_the_specified_jump():
    spec = dataclasses.replace(
        REALISTIC_SPECS["mr_abdomen_jump"],
        n_frames=24,
        baseline_shift_frame=6,
        breathing_amplitude_mm=0.5,
        drift_mm=0.0,
        through_plane=0.0,
    )
    case = generate_phantom(spec)
    assert case.frames.max() == 255.0 and case.frames.min() == 0.0
    moved = case.centroids_mm[-1] - case.centroids_mm[0]
    assert abs(moved[0] - 40.0) < 3.0, moved  # 40 mm inferior, a tenth of it anterior
    assert abs(moved[1] + 4.0) < 3.0, moved


# --------------------------------------------------------------------------------------------
# Semi-synthetic cases: a "real" frame warped by known motion
# --------------------------------------------------------------------------------------------


def _fake_real_frame(shape=(96, 96), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth textured frame (a stand-in for a real one) and a disc target on it."""
    rng = np.random.default_rng(seed)
    frame = 100.0 + 80.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    rows, cols = np.indices(shape)
    mask = (rows - 48) ** 2 + (cols - 44) ** 2 < 12**2
    return (frame + 60.0 * mask).astype(np.float32), mask


STILL = {"breathing_amplitude_mm": 0.0, "deformation_mm": 0.0, "snr": np.inf, "bias_strength": 0.0}


def test_semisynthetic_translation_reproduces_the_warp_exactly():
    frame, mask = _fake_real_frame()
    case = generate_semisynthetic(
        frame,
        mask,
        n_frames=10,
        jump_mm=(6.0, -4.0),
        jump_frame=3,
        jump_frames=2,
        window_sigma_mm=np.inf,
        minmax_scale=False,
        **STILL,
    )
    for t in (6, 9):
        np.testing.assert_array_equal(case.masks[t], np.roll(mask, (6, -4), axis=(0, 1)))
        expected = np.roll(frame, (6, -4), axis=(0, 1))
        np.testing.assert_allclose(case.frames[t][8:-8, 8:-8], expected[8:-8, 8:-8], atol=1e-3)
    np.testing.assert_array_equal(case.masks[0], mask)
    np.testing.assert_allclose(case.target_shift_mm[-1], [6.0, -4.0])


def test_semisynthetic_masks_move_by_the_target_shift_and_frames_are_minmax_scaled():
    frame, mask = _fake_real_frame()
    case = generate_semisynthetic(
        frame,
        mask,
        n_frames=16,
        breathing_amplitude_mm=6.0,
        jump_mm=(-10.0, 8.0),
        jump_frame=6,
        deformation_mm=0.0,
        snr=20.0,
        seed=3,
    )
    centres = np.array([ndimage.center_of_mass(m) for m in case.masks])
    np.testing.assert_allclose(centres - centres[0], case.target_shift_mm, atol=0.5)
    assert np.abs(case.target_shift_mm[-1] - case.target_shift_mm[5]).max() > 8.0
    assert np.all(case.frames.min(axis=(1, 2)) == 0.0)
    assert np.all(case.frames.max(axis=(1, 2)) == 255.0)
    assert case.info["min_jacobian"] > 0.3
    # the target keeps its size: it is carried whole, not stretched by the fall-off
    assert np.abs(case.masks.sum(axis=(1, 2)) / mask.sum() - 1.0).max() < 0.05


def test_semisynthetic_frames_follow_the_pullback_field():
    frame, mask = _fake_real_frame()
    case = generate_semisynthetic(
        frame,
        mask,
        n_frames=8,
        jump_mm=(5.0, 3.0),
        jump_frame=2,
        window_sigma_mm=25.0,
        minmax_scale=False,
        **{**STILL, "deformation_mm": 3.0},
    )
    rows, cols = np.indices(frame.shape, dtype=np.float64)
    u = case.displacement_mm[-1].astype(np.float64)
    coords = [rows - u[..., 0], cols - u[..., 1]]
    expected = ndimage.map_coordinates(frame, coords, order=3, mode="nearest")
    np.testing.assert_allclose(case.frames[-1], expected, atol=1e-2)
    warped_mask = ndimage.map_coordinates(mask.astype(float), coords, order=1) >= 0.5
    np.testing.assert_array_equal(case.masks[-1], warped_mask)
    assert np.abs(u[0]).max() > 0 and np.abs(u[mask]).max() > 4.0  # far pixels move less


def test_semisynthetic_from_case_reads_frame0_and_first_label_from_the_folder(tmp_path):
    frame, mask = _fake_real_frame(seed=1)
    other = np.random.default_rng(5).random((3, *frame.shape)).astype(np.float32)
    frames = np.concatenate([frame[None], 1000.0 * other])
    labels = np.stack([mask] * 4).astype(np.uint8)
    folder = write_trackrad_case(
        tmp_path, "X_001", frames, mask.astype(np.uint8), labels=labels, scanned_region="abdomen"
    )
    spec = dataclasses.replace(SEMI_SYNTHETIC_SPECS["semi_breath_jump"], n_frames=6, jump_frame=2)
    case = semisynthetic_from_case(folder, spec)
    direct = generate_semisynthetic(frame, mask, spec)
    np.testing.assert_array_equal(case.frames, direct.frames)
    np.testing.assert_array_equal(case.masks, direct.masks)
    assert case.scanned_region == "abdomen" and "X_001" in case.info["source"]


def test_semisynthetic_rejects_bad_input():
    frame, mask = _fake_real_frame()
    with pytest.raises(ValueError, match="mask' is empty"):
        generate_semisynthetic(frame, np.zeros_like(mask))
    with pytest.raises(ValueError, match="mask of its shape"):
        generate_semisynthetic(frame, mask[:10])
    with pytest.raises(TypeError, match="unknown setting"):
        generate_semisynthetic(frame, mask, jump=(1, 2))
    with pytest.raises(ValueError, match="window_sigma_mm"):
        SemiSyntheticSpec(window_sigma_mm=5.0)


@pytest.mark.parametrize("name", sorted(FINE_MOTION_SPECS))
def test_fine_motion_cases_move_a_few_mm_and_slide_at_the_walls(name):
    case = generate_phantom(FINE_MOTION_SPECS[name], n_frames=24)
    assert case.masks.any(axis=(1, 2)).all()
    travel = np.ptp(case.centroids_mm, axis=0)
    assert 2.0 < travel[0] < 15.0, travel  # fine: within what the flow candidate answers
    assert np.all(case.displacement_mm[:, ~case.cavity_mask] == 0)  # the walls stay put
    assert case.spec.tumour_contrast <= 0.15
