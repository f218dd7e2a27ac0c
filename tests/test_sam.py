"""The SAM2.1 streaming video tracker (regtrack.sam) with a random-initialised SAM2.1-tiny.

No SAM2.1 checkpoint can be downloaded here: the ``random_sam21`` fixture saves a
random-initialised SAM2.1-tiny in the official layout, which loads through the same path as
an official file. Nothing here measures accuracy; the tests check loading, shapes, scores,
equality with sam2's own video predictor, bounded memory and the errors.
"""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sam2", reason="the sam2 package (extra regtrack[sam2]) is not installed")

import torch

from regtrack.sam import SamTracker, load_sam2_video, track_sam

pytestmark = pytest.mark.sam2

IMAGE_SIZE = 128  # smallest sensible model input: keeps a frame near 50 ms on 2 CPU cores


@pytest.fixture(scope="module")
def model(random_sam21):
    return load_sam2_video(random_sam21[0], image_size=IMAGE_SIZE, device="cpu")


def _sequence(n_frames, shape=(48, 56), seed=0):
    """Smooth random frames with a gain change per frame, and a box mask for frame 0."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 3.0, shape[1])[None, None, :]
    gains = 1.0 + 0.3 * np.sin(np.arange(n_frames))[:, None, None]
    frames = (rng.normal(size=(n_frames, *shape)) + ramp) * 100.0 * gains
    mask = np.zeros(shape, dtype=np.uint8)
    mask[15:30, 20:36] = 1
    return frames.astype(np.float32), mask


def _held_bytes(tracker):
    """Bytes of the distinct tensors the tracker keeps between frames."""
    tensors = {}
    for outputs in tracker._outputs.values():
        for out in outputs.values():
            for value in out.values():
                for x in value if isinstance(value, list) else [value]:
                    tensors[x.data_ptr()] = x.numel() * x.element_size()
    return sum(tensors.values())


def test_checkpoint_loads_every_weight_and_adapts_to_image_size(model, random_sam21):
    assert model.checkpoint_info.variant == "tiny" and model.checkpoint_info.official is False
    assert model.image_size == IMAGE_SIZE and model.device.type == "cpu"
    expected = random_sam21[1].state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    grid = IMAGE_SIZE // 16  # RoPE of the memory attention built for the smaller token grid
    assert model.memory_attention.layers[0].self_attn.freqs_cis.shape[0] == grid * grid
    assert model.sam_prompt_encoder.mask_input_size == (IMAGE_SIZE // 4, IMAGE_SIZE // 4)


def test_checkpoint_from_environment_variable_and_automatic_device(random_sam21, monkeypatch):
    monkeypatch.setenv("REGTRACK_SAM2_CHECKPOINT", str(random_sam21[0]))
    loaded = load_sam2_video(image_size=64)
    assert loaded.checkpoint_info.path == random_sam21[0]
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_tracker_answers_every_frame(model):
    frames, mask = _sequence(5)
    tracker = SamTracker(model)
    first = tracker.init(frames[0], mask)
    assert first.mask.shape == mask.shape and first.mask.dtype == bool
    assert abs(int(first.mask.sum()) - int(mask.sum())) <= 0.1 * mask.sum()  # the prompt back
    assert first.score == 1.0 and tracker.frame_index == 0
    for index in range(1, len(frames)):
        answer = tracker.step(frames[index])
        assert answer.mask.shape == mask.shape and answer.mask.dtype == bool
        assert np.isfinite(answer.score) and 0.0 <= answer.score <= 1.0
        assert 0.0 <= answer.object_score <= 1.0 and answer.ms > 0
        assert tracker.frame_index == index
    tracker.init(frames[2], mask)  # a new init starts afresh
    assert tracker.frame_index == 0 and tracker.stored_frames == 1


def test_streaming_equals_sam2_video_predictor_with_bounded_memory(model, monkeypatch):
    """Fed frame by frame and forgetting all it can, the tracker answers exactly what sam2's
    own predictor answers with the whole sequence in memory (24 frames: beyond both the
    spatial memory window, 6, and the object pointer window, 15)."""
    import sam2.sam2_video_predictor as predictor_module

    n_frames = 24
    frames, mask = _sequence(n_frames, seed=1)
    tracker = SamTracker(model, num_frames=n_frames)
    assert tracker.max_stored_frames == 16 and model.num_maskmem == 7
    ours, stored, with_memory, held = [tracker.init(frames[0], mask).mask], [], [], []
    for frame in frames[1:]:
        ours.append(tracker.step(frame).mask)
        stored.append(tracker.stored_frames)
        with_memory.append(tracker.memory_frames)
        held.append(_held_bytes(tracker))
    assert max(stored) == stored[-1] == 16 and max(with_memory) == with_memory[-1] == 7
    assert stored[:15] == list(range(2, 17))  # grows until full, then stays
    assert held[15:] == [held[15]] * (n_frames - 16)  # nothing else accumulates

    # sam2's predictor on the same normalised frames, without the JPEG folder
    images = torch.cat([tracker._prepare(frame) for frame in frames])
    monkeypatch.setattr(
        predictor_module, "load_video_frames", lambda **kwargs: (images, *mask.shape)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA extension: sam2 skips hole filling, warning
        state = model.init_state("in-memory")
        model.add_new_mask(state, 0, 1, mask.astype(bool))
        theirs = {t: (m[0, 0] > 0).numpy() for t, _, m in model.propagate_in_video(state)}
    assert len(theirs) == n_frames
    for t in range(n_frames):
        np.testing.assert_array_equal(ours[t], theirs[t], err_msg=f"frame {t}")


def test_track_sam_offline(model):
    frames, mask = _sequence(4, seed=2)
    masks, records = track_sam(frames, mask, model=model)
    assert masks.shape == frames.shape and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks[0], mask)
    assert set(np.unique(masks)) <= {0, 1}
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["source"] for r in records] == ["given", "sam", "sam", "sam"]
    assert all(np.isfinite(r["sam_score"]) and r["elapsed_ms"] > 0 for r in records)
    json.dumps(records)  # plain numbers only


def test_missing_checkpoint_says_where_to_get_one(monkeypatch, tmp_path):
    monkeypatch.delenv("REGTRACK_SAM2_CHECKPOINT", raising=False)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load_sam2_video(tmp_path / "sam2.1_hiera_tiny.pt")
    assert "download_ckpts.sh" in str(error.value)
    assert "REGTRACK_SAM2_CHECKPOINT" in str(error.value)
    with pytest.raises(ValueError, match="no SAM2.1 checkpoint given.*REGTRACK_SAM2_CHECKPOINT"):
        load_sam2_video()


def test_corrupt_checkpoints_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(
        ValueError, match="(?s)could not be read as a PyTorch checkpoint.*download_ckpts.sh"
    ):
        load_sam2_video(junk, image_size=IMAGE_SIZE)
    other = tmp_path / "other.pt"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="not a SAM2.1 checkpoint"):
        load_sam2_video(other, image_size=IMAGE_SIZE)


def test_checkpoints_that_do_not_fit_are_refused(random_sam21, tmp_path):
    state = random_sam21[1].state_dict()
    old = tmp_path / "sam2_hiera_tiny.pt"  # SAM 2.0 lacks the SAM2.1-only weights
    torch.save({"model": {k: v for k, v in state.items() if "no_obj_embed" not in k}}, old)
    with pytest.raises(ValueError, match="SAM 2.0"):
        load_sam2_video(old, image_size=IMAGE_SIZE)
    key = "memory_encoder.out_proj.weight"
    bent = tmp_path / "bent.pt"
    torch.save({"model": {**state, key: torch.zeros(3, 3)}}, bent)
    with pytest.raises(ValueError, match="do not fit SAM2.1-tiny"):
        load_sam2_video(bent, image_size=IMAGE_SIZE)
    cut = tmp_path / "cut.pt"
    torch.save({"model": {k: v for k, v in state.items() if k != key}}, cut)
    with pytest.raises(ValueError, match="missing.*out_proj"):
        load_sam2_video(cut, image_size=IMAGE_SIZE)


def test_bad_inputs_are_refused(model, random_sam21):
    frames, mask = _sequence(3)
    tracker = SamTracker(model)
    with pytest.raises(RuntimeError, match="before init"):
        tracker.step(frames[1])
    with pytest.raises(ValueError, match="mask0 has shape"):
        tracker.init(frames[0], mask[:-1])
    with pytest.raises(ValueError, match="empty"):
        tracker.init(frames[0], np.zeros_like(mask))
    with pytest.raises(ValueError, match="not binary"):
        tracker.init(frames[0], mask * np.arange(mask.shape[1]))
    nan_frame = frames[0].copy()
    nan_frame[3, 4] = np.nan
    with pytest.raises(ValueError, match="frame 0 contains NaN"):
        tracker.init(nan_frame, mask)
    tracker.init(frames[0], mask)
    with pytest.raises(ValueError, match="frame 1 contains NaN"):
        tracker.step(nan_frame)
    with pytest.raises(ValueError, match="frame 1 has shape"):
        tracker.step(frames[1][:, :-2])
    big = np.zeros((600, 600), dtype=np.float32)
    dot = np.zeros((600, 600), dtype=bool)
    dot[300, 300] = True
    with pytest.raises(ValueError, match="vanishes.*larger image_size"):
        tracker.init(big, dot)
    with pytest.raises(RuntimeError, match="before init"):  # a failed init leaves no state
        tracker.step(big)
    with pytest.raises(ValueError, match="multiple of 32"):
        load_sam2_video(random_sam21[0], image_size=300)


def test_import_regtrack_stays_light():
    code = (
        "import sys, regtrack; before = set(sys.modules); import regtrack.sam; "
        "print('sam2' in sys.modules, 'torch' in set(sys.modules) - before)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]
