"""The streaming tracker: deadlines, late registrations, one code path with offline tracking."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from regtrack.budget import LADDER
from regtrack.cli import main
from regtrack.evaluation import read_mask_sequence
from regtrack.io import read_case, write_trackrad_case
from regtrack.metrics import dice
from regtrack.realtime import RealtimeTracker
from regtrack.tracking import FrameResult, TrackerSettings, replay, track


class StandInWorker:
    """A registration stand-in: sleeps ``delays[index]`` s, answers the frame index as mask.

    It records the ``previous`` mask each call got, so a test can see where a frame started.
    """

    def __init__(self, delays, frame_shape):
        self.delays, self.frame_shape = delays, frame_shape
        self.works = {schedule: 1000 for schedule in LADDER}
        self.previous_given = {}
        self._pool = ThreadPoolExecutor(1)

    def __call__(self, frame0, mask0, settings, spacing_mm):
        return self

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        self.previous_given[index] = previous.copy()

        def register():
            time.sleep(self.delays.get(index, 0.0))
            mask = np.zeros(self.frame_shape, bool)
            mask[index, :] = True  # row `index`: tells the answers apart
            return FrameResult(
                index=index, mask=mask, source="registration", schedule=schedule.name
            )

        return self._pool.submit(register)

    def close(self):
        self._pool.shutdown(wait=True)


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    return rng.random((6, 32, 32)).astype(np.float32)


def test_slow_registration_gives_the_fallback_on_time_and_still_warms_the_next_frame(frames):
    first_mask = np.zeros((32, 32), bool)
    first_mask[10:20, 10:20] = True
    worker = StandInWorker({1: 0.6}, (32, 32))
    settings = TrackerSettings(budget_s=0.05)
    with RealtimeTracker(settings, worker=worker) as tracker:
        tracker.init(frames[0], first_mask, calibrate=False)
        late = tracker.step(frames[1])
        assert late.source == "previous" and late.reason.startswith("deadline")
        assert np.array_equal(late.mask, first_mask)
        assert late.latency_ms < 300  # answered near its 50 ms deadline, not at 600 ms
        busy = tracker.step(frames[2])
        assert busy.source == "previous" and "frame 1 is still running" in busy.reason
        time.sleep(0.8)  # the late registration of frame 1 finishes meanwhile
        answered = tracker.step(frames[3])
    assert answered.source == "registration" and answered.mask[3].all()
    assert worker.previous_given[3][1].all()  # frame 3 started from frame 1's late answer
    assert answered.budget_ms == 50 and answered.latency_ms < 600


def test_every_answer_says_where_its_time_went(frames):
    """Stage times: queue, the worker's call, answer for a fresh frame; queue, waited, answer
    for one answered at its deadline; each record's stages add up to its latency."""
    first_mask = np.zeros((32, 32), bool)
    first_mask[10:20, 10:20] = True
    worker = StandInWorker({2: 0.5}, (32, 32))
    with RealtimeTracker(TrackerSettings(budget_s=0.1), worker=worker) as tracker:
        tracker.init(frames[0], first_mask, calibrate=False)
        fresh, late = tracker.step(frames[1]), tracker.step(frames[2])
    assert fresh.source == "registration" and late.source == "previous"
    assert list(fresh.stages_ms) == ["queue", "registration", "answer"]
    assert list(late.stages_ms) == ["queue", "waited", "answer"]
    for answer in (fresh, late):
        record = json.loads(json.dumps(answer.record()))
        assert sum(record["stages_ms"].values()) == pytest.approx(answer.latency_ms, abs=0.01)
        assert "worker_span" not in record


def test_the_engine_times_its_own_stages(jump_sequence):
    """In the worker: elastix, the warp of mask(0) and the rest are timed where they run,
    and the tracker adds the stages around them."""
    frames, masks = jump_sequence
    with RealtimeTracker(worker="inline") as tracker:
        tracker.init(frames[0], masks[0])
        answer = tracker.step(frames[1])
    stages = answer.stages_ms
    assert answer.source == "registration"
    assert {"queue", "dispatch", "registration", "warp", "other", "return", "answer"} <= set(stages)
    assert stages["registration"] >= answer.registration_ms > 0
    worker = sum(v for k, v in stages.items() if k not in ("queue", "dispatch", "return", "answer"))
    assert worker == pytest.approx(answer.elapsed_ms, rel=0.05, abs=1.0)
    assert sum(stages.values()) == pytest.approx(answer.latency_ms, abs=0.01)


def test_step_needs_init_and_frames_of_one_size(frames):
    tracker = RealtimeTracker(worker=StandInWorker({}, (32, 32)))
    with pytest.raises(RuntimeError, match="init"):
        tracker.step(frames[1])
    mask = np.zeros((32, 32), bool)
    mask[5:9, 5:9] = True
    tracker.init(frames[0], mask, calibrate=False)
    with pytest.raises(ValueError, match="same size"):
        tracker.step(np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match="budget_s must be"):
        tracker.step(frames[1], budget_s=float("nan"))
    with pytest.raises(ValueError, match="worker must be"):
        RealtimeTracker(worker="threads")
    with pytest.raises(ValueError, match="frame_rate_hz"):
        next(replay(frames, mask, frame_rate_hz=0))


@pytest.mark.slow
def test_streaming_in_a_process_gives_the_offline_masks(jump_sequence):
    frames, masks = jump_sequence
    offline = track(frames, masks[0])
    with RealtimeTracker(worker="process") as tracker:
        streamed = [tracker.init(frames[0], masks[0]).mask]
        streamed += [tracker.step(frame).mask for frame in frames[1:]]
    assert np.array_equal(np.stack(streamed).astype(np.uint8), offline.masks)
    assert np.array_equal(offline.masks[-1], masks[-1]) or (
        np.logical_xor(offline.masks[-1], masks[-1]).sum() < 0.1 * masks[-1].sum()
    )


@pytest.mark.slow
def test_a_bad_preset_in_the_worker_process_raises_its_own_error(jump_sequence):
    frames, masks = jump_sequence
    settings = TrackerSettings(overrides={"Metric": "NoSuchMetric"}, budget_s=0.5)
    with RealtimeTracker(settings) as tracker, pytest.raises(ValueError, match="not usable"):
        tracker.init(frames[0], masks[0])


@pytest.mark.slow
def test_realtime_and_trackrad_commands(tmp_path, jump_sequence, capsys):
    frames, masks = jump_sequence
    case = write_trackrad_case(tmp_path, "case", frames, masks[0], masks, frame_rate_hz=8.0)
    out = tmp_path / "rt"
    assert main(["realtime", str(case), "--out", str(out), "--budget", "0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "deadline misses" in printed and "latency p50" in printed
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(frames)))
    assert all(r["budget_ms"] == 500 for r in records[1:])

    container = tmp_path / "container"
    (container / "input" / "images" / "mri-linacs").mkdir(parents=True)
    (container / "input" / "images" / "mri-linac-target").mkdir(parents=True)
    loaded = read_case(case)
    (case / "images" / "case_frames.mha").rename(
        container / "input" / "images" / "mri-linacs" / "seq.mha"
    )
    (case / "targets" / "case_first_label.mha").rename(
        container / "input" / "images" / "mri-linac-target" / "mask.mha"
    )
    assert (
        main(
            [
                "trackrad",
                "--input",
                str(container / "input"),
                "--output",
                str(container / "output"),
                "--no-progress",
            ]
        )
        == 0
    )
    output = container / "output" / "images" / "mri-linac-series-targets" / "output.mha"
    predicted = read_mask_sequence(output, time_axis=loaded.geometry.time_axis)
    assert predicted.shape == masks.shape
    assert dice(predicted[-1], masks[-1]) > 0.9


def test_realtime_needs_a_frame_rate_and_a_budget(tmp_path, translated, capsys):
    frames, masks = translated([(0, 0), (1, 0)])
    case = write_trackrad_case(tmp_path, "c", frames, masks[0], frame_rate_hz=4.0)
    out = ["--out", str(tmp_path / "o")]
    assert main(["realtime", str(case), *out, "--budget", "0"]) == 2
    assert "budget_s must be a positive number" in capsys.readouterr().err
    (case / "frame-rate.json").unlink()  # a case that does not say how fast frames arrive
    assert main(["realtime", str(case), *out, "--budget", "0.25"]) == 2
    err = capsys.readouterr().err
    assert "has no frame rate (frame-rate.json); pass --frame-rate HZ" in err
    assert not (tmp_path / "o" / "frames.jsonl").exists()  # refused before tracking


@pytest.mark.slow
def test_a_killed_realtime_replay_resumes_where_its_record_stops(tmp_path, jump_sequence):
    frames, masks = jump_sequence
    case = write_trackrad_case(tmp_path, "case", frames, masks[0], masks, frame_rate_hz=8.0)
    out = tmp_path / "rt"
    command = ["realtime", str(case), "--out", str(out), "--budget", "0.5", "--no-progress"]
    assert main(command) == 0
    records = (out / "frames.jsonl").read_text().splitlines(keepends=True)
    kept = len(records) // 2  # as if killed there: later records never written
    (out / "frames.jsonl").write_text("".join(records[:kept]))
    (out / "output.mha").unlink()
    assert main(command) == 0
    resumed = (out / "frames.jsonl").read_text().splitlines(keepends=True)
    assert resumed[:kept] == records[:kept]  # what was recorded stays as it was
    assert [json.loads(r)["index"] for r in resumed] == list(range(len(frames)))
    assert main([*command, "--frame-rate", "4"]) == 2  # another rate is another replay


class ColdStartWorker(StandInWorker):
    """Its first call takes ``cold_s`` (a worker's first registration), every later one 10 ms."""

    def __init__(self, frame_shape, cold_s):
        super().__init__({}, frame_shape)
        self.cold_s, self.calls = cold_s, 0

    def submit(self, frame, previous, index, *, schedule, return_fields=False):
        self.calls += 1
        self.delays = {index: self.cold_s if self.calls == 1 else 0.01}
        return super().submit(frame, previous, index, schedule=schedule)


def test_a_workers_cold_first_call_is_not_taken_as_its_cost(frames):
    from regtrack.pacing import CALIBRATION, WARM_UP

    first_mask = np.zeros((32, 32), bool)
    first_mask[10:20, 10:20] = True
    worker = ColdStartWorker((32, 32), cold_s=0.4)
    with RealtimeTracker(TrackerSettings(budget_s=0.1), worker=worker) as tracker:
        tracker.init(frames[0], first_mask, calibrate=True)
        assert worker.calls == len(WARM_UP) + len(CALIBRATION)
        assert all(tracker.predict_ms(schedule) < 100 for schedule in LADDER)
