"""Run folders: bound to their inputs, one writer at a time."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.io import case_from_arrays, read_case, write_trackrad_case
from regtrack.run import track_case
from regtrack.runfolder import RunFiles, file_fingerprint, fingerprint_change, hold_lock


@pytest.fixture
def small_case(tmp_path, translated):
    frames, truth = translated([(0, 0), (2, 1), (4, 2)], shape=(64, 64), radius=8)
    return write_trackrad_case(tmp_path / "cases", "C", frames, truth[0], truth)


def _shift_first_label(case_dir, rows: int) -> None:
    """Rewrite the first label moved by ``rows`` pixels, as a user fixing a contour would."""
    path = case_dir / "targets" / "C_first_label.mha"
    image = sitk.ReadImage(str(path))
    moved = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(image), rows, axis=1))
    moved.CopyInformation(image)
    sitk.WriteImage(moved, str(path), useCompression=True)


def test_finished_run_refuses_a_new_first_label(small_case, tmp_path):
    out = tmp_path / "run"
    track_case(read_case(small_case), out)
    _shift_first_label(small_case, 20)
    with pytest.raises(ValueError, match=r"C_first_label\.mha .*--restart"):
        track_case(read_case(small_case), out)
    track_case(read_case(small_case), out, restart=True)  # the fix the message names


def test_interrupted_run_refuses_to_resume_on_a_moved_label(small_case, tmp_path):
    out = tmp_path / "run"
    track_case(read_case(small_case), out)
    records = RunFiles(out).records
    records.write_text(records.read_text().splitlines(keepends=True)[0])  # "crashed" at 1
    _shift_first_label(small_case, 20)
    with pytest.raises(ValueError, match="first_label.*changed"):
        track_case(read_case(small_case), out)


def test_array_inputs_are_fingerprinted_too(tmp_path, translated):
    frames, truth = translated([(0, 0), (2, 1), (4, 2)], shape=(64, 64), radius=8)
    out = tmp_path / "run"
    track_case(case_from_arrays(frames, truth[0]), out)
    RunFiles(out).records.write_text("")  # nothing done: any input may start over
    track_case(case_from_arrays(frames, np.roll(truth[0], 3, axis=0)), out)
    records = RunFiles(out).records
    records.write_text(records.read_text().splitlines(keepends=True)[0])
    with pytest.raises(ValueError, match="<mask array>"):
        track_case(case_from_arrays(frames, truth[0]), out)


def test_sampled_fingerprint_sees_size_content_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr("regtrack.runfolder.FULL_HASH_BYTES", 1000)
    path = tmp_path / "big.raw"
    path.write_bytes(bytes(200_000))
    before = file_fingerprint(path)
    assert before["hashed"] == "sampled"
    assert fingerprint_change(before, file_fingerprint(path)) is None
    os.utime(path, ns=(before["mtime_ns"] + 10**9,) * 2)
    assert "modified" in fingerprint_change(before, file_fingerprint(path))
    path.write_bytes(bytes(200_001))
    assert "size" in fingerprint_change(before, file_fingerprint(path))


def test_a_second_writer_is_refused(tmp_path):
    files = RunFiles(tmp_path)
    with hold_lock(files):
        assert json.loads(files.lock.read_text())["pid"] == os.getpid()
        with (
            pytest.raises(ValueError, match=rf"pid {os.getpid()}.*another --out"),
            hold_lock(files),
        ):
            pass
    assert not files.lock.exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    import socket

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    files = RunFiles(tmp_path)
    owner = {"pid": int(gone.stdout), "host": socket.gethostname()}
    files.lock.write_text(json.dumps(owner))
    with pytest.warns(RuntimeWarning, match="gone"), hold_lock(files):
        assert json.loads(files.lock.read_text())["pid"] == os.getpid()


def test_frame_file_round_trips_frames_across_a_reopen(tmp_path):
    """The run's masks file: frames written one at a time, kept when reopened to resume."""
    from regtrack.run import _FrameFile

    path = tmp_path / "masks.partial.npy"
    frames = np.random.default_rng(0).integers(0, 2, (4, 5, 6), dtype=np.uint8)
    store = _FrameFile(path, frames.shape, np.uint8, fresh=True)
    for index in range(2):
        store[index] = frames[index]
    store.close()
    resumed = _FrameFile(path, frames.shape, np.uint8, fresh=False)
    np.testing.assert_array_equal(resumed[1], frames[1])
    for index in range(2, 4):
        resumed[index] = frames[index]
    resumed.close()
    np.testing.assert_array_equal(resumed.array(), frames)
    np.testing.assert_array_equal(np.load(path), frames)  # a plain .npy to any reader
