"""Many cases in one command: run folders per case, the summary, failures, resume, dask."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import regtrack
from regtrack.batch import SUMMARY_COLUMNS, is_batch, run_batch
from regtrack.cli import main
from regtrack.evaluation import evaluate_paths
from regtrack.phantom import BENCHMARK_SPECS, generate_phantom, write_phantom_case
from regtrack.runfolder import is_fallback, read_records
from regtrack.tracking import TrackerSettings

FAST = ["--set", "MaximumNumberOfIterations=10,10,10"]


def _phantom(root: Path, name: str, n_frames: int, *, labelled: bool = True, seed: int = 0):
    case = generate_phantom(
        BENCHMARK_SPECS["lung_slide"], name=name, n_frames=n_frames, shape=(96, 96), seed=seed
    )
    folder = write_phantom_case(case, root)
    if not labelled:
        (folder / "targets" / f"{name}_labels.mha").unlink()
    return folder


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """A folder of three case folders: labelled, unlabelled, and one with a NaN frame (it
    reads fine and fails once tracking reads its frames)."""
    root = tmp_path_factory.mktemp("batch") / "cases"
    _phantom(root, "a_labelled", 4)
    _phantom(root, "b_unlabelled", 4, labelled=False, seed=1)
    broken = _phantom(root, "c_broken", 4, seed=2)
    frames = broken / "images" / "c_broken_frames.mha"
    image = sitk.ReadImage(str(frames))
    array = sitk.GetArrayFromImage(image)
    array[..., 2] = np.nan  # ITK axis 0 (time) is numpy's last
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(image)
    sitk.WriteImage(damaged, str(frames))
    return root


def _truncated_copy(cases: Path, folder: Path) -> Path:
    """A copy of the labelled case whose sequence file is cut short (refused when read)."""
    copy = shutil.copytree(cases / "a_labelled", folder / "a_labelled")
    frames = copy / "images" / "a_labelled_frames.mha"
    frames.write_bytes(frames.read_bytes()[:-4000])
    return copy


def _summary(out: Path) -> tuple[dict, list[dict]]:
    content = json.loads((out / "summary.json").read_text())
    with (out / "summary.csv").open() as file:
        return content, list(csv.DictReader(file))


def test_batch_of_three_cases_one_unlabelled_one_broken(cases, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["track", str(cases), "--out", str(out), "--no-progress", *FAST]) == 1
    captured = capsys.readouterr()
    broken_lines = [line for line in captured.err.splitlines() if "c_broken_frames.mha" in line]
    assert len(broken_lines) == 1 and "NaN" in broken_lines[0]  # one line, the file and why
    assert "2 of 3 case(s) ok, 1 failed, 1 scored" in captured.out
    content, table = _summary(out)
    rows = {row["case"]: row for row in content["rows"]}
    assert list(rows) == ["a_labelled", "b_unlabelled", "c_broken"]
    assert [r["case"] for r in table] == list(rows) and list(table[0]) == list(SUMMARY_COLUMNS)
    assert (content["cases"], content["ok"], content["failed"], content["scored"]) == (3, 2, 1, 1)

    labelled, unlabelled, broken = rows.values()
    assert broken["status"] == "failed" and "c_broken_frames.mha" in broken["error"]
    assert "NaN" in broken["error"] and not (out / "c_broken" / "output.mha").exists()
    assert labelled["status"] == unlabelled["status"] == "ok"
    assert labelled["labelled"] and not unlabelled["labelled"]
    # The unlabelled case is tracked and timed; its score cells are empty.
    assert unlabelled["n_frames"] == 4 and unlabelled["s_per_frame"] > 0
    assert all(unlabelled[k] is None for k in ("dsc", "hd95_mm", "n_frames_scored"))
    assert all(table[1][k] == "" for k in ("dsc", "hd95_mm", "n_frames_scored"))
    # The labelled case's scores are what `regtrack evaluate` says of the same output.
    scores, _ = evaluate_paths(out / "a_labelled" / "output.mha", cases / "a_labelled")
    for name in ("dsc", "hd95_mm", "masd_mm", "centre_distance_mm", "relative_d98"):
        assert labelled[name] == pytest.approx(scores["per_case"]["a_labelled"][name])
        assert float(table[0][name]) == pytest.approx(labelled[name])
    assert labelled["dsc"] > 0.5
    assert content["mean_scores"]["dsc"] == pytest.approx(labelled["dsc"])


def test_summary_rows_follow_the_run_folders(cases, tmp_path):
    out = tmp_path / "out"
    settings = TrackerSettings(overrides={"MaximumNumberOfIterations": [10, 10, 10]})
    summary = run_batch(
        [cases / "a_labelled", cases / "b_unlabelled"], out, settings=settings, progress=False
    )
    assert summary.failed == 0 and summary.scored == 1
    for row in summary.rows:
        records = read_records(out / row["case"] / "frames.jsonl")
        assert [r["index"] for r in records] == list(range(row["n_frames"]))
        assert row["frames_tracked"] == row["n_frames"] == 4
        assert row["fallback_frames"] == sum(is_fallback(r) for r in records)
        elapsed = [r["elapsed_ms"] for r in records[1:]]
        assert row["track_s"] == pytest.approx(sum(elapsed) / 1e3)
        assert row["s_per_frame"] == pytest.approx(sum(elapsed) / len(elapsed) / 1e3)
        assert row["case_s"] >= row["track_s"] - 1e-6 and row["attempts"] == 1
    content, _ = _summary(out)
    assert content["sum_case_s"] == pytest.approx(sum(r["case_s"] for r in summary.rows))
    assert content["wall_s"] >= content["sum_case_s"] - 1e-6  # one after another here


def test_bad_input_one_line_each_and_exit_2_when_nothing_can_run(cases, tmp_path, capsys):
    out = tmp_path / "out"
    truncated = _truncated_copy(cases, tmp_path / "cut")
    argv = ["track", str(truncated), str(tmp_path / "missing"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "a_labelled_frames.mha" in line and "trunc" in line]) == 1
    assert len([line for line in err if "missing" in line and "does not exist" in line]) == 1
    assert "no case can run" in err[-1]
    assert not out.exists()  # nothing written
    # One case keeps the single-run layout; the batch options are refused for it.
    assert main(["track", str(cases / "a_labelled"), "--out", str(out), "--workers", "2"]) == 2
    assert "one case" in capsys.readouterr().err
    for option in ("--workers", "--threads-per-task"):
        assert main(["track", str(cases), "--out", str(out), option, "0"]) == 2
        assert f"{option} must be 1 or more" in capsys.readouterr().err
    assert not out.exists()
    assert not is_batch([cases / "a_labelled"]) and is_batch([cases])
    assert is_batch([f"{cases}/*"]) and is_batch([cases / "a_labelled", cases / "b_unlabelled"])


def test_killed_batch_resumes_with_no_case_run_twice(tmp_path):
    root = tmp_path / "cases"
    _phantom(root, "a_first", 4)
    _phantom(root, "b_long", 60, seed=1)
    _phantom(root, "c_last", 4, labelled=False, seed=2)
    out = tmp_path / "out"
    argv = ["track", str(root), "--out", str(out), "--no-progress", *FAST]
    env = {**os.environ, "PYTHONPATH": str(Path(regtrack.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "regtrack.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    long_records = out / "b_long" / "frames.jsonl"
    try:
        deadline = time.monotonic() + 120
        while len(read_records(long_records)) < 2:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # mid-case: no clean-up runs
    finally:
        process.kill()
        process.wait()
    tracked_before = len(read_records(long_records))
    assert 2 <= tracked_before < 60
    content, _ = _summary(out)  # the finished case's row survived the kill
    assert [r["case"] for r in content["rows"]] == ["a_first"]

    assert main(argv) == 0
    content, _ = _summary(out)
    rows = {row["case"]: row for row in content["rows"]}
    assert rows["a_first"]["frames_tracked"] == 0  # finished: not tracked again
    assert rows["b_long"]["frames_tracked"] == 60 - tracked_before  # resumed where it stopped
    assert rows["c_last"]["frames_tracked"] == 4
    for name, row in rows.items():
        records = read_records(out / name / "frames.jsonl")
        lines = (out / name / "frames.jsonl").read_text().splitlines()
        assert [r["index"] for r in records] == list(range(row["n_frames"])) and len(lines) == (
            row["n_frames"]
        )
        assert (out / name / "output.mha").is_file()
    assert content["ok"] == 3 and content["scored"] == 2


def test_batch_on_dask_records_each_case_from_its_worker(cases, tmp_path):
    from distributed import Client, LocalCluster

    out = tmp_path / "out"
    settings = TrackerSettings(overrides={"MaximumNumberOfIterations": [10, 10, 10]})
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        summary = run_batch([cases], out, settings=settings, client=client, progress=False)
    rows = {row["case"]: row for row in summary.rows}
    assert rows["c_broken"]["status"] == "failed" and summary.failed == 1
    for name in ("a_labelled", "b_unlabelled"):
        assert rows[name]["status"] == "ok" and rows[name]["worker"].startswith("inproc://")
        assert rows[name]["itk_threads"] >= 1 and (out / name / "output.mha").is_file()


def test_cli_batch_on_local_worker_processes(cases, tmp_path, capsys):
    source = tmp_path / "two"
    for name in ("a_labelled", "b_unlabelled"):
        shutil.copytree(cases / name, source / name)
    out = tmp_path / "out"
    argv = ["track", f"{source}/*", "--out", str(out), "--workers", "2", "--no-progress", *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dask: 2 worker(s)" in printed and "2 of 2 case(s) ok" in printed
    content, _ = _summary(out)
    workers = {row["worker"] for row in content["rows"]}
    assert all(w.startswith("tcp://") for w in workers)
    assert all(row["itk_threads"] >= 1 for row in content["rows"])


def test_benchmark_compares_scores_and_pairs_trials():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "batch.py"
    spec = importlib.util.spec_from_file_location("batch_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    scores = dict.fromkeys(bench.METRICS, 0.5)
    rows = [
        {"case": "same", "n_frames_scored": 3, **scores},
        {"case": "off", "n_frames_scored": 3, **scores},
        {"case": "unlabelled", "n_frames_scored": None, **dict.fromkeys(bench.METRICS)},
    ]
    evaluated = {"same": dict(scores), "off": {**scores, "hd95_mm": 0.75}}
    compared = {e["case"]: e for e in bench.compare(rows, evaluated)}
    assert set(compared) == {"same", "off"}  # an unlabelled case has nothing to compare
    assert compared["same"]["same"] and compared["same"]["max_abs_diff"] == 0
    assert not compared["off"]["same"] and compared["off"]["max_abs_diff"] == 0.25
    runs = [
        {"workers": w, "trial": t, "batch_wall_s": s}
        for w, t, s in ((1, 0, 10.0), (2, 0, 5.0), (1, 1, 12.0), (2, 1, 8.0))
    ]
    speedup = bench.speedups(runs)["2"]
    assert speedup["per_trial"] == [2.0, 1.5] and speedup["total"] == pytest.approx(22 / 13)
