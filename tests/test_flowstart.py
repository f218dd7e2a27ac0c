"""The registration started from the fast tracker's dense map (regtrack.flowstart)."""

import numpy as np
import pytest
from scipy import ndimage

from regtrack.engine import TrackerSettings, finest_level
from regtrack.flowstart import register_from_start
from regtrack.parameters import load_parameter_maps
from regtrack.phantom import generate_phantom
from regtrack.tracking import iter_track

SPACING = (1.0, 1.0)
BOX = (slice(34, 94), slice(34, 94))  # the registration's region
ROOM = (slice(24, 104), slice(24, 104))  # the start's region: the box and 10 px around it
INNER = (slice(10, 70), slice(10, 70))  # the box within the room


@pytest.fixture(scope="module")
def known_motion():
    """Frame 0 of smooth blobs, frame t = frame 0 moved by a known smooth field, plus noise;
    returns frame 0, frame t and the truth: frame-0 position (px) of every frame-t pixel."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:128, 0:128].astype(float)
    image = np.zeros((128, 128))
    for _ in range(25):
        r, c, s, a = (
            rng.uniform(10, 118),
            rng.uniform(10, 118),
            rng.uniform(3, 9),
            rng.uniform(50, 150),
        )
        image += a * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * s * s))
    truth = np.stack([rows + 1.6 + 0.6 * np.sin(cols / 25), cols - 1.1 + 0.5 * np.cos(rows / 30)])
    frame_t = ndimage.map_coordinates(image, truth, order=3, mode="nearest")
    frame_t += rng.normal(0, 2.0, frame_t.shape)
    return image.astype(np.float32), frame_t.astype(np.float32), truth


def _error_px(points, truth) -> float:
    return float(np.hypot(*(points - truth[:, BOX[0], BOX[1]])).mean())


def test_the_registration_corrects_a_start_that_is_off(known_motion):
    frame0, frame_t, truth = known_motion
    start = truth[:, ROOM[0], ROOM[1]] + np.array([0.8, -0.6])[:, None, None]
    maps = finest_level(load_parameter_maps("bspline_ncc"))
    started = register_from_start(frame_t, frame0, start, ROOM, BOX, maps, SPACING)
    assert _error_px(start[:, INNER[0], INNER[1]], truth) == pytest.approx(1.0)
    assert started.points.shape == (2, 60, 60)
    assert _error_px(started.points, truth) < 0.4


def test_an_exact_start_stays_exact(known_motion):
    frame0, frame_t, truth = known_motion
    maps = finest_level(load_parameter_maps("bspline_ncc"))
    started = register_from_start(
        frame_t, frame0, truth[:, ROOM[0], ROOM[1]], ROOM, BOX, maps, SPACING
    )
    assert _error_px(started.points, truth) < 0.2


def test_the_finest_level_keeps_the_presets_last_iterations():
    finest = dict(finest_level(load_parameter_maps("bspline_ncc")).GetParameterMap(0))
    preset = dict(load_parameter_maps("bspline_ncc").GetParameterMap(0))
    assert finest["NumberOfResolutions"] == ("1",)
    assert finest["MaximumNumberOfIterations"] == preset["MaximumNumberOfIterations"][-1:]
    assert finest["FinalGridSpacingInPhysicalUnits"] == preset["FinalGridSpacingInPhysicalUnits"]


def test_the_finest_level_keeps_the_last_entry_of_per_level_lists():
    maps = load_parameter_maps("bspline_ncc", {"NumberOfSpatialSamples": [500, 1000, 2000]})
    finest = dict(finest_level(maps).GetParameterMap(0))
    assert finest["NumberOfSpatialSamples"] == ("2000",)  # elastix reads entry 0 at one level


def test_the_finest_level_of_native_impact_is_its_last_levels_features(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    import regtrack.engine
    from regtrack.budget import LADDER

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(regtrack.engine, "_trial_run", lambda *args: None)  # needs the plugin
    frame0 = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    mask = np.zeros((64, 64), bool)
    mask[28:36, 28:36] = True
    settings = TrackerSettings(preset="impact_native_mind")
    engine = regtrack.engine.Engine.build(frame0, mask, settings, SPACING)
    finest = dict(engine.start_maps[LADDER[0]].GetParameterMap(0))
    last = dict(load_parameter_maps("impact_native_mind").GetParameterMap(0))
    assert finest["ImpactVoxelSize0"] == last["ImpactVoxelSize2"] == ("1", "1")
    assert not any(key.startswith(("ImpactVoxelSize1", "ImpactVoxelSize2")) for key in finest)
    model = finest["ImpactModelsPath0"][0]  # the exported file the plugin loads, not "mind"
    assert model.endswith("mind_native_7.pt") and (tmp_path / "regtrack" / "impact").is_dir()


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(n_frames=6)


def test_frames_record_the_start_and_who_answered(phantom):
    settings = TrackerSettings(start="flow")
    results = list(iter_track(phantom.frames, phantom.first_mask, settings=settings, start=1))
    assert {r.start for r in results} == {"flow"}
    assert all(r.candidate == "registration" and r.iterations > 0 for r in results)
    assert all(r.record()["start"] == "flow" for r in results)


def test_auto_starts_from_the_flow_while_the_motion_is_fine_and_from_the_shift_after(
    jump_sequence,
):
    frames, truth = jump_sequence  # the target jumps 20 px (mm) within 4 frames and stays
    results = list(iter_track(frames, truth[0], start=1))  # start="auto", the default
    far = [
        np.hypot(*np.subtract(ndimage.center_of_mass(a), ndimage.center_of_mass(truth[0]))) > 15
        for a in truth[:-1]
    ]  # where each frame's registration starts from: the answer a frame ago
    assert [r.start for r in results] == ["translation" if f else "flow" for f in far]
    assert all(r.source == "registration" and r.iterations > 0 for r in results)
    for result, expected in zip(results, truth[1:], strict=True):
        error = np.subtract(ndimage.center_of_mass(result.mask), ndimage.center_of_mass(expected))
        assert np.hypot(*error) < 0.5


def test_frames_record_how_far_the_registration_moved_its_start(phantom):
    from regtrack.engine import Engine

    def engine(**settings):  # frame 0 as the reference: the same start for both on every frame
        settings = TrackerSettings(start="flow", reference="first", **settings)
        return Engine.build(phantom.frames[0], phantom.first_mask, settings, phantom.spacing_mm)

    registered, alone = engine(), engine(start_only=True)
    moved = []
    for index in range(1, len(phantom.frames)):
        frame, previous = phantom.frames[index], phantom.masks[index - 1]
        answer = registered.track_frame(frame, previous, index)
        start = alone.track_frame(frame, previous, index)
        apart = np.subtract(ndimage.center_of_mass(answer.mask), ndimage.center_of_mass(start.mask))
        assert answer.record()["start_correction_mm"] == pytest.approx(np.hypot(*apart), abs=1e-9)
        assert np.isnan(start.start_correction_mm)  # the start answered
        moved.append(answer.start_correction_mm)
    assert max(moved) > 0.05  # the registration did move its start


def test_start_only_answers_with_the_flow_and_says_so(phantom):
    settings = TrackerSettings(start="flow", start_only=True)
    results = list(iter_track(phantom.frames, phantom.first_mask, settings=settings, start=1))
    assert all(r.candidate == "flow" and r.iterations == 0 for r in results)
    assert all("start_only" in r.candidate_reason for r in results)
    assert all(r.mask.any() for r in results)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"start": "sam"}, "start must be one of"),
        ({"start": "translation", "start_only": True}, "set start='flow'"),
    ],
)
def test_bad_start_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrackerSettings(**settings)


def test_the_flow_rung_answers_alone_and_follows_known_motion(phantom):
    from regtrack.budget import FLOW_RUNG, LADDER
    from regtrack.engine import Engine
    from regtrack.metrics import dice

    engine = Engine.build(
        phantom.frames[0], phantom.first_mask, TrackerSettings(), phantom.spacing_mm
    )
    previous, scores = phantom.first_mask, []
    for index in range(1, len(phantom.frames)):
        result = engine.track_frame(phantom.frames[index], previous, index, schedule=FLOW_RUNG)
        assert result.candidate == "flow" and result.iterations == 0
        assert result.schedule == "flow" and "flow rung" in result.candidate_reason
        scores.append(dice(result.mask, phantom.masks[index]))
        previous = result.mask
    copied = [dice(phantom.first_mask, label) for label in phantom.masks[1:]]
    assert FLOW_RUNG is LADDER[-1] and FLOW_RUNG.kind == "flow"
    assert min(scores) > 0.9 and np.mean(scores) > np.mean(copied) + 0.05
