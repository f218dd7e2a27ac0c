"""Tests of benchmarks/similarity_truth.py: the error and similarity of a map, and a run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from regtrack.engine import Engine, TrackerSettings
from regtrack.io import write_trackrad_case
from regtrack.phantom import generate_phantom

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "similarity_truth.py"
_SPEC = importlib.util.spec_from_file_location("similarity_truth_benchmark", _PATH)
similarity_truth = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = similarity_truth
_SPEC.loader.exec_module(similarity_truth)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(n_frames=4)


def test_the_true_map_scores_no_error_and_the_higher_similarity(phantom):
    """Frame 3 against frame 0: the map that carries each pixel by the phantom's known motion
    lands mask(0) on the true mask and matches the frames better than no motion at all."""
    engine = Engine.build(
        phantom.frames[0], phantom.first_mask, TrackerSettings(start="flow"), phantom.spacing_mm
    )
    rows, cols = np.nonzero(phantom.first_mask)
    box = (slice(rows.min() - 20, rows.max() + 20), slice(cols.min() - 20, cols.max() + 20))
    spacing = np.asarray(phantom.spacing_mm)[:, None, None]
    pixels = np.stack(np.mgrid[box].astype(float)) * spacing  # frame-t positions, mm
    # displacement_mm[t] (H, W, 2): frame-t pixel x shows what sat at x - u(x) in frame 0
    truth = pixels - np.moveaxis(phantom.displacement_mm[3][box], -1, 0)
    frame, label = phantom.frames[3], phantom.masks[3].astype(bool)
    true_error, true_ncc = similarity_truth.score(engine, frame, label, truth, box)
    still_error, still_ncc = similarity_truth.score(engine, frame, label, pixels, box)
    assert true_error < 0.3 and still_error > 1.0
    assert true_ncc > still_ncc


def test_a_run_writes_the_per_case_shares(tmp_path, phantom, capsys):
    write_trackrad_case(
        tmp_path / "cases",
        "P_001",
        phantom.frames,
        phantom.first_mask,
        labels=phantom.masks,
        spacing_mm=phantom.spacing_mm,
    )
    out = tmp_path / "similarity.json"
    assert similarity_truth.main(["--cases-dir", str(tmp_path / "cases"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    result = report["results"]["P_001"]
    assert result["frames"] == 3 and report["machine"]["cores"] >= 1
    for key in ("registration_raised_similarity", "registration_closer", "agreement"):
        assert 0.0 <= result[key] <= 1.0
    assert result["start_error_mm"] < 1.0  # the flow start follows the phantom's motion
    assert "P_001" in capsys.readouterr().out
