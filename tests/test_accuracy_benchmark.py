"""Tests of benchmarks/accuracy.py: peers fed as documented, cases found, ranks compared."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from regtrack.io import write_trackrad_case

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
_SPEC = importlib.util.spec_from_file_location("accuracy_benchmark", _PATH)
accuracy = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = accuracy  # dataclasses look their module up there
_SPEC.loader.exec_module(accuracy)


def _shifted_sequence(shift=(3, -2), n=3, shape=(64, 64)):
    """Textured frames at 0..255 whose content moves by `shift` px after frame 0; disc masks."""
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.standard_normal((shape[0] + 20, shape[1] + 20)), 2.0)
    rows, cols = np.indices(base.shape)
    disc = (rows - 42) ** 2 + (cols - 42) ** 2 < 10**2
    base = base + 2.0 * disc
    frames, labels = [], []
    for t in range(n):
        offset = (0, 0) if t == 0 else shift
        frames.append(np.roll(base, offset, axis=(0, 1))[10:-10, 10:-10])
        labels.append(np.roll(disc, offset, axis=(0, 1))[10:-10, 10:-10])
    frames = np.stack(frames)
    frames = 255.0 * (frames - frames.min()) / (frames.max() - frames.min())
    return frames.astype(np.float32), np.stack(labels).astype(np.uint8)


def test_scaling_for_the_peers_is_per_frame():
    frame = np.array([[0.0, 50.0], [100.0, 200.0]])
    np.testing.assert_allclose(accuracy.scale_unit(frame), [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(accuracy.scale_unit(frame + 1000.0), accuracy.scale_unit(frame))
    assert (
        accuracy.scale_uint8(frame).dtype == np.uint8 and accuracy.scale_uint8(frame).max() == 255
    )


@pytest.mark.parametrize("method", ["dis_flow", "tvl1_flow"])
def test_flow_peers_carry_the_mask_to_the_moved_target(method):
    frames, labels = _shifted_sequence()
    case = accuracy.BenchCase("shift", "phantom", frames, labels, (1.0, 1.0), None)
    scores = accuracy.run_method(method, case)
    assert scores["dsc"] > 0.9 and scores["centre_distance_mm"] < 1.0, scores


@pytest.mark.parametrize("scaling", ["sequence", "frame"])
def test_tvl1_gets_frames_in_unit_range(monkeypatch, scaling):
    import skimage.registration

    seen = []

    def spy(reference, moving, **kwargs):
        seen.append((reference, moving, kwargs))
        return np.zeros((2, *reference.shape), dtype=np.float32)

    monkeypatch.setattr(skimage.registration, "optical_flow_tvl1", spy)
    frames, labels = _shifted_sequence()
    frames = frames * 3.0 + 7.0
    frames[2] *= 1.2  # a frame brighter than frame 0
    list(accuracy.track_tvl1_flow(frames, labels[0].astype(bool), (1.0, 1.0), scaling))
    assert len(seen) == 2 and all(kwargs == {} for *_, kwargs in seen)
    for frame_t, frame_0, _ in seen:  # frame t is TV-L1's reference, frame 0 the moving image
        assert frame_0.min() == 0.0 and frame_0.max() == 1.0
    brighter = seen[1][0]
    if scaling == "frame":
        assert brighter.min() == 0.0 and brighter.max() == 1.0
    else:  # frame 0's range for every frame: the brighter frame stays brighter
        np.testing.assert_allclose(
            brighter, accuracy.scale_unit(frames[2], (frames[0].min(), frames[0].max()))
        )
        assert brighter.max() > 1.1


def test_ranks_and_agreement_with_the_real_case():
    results = {
        "real": {"a": {"dsc": 0.9}, "b": {"dsc": 0.8}, "c": {"dsc": 0.6}},
        "same": {"a": {"dsc": 0.99}, "b": {"dsc": 0.95}, "c": {"dsc": 0.9}},
        "flipped": {"a": {"dsc": 0.5}, "b": {"dsc": 0.8}, "c": {"dsc": 0.9}},
    }
    kinds = {"real": "real", "same": "phantom", "flipped": "phantom"}
    agreement = accuracy.rank_agreement(results, kinds)
    assert agreement["same"]["ranks"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert agreement["same"]["kendall_tau_vs_real"] == pytest.approx(1.0)
    assert agreement["same"]["same_order_as_real"]
    assert agreement["flipped"]["kendall_tau_vs_real"] == pytest.approx(-1.0)
    assert not agreement["flipped"]["same_order_as_real"]
    assert (
        "kendall_tau_vs_real"
        not in accuracy.rank_agreement(results, {k: "phantom" for k in kinds})["same"]
    )


def _write_case(directory: Path, name: str) -> Path:
    frames, labels = _shifted_sequence(n=5)
    return write_trackrad_case(
        directory,
        name,
        frames,
        labels[0],
        labels=labels,
        frame_rate_hz=8.0,
        scanned_region="abdomen",
    )


def test_case_folders_are_found_in_a_folder_of_cases_or_as_one_case(tmp_path):
    first, second = _write_case(tmp_path, "A_001"), _write_case(tmp_path, "B_002")
    (tmp_path / "notes").mkdir()
    assert accuracy.find_case_folders(tmp_path) == [first, second]
    assert accuracy.find_case_folders(first) == [first]


def test_cases_dir_repeats_and_synthetic_dev_is_a_reference_of_its_own(tmp_path):
    _write_case(tmp_path / "data", "A_001")
    _write_case(tmp_path / "data" / "synthetic_dev", "d01_x")
    argv = ["--cases-dir", str(tmp_path / "data"), "--cases-dir"]
    args = accuracy.parse_args([*argv, str(tmp_path / "data" / "synthetic_dev")])
    kinds = {case.name: case.kind for case in accuracy.load_cases(args)}
    assert kinds == {"A_001": "real", "d01_x": "synthetic"}
    results = {
        "A_001": {"a": {"dsc": 0.9}, "b": {"dsc": 0.8}},
        "d01_x": {"a": {"dsc": 0.7}, "b": {"dsc": 0.8}},
        "p": {"a": {"dsc": 0.5}, "b": {"dsc": 0.6}},
    }
    agreement = accuracy.rank_agreement(results, {**kinds, "p": "phantom"})
    assert agreement["p"]["same_order_as_synthetic"] and not agreement["p"]["same_order_as_real"]


def test_one_run_scores_real_semi_synthetic_and_phantom_cases(tmp_path, capsys, monkeypatch):
    from regtrack.phantom import PhantomSpec

    tiny = PhantomSpec(
        name="tiny", n_frames=3, shape=(96, 96), tumour_radius_mm=8.0, minmax_scale=True
    )
    monkeypatch.setattr(accuracy, "phantom_sets", lambda: {"small": {"tiny": tiny}})
    _write_case(tmp_path / "cases", "A_001")
    out = tmp_path / "accuracy.json"
    argv = [
        "--cases-dir",
        str(tmp_path / "cases"),
        "--semi",
        "--cases",
        "small",
        "--max-frames",
        "3",
        "--method",
        "copy_first_mask",
        "--method",
        "dis_flow",
        "--out",
        str(out),
    ]
    assert accuracy.main(argv) == 0
    report = json.loads(out.read_text())
    kinds = report["kinds"]
    assert kinds["A_001"] == "real"
    assert sorted(k for k, v in kinds.items() if v == "semi-synthetic") == [
        "A_001_semi_breath",
        "A_001_semi_breath_jump",
        "A_001_semi_jump_deform",
    ]
    assert [k for k, v in kinds.items() if v == "phantom"] == ["tiny"]
    for by_method in report["results"].values():
        assert set(by_method) == {"copy_first_mask", "dis_flow"}
        assert by_method["dis_flow"]["n_frames_scored"] == 2.0
    assert report["rank_agreement"]["A_001"]["same_order_as_real"]
    assert report["max_frames"] == 3 and report["machine"]["cores"]
    printed = capsys.readouterr().out
    assert "machine:" in printed and "tau vs real" in printed


def test_bad_arguments_fail_before_any_case_runs(tmp_path):
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--cases", "nonsense"])
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--max-frames", "1"])
    with pytest.raises(SystemExit, match="unknown method"):
        accuracy.main(["--method", "sift", "--cases", "none"])
    with pytest.raises(SystemExit, match="no TrackRAD case folder"):
        accuracy.main(["--cases-dir", str(tmp_path), "--method", "copy_first_mask"])


def test_method_names_carry_regtrack_settings():
    assert accuracy.regtrack_settings("regtrack") == {}
    assert accuracy.regtrack_settings("regtrack:bspline_mi+roi=none+roi_margin_mm=20") == {
        "preset": "bspline_mi",
        "roi": None,
        "roi_margin_mm": 20.0,
    }
    assert accuracy.regtrack_settings("regtrack+refine_flow=false") == {"refine_flow": False}
