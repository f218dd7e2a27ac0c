"""Hostile input and options: one error line and exit 2 before anything is written, or a
warning and a count, never silent garbage (issue 17)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.cli import main, run_summary
from regtrack.io import write_trackrad_case


@pytest.fixture
def make_case(tmp_path, translated):
    """Write a 6-frame 64 x 64 case, ``edit(frames, mask)`` applied first; return its folder."""

    def make(edit=None, name="C"):
        frames, truth = translated(
            [(0, 0), (2, 1), (4, 2), (3, 1), (1, 0), (2, 2)], shape=(64, 64), radius=8
        )
        mask = truth[0].copy()
        if edit:
            edit(frames, mask)
        return write_trackrad_case(tmp_path / "cases", name, frames, mask, truth)

    return make


def _track(case_dir, out, *extra):
    return main(["track", str(case_dir), "--out", str(out), "--no-progress", *extra])


def _one_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err
    return err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--set", "FinalGridSpacingInPhysicalUnits=-5"],
            ["FinalGridSpacingInPhysicalUnits", "> 0"],
        ),
        (["--set", "MaximumNumberOfIterations=10.7"], ["MaximumNumberOfIterations", "whole"]),
        (["--set", "MaximumNumberOfIterations=abc"], ["MaximumNumberOfIterations", "'abc'"]),
        (["--set", "UseDirectionCosines=yes"], ["UseDirectionCosines", "true or false"]),
        (["--flatten-sigma-mm", "nan"], ["--flatten-sigma-mm"]),
        (["--roi-margin-mm", "-5"], ["--roi-margin-mm", ">= 0"]),
        (["--budget", "0"], ["budget"]),
    ],
)
def test_bad_values_exit_2_with_nothing_written(make_case, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    assert _track(make_case(), out, *extra) == 2
    _one_line(capsys, *words)
    assert not out.exists()


def test_corrected_value_runs_after_a_refused_one(make_case, tmp_path, capsys):
    case, out = make_case(), tmp_path / "out"
    assert _track(case, out, "--set", "MaximumNumberOfIterations=abc") == 2
    assert _track(case, out, "--set", "MaximumNumberOfIterations=20") == 0


def test_values_are_checked_before_itk_loads(make_case, tmp_path):
    code = (
        "import sys; from regtrack.cli import main; "
        f"rc = main(['track', {str(make_case())!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--set', 'FinalGridSpacingInPhysicalUnits=-5']); print(rc, 'itk' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"]


@pytest.mark.parametrize("rate", ["0", "-3", "nan"])
def test_realtime_refuses_a_bad_frame_rate(make_case, tmp_path, capsys, rate):
    out = tmp_path / "out"
    argv = ["realtime", str(make_case()), "--out", str(out), "--frame-rate", rate, "--no-progress"]
    assert main(argv) == 2
    _one_line(capsys, "--frame-rate")
    assert not out.exists()


def test_out_that_is_a_file_or_under_one(make_case, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _track(make_case(), afile) == 2
    _one_line(capsys, "existing file")
    assert _track(make_case(), afile / "sub") == 2
    _one_line(capsys, "is a file")


def test_output_file_that_is_a_folder_fails_before_tracking(make_case, tmp_path, capsys):
    out = tmp_path / "out"
    assert _track(make_case(), out, "--output-file", str(tmp_path)) == 2
    _one_line(capsys, "--output-file", "is a folder")
    assert not out.exists()


def test_unwritable_out_folder(make_case, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("regtrack.runfolder.tempfile.mkstemp", refuse)
    assert _track(make_case(), tmp_path / "out") == 2
    _one_line(capsys, "cannot be written", "Permission denied")


def _rewrite_frames(case_dir, edit):
    """Apply ``edit`` to the (W, H, T) array of the case's frames file, in place."""
    path = next((case_dir / "images").glob("*.mha"))
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    edit(array)
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(path))
    return path


def test_nan_frame_is_refused_before_the_folder_exists(make_case, tmp_path, capsys):
    case = make_case()
    _rewrite_frames(case, lambda a: a.__setitem__((slice(None), slice(None), 4), np.nan))
    out = tmp_path / "out"
    assert _track(case, out) == 2
    _one_line(capsys, "NaN", "frame 4")
    assert not out.exists()


def test_truncated_sequence_is_named_as_truncated(make_case, tmp_path, capsys):
    path = next((make_case() / "images").glob("*.mha"))
    path.write_bytes(path.read_bytes()[:-3000])
    assert _track(path.parent.parent, tmp_path / "out") == 2
    err = _one_line(capsys, "truncated")
    assert "No such file" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("blank", "words"),
    [(slice(None), ["frame 0", "no image"]), (slice(1, None), ["5 of its 5 frames"])],
)
def test_sequence_without_signal_is_refused(make_case, tmp_path, capsys, blank, words):
    case = make_case()
    _rewrite_frames(case, lambda a: a.__setitem__((slice(None), slice(None), blank), 0))
    assert _track(case, tmp_path / "out") == 2
    _one_line(capsys, *words)


def test_first_mask_in_several_parts_is_warned_and_tracked(make_case, tmp_path):
    def three_parts(frames, mask):
        mask[2:6, 2:6] = mask[56:60, 2:6] = True

    with pytest.warns(RuntimeWarning, match="3 separate parts"):
        assert _track(make_case(three_parts), tmp_path / "out") == 0


def test_full_frame_mask_is_warned(make_case, tmp_path):
    def full(frames, mask):
        mask[:] = True

    with pytest.warns(RuntimeWarning, match="covers 100% of the frame"):
        assert _track(make_case(full), tmp_path / "out") == 0


def test_summary_counts_long_fallback_runs(tmp_path):
    sources = ["given"] + ["registration"] * 3 + ["previous"] * 5 + ["registration", "previous"]
    path = tmp_path / "frames.jsonl"
    path.write_text("".join(f'{{"index": {i}, "source": "{s}"}}\n' for i, s in enumerate(sources)))
    line = run_summary(path)
    assert "11 frames, 6 fallback answers" in line
    assert "1 runs of 4+ fallback frames (longest: 5 frames from frame 4)" in line
    assert "moved" not in line  # no registration started from the flow


def test_summary_says_how_far_the_registration_moved_its_start(tmp_path):
    moved = [None, 0.1, 0.4, None, 0.2]  # frame 0, three flow-started registrations, a flow answer
    path = tmp_path / "frames.jsonl"
    path.write_text(
        "".join(
            json.dumps({"index": i, "source": "registration", "start_correction_mm": m}) + "\n"
            for i, m in enumerate(moved)
        )
    )
    line = run_summary(path)
    assert "on 3 frames the registration moved the fast tracker's start by 0.20 mm" in line
    assert "largest 0.40" in line
