"""Nothing a user owns is lost, and no input crashes or hangs a run: outputs that are inputs,
files regtrack did not write, damaged checkpoints, impossible geometry and parameters, and
signals, each answered with one clear line (or a warning) and nothing of the user's touched."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.cli import main
from regtrack.io import write_trackrad_case

SHIFTS = [(0, 0), (2, 1), (4, 2), (3, 1), (1, 0), (2, 2), (3, 3), (1, 2)]


@pytest.fixture
def make_case(tmp_path, translated):
    """Write an 8-frame 64 x 64 case with labels; return its folder."""

    def make(name="C", **options):
        frames, truth = translated(SHIFTS, shape=(64, 64), radius=8)
        return write_trackrad_case(tmp_path / "cases", name, frames, truth[0], truth, **options)

    return make


def _track(case_dir, out, *extra):
    return main(["track", str(case_dir), "--out", str(out), "--no-progress", *extra])


def _error(capsys, *words):
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _strict(text: str):
    """json.loads that refuses NaN and infinities, as strict JSON readers do."""

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- outputs and inputs


@pytest.mark.parametrize("which", ["frames", "first_label"])
def test_an_output_file_that_is_an_input_is_refused(make_case, tmp_path, capsys, which):
    case = make_case()
    path = next(case.rglob(f"*_{which}*.mha"))
    before = path.read_bytes()
    assert _track(case, tmp_path / "out", "--output-file", str(path)) == 2
    _error(capsys, str(path), "input")
    assert path.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_an_output_file_linked_to_an_input_is_refused(make_case, tmp_path, capsys):
    case = make_case()
    frames = next(case.rglob("*_frames.mha"))
    link = tmp_path / "link.mha"
    link.symlink_to(frames)
    assert _track(case, tmp_path / "out", "--output-file", str(link)) == 2
    _error(capsys, "input")


def test_out_folder_holding_the_input_sequence_is_refused(make_case, capsys):
    case = make_case()
    assert _track(case, case / "images") == 2
    _error(capsys, "folder of the input")
    assert not (case / "images" / "run.json").exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("output.mha", b"my own masks"),
        ("run.json", b'{"mine": true}'),
        ("frames.jsonl", b"my line 1\nmy line 2\n"),
        ("masks.partial.npy", b"not yours"),
        ("run.lock", b"my lock"),
    ],
)
@pytest.mark.parametrize("restart", [False, True])
def test_files_regtrack_did_not_write_are_refused(
    make_case, tmp_path, capsys, name, content, restart
):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    (out / "notes.txt").write_text("kept")
    assert _track(make_case(), out, *(["--restart"] if restart else [])) == 2
    _error(capsys, str(out / name), "did not write", "Move or delete it")
    assert (out / name).read_bytes() == content
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "notes.txt"])


def test_a_users_file_replacing_regtracks_output_is_kept(make_case, tmp_path, capsys):
    case, out = make_case(), tmp_path / "out"
    assert _track(case, out) == 0
    (out / "output.mha").write_bytes(b"edited by hand")
    assert _track(case, out, "--restart") == 2
    _error(capsys, "output.mha", "did not write")
    assert (out / "output.mha").read_bytes() == b"edited by hand"


def test_a_finished_run_is_rerun_and_restarted_in_its_own_folder(make_case, tmp_path):
    case, out = make_case(), tmp_path / "out"
    assert _track(case, out) == 0
    assert _track(case, out) == 0
    assert _track(case, out, "--restart") == 0
    assert (out / "output.mha").is_file()


def test_report_keeps_a_users_page(tmp_path, capsys):
    results = tmp_path / "mine.json"
    results.write_text(json.dumps({"benchmark": "mine", "rows": [{"a": 1}]}))
    page = tmp_path / "mine.html"
    page.write_text("<p>my page</p>")
    assert main(["report", str(results)]) == 2
    _error(capsys, "mine.html", "did not write")
    assert page.read_text() == "<p>my page</p>"
    assert main(["report", str(results), "--out", str(results)]) == 2
    _error(capsys, "input")
    page.unlink()
    assert main(["report", str(results)]) == 0
    assert main(["report", str(results)]) == 0  # its own page it may rewrite
    (tmp_path / ".regtrack-written.json").unlink()  # a page kept in git has no record
    assert main(["report", str(results)]) == 0  # regtrack's footer tells it is its own


def test_phantom_keeps_a_users_case_file(tmp_path, capsys):
    folder = tmp_path / "cases" / "lung_slide"
    folder.mkdir(parents=True)
    (folder / "frame-rate.json").write_text("8")
    assert main(["phantom", str(tmp_path / "cases"), "--case", "lung_slide", "--frames", "3"]) == 2
    _error(capsys, "frame-rate.json", "did not write")
    assert (folder / "frame-rate.json").read_text() == "8"


def test_demo_keeps_a_users_scores(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "scores.json").write_text('{"mine": 1}')
    assert main(["demo", "--out", str(out), "--frames", "3", "--no-progress"]) == 2
    _error(capsys, "scores.json", "did not write")
    assert (out / "scores.json").read_text() == '{"mine": 1}'
    assert not (out / "lung_slide").exists()


def test_sweep_keeps_a_users_spec_in_its_folder(make_case, tmp_path, capsys):
    make_case()
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'cases = ["{tmp_path / "cases" / "C"}"]\n[set]\nroi = true\n')
    out = tmp_path / "results"
    out.mkdir()
    (out / "spec.toml").write_text("# my notes")
    argv = ["sweep", str(spec), "--out", str(out), "--scheduler", "synchronous", "--no-progress"]
    assert main(argv) == 2
    _error(capsys, "spec.toml", "did not write")
    assert (out / "spec.toml").read_text() == "# my notes"


def test_sweep_out_whose_spec_is_the_input_is_refused(make_case, tmp_path, capsys):
    make_case()
    spec = tmp_path / "spec.toml"
    spec.write_text(f'cases = ["{tmp_path / "cases" / "C"}"]\n[set]\nroi = true\n')
    argv = ["sweep", str(spec), "--out", str(tmp_path), "--scheduler", "synchronous"]
    assert main(argv) == 2
    _error(capsys, "input")


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_sweep_refuses_fewer_than_one_worker(make_case, tmp_path, capsys, workers):
    make_case()
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'cases = ["{tmp_path / "cases" / "C"}"]\n[set]\nroi = true\n')
    out = tmp_path / "results"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", workers]) == 2
    _error(capsys, "--workers", ">= 1", workers)
    assert not out.exists()


def test_evaluate_keeps_a_users_scores_and_its_inputs(make_case, tmp_path, capsys):
    case = make_case()
    labels = next(case.rglob("*_labels.mha"))
    before = labels.read_bytes()
    assert main(["evaluate", str(labels), str(case), "--json", str(labels)]) == 2
    _error(capsys, str(labels), ".json file")
    assert labels.read_bytes() == before
    rate = case / "frame-rate.json"
    assert main(["evaluate", str(labels), str(case), "--json", str(rate)]) == 2
    _error(capsys, "inside the input folder")
    assert rate.read_text() == "4.0"


# --------------------------------------------------------------------------- evaluate


def test_evaluate_counts_a_case_without_prediction_as_failed(make_case, tmp_path, capsys):
    make_case("A")
    make_case("B")
    cases, preds = tmp_path / "cases", tmp_path / "preds"
    assert main(["phantom", str(tmp_path / "unused"), "--case", "lung_slide", "--frames", "2"]) == 0
    assert _track(cases / "A", preds / "A") == 0
    capsys.readouterr()
    assert main(["evaluate", str(preds), str(cases), "--json", str(preds / "A" / "s.json")]) == 2
    _error(capsys, "inside the input folder")
    assert main(["evaluate", str(preds), str(cases)]) == 1
    assert main(["evaluate", str(preds), str(cases)]) == 1  # its own scores.json it rewrites
    captured = capsys.readouterr()
    assert "B" in captured.err and "not scored" in captured.err
    scores = _strict((preds / "scores.json").read_text())
    assert list(scores["per_case"]) == ["A"]
    assert "no prediction" in scores["failed"]["B"]


# --------------------------------------------------------------------------- resume


def _killed_run(case, out, n_done):
    """A finished run cut back to its first ``n_done`` frames, as a kill leaves it."""
    assert _track(case, out) == 0
    (out / "output.mha").unlink()
    lines = (out / "frames.jsonl").read_text().splitlines(keepends=True)
    (out / "frames.jsonl").write_text("".join(lines[:n_done]))


def test_a_checkpoint_that_does_not_match_its_records_is_redone(make_case, tmp_path, capsys):
    case, out = make_case(), tmp_path / "out"
    _killed_run(case, out, 6)
    masks = np.load(out / "masks.partial.npy", mmap_mode="r+")
    masks[2:4] = 0
    masks.flush()
    del masks
    with pytest.warns(RuntimeWarning, match=r"2 of the 6 frames.*frame 2"):
        assert _track(case, out) == 0
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "output.mha")))  # (W, H, T)
    assert (image.sum(axis=(0, 1)) > 0).all()
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(SHIFTS)))
    assert all(len(r["mask_digest"]) == 24 for r in records)


def test_a_matching_checkpoint_resumes_without_warning(make_case, tmp_path, recwarn):
    case, out = make_case(), tmp_path / "out"
    _killed_run(case, out, 5)
    before = (out / "frames.jsonl").read_text().splitlines()
    assert _track(case, out) == 0
    assert (out / "frames.jsonl").read_text().splitlines()[:5] == before
    assert not [w for w in recwarn if "does not hold" in str(w.message)]


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_checkpoint_is_named_with_the_fix(make_case, tmp_path, capsys, damage):
    case, out = make_case(), tmp_path / "out"
    _killed_run(case, out, 5)
    path = out / "masks.partial.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * len(data))
    assert _track(case, out) == 2
    _error(capsys, str(path), "damaged", "--restart")
    assert _track(case, out, "--restart") == 0


# --------------------------------------------------------------------------- geometry


def _set_spacing(path: Path, spacing: str) -> None:
    """Rewrite the frame spacing (ITK axes 1 and 2) in an .mha header, bytes untouched."""
    data = path.read_bytes()
    head, sep, rest = data.partition(b"ElementDataFile")
    head = re.sub(rb"ElementSpacing = (\S+) \S+ \S+", rb"ElementSpacing = \1 S S", head)
    path.write_bytes(head.replace(b"S S", f"{spacing} {spacing}".encode()) + sep + rest)


@pytest.mark.parametrize("spacing", ["1e6", "1000", "1e-6", "-1", "0", "nan"])
@pytest.mark.parametrize("which", ["frames", "first_label"])
def test_spacing_no_scanner_leaves_is_refused(make_case, tmp_path, capsys, spacing, which):
    case = make_case()
    path = next(case.rglob(f"*_{which}.mha"))
    _set_spacing(path, spacing)
    out = tmp_path / "out"
    assert _track(case, out) == 2
    line = _error(capsys, str(path), "pixel spacing", "0.01 to 100 mm")
    assert "mismatch" not in line and "truncated" not in line and "differ" not in line
    assert not out.exists()


def test_spacing_of_the_labels_is_checked_when_scoring(make_case, capsys):
    case = make_case()
    labels = next(case.rglob("*_labels.mha"))
    _set_spacing(labels, "-2")
    assert main(["evaluate", str(labels), str(case), "--json", str(case.parent / "s.json")]) == 2
    _error(capsys, "pixel spacing", "-2")


@pytest.mark.parametrize("keep", [0.5, 0.15])
def test_a_label_file_cut_short_is_named_as_truncated(make_case, capsys, keep):
    case = make_case()
    labels = next(case.rglob("*_labels.mha"))
    labels.write_bytes(labels.read_bytes()[: int(labels.stat().st_size * keep)])
    assert main(["evaluate", str(labels), str(case), "--json", str(case.parent / "s.json")]) == 2
    line = _error(capsys, str(labels), "truncated")
    assert "No such file" not in line


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "item",
    [
        "MaximumNumberOfIterations=1e9",
        "MaximumNumberOfIterations=100,100,1000000",
        "NumberOfSpatialSamples=1e9",
        "NumberOfResolutions=50",
    ],
)
def test_counts_have_upper_bounds(make_case, tmp_path, capsys, item):
    out = tmp_path / "out"
    assert _track(make_case(), out, "--set", item) == 2
    _error(capsys, item.split("=")[0], "from 1 to")
    assert not out.exists()


@pytest.mark.parametrize("content", ["root:x:0:0:root:/root:/bin/bash\n", "\0\1\2binary"])
def test_a_preset_file_must_be_a_parameter_map(make_case, tmp_path, capsys, content):
    preset = tmp_path / "passwd"
    preset.write_text(content)
    out = tmp_path / "out"
    assert _track(make_case(), out, "--preset", str(preset)) == 2
    _error(capsys, str(preset), "not an elastix parameter file")
    assert not out.exists()


# --------------------------------------------------------------------------- frame rate


@pytest.mark.parametrize("rate", ["0", "-4", "NaN", "1e308"])
def test_a_bad_frame_rate_file_is_ignored_offline_and_refused_in_real_time(
    make_case, tmp_path, capsys, rate
):
    case = make_case()
    (case / "frame-rate.json").write_text(rate)
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match="frame-rate.json.*ignoring it"):
        assert _track(case, out) == 0
    settings = _strict((out / "run.json").read_text())
    assert settings["frame_rate_hz"] is None
    for line in (out / "frames.jsonl").read_text().splitlines():
        _strict(line)
    argv = ["realtime", str(case), "--out", str(tmp_path / "rt"), "--no-progress"]
    with pytest.warns(RuntimeWarning):
        assert main(argv) == 2
    _error(capsys, "--frame-rate")


def test_realtime_refuses_an_impossible_frame_rate(make_case, tmp_path, capsys):
    argv = ["realtime", str(make_case()), "--out", str(tmp_path / "rt"), "--frame-rate", "1e308"]
    assert main(argv) == 2
    _error(capsys, "--frame-rate", "1000 Hz")


# --------------------------------------------------------------------------- signals


def test_sigterm_is_handled_like_ctrl_c(translated, tmp_path):
    frames, truth = translated([(k % 5, k % 3) for k in range(200)], shape=(64, 64), radius=8)
    case = write_trackrad_case(tmp_path / "cases", "long", frames, truth[0], truth)
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "regtrack.cli", "track", str(case), "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--no-progress"], env=env, stderr=subprocess.PIPE, text=True
    )
    records = out / "frames.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if records.is_file() and len(records.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not (out / "run.lock").exists()
    assert list(temp.iterdir()) == []
    done = len(records.read_text().splitlines())
    assert 3 <= done < 200


def test_a_batch_keeps_a_users_summary(make_case, tmp_path, capsys):
    first, second = make_case("A"), make_case("B")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("my,table\n")
    assert main(["track", str(first), str(second), "--out", str(out), "--no-progress"]) == 2
    _error(capsys, "summary.csv", "did not write")
    assert (out / "summary.csv").read_text() == "my,table\n"
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]


def test_a_killed_processs_temporary_folder_is_removed_by_the_next_command(tmp_path):
    from regtrack import runfolder

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = tmp_path / f"regtrack-tmp-{int(gone.stdout)}-abc"
    (dead / "regtrack-elastix-x").mkdir(parents=True)
    alive = tmp_path / f"regtrack-tmp-{os.getppid()}-def"
    alive.mkdir()
    runfolder._remove_orphans(tmp_path)
    assert not dead.exists()
    assert alive.exists()
