"""The flow's reference: frame 0 averaged with frames pulled back onto it."""

import numpy as np
import pytest
from conftest import disk, textured_canvas
from scipy import ndimage

from regtrack.budget import FLOW_RUNG, LADDER
from regtrack.engine import Engine, TrackerSettings
from regtrack.reference import Reference
from regtrack.stages import track_timed

SHAPE = (96, 96)
SPACING = (1.0, 1.0)
REGION = (slice(8, 88), slice(8, 88))
INNER = (slice(20, 76), slice(20, 76))  # away from the region's edge ramp


def _noisy_frames(shifts, noise=8.0, seed=1):
    """Clean frames cut from one canvas at sub-pixel shifts (row, col), each with its own
    noise and grey-value scale; the clean frame 0 is the truth the average should reach."""
    canvas = textured_canvas(256, seed=0)
    rng = np.random.default_rng(seed)
    clean, noisy = [], []
    for t, shift in enumerate(shifts):
        # Content at x + shift in frame t: frame_t(x) = frame_0(x - shift).
        moved = ndimage.shift(canvas, shift, order=3)[80:176, 80:176]
        gain, offset = 1.0 + 0.2 * np.sin(t), 10.0 * np.cos(t)
        clean.append(moved * gain + offset)
        noisy.append((moved + rng.normal(0, noise, moved.shape)) * gain + offset)
    return np.asarray(clean, np.float32), np.asarray(noisy, np.float32)


def _rms(image, truth):
    return float(np.sqrt(np.mean((image[INNER] - truth[INNER]) ** 2)))


def test_average_cuts_frame_0_noise_and_stays_on_frame_0():
    shifts = [(0, 0), (1.5, -0.5), (3.2, 1.0), (-2.0, 2.5), (0.7, -2.2), (2.4, 0.3)] * 2
    clean, noisy = _noisy_frames(shifts)
    value_range = (float(noisy[0].min()), float(noisy[0].max()))
    reference = Reference(noisy[0], REGION, value_range, SPACING)
    for frame, shift in zip(noisy[1:], shifts[1:], strict=True):
        reference.add(frame, shift_mm=(-shift[0], -shift[1]))  # carries frame t back to 0
    assert reference.frames == len(shifts) - 1
    before, after = _rms(noisy[0], clean[0]), _rms(reference.image, clean[0])
    assert after < 0.6 * before  # 12 frames: the noise falls by well over a third
    # Anchored on frame 0: the average is not displaced against the clean frame 0.
    phase = np.fft.fft2(reference.image[INNER]) * np.conj(np.fft.fft2(clean[0][INNER]))
    peak = np.unravel_index(np.argmax(np.abs(np.fft.ifft2(phase / np.abs(phase)))), (56, 56))
    assert peak == (0, 0)
    outside = np.ones(SHAPE, bool)
    outside[REGION] = False
    np.testing.assert_array_equal(reference.image[outside], noisy[0][outside])


def test_engine_averages_answered_frames_of_fine_motion_only():
    shifts = [(0, 0), (1, 1), (2, -1), (20, 4)]  # the last is a jump beyond 15 mm
    _, frames = _noisy_frames(shifts, noise=2.0)
    masks = [disk(SHAPE, np.array((48, 48)) + s, 10) for s in shifts]
    settings = TrackerSettings(overrides={"MaximumNumberOfIterations": [10, 10, 10]})
    engine = Engine.build(frames[0], masks[0], settings, SPACING)
    engine.track_frame(frames[0], masks[0], 0)  # frame 0 itself (calibration) is not averaged
    assert engine.reference.frames == 0
    for index in (1, 2):
        result = track_timed(engine, frames[index], masks[index - 1], index)
        assert result.source == "registration"
        assert result.stages_ms["reference"] > 0  # the averaging is timed as its own stage
    assert engine.reference.frames == 2
    engine.track_frame(frames[3], masks[3], 3)
    assert engine.reference.frames == 2
    for rung in (LADDER[2], FLOW_RUNG):  # a tight budget's rungs leave the average alone
        assert engine.track_frame(frames[1], masks[0], 1, schedule=rung).source == "registration"
    assert engine.reference.frames == 2
    first = Engine.build(frames[0], masks[0], TrackerSettings(reference="first"), SPACING)
    assert first.reference is None


def test_average_follows_fine_motion_more_closely_than_frame_0_at_low_snr():
    # Where noise rivals the texture (faint targets, low SNR) the average wins; on clean
    # frames it blurs a little and frame 0 alone is as good (docs/benchmarks.md).
    rng = np.random.default_rng(3)
    shifts = [(0.0, 0.0)] + [tuple(rng.uniform(-3, 3, 2)) for _ in range(24)]
    _, frames = _noisy_frames(shifts, noise=90.0, seed=2)
    truth = [
        ndimage.shift(disk(SHAPE, (48, 48), 9).astype(float), s, order=1) >= 0.5 for s in shifts
    ]
    errors = {}
    for kind in ("average", "first"):
        engine = Engine.build(frames[0], truth[0], TrackerSettings(reference=kind), SPACING)
        centre_errors = []
        for index in range(1, len(frames)):
            mask = engine.track_frame(frames[index], truth[index - 1], index).mask
            error = np.subtract(ndimage.center_of_mass(mask), ndimage.center_of_mass(truth[index]))
            centre_errors.append(np.hypot(*error))
        errors[kind] = np.mean(centre_errors[5:])  # once a few frames are averaged in
    assert errors["average"] < 0.85 * errors["first"]


def test_unknown_reference_is_refused():
    with pytest.raises(ValueError, match="reference must be one of"):
        TrackerSettings(reference="mean")
