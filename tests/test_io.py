"""Tests of regtrack.io: reading and writing cine-MRI cases."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.io import (
    Case,
    FrameReader,
    Geometry,
    case_from_arrays,
    case_from_frame,
    output_path_for,
    read_case,
    read_mask,
    write_masks,
    write_trackrad_case,
)

T, H, W = 6, 7, 9  # all different, so a transposition bug changes shapes or values
SPACING = (0.8, 1.25)  # (row, col), different, so a swapped spacing is caught


def _frames() -> np.ndarray:
    """(T, H, W) float32 with a distinct value in every voxel."""
    return np.arange(T * H * W, dtype=np.float32).reshape(T, H, W) / 7.0


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[2:5, 3:7] = True
    mask[2, 3] = False  # asymmetric
    return mask


def _labels() -> np.ndarray:
    labels = np.zeros((T, H, W), dtype=np.uint8)
    for t in range(T):
        labels[t, 1 + t % 3 : 4 + t % 3, 2:6] = 1
    return labels


def _write(path: Path, array: np.ndarray, spacing=None, **kwargs) -> Path:
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), **kwargs)
    return path


@pytest.fixture
def case_dir(tmp_path: Path) -> Path:
    return write_trackrad_case(
        tmp_path, "A_001", _frames(), _mask(), _labels(), spacing_mm=SPACING, frame_rate_hz=8.0
    )


# --------------------------------------------------------------------------- round trips


def test_round_trip_trackrad_case(case_dir: Path) -> None:
    case = read_case(case_dir)
    assert isinstance(case, Case)
    assert case.name == "A_001"
    assert isinstance(case.frames, FrameReader)
    np.testing.assert_array_equal(np.asarray(case.frames), _frames())
    np.testing.assert_array_equal(case.first_mask, _mask())
    assert case.first_mask.dtype == bool
    labels = np.asarray(case.labels)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, _labels())
    assert case.spacing_mm == pytest.approx(SPACING)
    assert case.geometry is not None and case.geometry.time_axis == 0
    assert (case.frame_rate_hz, case.field_strength_t, case.scanned_region) == (
        8.0,
        0.35,
        "abdomen",
    )


def test_trackrad_file_is_w_h_t_in_simpleitk(case_dir: Path) -> None:
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "images" / "A_001_frames.mha")))
    assert raw.shape == (W, H, T)
    np.testing.assert_array_equal(raw, _frames().transpose(2, 1, 0))
    first = sitk.ReadImage(str(case_dir / "targets" / "A_001_first_label.mha"))
    assert sitk.GetArrayFromImage(first).shape == (W, H, 1)
    assert first.GetSpacing()[1:] == pytest.approx(SPACING)  # ITK spacing[1] = row, [2] = col
    frames = read_case(case_dir).frames
    assert frames.shape == (T, H, W)
    np.testing.assert_array_equal(frames[2], raw[:, :, 2].T)


def test_non_contiguous_input_round_trips(tmp_path: Path) -> None:
    frames_whT = np.ascontiguousarray(_frames().transpose(2, 1, 0))
    view = frames_whT.transpose(2, 1, 0)  # (T, H, W) view, not C-contiguous
    assert not view.flags.c_contiguous
    mask = np.asfortranarray(_mask())
    folder = write_trackrad_case(tmp_path, "nc", view, mask, spacing_mm=SPACING)
    case = read_case(folder)
    np.testing.assert_array_equal(np.asarray(case.frames), _frames())
    np.testing.assert_array_equal(case.first_mask, _mask())
    assert case.labels is None


def test_case_from_arrays_copies_to_contiguous_float32() -> None:
    view = np.ascontiguousarray(_frames().transpose(2, 1, 0)).transpose(2, 1, 0)
    case = case_from_arrays(view.astype(np.float64), _mask(), spacing_mm=SPACING, labels=_labels())
    assert case.frames.dtype == np.float32 and case.frames.flags.c_contiguous
    np.testing.assert_array_equal(case.frames, _frames())
    assert case.geometry is None and case.spacing_mm == SPACING
    assert case.labels.dtype == np.uint8


# --------------------------------------------------------------------------- FrameReader


def test_frame_reader_read_matches_slices(case_dir: Path) -> None:
    reader = FrameReader(case_dir / "images" / "A_001_frames.mha", chunk_size=4)
    full = reader.read(0, len(reader))
    np.testing.assert_array_equal(full, _frames())
    for start, stop in [(0, 1), (1, 4), (3, 6), (5, 6)]:
        part = reader.read(start, stop)
        assert part.dtype == np.float32 and part.flags.c_contiguous
        np.testing.assert_array_equal(part, full[start:stop])
    assert reader[3].flags.c_contiguous and reader[3].shape == (H, W)
    np.testing.assert_array_equal(reader[-1], full[-1])
    np.testing.assert_array_equal(reader[1:5], full[1:5])
    np.testing.assert_array_equal(reader[::2], full[::2])
    np.testing.assert_array_equal(np.stack(list(reader)), full)
    np.testing.assert_array_equal(reader[2, 1:3, ::2], full[2, 1:3, ::2])
    np.testing.assert_array_equal(reader[1:4, 2], full[1:4, 2])
    with pytest.raises(IndexError, match="out of range"):
        reader[T]
    with pytest.raises(ValueError, match="need 0 <= start < stop"):
        reader.read(4, 2)


def test_frame_reader_pickles(case_dir: Path) -> None:
    reader = FrameReader(case_dir / "images" / "A_001_frames.mha")
    copy = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(copy[2], reader[2])
    assert copy.geometry == reader.geometry


# --------------------------------------------------------------------------- writing masks


def _oblique_sequence(tmp_path: Path) -> Path:
    """A TrackRAD-layout sequence with non-trivial origin and direction."""
    image = sitk.GetImageFromArray(_frames().transpose(2, 1, 0).copy())
    image.SetSpacing((0.25, *SPACING))
    image.SetOrigin((1.5, -20.0, 33.25))
    image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    path = tmp_path / "seq.mha"
    sitk.WriteImage(image, str(path))
    return path


def test_write_masks_matches_input_geometry(tmp_path: Path) -> None:
    seq = _oblique_sequence(tmp_path)
    geometry = FrameReader(seq).geometry
    memmap = np.lib.format.open_memmap(
        tmp_path / "m.npy", mode="w+", dtype=np.uint8, shape=(T, H, W)
    )
    memmap[:] = _labels()
    out = write_masks(tmp_path / "out" / "output.mha", memmap, geometry=geometry)
    assert out == tmp_path / "out" / "output.mha"
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(seq))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSize() == source.GetSize()
    assert written.GetSpacing() == pytest.approx(source.GetSpacing())
    assert written.GetOrigin() == pytest.approx(source.GetOrigin())
    assert written.GetDirection() == pytest.approx(source.GetDirection())
    values = sitk.GetArrayFromImage(written)
    assert set(np.unique(values)) == {0, 1}
    np.testing.assert_array_equal(values, _labels().transpose(2, 1, 0))
    assert b"CompressedData = True" in out.read_bytes()[:400]
    assert sorted(p.name for p in out.parent.iterdir()) == ["output.mha"]  # no temp left


def _mask_file(tmp_path: Path) -> Path:
    """The first mask as one frame of the oblique sequence (ITK size (1, H, W))."""
    return _write(
        tmp_path / "m.mha", _mask().astype(np.uint8).T[:, :, None].copy(), (0.25, *SPACING)
    )


def test_case_from_frame_starts_at_that_frame_with_its_label(tmp_path: Path) -> None:
    seq = _oblique_sequence(tmp_path)
    labels = _write(tmp_path / "labels.mha", _labels().transpose(2, 1, 0).copy(), (0.25, *SPACING))
    case = read_case(seq, mask=_mask_file(tmp_path), labels=labels)
    later = case_from_frame(case, 2)
    np.testing.assert_array_equal(later.frames, _frames()[2:])
    np.testing.assert_array_equal(later.labels, _labels()[2:])
    np.testing.assert_array_equal(later.first_mask, _labels()[2].astype(bool))
    assert later.first_mask.dtype == bool and "mask" not in later.files
    assert (later.name, later.spacing_mm) == (case.name, case.spacing_mm)
    assert case_from_frame(case, 0) is case
    # Still read lazily, and a worker gets the same frames.
    assert isinstance(later.frames, FrameReader) and later.frames.first_frame == 2
    np.testing.assert_array_equal(later.frames[1], _frames()[3])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(later.frames))[:], _frames()[2:])
    np.testing.assert_array_equal(later.frames.from_frame(1)[:], _frames()[3:])
    # Written like the input from frame 2 on: frame 0 of the output lies where frame 2 was.
    out = write_masks(tmp_path / "out.mha", later.labels, geometry=later.geometry)
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(seq))
    assert written.GetSize() == (T - 2, *source.GetSize()[1:])
    assert written.GetOrigin() == pytest.approx(source.TransformIndexToPhysicalPoint((2, 0, 0)))
    assert written.GetDirection() == pytest.approx(source.GetDirection())


def test_case_from_frame_names_what_is_missing(tmp_path: Path) -> None:
    seq = _oblique_sequence(tmp_path)
    mask = _mask_file(tmp_path)
    with pytest.raises(ValueError, match="has no labels.*start it from frame 0"):
        case_from_frame(read_case(seq, mask=mask), 1)
    labels = _labels()
    labels[3] = 0
    labels = _write(tmp_path / "labels.mha", labels.transpose(2, 1, 0).copy(), (0.25, *SPACING))
    case = read_case(seq, mask=mask, labels=labels)
    with pytest.raises(ValueError, match=f"has {T} frames.*start at most at frame {T - 2}"):
        case_from_frame(case, T - 1)
    with pytest.raises(ValueError, match="the label of frame 3 is empty"):
        case_from_frame(case, 3)


def test_write_masks_without_geometry_uses_trackrad_layout(tmp_path: Path) -> None:
    out = write_masks(tmp_path / "o.mha", _labels().astype(bool), geometry=None, spacing_mm=SPACING)
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (T, H, W)
    assert image.GetSpacing()[1:] == pytest.approx(SPACING)


def test_write_masks_rejects_bad_masks_and_writes_nothing(tmp_path: Path) -> None:
    geometry = FrameReader(_oblique_sequence(tmp_path)).geometry
    out = tmp_path / "bad" / "output.mha"
    with pytest.raises(ValueError, match="masks must hold only 0 and 1"):
        write_masks(out, _labels() * 255, geometry=geometry)
    with pytest.raises(ValueError, match=r"masks have shape .* but the input sequence is"):
        write_masks(out, _labels()[:-1], geometry=geometry)
    assert not out.parent.exists()


# --------------------------------------------------------------------------- layouts


def test_container_input_layout(case_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "container" / "input"
    (root / "images" / "mri-linacs").mkdir(parents=True)
    (root / "images" / "mri-linac-target").mkdir(parents=True)
    shutil.copy(case_dir / "images" / "A_001_frames.mha", root / "images" / "mri-linacs")
    shutil.copy(
        case_dir / "targets" / "A_001_first_label.mha", root / "images" / "mri-linac-target"
    )
    for name in ("frame-rate.json", "b-field-strength.json", "scanned-region.json"):
        shutil.copy(case_dir / name, root / name)
    case = read_case(root)
    assert case.name == "A_001"
    np.testing.assert_array_equal(np.asarray(case.frames), _frames())
    np.testing.assert_array_equal(case.first_mask, _mask())
    assert case.frame_rate_hz == 8.0 and case.labels is None
    out = output_path_for(root)
    assert out == tmp_path / "container" / "output" / "images" / "mri-linac-series-targets" / (
        "output.mha"
    )
    write_masks(out, _labels(), geometry=case.geometry)
    assert sitk.ReadImage(str(out)).GetSize() == (T, H, W)


def test_output_path_for_case_folder_and_file(case_dir: Path, tmp_path: Path) -> None:
    assert output_path_for(case_dir) == case_dir / "output.mha"
    seq = tmp_path / "scan.nii.gz"
    seq.touch()
    assert output_path_for(seq) == tmp_path / "scan_output.nii.gz"


@pytest.mark.parametrize("mask_2d", [True, False])
def test_nifti_sequence_with_time_last(tmp_path: Path, mask_2d: bool) -> None:
    seq = _write(tmp_path / "seq.nii.gz", _frames(), spacing=(SPACING[1], SPACING[0], 0.5))
    mask_array = _mask().astype(np.uint8) if mask_2d else _mask().astype(np.uint8)[None]
    spacing = (SPACING[1], SPACING[0]) if mask_2d else (SPACING[1], SPACING[0], 0.5)
    mask = _write(tmp_path / "mask.nii.gz", mask_array, spacing=spacing)
    case = read_case(seq, mask=mask)
    assert case.geometry.time_axis == 2
    assert case.name == "seq"
    assert case.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_array_equal(np.asarray(case.frames), _frames())
    np.testing.assert_array_equal(case.first_mask, _mask())
    out = write_masks(output_path_for(seq), _labels(), geometry=case.geometry)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), _labels())


def test_4d_sequence_with_singleton_axis(tmp_path: Path) -> None:
    seq = _write(tmp_path / "seq4d.mha", _frames()[:, None])  # ITK size (W, H, 1, T)
    mask = _write(tmp_path / "mask.mha", _mask().astype(np.uint8)[None])  # ITK (W, H, 1)
    case = read_case(seq, mask=mask)
    assert case.geometry.size == (W, H, 1, T) and case.geometry.time_axis == 3
    np.testing.assert_array_equal(np.asarray(case.frames), _frames())
    np.testing.assert_array_equal(case.first_mask, _mask())
    out = write_masks(tmp_path / "out.mha", _labels(), geometry=case.geometry)
    assert sitk.ReadImage(str(out)).GetSize() == (W, H, 1, T)


def test_explicit_time_axis_wins(tmp_path: Path) -> None:
    seq = _write(tmp_path / "seq.mha", _frames())  # time last, ITK size (W, H, T)
    reader = FrameReader(seq, time_axis=2)
    np.testing.assert_array_equal(reader.read(0, T), _frames())
    with pytest.raises(ValueError, match="time_axis=3 is not an axis"):
        FrameReader(seq, time_axis=3)


# --------------------------------------------------------------------------- validation


def test_missing_files_are_named(case_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_case(tmp_path / "nowhere")
    (case_dir / "targets" / "A_001_first_label.mha").unlink()
    with pytest.raises(
        ValueError,
        match=r"first-frame mask not found: expected a file at .*"
        r"A_001_first_label\.mha",
    ):
        read_case(case_dir)
    (case_dir / "images" / "A_001_frames.mha").unlink()
    with pytest.raises(
        ValueError,
        match=r"sequence not found: expected a file at .*"
        r"A_001_frames\.mha",
    ):
        read_case(case_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a TrackRAD case folder"):
        read_case(tmp_path / "empty")


def test_container_without_mask_is_named(tmp_path: Path) -> None:
    (tmp_path / "input" / "images" / "mri-linacs").mkdir(parents=True)
    _write(tmp_path / "input" / "images" / "mri-linacs" / "x.mha", _frames())
    with pytest.raises(ValueError, match=r"first-frame mask not found: .*mri-linac-target"):
        read_case(tmp_path / "input")


def test_single_file_needs_mask(tmp_path: Path) -> None:
    seq = _write(tmp_path / "seq.mha", _frames())
    with pytest.raises(ValueError, match="pass mask="):
        read_case(seq)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mha"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"cannot read the sequence .*broken\.mha"):
        FrameReader(bad)


def test_empty_mask(case_dir: Path) -> None:
    geometry = FrameReader(case_dir / "images" / "A_001_frames.mha").geometry
    empty = case_dir / "empty.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((W, H, 1), np.uint8)), str(empty))
    _set_spacing(empty, (1.0, *SPACING))
    with pytest.raises(ValueError, match="is empty"):
        read_mask(empty, geometry)
    with pytest.raises(ValueError, match="first_mask is empty"):
        case_from_arrays(_frames(), np.zeros((H, W)))


def _set_spacing(path: Path, spacing) -> None:
    image = sitk.ReadImage(str(path))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _trackrad_mask(path: Path, mask: np.ndarray, spacing=(1.0, *SPACING)) -> Path:
    array = np.ascontiguousarray(mask[None].transpose(2, 1, 0), dtype=np.uint8)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_non_binary_mask_raises(case_dir: Path) -> None:
    geometry = FrameReader(case_dir / "images" / "A_001_frames.mha").geometry
    values = _mask().astype(np.uint8)
    values[0, 0] = 2
    path = _trackrad_mask(case_dir / "multi.mha", values)
    with pytest.raises(ValueError, match=r"is not binary: besides 0 it holds the values 1, 2"):
        read_mask(path, geometry)


def test_0_255_mask_warns_and_converts(case_dir: Path) -> None:
    geometry = FrameReader(case_dir / "images" / "A_001_frames.mha").geometry
    path = _trackrad_mask(case_dir / "m255.mha", _mask().astype(np.uint8) * 255)
    with pytest.warns(RuntimeWarning, match="holds 0/255 instead of 0/1"):
        mask = read_mask(path, geometry)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, _mask())
    with pytest.warns(RuntimeWarning, match="0/255"):
        case = read_case(case_dir, mask=path)
    np.testing.assert_array_equal(case.first_mask, _mask())


def test_mask_shape_mismatch(case_dir: Path) -> None:
    geometry = FrameReader(case_dir / "images" / "A_001_frames.mha").geometry
    path = _trackrad_mask(case_dir / "small.mha", _mask()[:-1])
    with pytest.raises(ValueError, match=r"but the frames are 7 x 9"):
        read_mask(path, geometry)
    with pytest.raises(ValueError, match=r"first_mask has shape \(9, 7\)"):
        case_from_arrays(_frames(), _mask().T)


def test_mask_spacing_mismatch(case_dir: Path) -> None:
    geometry = FrameReader(case_dir / "images" / "A_001_frames.mha").geometry
    path = _trackrad_mask(case_dir / "sp.mha", _mask(), spacing=(1.0, SPACING[0], 1.0))
    with pytest.raises(ValueError, match=r"spacing \(0\.8, 1\.0\) mm but the frames have"):
        read_mask(path, geometry)
    close = _trackrad_mask(
        case_dir / "close.mha", _mask(), spacing=(1.0, SPACING[0] + 5e-4, SPACING[1])
    )
    np.testing.assert_array_equal(read_mask(close, geometry), _mask())


def test_nan_frames(tmp_path: Path) -> None:
    frames = _frames()
    frames[4, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf values \(first in frame 4"):
        case_from_arrays(frames, _mask())
    seq = _write(tmp_path / "nan.mha", np.ascontiguousarray(frames.transpose(2, 1, 0)))
    reader = FrameReader(seq, chunk_size=2)
    np.testing.assert_array_equal(reader[0], _frames()[0])  # clean chunks still read
    with pytest.raises(ValueError, match=r"NaN or inf values in frame 4"):
        reader[4]


def test_single_frame_sequence(tmp_path: Path) -> None:
    seq = _write(tmp_path / "one.mha", np.ascontiguousarray(_frames()[:1].transpose(2, 1, 0)))
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        FrameReader(seq)
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        case_from_arrays(_frames()[:1], _mask())


def test_labels_must_match_frames(case_dir: Path, tmp_path: Path) -> None:
    other = write_trackrad_case(
        tmp_path, "B", _frames()[:3], _mask(), _labels()[:3], spacing_mm=SPACING
    )
    with pytest.raises(ValueError, match=r"labels .* have ITK size \(3, 7, 9\)"):
        read_case(case_dir, labels=other / "targets" / "B_labels.mha")


def test_bad_json_is_named(case_dir: Path) -> None:
    (case_dir / "frame-rate.json").write_text(json.dumps("fast"))
    with pytest.raises(ValueError, match=r"frame-rate\.json must hold a single int or float"):
        read_case(case_dir)


def test_geometry_properties() -> None:
    geometry = Geometry((T, H, W), (0.2, *SPACING), (0.0,) * 3, (1.0, 0, 0, 0, 1, 0, 0, 0, 1), 0)
    assert geometry.spacing_mm == SPACING
    assert geometry.n_frames == T and geometry.frame_shape == (H, W)
    last = Geometry(
        (W, H, T), (SPACING[1], SPACING[0], 0.2), (0.0,) * 3, (1.0, 0, 0, 0, 1, 0, 0, 0, 1), 2
    )
    assert last.spacing_mm == SPACING and last.frame_shape == (H, W)
    with pytest.raises(ValueError, match="not 2D \\+ time"):
        Geometry((W, H, 2, T), (1.0,) * 4, (0.0,) * 4, tuple(np.eye(4).ravel()), 3)
