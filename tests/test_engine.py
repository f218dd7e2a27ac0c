"""The per-frame engine: calibrated step sizes, the numpy warp, the flow refinement."""

import cv2
import numpy as np
import pytest
from conftest import textured_canvas
from scipy import ndimage

from regtrack import engine as engine_module
from regtrack.budget import LADDER
from regtrack.engine import Engine, TrackerSettings
from regtrack.metrics import dice
from regtrack.parameters import load_parameter_maps
from regtrack.phantom import NAMED_SPECS, generate_phantom
from regtrack.refine import _sample, refine_points
from regtrack.registration import (
    _transformix_field,
    _transformix_warp,
    displacement_field,
    read_step_sizes,
    register_pair,
    warp_mask,
)
from regtrack.tracking import iter_track

ASGD_LOG = """\
Settings of AdaptiveStochasticGradientDescent in resolution 0:
( SP_a 74336.160220 )
( SP_A 20.000000 )
( SP_alpha 1.000000 )
( SigmoidMax 1.000000 )
( SigmoidMin -0.132251 )
( SigmoidScale 0.000000 )
1\t-0.9\t0.1
Settings of AdaptiveStochasticGradientDescent in resolution 1:
( SP_a 189521.497357 )
( SP_A 20.000000 )
( SP_alpha 1.000000 )
( SigmoidMax 1.000000 )
( SigmoidMin -0.274768 )
( SigmoidScale 0.000000 )
"""


def test_step_sizes_are_read_per_level_from_the_elastix_log():
    step_sizes = read_step_sizes(ASGD_LOG)
    assert step_sizes["SP_a"] == [74336.16022, 189521.497357]
    assert step_sizes["SigmoidMin"] == [-0.132251, -0.274768]
    assert set(step_sizes) == {
        "SP_a",
        "SP_A",
        "SP_alpha",
        "SigmoidMax",
        "SigmoidMin",
        "SigmoidScale",
    }
    assert read_step_sizes("no estimation here") == {}


def test_calibrated_step_sizes_reach_every_elastix_call(translated, monkeypatch):
    frames, masks = translated([(0, 0), (2, 1), (3, -1)])
    engine = Engine.build(frames[0], masks[0], TrackerSettings(), (1.0, 1.0))
    levels = 3  # bspline_ncc
    assert len(engine.step_sizes["SP_a"]) == levels and min(engine.step_sizes["SP_a"]) > 0
    given = []
    real = engine_module.register_pair

    def spy(fixed, moving, parameter_maps, **kwargs):
        given.append(dict(parameter_maps.GetParameterMap(0)))
        return real(fixed, moving, parameter_maps, **kwargs)

    monkeypatch.setattr(engine_module, "register_pair", spy)
    for schedule in (LADDER[0], LADDER[-1]):
        engine.track_frame(frames[1], masks[0], 1, schedule=schedule)
    for parameter_map in given:
        assert parameter_map["AutomaticParameterEstimation"] == ("false",)
        sp_a = [float(v) for v in parameter_map["SP_a"]]
        np.testing.assert_allclose(sp_a, engine.step_sizes["SP_a"])
        assert all(float(v) > 0 for v in parameter_map["SigmoidScale"])  # log rounds it to 0


def test_frame_0_record_carries_the_step_sizes(translated):
    frames, masks = translated([(0, 0), (2, 1)])
    given, moved = iter_track(frames, masks[0])
    assert given.record()["step_sizes"]["SP_a"] and "step_sizes" not in moved.record()
    plain = TrackerSettings(calibrate_step_sizes=False)
    assert "step_sizes" not in next(iter_track(frames, masks[0], settings=plain)).record()


@pytest.mark.parametrize(
    "box, shift", [(None, (3.0, -2.0)), ((slice(10, 80), slice(20, 90)), None)]
)
def test_numpy_warp_equals_transformix(translated, box, shift):
    frames, masks = translated([(0, 0), (4, -3)], shape=(96, 112))
    maps = load_parameter_maps("bspline_ncc", {"FinalGridSpacingInPhysicalUnits": 8})
    spacing = (1.2, 0.9)
    registration = register_pair(
        frames[1], frames[0], maps, spacing_mm=spacing, fixed_box=box, initial_shift_mm=shift
    )
    fast, reference = warp_mask(masks[0], registration), _transformix_warp(masks[0], registration)
    assert fast.sum() > 100
    assert np.count_nonzero(fast != reference) <= 2  # a pixel sitting on the 0.5 threshold
    np.testing.assert_allclose(
        displacement_field(registration), _transformix_field(registration), atol=1e-3
    )


def test_flow_refinement_recovers_a_residual_subpixel_shift():
    canvas = textured_canvas(160, seed=3)
    frame0 = canvas[20:140, 20:140].copy()
    rows, cols = np.indices(frame0.shape, dtype=float)
    from scipy import ndimage

    shift = (1.4, -0.8)  # frame t(x) = frame 0(x + shift): a residual the registration left
    frame_t = ndimage.map_coordinates(canvas, [rows + 20 + shift[0], cols + 20 + shift[1]], order=3)
    identity = np.stack([rows, cols])[:, 20:100, 20:100]
    refinement = refine_points(frame_t[20:100, 20:100], frame0, identity, (1.0, 1.0))
    assert refinement.accepted and refinement.ncc_after > refinement.ncc_before
    found = (refinement.points - identity)[:, 15:65, 15:65].reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(found, shift, atol=0.15)


def test_refinement_samples_as_scipy_does():
    """OpenCV's remap stands in for map_coordinates(order=1, mode="nearest"): equal to its
    1/32-pixel rounding, edges included."""
    image = textured_canvas(64, 1).astype(np.float32)
    rng = np.random.default_rng(2)
    at = rng.uniform(-3, 66, size=(2, 40, 30))
    expected = ndimage.map_coordinates(image, at, order=1, mode="nearest")
    found = _sample(cv2, image, at)
    step = np.abs(np.diff(image, axis=0)).max() + np.abs(np.diff(image, axis=1)).max()
    assert np.abs(found - expected).max() <= step / 32
    assert np.abs(found - expected).mean() < step / 1000


def test_engine_crops_frame_0_around_its_target_with_room_for_motion(translated):
    frames, masks = translated([(0, 0), (4, 2)], shape=(160, 160))
    settings = TrackerSettings()
    engine = Engine.build(frames[0], masks[0], settings, (1.0, 1.0))
    rows, cols = np.nonzero(masks[0])
    margin = settings.roi_margin_mm + engine_module._MOVING_EXTRA_MM
    box = engine.moving_box
    assert box[0].start == max(rows.min() - margin, 0) and box[1].stop == min(
        cols.max() + margin + 1, 160
    )
    whole = Engine.build(frames[0], masks[0], TrackerSettings(roi=False), (1.0, 1.0))
    assert whole.moving_box is None


def test_flow_refinement_leaves_an_exact_map_alone():
    frame0 = textured_canvas(120, seed=4)
    rows, cols = np.indices(frame0.shape, dtype=float)
    identity = np.stack([rows, cols])
    part = (slice(10, 110), slice(10, 110))
    refinement = refine_points(frame0[part], frame0, identity[:, part[0], part[1]], (1, 1))
    assert np.abs(refinement.points - identity[:, part[0], part[1]]).max() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("flatten_sigma_mm", [0.0, 10.0])
def test_a_40_mm_jump_under_a_bias_field_is_tracked_with_and_without_flattening(
    flatten_sigma_mm,
):
    case = generate_phantom(
        NAMED_SPECS["abdomen_jump"],
        n_frames=24,
        baseline_shift_frame=6,
        baseline_shift_frames=6,
        bias_strength=0.4,
        intensity_drift=0.3,
    )
    jump = np.ptp([np.argwhere(m).mean(axis=0)[0] for m in case.masks]) * case.spacing_mm[0]
    assert jump > 35  # the case does hold the jump
    settings = TrackerSettings(flatten_sigma_mm=flatten_sigma_mm)
    results = list(
        iter_track(case.frames, case.first_mask, settings=settings, spacing_mm=case.spacing_mm)
    )
    scores = [dice(r.mask, case.masks[r.index]) for r in results[1:]]
    assert min(scores) > 0.9, scores


@pytest.mark.parametrize("blank", [0.0, 7.0])
def test_a_frame_without_signal_is_a_failed_frame_not_a_registration(translated, blank):
    frames, masks = translated([(0, 0), (2, 1), (3, 1)])
    frames[1] = blank
    with pytest.warns(RuntimeWarning, match="no signal"):
        results = list(iter_track(frames, masks[0]))
    assert results[1].source == "previous" and "no signal" in results[1].reason
    assert results[2].source == "registration"
