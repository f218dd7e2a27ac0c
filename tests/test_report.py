"""Reports (issue 9): movie, trajectory, quality timeline, metrics and index.html."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from regtrack import FrameResult, TrackerSettings
from regtrack.budget import LADDER
from regtrack.cli import main, run_summary
from regtrack.io import read_case, write_trackrad_case
from regtrack.metrics import evaluate_case
from regtrack.phantom import BENCHMARK_SPECS, generate_phantom, write_phantom_case
from regtrack.realtime import RealtimeTracker
from regtrack.report import (
    Table,
    load_run,
    quality,
    report_benchmark,
    trajectory,
    write_benchmark_page,
    write_report,
)
from regtrack.report.benchmarks import method_label
from regtrack.report.data import (
    QUALITY_KEYS,
    SOURCES,
    is_gate_rejected,
    missed_deadline,
    schedule_words,
)
from regtrack.report.movie import _details

N_FRAMES = 6
BENCHMARKS = Path(__file__).parents[1] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """(phantom, run folder): a tiny phantom tracked by `regtrack track --report`."""
    phantom = generate_phantom(BENCHMARK_SPECS["lung_slide"], n_frames=N_FRAMES)
    root = tmp_path_factory.mktemp("tracked")
    case_dir = write_phantom_case(phantom, root)
    run_dir = root / "run"
    argv = ["track", str(case_dir), "--out", str(run_dir), "--report", "--no-progress"]
    assert main(argv) == 0
    return phantom, run_dir


def _movie_frames(path) -> list[np.ndarray]:
    """Every frame of a movie, decoded with imageio."""
    with imageio.get_reader(path) as reader:
        return list(reader.iter_data())


def _external_links(html: str) -> list[str]:
    """src/href values that would fetch something from outside the report folder."""
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    return [link for link in links if re.match(r"(?i)(https?:|//|ftp:)", link)]


# --------------------------------------------------------------------------- a tracked run


def test_track_report_writes_movie_plots_and_page(tracked, capsys):
    phantom, run_dir = tracked
    report = run_dir / "report"
    for name in ("index.html", "movie.mp4", "trajectory.png", "quality.png", "trajectory.json"):
        assert (report / name).is_file(), name
    frames = _movie_frames(report / "movie.mp4")
    assert len(frames) == len(phantom.frames)
    assert frames[0].shape[0] % 16 == 0 and frames[0].shape[1] % 16 == 0
    html = (report / "index.html").read_text()
    assert '<video controls loop muted preload="metadata" src="movie.mp4">' in html
    assert html.count("data:image/png;base64,") == 2  # both plots embedded
    assert _external_links(html) == []
    assert "complete" in html and "incomplete" not in html


def test_metrics_table_holds_the_official_scores(tracked):
    phantom, run_dir = tracked
    masks = np.load(run_dir / "masks.partial.npy")
    expected = evaluate_case(masks, phantom.masks, scanned_region="thorax")
    facts = json.loads((run_dir / "report" / "summary.json").read_text())
    for key in ("dsc", "hd95_mm", "masd_mm", "centre_distance_mm", "relative_d98"):
        assert facts["metrics"][key] == pytest.approx(expected[key])
    html = (run_dir / "report" / "index.html").read_text()
    assert f"{expected['dsc']:.4f}" in html
    assert f"{expected['centre_distance_mm']:.3f}" in html


def test_trajectory_comes_from_the_masks(tracked):
    phantom, run_dir = tracked
    traj = trajectory(run_dir)
    masks = np.load(run_dir / "masks.partial.npy")
    rows, cols = np.indices(masks.shape[1:])
    area = masks.sum(axis=(1, 2))
    mine = np.stack([(masks * rows).sum((1, 2)) / area, (masks * cols).sum((1, 2)) / area], 1)
    np.testing.assert_allclose(traj.predicted_mm, mine * phantom.spacing_mm, atol=1e-9)
    np.testing.assert_allclose(traj.ground_truth_mm, phantom.centroids_mm, atol=1e-9)
    np.testing.assert_allclose(traj.time, phantom.times_s)
    # the registration follows the phantom: the trace is the target's, within a millimetre
    assert np.abs(traj.predicted_mm - phantom.centroids_mm).max() < 1.0
    saved = json.loads((run_dir / "report" / "trajectory.json").read_text())
    np.testing.assert_allclose(saved["predicted_mm"], traj.predicted_mm)
    assert saved["time_unit"] == "s"


def test_interrupted_run_renders_what_exists(tracked, tmp_path):
    _, run_dir = tracked
    copy = tmp_path / "interrupted"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "output.mha"))
    lines = (copy / "frames.jsonl").read_text().splitlines(keepends=True)
    (copy / "frames.jsonl").write_text("".join(lines[:3]) + '{"index": 3, "sou')  # torn line
    page = write_report(copy)
    html = page.read_text()
    assert "incomplete: frames 3-5 missing" in html
    traj = trajectory(copy)
    assert np.isfinite(traj.predicted_mm[:3]).all() and np.isnan(traj.predicted_mm[3:]).all()
    assert traj.source[3:] == ["missing"] * 3
    assert np.isfinite(traj.ground_truth_mm).all()  # the truth is known for every frame
    assert len(_movie_frames(page.parent / "movie.mp4")) == N_FRAMES
    facts = json.loads((page.parent / "summary.json").read_text())
    assert facts["frames_done"] == 3 and facts["output_written"] is False


def test_folder_without_results_gives_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"run\.json, frames\.jsonl, masks\.partial\.npy not"):
        write_report(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "frames.jsonl").write_text("")
    np.save(tmp_path / "masks.partial.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="holds no frame record"):
        load_run(tmp_path)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "expected run.json, frames.jsonl and masks.partial.npy" in capsys.readouterr().err


# --------------------------------------------------------------------------- known traces


#: One FrameResult of every kind a run writes, with the reasons the code gives: frames 3 and 4
#: rejected (quality gate, hybrid gate), 5 and 6 out of time, 2 and 7 passed.
_KNOWN_ANSWERS = [
    {"source": "given"},
    {"source": "registration", "schedule": "it1/s1", "candidate": "flow"},
    {
        "source": "registration",
        "schedule": "it1/s1",
        "candidate": "registration",
        "start_correction_mm": 0.125,
        "gate": "pass",
        "sam_score": 0.8,
        "reason": "SAM disagreed by 3.1 mm (moved 1.0 mm); kept registration",
    },
    {
        "source": "previous",
        "schedule": "it1/s1",
        "reason": "registered mask area changed x2.50 from the previous frame",
    },
    {
        "source": "sam",
        "gate": "sam",
        "sam_score": 0.9,
        "reason": "registration jumped 9.0 mm from the previous frame, SAM 2.0 mm; answers 8.0 mm apart",
    },
    {"source": "previous", "reason": "deadline: registration (it0.5/s0.5) not done within 150 ms"},
    {
        "source": "sam",
        "gate": "sam",
        "sam_score": 0.7,
        "reason": "the registration of frame 5 is still running",
    },
    {"source": "registration", "schedule": "it0.5/s0.5"},
]


def _write_records(run_dir, masks, answers) -> None:
    """frames.jsonl as track_case writes it: one FrameResult.record() per line."""
    with (run_dir / "frames.jsonl").open("w") as log:
        for t, fields in enumerate(answers):
            timing = {} if t == 0 else {"budget_ms": 150.0, "latency_ms": 100.0 + 10 * t}
            if fields["source"] == "registration":
                timing |= {
                    "metric_value": -0.9 - t / 100,
                    "iterations": 60,
                    "elapsed_ms": 100.0 + 10 * t,
                }
            result = FrameResult(index=t, mask=masks[t], **timing, **fields)
            log.write(json.dumps(result.record()) + "\n")


def _facts_on_page(html: str) -> dict[str, str]:
    """The rows of the page's summary box, label -> value, as the reader sees them."""
    return dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", html))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, translated):
    """A results folder written by hand in the track_case format: disks at known shifts,
    anisotropic pixels, 2 Hz, ground truth one column to the right, and FrameResult records
    of every kind of answer (_KNOWN_ANSWERS) under a 150 ms budget."""
    shifts = [(0, 0), (3, -2), (6, -4), (9, -6), (6, -3), (2, 1), (-1, 2), (-3, 0)]
    frames, masks = translated(shifts, shape=(96, 96), radius=10)
    truth = np.roll(masks, 1, axis=2)
    root = tmp_path_factory.mktemp("synthetic")
    case = read_case(
        write_trackrad_case(
            root, "P7", frames, truth[0], truth, spacing_mm=(2.0, 0.5), frame_rate_hz=2.0
        )
    )
    run_dir = root / "run"
    run_dir.mkdir()
    settings = {
        "case": "<i>P&7</i>",
        "files": case.files,
        "n_frames": len(frames),
        "frame_shape": [96, 96],
    }
    (run_dir / "run.json").write_text(json.dumps(settings))
    np.save(run_dir / "masks.partial.npy", masks)
    _write_records(run_dir, masks, _KNOWN_ANSWERS)
    return run_dir, np.array(shifts, float)


def test_known_shift_gives_the_known_trace(synthetic_run):
    run_dir, shifts = synthetic_run
    traj = trajectory(run_dir)
    centre = np.array([48.0, 48.0])
    spacing = np.array([2.0, 0.5])
    np.testing.assert_allclose(traj.predicted_mm, (centre + shifts) * spacing, atol=1e-9)
    np.testing.assert_allclose(traj.ground_truth_mm, (centre + shifts + (0, 1)) * spacing)
    np.testing.assert_allclose(traj.time, np.arange(len(shifts)) / 2.0)
    assert np.flatnonzero(traj.fallback).tolist() == [3, 4, 5, 6]
    assert np.flatnonzero(traj.gate_rejected).tolist() == [3, 4]


def test_stage_times_are_plotted_per_frame(synthetic_run, tmp_path):
    """Records with ``stages_ms`` give the timeline its stage panel; stages in the tracker's
    order, 0 where a frame did not go through one, NaN for the given frame."""
    from regtrack.stages import TimedResult

    source_dir, _ = synthetic_run
    run_dir = tmp_path / "staged"
    shutil.copytree(source_dir, run_dir)
    masks = np.load(run_dir / "masks.partial.npy")
    with (run_dir / "frames.jsonl").open("w") as log:
        log.write(json.dumps(FrameResult(index=0, mask=masks[0], source="given").record()) + "\n")
        for t in range(1, len(masks)):
            own = t % 2 == 1
            stages = (
                {"queue": 1.0, "dispatch": 2.0, "registration": 30.0, "warp": 4.0, "answer": 0.5}
                if own
                else {"queue": 1.0, "waited": 40.0, "answer": 0.2}
            )
            result = TimedResult(
                index=t,
                mask=masks[t],
                source="registration" if own else "previous",
                metric_value=-0.9 if own else float("nan"),
                stages_ms=stages,
                budget_ms=50.0,
                latency_ms=sum(stages.values()),
            )
            log.write(json.dumps(result.record()) + "\n")
    data = quality(run_dir)
    stages = data["stages_ms"]
    assert list(stages) == ["queue", "dispatch", "registration", "warp", "waited", "answer"]
    assert np.isnan(stages["queue"][0]) and stages["registration"][1] == 30.0
    assert stages["waited"][1] == 0.0 and stages["waited"][2] == 40.0
    page = write_report(run_dir, out=tmp_path / "report")
    saved = json.loads((page.parent / "quality.json").read_text())
    assert saved["stages_ms"]["registration"][:2] == [None, 30.0]
    assert (page.parent / "quality.png").stat().st_size > 0


def test_optional_record_keys_reach_the_timeline(synthetic_run, tmp_path):
    run_dir, _ = synthetic_run
    data = quality(run_dir)
    assert np.isnan(data["budget_ms"][0]) and (data["budget_ms"][1:] == 150.0).all()
    assert np.flatnonzero(data["deadline_missed"]).tolist() == [5, 6]
    assert np.flatnonzero(np.isfinite(data["sam_score"])).tolist() == [2, 4, 6]
    assert data["schedule"][:2] == [None, "full"]
    assert data["schedule"][7] == "50 % iterations, 50 % samples"
    areas_px = np.load(run_dir / "masks.partial.npy").sum(axis=(1, 2))
    np.testing.assert_allclose(data["area_mm2"], areas_px * 2.0 * 0.5)
    page = write_report(run_dir, out=tmp_path / "report", gif=True)
    assert len(_movie_frames(page.parent / "movie.gif")) == len(data["frame"])
    facts = json.loads((page.parent / "summary.json").read_text())
    assert (facts["fallback_frames"], facts["gate_rejected_frames"]) == (4, 2)
    assert facts["deadline_missed_frames"] == 2 and facts["budget_ms"] == 150.0
    assert facts["schedules"] == {"full": 3, "50 % iterations, 50 % samples": 1}
    assert facts["sam_ran"] is True
    html = page.read_text()
    assert "&lt;i&gt;P&amp;7&lt;/i&gt;" in html and "<i>P&7</i>" not in html  # autoescape
    assert '<img class="movie" src="movie.gif"' in html
    on_page = _facts_on_page(html)
    assert on_page["fallback frames"] == "4" and on_page["gate rejections"] == "2"
    assert on_page["budget"] == "150 ms per frame, missed on 2 frames"
    assert on_page["schedules"] == "full on 3 frames; 50 % iterations, 50 % samples on 1 frame"
    assert facts["candidates"] == {"flow": 1, "registration": 1}
    assert on_page["answered by"] == "flow on 1 frame; registration on 1 frame"
    assert facts["start_correction_mm"] == {"frames": 1, "median": 0.125, "max": 0.125}
    assert on_page["start moved by the registration"] == "0.12 mm median, 0.12 mm at most (1 frame)"


def test_a_sam_only_run_is_not_a_run_of_fallbacks(synthetic_run, tmp_path):
    """Method "sam": the tracker answers every frame by choice (no reason), which is its
    normal answer; the same source with a reason (hybrid mode) is a fallback."""
    source_dir, _ = synthetic_run
    run_dir = tmp_path / "sam_run"
    shutil.copytree(source_dir, run_dir)
    masks = np.load(run_dir / "masks.partial.npy")
    answers = [{"source": "given"}] + [{"source": "sam", "sam_score": 0.9}] * 6
    answers.append({"source": "sam", "gate": "sam", "reason": "registration jumped 9 mm"})
    _write_records(run_dir, masks, answers)
    assert run_summary(run_dir / "frames.jsonl").startswith("8 frames, 1 fallback answers")
    page = write_report(run_dir, out=tmp_path / "report")
    facts = json.loads((page.parent / "summary.json").read_text())
    assert facts["fallback_frames"] == 1 and facts["sam_ran"] is True
    assert "SAM2.1 tracker" in page.read_text()


def test_clean_run_shows_no_rejection_and_no_sam(tracked):
    """A real run answered by registration on every frame: nothing rejected, nothing of SAM."""
    _, run_dir = tracked
    records = [json.loads(line) for line in (run_dir / "frames.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == ["given"] + ["registration"] * (N_FRAMES - 1)
    assert {r["gate"] for r in records} == {""}  # no SAM: the gate never spoke
    on_page = _facts_on_page((run_dir / "report" / "index.html").read_text())
    assert on_page["fallback frames"] == "0" and on_page["gate rejections"] == "0"
    assert on_page["schedules"] == f"full on {N_FRAMES - 1} frames"
    assert not trajectory(run_dir).gate_rejected.any()
    data = quality(run_dir)
    assert "sam_score" not in data and not data["gate_rejected"].any()
    assert json.loads((run_dir / "report" / "summary.json").read_text())["sam_ran"] is False
    assert not any("SAM" in line for r in records for line in _details(r))


def test_frame_panel_names_what_the_record_holds():
    """The zoom panel's lines: no SAM score or budget the run did not have; a missed deadline
    and a SAM score when the record says so."""
    mask = np.ones((4, 4), np.uint8)
    clean = FrameResult(
        index=1,
        mask=mask,
        source="registration",
        metric_value=-0.9,
        iterations=60,
        elapsed_ms=120.0,
        schedule="it1/s1",
    ).record()
    lines = _details(json.loads(json.dumps(clean)))  # NaN survives the JSON round trip
    assert lines == ["metric -0.9000", "60 iterations", "120 ms", "area 16 px"]
    late = FrameResult(
        index=2,
        mask=mask,
        source="sam",
        gate="sam",
        sam_score=0.75,
        budget_ms=150.0,
        reason="deadline: registration (it1/s1) not done within 150 ms",
    ).record()
    lines = _details(json.loads(json.dumps(late)))
    assert "deadline of 150 ms MISSED" in lines and "SAM score 0.750" in lines


class _LateWorker:
    """Registration stand-in for the streaming tracker: frame 1 takes 0.4 s, others answer."""

    def __init__(self):
        self.works = {schedule: 1000 for schedule in LADDER}
        self._pool = ThreadPoolExecutor(1)

    def __call__(self, *args):
        return self

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        def register():
            time.sleep(0.4 if index == 1 else 0.0)
            return FrameResult(
                index=index, mask=previous, source="registration", schedule=schedule.name
            )

        return self._pool.submit(register)

    def close(self):
        self._pool.shutdown(wait=True)


def test_missed_deadlines_read_from_the_streaming_trackers_records():
    """The records RealtimeTracker writes when the deadline comes first (frame 1) and while
    that late registration still runs (frame 2) count as missed deadlines, not rejections."""
    frames = np.zeros((4, 32, 32), np.float32)
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    with RealtimeTracker(TrackerSettings(budget_s=0.05), worker=_LateWorker()) as tracker:
        tracker.init(frames[0], mask, calibrate=False)
        answers = [tracker.step(frame) for frame in frames[1:3]]
        time.sleep(0.5)
        answers.append(tracker.step(frames[3]))
    records = [json.loads(json.dumps(a.record())) for a in answers]
    assert [r["source"] for r in records] == ["previous", "previous", "registration"]
    assert [missed_deadline(r) for r in records] == [True, True, False]
    assert not any(is_gate_rejected(r) for r in records)


def test_record_reading_follows_frame_result():
    """Every key the report reads is one FrameResult.record() writes, and every source it
    knows is one the tracker gives."""
    record = FrameResult(index=0, mask=np.zeros((2, 2), np.uint8), source="given").record()
    read = {"index", "source", "reason", "gate", "schedule", "sam_score", "budget_ms", "area_px"}
    assert read | set(QUALITY_KEYS) <= set(record)
    assert set(SOURCES) == {"given", "registration", "sam", "previous"}
    assert schedule_words("it1/s1") == "full" and schedule_words("") is None
    words = [schedule_words(schedule.name) for schedule in LADDER]
    assert words[0] == "full" and len(set(words)) == len(LADDER)
    assert words[1] == "67 % iterations, 75 % samples"


def test_run_whose_input_moved_still_renders(synthetic_run, tmp_path):
    run_dir, shifts = synthetic_run
    copy = tmp_path / "moved"
    shutil.copytree(run_dir, copy)
    settings = json.loads((copy / "run.json").read_text())
    settings["files"]["frames"] = str(tmp_path / "gone.mha")
    (copy / "run.json").write_text(json.dumps(settings))
    page = write_report(copy)
    html = page.read_text()
    assert "input not readable" in html and "pixel spacing unknown: 1 mm assumed" in html
    traj = trajectory(copy)
    assert traj.time_unit == "frame" and traj.ground_truth_mm is None
    np.testing.assert_allclose(traj.predicted_mm, np.array([48.0, 48.0]) + shifts)
    assert len(_movie_frames(page.parent / "movie.mp4")) == len(shifts)


# --------------------------------------------------------------------------- benchmark pages


def _page_table(html: str, title: str) -> list[list[tuple[str, bool]]]:
    """Rows of the table under heading ``title``: (cell text, bold) per cell."""
    section = html.split(f"<h2>{title}</h2>", 1)[1].split("</section>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    cell = r'<td(?: class="num( bold)?")?>([^<]*)</td>'
    return [
        [(text, bool(bold)) for bold, text in re.findall(cell, row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.DOTALL)
    ]


def test_accuracy_page_compares_against_the_peers(tmp_path):
    """Known scores: regtrack wins one case, DIS flow the other; the page puts each score in
    its method's column and row, averages them, and bolds the winner, peer or not."""
    scores = {  # case -> method -> (DSC, centre distance mm, s/frame)
        "lung_slide": {
            "regtrack:bspline_ncc": (0.95, 0.20, 0.08),
            "dis_flow": (0.90, 0.60, 0.01),
            "copy_first_mask": (0.50, 4.0, 0.0),
        },
        "liver_large": {
            "regtrack:bspline_ncc": (0.91, 0.90, 0.12),
            "dis_flow": (0.93, 0.40, 0.02),
            "copy_first_mask": (0.60, 3.0, 0.0),
        },
    }
    results = {
        case: {
            method: {"dsc": dsc, "centre_distance_mm": cd, "s_per_frame_median": s}
            for method, (dsc, cd, s) in methods.items()
        }
        for case, methods in scores.items()
    }
    source = tmp_path / "accuracy.json"
    source.write_text(
        json.dumps({"benchmark": "accuracy", "machine": {"cpu": "TestCPU"}, "results": results})
    )
    html = report_benchmark(source).read_text()
    per_case = _page_table(html, "Per case: CD mm")
    assert per_case == [
        [("lung_slide", False), ("0.20", True), ("0.60", False), ("4.00", False)],
        [("liver_large", False), ("0.90", False), ("0.40", True), ("3.00", False)],
    ]
    header = html.split("<h2>Per case: CD mm</h2>", 1)[1].split("</thead>", 1)[0]
    names = ["regtrack bspline_ncc", "OpenCV DIS optical flow", "copy the first mask"]
    assert re.findall(r"<th>([^<]*)</th>", header) == ["case", *names]
    means = _page_table(html, "Benchmark cases: mean over 2 cases")
    assert [row[0][0] for row in means] == names
    assert [row[1] for row in means] == [("0.9300", True), ("0.9150", False), ("0.5500", False)]
    assert [row[2] for row in means] == [("0.550", False), ("0.500", True), ("3.500", False)]


def test_committed_accuracy_results_render_every_case_and_method(tmp_path):
    data = json.loads((BENCHMARKS / "accuracy.json").read_text())
    page = report_benchmark(BENCHMARKS / "accuracy.json", out=tmp_path / "accuracy.html")
    html = page.read_text()
    methods = {m for case in data["results"].values() for m in case}
    for method in methods:
        assert method_label(method) in html
    for case in data["results"]:
        assert case in html
    assert data["machine"]["cpu"] in html and _external_links(html) == []
    assert html.count("data:image/png;base64,") >= 2


def test_features_page_from_the_cli_lists_each_extractor_fastest_in_bold(tmp_path, capsys):
    target = tmp_path / "features.json"
    timings = [
        ("mind", 3.0, 3.9),
        ("sam2.1-tiny @ 256", 25.8, 27.7),
        ("sam2.1-tiny @ 1024", 671.5, 704.4),
    ]
    results = [
        {"extractor": name, "device": "cpu", "median_ms": median, "p95_ms": p95}
        for name, median, p95 in timings
    ]
    target.write_text(
        json.dumps(
            {"benchmark": "features", "frame": [256, 256], "torch_threads": 2, "results": results}
        )
    )
    assert main(["report", str(target)]) == 0
    assert str(tmp_path / "features.html") in capsys.readouterr().out
    rows = _page_table((tmp_path / "features.html").read_text(), "Feature extraction, one frame")
    assert rows == [
        [(name, False), ("cpu", False), (f"{median:.1f}", k == 0), (f"{p95:.1f}", k == 0)]
        for k, (name, median, p95) in enumerate(timings)
    ]


def test_benchmark_page_api_bolds_the_best_and_embeds_figures(tmp_path):
    from matplotlib.figure import Figure

    source = tmp_path / "budget.json"
    source.write_text(json.dumps({"benchmark": "budget", "machine": {"cpu": "TestCPU"}}))
    figure = Figure(figsize=(3, 2))
    figure.subplots().plot([0, 1], [1, 0])
    table = Table(
        "Latency",
        ["method", "p95 ms"],
        [["a", 12.5], ["b", 9.25]],
        formats=[None, ".2f"],
        best={1: "min"},
    )
    page = write_benchmark_page(source, "Budget", [table], [("latency plot", figure)])
    html = page.read_text()
    assert page == tmp_path / "budget.html"
    assert '<td class="num bold">9.25</td>' in html and '<td class="num">12.50</td>' in html
    assert "latency plot" in html and "data:image/png;base64," in html and "TestCPU" in html


# --------------------------------------------------------------------------- in a browser


def _chromium(*args, profile) -> subprocess.CompletedProcess:
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


_IMAGE_CHECK = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken});
  document.body.appendChild(out);
});</script>"""


def _browser_check(page, profile) -> tuple[dict, list[str]]:
    """(image check, console messages) of a page opened in headless Chromium. The check runs
    in a test-only copy beside the page, so relative links resolve as in the page."""
    probe = page.with_name("browser-check.html")
    probe.write_text(page.read_text().replace("</body>", _IMAGE_CHECK + "</body>"))
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), profile=profile)
    probe.unlink()
    found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout)
    assert found, f"the check script did not run: {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(found.group(1)), console


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not on PATH (apt-get install chromium)"
)
def test_page_renders_in_headless_chromium(tracked, tmp_path):
    _, run_dir = tracked
    page = run_dir / "report" / "index.html"
    check, console = _browser_check(page, tmp_path / "profile")
    assert check["images"] >= 2 and check["broken"] == [], check
    assert console == []  # the page has no scripts: any console message is a fault
    shot = tmp_path / "report.png"
    _chromium(
        f"--screenshot={shot}",
        "--window-size=1280,900",
        page.as_uri(),
        profile=tmp_path / "profile",
    )
    pixels = imageio.imread(shot)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels[..., :3].std() > 30  # text, movie and plots, not a blank page
    # the checker itself can fail: a broken image and a console message are caught
    broken = page.with_name("broken.html")
    broken.write_text(
        page.read_text().replace(
            "</body>",
            '<img src="missing.png" alt="gone"><script>console.error("x")</script></body>',
        )
    )
    check, console = _browser_check(broken, tmp_path / "profile")
    broken.unlink()
    assert check["broken"] == ["gone"] and len(console) == 1
