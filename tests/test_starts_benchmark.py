"""Tests of benchmarks/starts.py: a case tracked from later frames, scored against its own
labels from there on."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from regtrack.io import write_trackrad_case
from regtrack.metrics import evaluate_case
from regtrack.phantom import generate_phantom

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "starts.py"
_SPEC = importlib.util.spec_from_file_location("starts_benchmark", _PATH)
starts = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = starts
_SPEC.loader.exec_module(starts)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(n_frames=14)


def test_each_start_is_scored_from_its_own_first_label(tmp_path, phantom, capsys):
    """Starts every 4 frames while 6 are left, at most 2: frames 0 and 4. Copying the given
    mask from frame 4 scores as the label of frame 4 copied onto frames 4-13 does."""
    write_trackrad_case(
        tmp_path / "cases",
        "P_001",
        phantom.frames,
        phantom.first_mask,
        labels=phantom.masks,
        spacing_mm=phantom.spacing_mm,
        scanned_region="abdomen",
    )
    out = tmp_path / "starts.json"
    argv = ["--cases", "P_001", "--cases-dir", str(tmp_path / "cases"), "--out", str(out)]
    argv += ["--methods", "copy_first_mask", "--every", "4", "--most", "2", "--min-frames", "6"]
    assert starts.main([*argv, "--jobs", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["starts"] == {"P_001": [0, 4]}
    labels = phantom.masks[4:].astype(np.uint8)
    copied = np.repeat(labels[:1], len(labels), axis=0)
    expected = evaluate_case(copied, labels, scanned_region="abdomen")
    scored = report["results"]["P_001"]["4"]["copy_first_mask"]
    assert scored["centre_distance_mm"] == pytest.approx(expected["centre_distance_mm"])
    assert scored["centre_distance_mm"] > 0.5  # the phantom moves: not a trivial zero
    assert "machine" in report and "load_average_after" in report
    assert "P_001 | copy_first_mask" in capsys.readouterr().out


def test_a_missing_case_is_named_with_where_it_was_looked_for(tmp_path):
    with pytest.raises(SystemExit, match="no case 'P_404'.*--cases-dir"):
        starts.main(["--cases", "P_404", "--cases-dir", str(tmp_path)])


def test_closer_on_counts_the_starts_where_one_method_is_closer():
    row = {
        "0": {"a": {"centre_distance_mm": 0.2}, "b": {"centre_distance_mm": 0.3}},
        "10": {"a": {"centre_distance_mm": 0.4}, "b": {"centre_distance_mm": 0.3}},
        "20": {"a": {"centre_distance_mm": 0.1}},
    }
    assert starts.closer_on(row, "a", "b") == (1, 2)
