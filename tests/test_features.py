"""Static-mode IMPACT: feature channels through elastix multi-metric registration."""

import numpy as np
import pytest
from scipy import ndimage

import regtrack
from regtrack.features import FeatureExtractor, expand_for_channels, feature_spec
from regtrack.parameters import load_parameter_maps
from regtrack.phantom import generate_phantom
from regtrack.registration import displacement_field, register_pair, warp_mask
from regtrack.tracking import TrackerSettings, iter_track

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated")


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom_pair():
    """Frame 0 and the frame furthest from it, with exact masks and the true field."""
    case = generate_phantom(
        n_frames=16,
        site="liver",
        tumour_radius_mm=20.0,
        through_plane=0.0,
        breathing_amplitude_mm=14.0,
        seed=5,
    )
    t = int(np.argmax(np.abs(case.centroids_mm - case.centroids_mm[0]).sum(axis=1)))
    return case, t


def test_mind_preset_declares_static_features():
    spec = feature_spec(load_parameter_maps("impact_mind"))
    assert spec.model == "mind" and spec.layers == (0,) and spec.layer_weights == (1.0,)
    assert feature_spec(load_parameter_maps("bspline_ncc")) is None


def test_layer_weights_must_match_layers():
    maps = load_parameter_maps("impact_mind", {"ImpactLayersWeight0": [1, 1]})
    with pytest.raises(ValueError, match="one weight per selected layer"):
        feature_spec(maps)


def test_channels_expand_the_per_pair_entries():
    weights = [(0.5,)] + [(0.125,)] * 3 + [(0.1, 0.4)]
    parameter_map = dict(
        expand_for_channels(load_parameter_maps("impact_mind"), weights).GetParameterMap(0)
    )
    assert (
        parameter_map["Metric"] == ("AdvancedNormalizedCorrelation",) + ("AdvancedMeanSquares",) * 4
    )
    assert parameter_map["ImageSampler"] == ("RandomCoordinate",) * 5
    assert [parameter_map[f"Metric{i}Weight"] for i in range(5)] == [("0.5",)] + [
        ("0.125",)
    ] * 3 + [("0.1", "0.4")]


def test_mind_extractor_gives_weighted_channels_on_the_frame_grid(phantom_pair):
    case, _ = phantom_pair
    extractor = FeatureExtractor(feature_spec(load_parameter_maps("impact_mind")), case.frames[0])
    channels = extractor(case.frames[0])
    assert len(channels) == 5 == len(extractor.weights)  # the frame, then 4 MIND channels
    np.testing.assert_array_equal(channels[0], case.frames[0])
    assert all(c.shape == case.frames[0].shape and c.dtype == np.float32 for c in channels)
    assert extractor.weights == [(0.5,)] + [(0.125,)] * 4


def test_static_mind_recovers_a_known_deformation_better_than_identity(phantom_pair):
    case, t = phantom_pair
    maps = load_parameter_maps("impact_mind")
    extractor = FeatureExtractor(feature_spec(maps), case.frames[0])
    maps = expand_for_channels(maps, extractor.weights)
    registration = register_pair(extractor(case.frames[t]), extractor(case.frames[0]), maps)
    tumour = case.masks[t].astype(bool)
    # phantom: frame-t pixel x shows frame-0 content from x - u; elastix: x -> x + u_reg(x)
    true_field = -case.displacement_mm[t][tumour]
    error = np.linalg.norm(displacement_field(registration)[tumour] - true_field, axis=1)
    identity_error = np.linalg.norm(true_field, axis=1)
    assert identity_error.mean() > 5.0  # the pair really moved
    assert error.mean() < 0.1 * identity_error.mean()
    warped = warp_mask(case.masks[0], registration)
    assert _dice(warped, tumour) > 0.95 > _dice(case.masks[0], tumour)


def test_impact_mind_tracks_a_phantom_sequence(phantom_pair):
    case, _ = phantom_pair
    result = regtrack.track(case.frames, case.first_mask, preset="impact_mind")
    assert all(r["feature_ms"] > 0 for r in result.records[1:])
    centroids = np.array([ndimage.center_of_mass(m) for m in result.masks])
    assert np.abs(centroids - case.centroids_mm).max() < 1.0


def test_native_impact_without_plugin_names_the_library_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    frames = np.random.default_rng(0).random((2, 48, 48)).astype(np.float32)
    mask = np.zeros((48, 48), bool)
    mask[20:28, 20:28] = True
    try:
        regtrack.track(frames, mask, preset="impact_native_mind")
    except ValueError as error:
        message = str(error)
    else:
        pytest.skip("the ImpactElastix plugin is installed here")
    assert "ImpactMetric" in message and "LD_LIBRARY_PATH" in message
    assert "impact_mind" in message
    assert (tmp_path / "regtrack" / "impact" / "mind_native_7.pt").exists()


def test_impact_sam2_without_checkpoint_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("REGTRACK_SAM2_CHECKPOINT", raising=False)
    frames = np.random.default_rng(0).random((2, 48, 48)).astype(np.float32)
    mask = np.zeros((48, 48), bool)
    mask[20:28, 20:28] = True
    with pytest.raises(ValueError, match="REGTRACK_SAM2_CHECKPOINT"):
        regtrack.track(frames, mask, preset="impact_sam2")


@pytest.mark.sam2
def test_impact_sam2_runs_with_a_checkpoint(random_sam21, monkeypatch, translated):
    """Random weights: this checks the plumbing (PCA channels, weights, elastix), not accuracy."""
    monkeypatch.setenv("REGTRACK_SAM2_CHECKPOINT", str(random_sam21[0]))
    frames, truth = translated([(0, 0), (1, 1)], shape=(64, 64), radius=8)
    maps = load_parameter_maps("impact_sam2")
    extractor = FeatureExtractor(feature_spec(maps), frames[0], device="cpu")
    assert len(extractor(frames[1])) == 8  # two layers x 4 PCA components
    assert sum(w[0] for w in extractor.weights) == pytest.approx(2.0)
    result = regtrack.track(frames, truth[0], preset="impact_sam2")
    assert result.masks.shape == frames.shape and result.records[1]["source"] == "registration"


def test_two_metrics_put_the_frame_first_with_its_weight(phantom_pair):
    case, _ = phantom_pair
    maps = load_parameter_maps(
        "impact_mind",
        {
            "Metric": ["AdvancedNormalizedCorrelation", "AdvancedMeanSquares"],
            "Metric0Weight": [0.2, 0.6],
            "Metric1Weight": [0.8, 0.4],
        },
    )
    spec = feature_spec(maps)
    assert (spec.image_weight, spec.feature_weight) == ((0.2, 0.6), (0.8, 0.4))
    extractor = FeatureExtractor(spec, case.frames[0])
    channels = extractor(case.frames[3])
    np.testing.assert_array_equal(channels[0], case.frames[3])
    assert extractor.weights[0] == (0.2, 0.6)
    assert extractor.weights[1:] == [pytest.approx((0.2, 0.1))] * 4
    parameter_map = dict(expand_for_channels(maps, extractor.weights).GetParameterMap(0))
    assert (
        parameter_map["Metric"] == ("AdvancedNormalizedCorrelation",) + ("AdvancedMeanSquares",) * 4
    )


@pytest.mark.sam2
def test_impact_sam2_checkpoint_set_in_the_settings_needs_no_environment(
    random_sam21, monkeypatch, translated
):
    monkeypatch.delenv("REGTRACK_SAM2_CHECKPOINT", raising=False)
    frames, truth = translated([(0, 0), (1, 1)], shape=(64, 64), radius=8)
    settings = TrackerSettings(preset="impact_sam2", sam_checkpoint=str(random_sam21[0]))
    results = list(iter_track(frames, truth[0], settings=settings))
    assert results[1].source == "registration" and results[1].feature_ms > 0


def test_native_model_files_are_keyed_by_the_checkpoint_they_came_from(tmp_path, monkeypatch):
    from regtrack import features

    made = []
    monkeypatch.setattr("impact.load_extractor", lambda name, **options: made.append(options))
    monkeypatch.setattr("impact.NativeImpactWrapper", lambda model: model)
    monkeypatch.setattr(
        "impact.export_torchscript", lambda wrapper, path, example_shape: path.write_text("ts")
    )
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"1"), second.write_bytes(b"22")
    one = features._native_model_file("sam2.1_tiny", tmp_path, 29, first)
    two = features._native_model_file("sam2.1_tiny", tmp_path, 29, second)
    assert one != two and one.exists() and two.exists()
    assert features._native_model_file("sam2.1_tiny", tmp_path, 29, first) == one
    assert [m["checkpoint"] for m in made] == [first, second]  # the cached one is not rebuilt
    assert features._native_model_file("mind", tmp_path, 7).name == "mind_native_7.pt"
