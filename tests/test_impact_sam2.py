"""SAM2.1 Hiera features from a checkpoint in the official layout (random weights).

No SAM2.1 checkpoint can be downloaded here: the fixture instantiates the full SAM2.1-tiny
model from sam2's own config with hydra (random initialisation) and saves its state dict
as ``{"model": state_dict}``, the layout of the official files.
"""

import argparse

import pytest
import torch

from impact import (
    NativeImpactWrapper,
    SAM2HieraFeatures,
    export_torchscript,
    inspect_checkpoint,
    load_extractor,
    read_model_info,
    sam2_hiera,
)

pytest.importorskip("sam2", reason="the sam2 package (extra regtrack[sam2]) is not installed")

pytestmark = [
    pytest.mark.sam2,
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

INPUT_SIZE = 256  # small model input keeps the trunk fast on CPU


@pytest.fixture(scope="module")
def extractor(random_sam21):
    return SAM2HieraFeatures(random_sam21[0], input_size=INPUT_SIZE, device="cpu")


def _frame(height=256, width=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, height, width, generator=generator) * 800.0


def test_feature_shapes_of_first_two_stages(extractor):
    assert extractor.variant == "tiny"
    assert extractor.channels == (96, 192) and extractor.strides == (4, 8)
    for frame in (_frame(), _frame(200, 230)):  # any frame size: resized to input_size
        with torch.no_grad():
            features = extractor(frame)
        assert [tuple(f.shape) for f in features] == [(1, 96, 64, 64), (1, 192, 32, 32)]
    assert len(extractor.stages.blocks) == 3  # stage 1 ends at block 2 of 12


def test_stage_outputs_equal_sam2_trunk(random_sam21):
    path, model = random_sam21
    features = SAM2HieraFeatures(path, layers=(0, 1, 2, 3), input_size=INPUT_SIZE, device="cpu")
    frame = _frame(seed=1)
    with torch.no_grad():
        got = features(frame)
        x = features._prepare(frame).expand(-1, 3, -1, -1)
        x = (x - features.pixel_mean) / features.pixel_std
        expected = model.image_encoder.trunk(x)
    shapes = [(1, 96, 64, 64), (1, 192, 32, 32), (1, 384, 16, 16), (1, 768, 8, 8)]
    assert [tuple(f.shape) for f in got] == shapes
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_variant_inferred_from_weights_without_name(random_sam21, tmp_path):
    link = tmp_path / "weights.pt"
    link.symlink_to(random_sam21[0])
    info = inspect_checkpoint(link)
    assert info.variant == "tiny"
    assert info.official is False and info.sha256 is None  # size differs: not hashed


def test_checkpoint_from_environment_variable(random_sam21, monkeypatch):
    monkeypatch.setenv(sam2_hiera.CHECKPOINT_ENV_VAR, str(random_sam21[0]))
    assert inspect_checkpoint().path == random_sam21[0]


def test_official_file_recognised_by_size_and_sha256(tmp_path, monkeypatch):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    path.write_bytes(b"not really a checkpoint")
    digest = sam2_hiera._sha256(path)
    size = path.stat().st_size
    monkeypatch.setitem(sam2_hiera._OFFICIAL_FILES, "tiny", (size, digest))
    assert sam2_hiera._check_official(path, "tiny").official is True
    monkeypatch.setitem(sam2_hiera._OFFICIAL_FILES, "tiny", (size, "0" * 64))
    info = sam2_hiera._check_official(path, "tiny")
    assert info.official is False and info.sha256 == digest
    assert sam2_hiera._check_official(path, "large").official is None  # no reference hash


def test_missing_checkpoint_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.delenv(sam2_hiera.CHECKPOINT_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="REGTRACK_SAM2_CHECKPOINT") as error:
        SAM2HieraFeatures()
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in str(
        error.value
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SAM2HieraFeatures(tmp_path / "sam2.1_hiera_tiny.pt")


def test_wrong_files_are_rejected(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="could not be read as a PyTorch checkpoint"):
        SAM2HieraFeatures(junk)
    pickled = tmp_path / "pickled.pt"  # weights_only refuses it with pages of advice
    torch.save({"model": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(ValueError, match="could not be read as a PyTorch checkpoint") as caught:
        SAM2HieraFeatures(pickled)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 500
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="not a SAM2.1 checkpoint"):
        SAM2HieraFeatures(other)


def test_sam2_0_like_checkpoint_warns(random_sam21, tmp_path):
    state = random_sam21[1].state_dict()
    trunk_only = {k: v for k, v in state.items() if k.startswith("image_encoder.trunk.")}
    path = tmp_path / "trunk_only.pt"
    torch.save({"model": trunk_only}, path)
    with pytest.warns(RuntimeWarning, match="SAM 2.0"):
        features = SAM2HieraFeatures(path, input_size=INPUT_SIZE, device="cpu")
    assert features.variant == "tiny"


def test_wrong_variant_is_rejected(random_sam21):
    with pytest.raises(ValueError, match="do not fit SAM2.1-small"):
        SAM2HieraFeatures(random_sam21[0], variant="small", input_size=INPUT_SIZE)


def test_bad_settings_are_rejected(random_sam21):
    with pytest.raises(ValueError, match="multiple of 32"):
        SAM2HieraFeatures(random_sam21[0], input_size=300)
    with pytest.raises(ValueError, match="strictly increasing"):
        SAM2HieraFeatures(random_sam21[0], layers=(1, 0))
    with pytest.raises(ValueError, match="pca_components"):
        SAM2HieraFeatures(random_sam21[0], pca_components=500, input_size=INPUT_SIZE)


def test_pca_reduces_each_layer_to_k_channels(random_sam21, tmp_path):
    features = SAM2HieraFeatures(
        random_sam21[0], input_size=INPUT_SIZE, pca_components=3, device="cpu"
    )
    reference = _frame(seed=2)
    with pytest.raises(RuntimeError, match="fit_pca"):
        features(reference)
    features.fit_pca(reference[0, 0].numpy())
    assert features.channels == (3, 3)
    with torch.no_grad():
        reduced = features(reference)
    assert [tuple(f.shape) for f in reduced] == [(1, 3, 64, 64), (1, 3, 32, 32)]
    for layer in reduced:  # centred on the reference, variance in decreasing order
        flat = layer[0].flatten(1)
        torch.testing.assert_close(flat.mean(dim=1), torch.zeros(3), atol=1e-3, rtol=0)
        assert torch.all(flat.var(dim=1)[:-1] >= flat.var(dim=1)[1:])
    path = export_torchscript(features, tmp_path / "sam_pca.pt")
    loaded = torch.jit.load(str(path))
    frame = _frame(seed=3)
    with torch.no_grad():
        for g, e in zip(loaded(frame), features(frame)):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    assert read_model_info(path).channels == (3, 3)


def test_export_round_trip_and_metadata(extractor, tmp_path):
    path = export_torchscript(extractor, tmp_path / "sam.pt")
    loaded = load_extractor(path)
    assert isinstance(loaded, torch.jit.ScriptModule)
    frame = _frame(180, 200, seed=4)  # other size than the example: resize is inside
    with torch.no_grad():
        for g, e in zip(loaded(frame), extractor(frame)):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    info = read_model_info(path)
    assert info.name == "sam2.1_hiera_tiny" and info.interface == "regtrack"
    assert info.channels == (96, 192) and info.strides == (4, 8)
    assert info.input_size == INPUT_SIZE and info.traced_shape == (1, 3, 256, 256)
    assert info.output_shapes == ((1, 96, 64, 64), (1, 192, 32, 32))
    assert info.source["official"] is False
    # a 128 px frame of 2 mm pixels: stage 0 has 128/256*4 = 2 px = 4 mm spacing
    (spacing0, origin0), (spacing1, origin1) = info.layer_geometry((128, 128), (2.0, 2.0))
    assert spacing0 == (4.0, 4.0) and spacing1 == (8.0, 8.0)
    assert origin0 == (-0.5, -0.5) and origin1 == (1.5, 1.5)


def test_native_wrapper_export_for_impact_patches(extractor, tmp_path):
    path = export_torchscript(
        NativeImpactWrapper(extractor), tmp_path / "sam_native.pt", example_shape=(1, 1, 29, 29)
    )
    loaded = torch.jit.load(str(path))
    patches = torch.rand(5, 1, 29, 29).repeat(1, 3, 1, 1) * 500.0
    stats = torch.tensor([0.0, 500.0, 250.0, 100.0])
    with torch.no_grad():
        out = loaded(patches, torch.tensor(2, dtype=torch.int16), stats, torch.eye(2))
        expected = extractor.extract(patches[:, :1] / (500.0 + 1e-6))
    assert [tuple(f.shape) for f in out] == [(5, 96, 8, 8), (5, 192, 4, 4)]
    for g, e in zip(out, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert len(loaded(patches, torch.tensor(1, dtype=torch.int16), stats, torch.eye(2))) == 1
    info = read_model_info(path)
    assert info.interface == "impact-native" and info.input_size is None
    assert info.impact_parameters["ImpactLayersMask"] == "11"
    assert info.traced_shape == (1, 3, 29, 29)


def test_load_extractor_by_name(random_sam21):
    features = load_extractor("sam2.1_tiny", checkpoint=random_sam21[0], input_size=INPUT_SIZE)
    assert isinstance(features, SAM2HieraFeatures) and features.variant == "tiny"
