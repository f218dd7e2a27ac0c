import json

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.cli import main
from regtrack.io import write_trackrad_case


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory, jump_sequence):
    frames, truth = jump_sequence
    root = tmp_path_factory.mktemp("cases")
    return write_trackrad_case(root, "P001", frames, truth[0], truth, frame_rate_hz=4.0)


def test_presets_lists_the_default(capsys):
    assert main(["presets"]) == 0
    assert "bspline_ncc (default)" in capsys.readouterr().out


def test_track_writes_the_official_format_then_evaluate_scores_it(case_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["track", str(case_dir), "--out", str(out), "--no-progress"]) == 0
    output = out / "output.mha"
    frames_file = next((case_dir / "images").glob("*.mha"))
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(frames_file))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSize() == source.GetSize()
    assert written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin()
    assert set(np.unique(sitk.GetArrayFromImage(written))) == {0, 1}
    assert "CompressedData = True" in output.read_bytes()[:2000].decode(errors="replace")
    records = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert len(records) == source.GetSize()[0]

    assert main(["evaluate", str(output), str(case_dir), "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "dsc" in printed.lower()
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["per_case"]["P001"]["dsc"] > 0.95


def test_rerun_resumes_without_redoing_frames(case_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["track", str(case_dir), "--out", str(out), "--no-progress"]) == 0
    before = (out / "frames.jsonl").read_text()
    assert main(["track", str(case_dir), "--out", str(out), "--no-progress"]) == 0
    assert (out / "frames.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "nope"], "does not exist"),
        (["--set", "MaximumNumberOfIteration=3"], "Did you mean"),
        (["--set", "Metric=NoSuchMetric"], "NoSuchMetric"),
    ],
)
def test_bad_settings_exit_2_with_the_reason(case_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["track", str(case_dir), "--out", str(out), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "output.mha").exists()


def test_missing_input_exits_2(tmp_path, capsys):
    assert main(["track", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_demo_scores_against_ground_truth(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "12", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "copy first mask" in printed and str(tmp_path) in printed
    scores = json.loads((tmp_path / "scores.json").read_text())
    ours = next(v for k, v in scores.items() if k.startswith("regtrack"))
    copied = next(v for k, v in scores.items() if k.startswith("copy first mask"))
    assert ours["dsc"] > 0.9 > copied["dsc"]
    assert ours["centre_distance_mm"] < 1.0 < copied["centre_distance_mm"]
    assert (tmp_path / "lung_slide" / "regtrack" / "output.mha").exists()


def test_track_without_out_writes_beside_the_caller_in_a_folder_named_after_the_case(
    case_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["track", str(case_dir), "--no-progress"]) == 0
    assert (tmp_path / "regtrack-P001" / "output.mha").is_file()
    assert "regtrack-P001" in capsys.readouterr().err


def test_phantom_writes_to_out_and_still_takes_the_folder_as_a_positional(tmp_path, capsys):
    for argv in (["--out", str(tmp_path / "a")], [str(tmp_path / "b")]):
        assert main(["phantom", *argv, "--case", "lung_slide", "--frames", "3"]) == 0
    a, b = (sorted(p.name for p in (tmp_path / x).rglob("*")) for x in "ab")
    assert a == b and "lung_slide" in a


def test_log_level_takes_fixed_choices_in_any_case(capsys):
    assert main(["--log-level", "info", "presets"]) == 0
    with pytest.raises(SystemExit) as raised:
        main(["--log-level", "verbose", "presets"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'VERBOSE'" in err and "DEBUG" in err and "Traceback" not in err


def test_every_option_of_every_command_has_help():
    import argparse

    from regtrack.cli import parser

    def undocumented(command, path):
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from undocumented(sub, f"{path} {name}")
            elif action.help is None:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(undocumented(parser(), "regtrack")) == []


def test_a_missing_extra_is_named_in_one_line_before_anything_runs(
    case_dir, tmp_path, monkeypatch, capsys
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jinja2" else real(name, *a)
    )
    out = tmp_path / "run"
    assert main(["track", str(case_dir), "--out", str(out), "--report", "--no-progress"]) == 2
    assert main(["report", str(out)]) == 2
    for line in capsys.readouterr().err.strip().splitlines():
        assert "needs regtrack[report] (jinja2 not installed)" in line
        assert "pip install" in line
    assert not out.exists()


def test_the_realtime_summary_tells_flow_answers_from_registrations(tmp_path):
    from regtrack.cli import latency_summary

    records = [
        {"index": 0, "source": "given", "latency_ms": 0.0},
        {"index": 1, "source": "registration", "candidate": "registration", "latency_ms": 40.0},
        {"index": 2, "source": "registration", "candidate": "flow", "latency_ms": 20.0},
        {"index": 3, "source": "registration", "candidate": "flow", "latency_ms": 30.0},
        {"index": 4, "source": "previous", "candidate": "", "latency_ms": 60.0},
    ]
    path = tmp_path / "frames.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    line = latency_summary(path, 0.05)
    assert line.startswith("4 frames, budget 50 ms: latency p50 35 ms")
    assert "1 deadline misses; answers: 2 flow, 1 previous, 1 registration" in line
