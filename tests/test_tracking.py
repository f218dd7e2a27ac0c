import json

import numpy as np
import pytest
from scipy import ndimage

import regtrack
from regtrack.io import case_from_arrays
from regtrack.run import track_case
from regtrack.tracking import TrackerSettings, iter_track


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_tracks_a_20_px_jump_with_intensity_rescaling(jump_sequence):
    frames, truth = jump_sequence
    result = regtrack.track(frames, truth[0])
    assert result.masks.shape == frames.shape and result.masks.dtype == np.uint8
    for predicted, expected in zip(result.masks[1:], truth[1:]):
        error = np.subtract(ndimage.center_of_mass(predicted), ndimage.center_of_mass(expected))
        assert np.hypot(*error) < 0.5
        assert _dice(predicted, expected) > 0.95
    assert [r["source"] for r in result.records] == ["given"] + ["registration"] * 7
    assert all(r["iterations"] > 0 and r["elapsed_ms"] > 0 for r in result.records[1:])


def test_copy_of_frame_0_when_nothing_moves(translated):
    frames, truth = translated([(0, 0)] * 3)
    result = regtrack.track(frames, truth[0])
    np.testing.assert_array_equal(result.masks, truth)


def test_fields_and_overrides(translated):
    frames, truth = translated([(0, 0), (4, 2)])
    result = regtrack.track(
        frames, truth[0], return_fields=True, roi=False, MaximumNumberOfIterations=[20, 20, 20]
    )
    u = result.displacement_mm[1][38:58, 38:58].reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(u, [-4, -2], atol=0.3)
    assert result.records[1]["iterations"] == 60


def test_roi_auto_follows_target_size(translated):
    """Auto ROI (roi=None): on for a target under roi_max_area_mm2 (2000 mm² by default), off
    for a larger one; an explicit roi wins over the size, and the default is on."""
    frames, small = translated([(0, 0), (2, 2)], radius=10)  # 1 mm pixels: 314 mm²
    _, large = translated([(0, 0), (2, 2)], radius=30)  # 2827 mm²
    assert regtrack.track(frames, small[0], roi=None).records[1]["roi"] is True
    assert regtrack.track(frames, large[0], roi=None).records[1]["roi"] is False
    assert regtrack.track(frames, large[0]).records[1]["roi"] is True
    lowered = TrackerSettings(roi=None, roi_max_area_mm2=100.0)  # the threshold decides
    assert list(iter_track(frames, small[0], settings=lowered))[1].roi is False
    assert regtrack.track(frames, small[0], roi=False).records[1]["roi"] is False
    assert regtrack.track(frames, large[0], roi=True).records[1]["roi"] is True


def test_rejected_registration_falls_back_to_previous_mask(translated):
    frames, truth = translated([(0, 0), (2, 1), (2, 1)])
    settings = TrackerSettings(min_area_ratio=1.5)  # every registered mask fails the gate
    with pytest.warns(
        RuntimeWarning, match="frame 1: registered mask area changed x1.00 from the previous"
    ):
        results = list(iter_track(frames, truth[0], settings=settings))
    assert [r.source for r in results] == ["given", "previous", "previous"]
    assert "area" in results[2].reason
    assert "the flow too" in results[2].reason  # started from the flow, which failed as well
    np.testing.assert_array_equal(results[2].mask, truth[0].astype(bool))


@pytest.mark.parametrize(
    ("frames", "mask", "message"),
    [
        (np.zeros((32, 32)), np.ones((32, 32)), "2D"),
        (np.zeros((1, 32, 32)), np.ones((32, 32)), "at least 2"),
        (np.zeros((3, 32, 32)), np.ones((16, 16)), "shape"),
        (np.zeros((3, 32, 32)), np.zeros((32, 32)), "empty"),
        (np.zeros((3, 32, 32)), np.arange(32 * 32).reshape(32, 32) % 3, "not binary"),
    ],
)
def test_bad_input_is_named(frames, mask, message):
    with pytest.raises(ValueError, match=message):
        regtrack.track(frames, mask)


def test_nan_frame_is_refused(translated):
    frames, truth = translated([(0, 0), (1, 1), (1, 1)])
    frames[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match="frame 1 contains NaN"):
        regtrack.track(frames, truth[0])


def test_0_255_mask_is_converted_with_a_warning(translated):
    frames, truth = translated([(0, 0), (0, 0)])
    with pytest.warns(RuntimeWarning, match="0/255"):
        result = regtrack.track(frames, truth[0] * 255)
    np.testing.assert_array_equal(result.masks, truth)


def test_bad_preset_fails_before_any_frame(translated):
    frames, truth = translated([(0, 0), (1, 1)])
    with pytest.raises(ValueError, match="NoSuchMetric"):
        regtrack.track(frames, truth[0], Metric="NoSuchMetric")
    with pytest.raises(ValueError, match="does not exist"):
        regtrack.track(frames, truth[0], preset="nope")


class _FailingFrames:
    """A lazy sequence whose frame ``fail_at`` becomes unreadable mid-run (a disk gone): the
    up-front check of the whole input reads it once, the tracker's read then fails."""

    def __init__(self, frames, fail_at):
        self.frames, self.fail_at, self.shape = frames, fail_at, frames.shape
        self.reads = 0

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        if index == self.fail_at:
            self.reads += 1
            if self.reads > 1:
                raise OSError(f"frame {index} unreadable")
        return self.frames[index]


def test_crash_keeps_earlier_frames_and_rerun_resumes(tmp_path, jump_sequence):
    frames, truth = jump_sequence
    case = case_from_arrays(frames, truth[0])
    case.frames = _FailingFrames(frames, fail_at=5)
    with pytest.raises(OSError, match="frame 5"):
        track_case(case, tmp_path)
    records = (tmp_path / "frames.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in records] == [0, 1, 2, 3, 4]
    saved = np.load(tmp_path / "masks.partial.npy")
    assert _dice(saved[4], truth[4]) > 0.95
    assert not (tmp_path / "output.mha").exists()

    case.frames = frames
    output = track_case(case, tmp_path)
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    assert lines[:5] == records  # frames 0-4 were not redone
    assert [json.loads(line)["index"] for line in lines] == list(range(8))
    from regtrack.evaluation import read_mask_sequence

    written = read_mask_sequence(output)
    assert written.shape == truth.shape and _dice(written[7], truth[7]) > 0.95


def test_rerun_with_other_settings_is_refused(tmp_path, translated):
    frames, truth = translated([(0, 0), (1, 1)])
    case = case_from_arrays(frames, truth[0])
    track_case(case, tmp_path)
    with pytest.raises(ValueError, match="other settings.*--restart"):
        track_case(case, tmp_path, settings=TrackerSettings(preset="bspline_mi"))
    track_case(case, tmp_path, settings=TrackerSettings(preset="bspline_mi"), restart=True)


def test_flattening_cancels_a_smooth_bias(translated):
    from regtrack.engine import flatten_intensity

    frames, _ = translated([(0, 0)])
    rows, cols = np.indices(frames[0].shape)
    bias = 1.0 + 0.5 * np.sin(rows / 40.0) * np.cos(cols / 50.0)  # smooth, +-50 %
    plain = flatten_intensity(frames[0], 10.0, (1.0, 1.0))
    biased = flatten_intensity(frames[0] * bias, 10.0, (1.0, 1.0))
    inner = (slice(20, -20), slice(20, -20))
    relative = np.abs(biased[inner] - plain[inner]) / np.abs(plain[inner]).mean()
    raw_relative = np.abs(frames[0] * bias - frames[0])[inner] / np.abs(frames[0][inner]).mean()
    assert relative.mean() < 0.1 * raw_relative.mean()
    np.testing.assert_array_equal(flatten_intensity(frames[0], 0.0, (1.0, 1.0)), frames[0])


def test_roi_uses_a_finer_grid_unless_overridden():
    from regtrack.engine import _overrides

    settings = TrackerSettings(roi_grid_spacing_mm=8.0)
    assert _overrides(settings, use_roi=True) == {"FinalGridSpacingInPhysicalUnits": 8.0}
    assert _overrides(settings, use_roi=False) == {}
    mine = TrackerSettings(overrides={"FinalGridSpacingInPhysicalUnits": 20})
    assert _overrides(mine, use_roi=True)["FinalGridSpacingInPhysicalUnits"] == 20
