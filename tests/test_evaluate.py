"""`regtrack evaluate` says what a prediction really holds and scores a folder case by case."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from regtrack.cli import main
from regtrack.io import write_trackrad_case


@pytest.fixture
def cases(tmp_path, translated):
    """Two TrackRAD case folders with labels; returns their parent folder."""
    root = tmp_path / "gt"
    for name in ("A", "B"):
        frames, truth = translated([(0, 0), (2, 1), (4, 2), (3, 1)], shape=(48, 48), radius=6)
        write_trackrad_case(root, name, frames, truth[0], truth)
    return root


def _write_prediction(cases, name, path, edit=None, dtype=np.uint8, spacing=None):
    """The case's labels (edited, cast to ``dtype``) written as a prediction at ``path``."""
    labels = sitk.ReadImage(str(cases / name / "targets" / f"{name}_labels.mha"))
    array = sitk.GetArrayFromImage(labels).astype(dtype)
    if edit:
        edit(array)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(labels)
    if spacing:
        image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize(
    ("dtype", "edit", "words"),
    [
        (np.float32, lambda a: np.multiply(a, 0.7, out=a), ["{0, 0.7}", "32-bit float"]),
        (
            np.int16,
            lambda a: a.__setitem__(a == 0, -1) or a.__setitem__(a == 1, 2),
            ["{-1, 2}", "16-bit signed integer"],
        ),
        (np.float32, lambda a: a.__setitem__((0, 0, 1), np.nan), ["NaN"]),
    ],
)
def test_prediction_values_are_named_as_they_are(cases, tmp_path, capsys, dtype, edit, words):
    pred = _write_prediction(cases, "A", tmp_path / "p.mha", edit, dtype)
    assert main(["evaluate", str(pred), str(cases / "A"), "--json", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert "empty in every frame" not in err


def test_spacing_mismatch_is_refused(cases, tmp_path, capsys):
    pred = _write_prediction(cases, "A", tmp_path / "p.mha", spacing=(1.0, 2.0, 2.0))
    assert main(["evaluate", str(pred), str(cases / "A"), "--json", str(tmp_path / "s.json")]) == 2
    assert "spacing" in capsys.readouterr().err


def test_folder_scores_every_case_it_can_and_names_the_others(cases, tmp_path, capsys):
    preds = tmp_path / "preds"
    _write_prediction(cases, "A", preds / "A.mha")
    _write_prediction(cases, "B", preds / "B.mha", lambda a: a.fill(0))
    assert main(["evaluate", str(preds), str(cases)]) == 1
    captured = capsys.readouterr()
    assert "not scored: B" in captured.out and "B" in captured.err
    scores = json.loads((preds / "scores.json").read_text())
    assert scores["per_case"]["A"]["dsc"] == 1.0
    assert "empty" in scores["failed"]["B"]
