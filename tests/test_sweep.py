"""Parameter sweeps: spec validation, grid expansion, resumable runs, failures, reports."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sqlite3
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.cli import main
from regtrack.phantom import BENCHMARK_SPECS, generate_phantom, write_phantom_case
from regtrack.sweep import execute as sweep_execute
from regtrack.sweep import (
    format_report,
    load_sweep_spec,
    open_results,
    pareto_front,
    parse_sweep_spec,
    rank_settings,
    run_sweep,
    sweep_report,
)

FAST = "[set]\nMaximumNumberOfIterations = [10, 10, 10]\n"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two tiny TrackRAD case folders (thorax, abdomen) and a broken one elsewhere."""
    root = tmp_path_factory.mktemp("sweep_cases")
    lung = generate_phantom(BENCHMARK_SPECS["lung_slide"], n_frames=4, shape=(96, 96))
    liver = generate_phantom(name="liver_small", site="liver", n_frames=4, shape=(96, 96), seed=3)
    for case in (lung, liver):
        write_phantom_case(case, root / "data")
    broken = shutil.copytree(root / "data" / "lung_slide", root / "bad" / "broken_case")
    frames = next((broken / "images").glob("*_frames.mha"))
    (broken / "images" / "broken_case_frames.mha").write_bytes(frames.read_bytes()[:-4000])
    frames.unlink()
    for path in (broken / "targets").iterdir():
        path.rename(path.with_name(path.name.replace("lung_slide", "broken_case")))
    return root


def write_spec(folder, body: str, name: str = "sweep.toml"):
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


# --------------------------------------------------------------------------- grid


def test_grid_is_the_product_of_the_axes_times_repeats(cases):
    spec = parse_sweep_spec(
        """
        cases = ["data/*/"]
        repeats = 2
        [axes]
        FinalGridSpacingInPhysicalUnits = [8, 12, 16]
        roi = [true, false]
        """,
        cases / "sweep.toml",
    )
    assert list(spec.cases) == ["liver_small", "lung_slide"]
    settings = spec.settings()
    combos = {(s.values["FinalGridSpacingInPhysicalUnits"], s.values["roi"]) for s in settings}
    assert combos == set(itertools.product([8, 12, 16], [True, False]))
    assert len(settings) == 6 and len({s.id for s in settings}) == 6
    tasks = spec.tasks()
    assert len(tasks) == 2 * 6 * 2 and len({t.key for t in tasks}) == len(tasks)
    names = {t.run_name for t in tasks if t.setting.id == settings[0].id}
    assert names == {settings[0].id, f"{settings[0].id}_r1"}
    # The base preset is part of every setting.
    tracker = settings[0].tracker_settings()
    assert tracker.roi is True and tracker.overrides == {"FinalGridSpacingInPhysicalUnits": 8}


def test_setting_ids_are_stable_and_tell_values_apart(cases):
    def ids(body):
        return {s.label: s.id for s in parse_sweep_spec(body, cases / "s.toml").settings()}

    base = 'cases = ["data/*/"]\n[axes]\n'
    first = ids(base + "FinalGridSpacingInPhysicalUnits = [8, 16]\nroi = [true, false]\n")
    again = ids(base + "FinalGridSpacingInPhysicalUnits = [8, 16]\nroi = [true, false]\n")
    reordered = ids(base + "roi = [false, true]\nFinalGridSpacingInPhysicalUnits = [16.0, 8]\n")
    assert first == again
    assert set(first.values()) == set(reordered.values())
    extended = ids(base + "FinalGridSpacingInPhysicalUnits = [8, 16, 24]\nroi = [true, false]\n")
    assert set(first.values()) < set(extended.values())
    with_base = ids('preset = "bspline_mi"\n' + base + "roi = [true, false]\n")
    without = ids(base + "roi = [true, false]\n")
    assert set(with_base.values()).isdisjoint(without.values())
    auto = parse_sweep_spec(base + 'roi = ["auto"]\n', cases / "s.toml").settings()[0]
    assert auto.tracker_settings().roi is None
    # A preset axis wins over the top-level (default) preset.
    body = 'preset = "bspline_ncc"\n' + base + 'preset = ["bspline_ncc", "bspline_mi"]\n'
    presets = [
        s.tracker_settings().preset for s in parse_sweep_spec(body, cases / "s.toml").settings()
    ]
    assert presets == ["bspline_ncc", "bspline_mi"]


# --------------------------------------------------------------------------- malformed specs

BAD_SPECS = {
    "unknown elastix parameter": (
        'cases = ["data/*/"]\n\n[axes]\nroi = [true]\nFinalGridSpacing = [8]\n',
        5,
        "FinalGridSpacingInPhysicalUnits",
    ),
    "unknown regtrack option": (
        'cases = ["data/*/"]\n[set]\nroi_margin = 10\n',
        3,
        "roi_margin_mm",
    ),
    "empty axis": ('cases = ["data/*/"]\n[axes]\nroi = [true]\nMetric = []\n', 4, "empty"),
    "missing case folder": (
        'cases = [\n  "data/lung_slide",\n  "data/P404",\n]\n[axes]\nroi = [true]\n',
        3,
        "P404",
    ),
    "glob matching nothing": ('preset = "bspline_ncc"\ncases = ["nowhere/*/"]\n', 2, "matches no"),
    "TOML syntax error": ('cases = ["data/*/"]\n[axes]\nroi = tru\nMetric = ["A"]\n', 3, "TOML"),
    "unclosed list": ('cases = ["data/*/"]\n[axes]\nroi = [true, false\n\n', 3, "TOML"),
    "unknown preset": ('cases = ["data/*/"]\npreset = "bspline_xyz"\n', 2, "bspline_ncc"),
    "bad option value": ('cases = ["data/*/"]\n[axes]\nroi = [true, "yes"]\n', 3, "true or false"),
    "misplaced top-level parameter": ('cases = ["data/*/"]\nroi = true\n', 2, "[set]"),
    # the dataclass's type is int | None: a fraction is refused, not passed on as 256.5
    "fractional whole number": (
        'cases = ["data/*/"]\n[axes]\nsam_image_size = [256.5, 512]\n',
        3,
        "sam_image_size = 256.5 is not a whole number",
    ),
    "elastix value not a number": (
        'cases = ["data/*/"]\n[axes]\nNumberOfSpatialSamples = ["eight"]\n',
        3,
        "whole number",
    ),
    "elastix value out of range": (
        'cases = ["data/*/"]\n[axes]\nFinalGridSpacingInPhysicalUnits = [16, -5]\n',
        3,
        "> 0",
    ),
    "elastix word for a number": (
        'cases = ["data/*/"]\n[set]\nMaximumNumberOfIterations = "lots"\n',
        3,
        "whole number",
    ),
    "elastix count without bound": (
        'cases = ["data/*/"]\n[axes]\nMaximumNumberOfIterations = [100, 1000000000]\n',
        3,
        "10000",
    ),
    "starts not distinct": ('cases = ["data/*/"]\nstarts = [0, 2, 2]\n', 2, "distinct frame"),
    "negative start": ('cases = ["data/*/"]\nstarts = [0, -1]\n', 2, "distinct frame"),
    "start past the frames": (
        'cases = ["data/lung_slide"]\nstarts = [0, 3]\n',
        2,
        "start at most at frame 2",
    ),
    "preset that is not a parameter file": (
        'cases = ["data/*/"]\npreset = "data/lung_slide/frame-rate.json"\n',
        2,
        "not an elastix parameter file",
    ),
}


@pytest.mark.parametrize("problem", list(BAD_SPECS))
def test_malformed_spec_fails_before_anything_runs_naming_the_line(cases, tmp_path, problem):
    text, line, hint = BAD_SPECS[problem]
    path = cases / f"bad_{problem.replace(' ', '_')}.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
        load_sweep_spec(path)
    message = str(raised.value)
    assert f"{path}, line {line}:" in message
    assert hint in message and "Fix:" in message
    out = tmp_path / "results"
    with pytest.raises(ValueError):
        run_sweep(path, out, scheduler="synchronous", progress=False)
    assert not out.exists()
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 2


# --------------------------------------------------------------------------- running


def test_failing_case_is_recorded_and_the_others_finish(cases, tmp_path, capsys):
    spec = write_spec(
        cases,
        f"""
        cases = ["data/*/", "bad/broken_case"]
        {FAST}
        [axes]
        FinalGridSpacingInPhysicalUnits = [8, 16]
        """,
        name="with_broken.toml",
    )
    from distributed import Client, LocalCluster

    out = tmp_path / "results"
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        summary = run_sweep(spec, out, client=client, progress=False)
    assert summary.total == 6 and summary.failed == 2 and len(summary.ran) == 6
    with open_results(out) as db:
        rows = db.rows()
    assert len(rows) == 6
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["case_name"] for r in failed} == {"broken_case"}
    assert all("broken_case_frames.mha" in r["error"] for r in failed)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4 and all(0.5 < r["dsc"] <= 1 for r in ok)
    assert {r["scanned_region"] for r in ok} == {"thorax", "abdomen"}
    for row in ok:
        frames = out / "runs" / row["case_name"] / row["setting_id"] / "frames.jsonl"
        assert len(frames.read_text().splitlines()) == row["n_frames"] == 4
        assert row["itk_threads"] >= 1 and row["s_per_frame"] > 0

    report = sweep_report(out)
    assert capsys.readouterr().out == ""  # the library logs; the command prints
    printed = format_report(report)
    assert "ranking by dsc" in printed and "thorax" in printed and "abdomen" in printed
    folder = out / "report"
    for name in (
        "ranking.json",
        "ranking.md",
        "pareto.png",
        "axis_FinalGridSpacingInPhysicalUnits.png",
    ):
        assert (folder / name).stat().st_size > 0
    ranking = report["ranking"]
    for entry in ranking:  # the mean over the ok cases of each setting, as the rows say
        dsc = [r["dsc"] for r in ok if r["setting_id"] == entry["setting_id"]]
        assert entry["dsc"] == pytest.approx(np.mean(dsc))
        assert entry["failed_rows"] == 1 and entry["cases_ok"] == 2
    assert [e["dsc"] for e in ranking] == sorted((e["dsc"] for e in ranking), reverse=True)
    written = json.loads((folder / "ranking.json").read_text())["ranking"]
    assert written[0]["rank"] == 1
    assert all(e["scored"] == ["liver_small", "lung_slide"] for e in written)


def test_interrupted_sweep_resumes_with_only_the_missing_rows(cases, tmp_path, monkeypatch):
    spec = write_spec(
        cases,
        f"""
        cases = ["data/*/"]
        {FAST}
        [axes]
        roi = [true, false]
        """,
        name="resume.toml",
    )
    all_keys = {t.key for t in load_sweep_spec(spec).tasks()}
    real_run_task, started = sweep_execute.run_task, []

    def interrupted_on_third(payload):
        started.append(
            (payload["case"], payload["setting_id"], payload["repeat"], payload["start"])
        )
        row = real_run_task(payload)
        if len(started) == 3:
            raise KeyboardInterrupt  # Ctrl-C after the third task ran, before its row is kept
        return row

    out = tmp_path / "results"
    monkeypatch.setattr(sweep_execute, "run_task", interrupted_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, scheduler="synchronous", progress=False)
    with open_results(out) as db:
        recorded = db.keys()
    assert recorded == set(started[:2])
    interrupted = started[2]

    with pytest.raises(ValueError, match="--resume"):
        run_sweep(spec, out, scheduler="synchronous", progress=False)

    started.clear()

    def counted(payload):
        started.append(
            (payload["case"], payload["setting_id"], payload["repeat"], payload["start"])
        )
        return real_run_task(payload)

    monkeypatch.setattr(sweep_execute, "run_task", counted)
    summary = run_sweep(spec, out, scheduler="synchronous", progress=False, resume=True)
    assert set(summary.ran) == set(started) == all_keys - recorded
    assert summary.skipped == 2 and len(started) == len(all_keys) - 2
    with open_results(out) as db:
        rows = db.rows()
    assert {(r["case_name"], r["setting_id"], r["repeat"], r["start"]) for r in rows} == all_keys
    assert all(r["status"] == "ok" for r in rows)
    # Only the interrupted task ran twice (its run folder counts both starts).
    attempts = {
        (r["case_name"], r["setting_id"], r["repeat"], r["start"]): r["attempts"] for r in rows
    }
    assert {k for k, n in attempts.items() if n > 1} == {interrupted}

    # A failed row stays failed on --resume, and is rerun with --retry-failed.
    victim = min(all_keys)
    with sqlite3.connect(out / "results.sqlite") as connection:
        connection.execute(
            "UPDATE results SET status = 'failed', error = 'injected' WHERE case_name = ? "
            "AND setting_id = ? AND repeat = ? AND start = ?",
            victim,
        )
    assert run_sweep(spec, out, scheduler="synchronous", progress=False, resume=True).ran == []
    again = run_sweep(
        spec, out, scheduler="synchronous", progress=False, resume=True, retry_failed=True
    )
    assert again.ran == [victim]
    with open_results(out) as db:
        assert db.count() == len(all_keys) and db.keys(("failed",)) == set()


def test_unlabelled_case_is_tracked_and_timed_and_left_unscored(cases, tmp_path, caplog):
    unlabelled = cases / "unlabelled" / "liver_small"
    if not unlabelled.exists():
        shutil.copytree(cases / "data" / "liver_small", unlabelled)
        (unlabelled / "targets" / "liver_small_labels.mha").unlink()
    spec = write_spec(
        cases,
        f"""
        cases = ["data/lung_slide", "unlabelled/liver_small"]
        {FAST}
        [axes]
        roi = [true, false]
        """,
        name="unlabelled.toml",
    )
    out = tmp_path / "results"
    with caplog.at_level(logging.INFO, logger="regtrack.sweep"):
        summary = run_sweep(spec, out, scheduler="synchronous", progress=False)
    assert summary.failed == 0 and summary.scored == 2 and len(summary.ran) == 4
    assert "4 task(s) run, 0 failed, 2 scored" in caplog.text
    with open_results(out) as db:
        rows = db.rows()
    for row in rows:
        assert row["status"] == "ok" and row["n_frames"] == 4 and row["s_per_frame"] > 0
        scored = row["case_name"] == "lung_slide"
        assert (row["dsc"] is not None) == scored and (row["n_frames_scored"] is not None) == scored

    report = sweep_report(out, plots=False)
    printed = format_report(report)
    assert "1 of 2 case(s) scored against labels" in printed
    assert (report["cases"], report["cases_scored"]) == (2, 1)
    for entry in report["ranking"]:
        lung = [r for r in rows if r["setting_id"] == entry["setting_id"] and r["dsc"] is not None]
        assert entry["cases_scored"] == 1 and entry["dsc"] == pytest.approx(lung[0]["dsc"])
        times = [r["s_per_frame"] for r in rows if r["setting_id"] == entry["setting_id"]]
        assert entry["s_per_frame"] == pytest.approx(np.mean(times))  # both cases timed


def test_starts_track_each_case_from_later_frames_and_are_averaged(cases, tmp_path):
    spec = write_spec(
        cases,
        f"""
        cases = ["data/lung_slide"]
        starts = [0, 2]
        {FAST}
        """,
        name="starts.toml",
    )
    tasks = load_sweep_spec(spec).tasks()
    assert [(t.start, t.run_name) for t in tasks] == [
        (0, tasks[0].setting.id),
        (2, f"{tasks[0].setting.id}_f2"),
    ]
    out = tmp_path / "results"
    summary = run_sweep(spec, out, scheduler="synchronous", progress=False)
    assert summary.failed == 0 and len(summary.ran) == 2
    with open_results(out) as db:
        rows = {row["start"]: row for row in db.rows()}
    assert rows[0]["n_frames"] == 4 and rows[2]["n_frames"] == 2  # frames 2 and 3
    assert rows[2]["n_frames_scored"] == 1 and rows[2]["dsc"] is not None
    later = sitk.ReadImage(str(out / "runs" / "lung_slide" / tasks[1].run_name / "output.mha"))
    assert later.GetSize()[0] == 2  # TrackRAD: time on ITK axis 0
    # The run from frame 2 is given frame 2's label: its output starts with it.
    labels = sitk.GetArrayFromImage(
        sitk.ReadImage(str(cases / "data" / "lung_slide" / "targets" / "lung_slide_labels.mha"))
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(later)[..., 0], labels[..., 2])
    (entry,) = sweep_report(out, plots=False)["ranking"]
    assert entry["starts"] == [0, 2]
    assert entry["dsc"] == pytest.approx((rows[0]["dsc"] + rows[2]["dsc"]) / 2)


def test_starts_on_a_case_without_labels_fail_before_anything_runs(cases, tmp_path):
    unlabelled = cases / "nolabels" / "liver_small"
    if not unlabelled.exists():
        shutil.copytree(cases / "data" / "liver_small", unlabelled)
        (unlabelled / "targets" / "liver_small_labels.mha").unlink()
    spec = write_spec(cases, 'cases = ["nolabels/liver_small"]\nstarts = [0, 1]\n', "nl.toml")
    with pytest.raises(ValueError, match=r"line 2: case liver_small has no labels.*Fix: leave"):
        load_sweep_spec(spec)
    out = tmp_path / "results"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


def test_results_of_a_sweep_from_before_starts_resume_as_start_0(cases, tmp_path):
    spec = write_spec(cases, f'cases = ["data/lung_slide"]\n{FAST}', name="old.toml")
    out = tmp_path / "results"
    run_sweep(spec, out, scheduler="synchronous", progress=False)
    with sqlite3.connect(out / "results.sqlite") as connection:  # the table as it was
        connection.execute("ALTER TABLE results RENAME TO new")
        names = [r[1] for r in connection.execute("PRAGMA table_info(new)") if r[1] != "start"]
        connection.execute(f"CREATE TABLE results AS SELECT {', '.join(names)} FROM new")
        connection.execute("DROP TABLE new")
    with open_results(out) as db:  # read as it is: a report changes nothing
        (key,) = db.keys()
        (row,) = db.rows()
    assert key[3] == row["start"] == 0
    report = sweep_report(out, plots=False)
    assert report["ranking"][0]["starts"] == [0]
    with sqlite3.connect(out / "results.sqlite") as connection:
        assert "start" not in [r[1] for r in connection.execute("PRAGMA table_info(results)")]
    assert run_sweep(spec, out, scheduler="synchronous", progress=False, resume=True).ran == []
    with open_results(out) as db:  # the resumed sweep migrated it
        assert "start" in db.rows()[0]
    with sqlite3.connect(out / "results.sqlite") as connection:
        assert "start" in [r[1] for r in connection.execute("PRAGMA table_info(results)")]


def test_cli_sweep_on_a_local_process_cluster_then_report(cases, tmp_path, capsys):
    spec = write_spec(
        cases,
        f"""
        cases = ["data/lung_slide"]
        {FAST}
        [axes]
        roi = [true]
        """,
        name="cli.toml",
    )
    out = tmp_path / "results"
    argv = [
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--workers",
        "1",
        "--threads-per-task",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dashboard:" in printed and "1 task(s) run, 0 failed" in printed
    with open_results(out) as db:
        (row,) = db.rows()
    assert row["status"] == "ok" and row["worker"].startswith("tcp://")
    assert row["itk_threads"] == 1  # set inside the worker process, and read back there
    assert main(argv) == 2  # RESULTS exists: refused without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["sweep", "report", str(out), "--no-plots"]) == 0
    assert row["setting_id"] in capsys.readouterr().out
    assert main(["sweep", "report", str(tmp_path / "nothing")]) == 2


def test_pareto_front_keeps_points_nothing_beats_on_time_and_accuracy():
    seconds = [0.1, 0.2, 0.3, 0.15, 0.3]
    accuracy = [0.90, 0.95, 0.97, 0.89, 0.96]
    assert pareto_front(seconds, accuracy).tolist() == [True, True, True, False, False]


def test_each_setting_is_set_against_the_first_run_by_run():
    def row(setting, case, start, dsc, cd):
        return {
            "setting_id": setting,
            "setting": {"roi": setting == "a"},
            "case_name": case,
            "repeat": 0,
            "start": start,
            "status": "ok",
            "n_frames_scored": 9,
            "scanned_region": "thorax",
            "dsc": dsc,
            "centre_distance_mm": cd,
            **{k: None for k in ("hd95_mm", "masd_mm", "relative_d98", "s_per_frame")},
        }

    # "a" has the better mean DSC (0.9 vs 0.85) from one large lead; "b" is better on 2 of 3
    # runs. By centre distance "b" leads on the mean (0.4 vs 0.5) and "a" on 1 of 3 runs.
    rows = [
        row("a", "c1", 0, 0.95, 0.3),
        row("a", "c1", 10, 0.85, 0.6),
        row("a", "c2", 0, 0.90, 0.6),
        row("b", "c1", 0, 0.70, 0.4),
        row("b", "c1", 10, 0.90, 0.4),
        row("b", "c2", 0, 0.95, 0.4),
        row("b", "c3", 0, 0.99, 0.1),  # no run of "a" to set it against
    ]
    first, second = rank_settings(rows[:-1], by="dsc")
    assert (first["setting_id"], first["beats_first"]) == ("a", None)
    assert second["beats_first"] == [2, 3] and second["starts"] == [0, 10]
    first, second = rank_settings(rows, by="centre_distance_mm")
    assert first["setting_id"] == "b" and second["beats_first"] == [1, 3]
