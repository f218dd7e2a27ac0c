"""MIND-SSC descriptors, their TorchScript export and the native IMPACT wrapper."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from impact import (
    MIND,
    ImpactModelInfo,
    NativeImpactWrapper,
    export_torchscript,
    info_path,
    load_extractor,
    read_model_info,
)
from impact.mind import MIND_PAIRS

# TorchScript is what the elastix IMPACT metric loads; torch 2.13 flags it as deprecated.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


def _texture(height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """Smooth random texture, shape (1, 1, H, W), values about 0-1000."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, height + 4, width + 4, generator=generator)
    return F.avg_pool2d(noise, 5, stride=1) * 1000.0


def _mind_reference(image: np.ndarray, radius: int, dilation: int, floor: float) -> np.ndarray:
    """MIND-SSC by explicit loops: shape (4, H, W), from the formula in the docstring."""
    img = (image - image.min()) / (image.max() - image.min() + 1e-6)
    height, width = img.shape
    padded = np.pad(img, dilation, mode="edge")
    dist = np.zeros((len(MIND_PAIRS), height, width))
    for channel, ((ay, ax), (by, bx)) in enumerate(MIND_PAIRS):
        a = padded[dilation + ay * dilation :][:height, dilation + ax * dilation :][:, :width]
        b = padded[dilation + by * dilation :][:height, dilation + bx * dilation :][:, :width]
        sq = np.pad((a - b) ** 2, radius, mode="edge")
        for y in range(height):
            for x in range(width):
                dist[channel, y, x] = sq[y : y + 2 * radius + 1, x : x + 2 * radius + 1].mean()
    dist -= dist.min(axis=0)
    var = dist.mean(axis=0)
    var = np.clip(var, var.mean() * floor, var.mean() * 1e3) + 1e-9
    return np.exp(-dist / var)


def test_output_is_one_layer_of_four_channels_at_input_size():
    features = MIND()(_texture(48, 64))
    assert isinstance(features, list) and len(features) == 1
    assert features[0].shape == (1, 4, 48, 64)
    assert MIND().out_channels == 4


@pytest.mark.parametrize(
    ("radius", "dilation", "floor"), [(1, 2, 1.0), (2, 1, 1e-3), (0, 3, 1e-3), (1, 2, 0.3)]
)
def test_matches_hand_computed_descriptor(radius, dilation, floor):
    image = _texture(14, 17, seed=3)
    mind = MIND(radius=radius, dilation=dilation, sigma=0.0, variance_floor=floor)
    got = mind(image)[0][0].double().numpy()
    expected = _mind_reference(image[0, 0].double().numpy(), radius, dilation, floor)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_values_in_unit_interval_with_a_one_per_pixel():
    features = MIND()(_texture(40, 40))[0]
    assert torch.all(features > 0) and torch.all(features <= 1)
    # the channel with the smallest patch distance is exp(-0) = 1 at every pixel
    torch.testing.assert_close(features.amax(dim=1), torch.ones(1, 40, 40))


@pytest.mark.parametrize(
    ("shift", "floor", "tolerance"),
    # the floor is a fraction of V's mean over the image, which a shift changes slightly
    [((3, -2), 1e-3, 1e-4), ((0, 5), 1e-3, 1e-4), ((-4, 0), 1e-3, 1e-4), ((3, -2), 1.0, 0.03)],
)
def test_shifted_image_gives_shifted_descriptors(shift, floor, tolerance):
    big = _texture(140, 140, seed=1)
    dy, dx = shift
    size, start = 96, 20
    crop = big[:, :, start : start + size, start : start + size]
    moved = big[:, :, start + dy : start + dy + size, start + dx : start + dx + size]
    mind = MIND(radius=1, dilation=2, variance_floor=floor)
    a, b = mind(crop)[0], mind(moved)[0]
    # moved[y, x] = crop[y + dy, x + dx], so away from the borders (smoothing half-width +
    # dilation + radius + shift) MIND(moved)[y, x] = MIND(crop)[y + dy, x + dx]
    margin = 3 + 2 + 1 + 5
    inner = slice(margin, size - margin)
    rows = slice(margin + dy, size - margin + dy)
    cols = slice(margin + dx, size - margin + dx)
    torch.testing.assert_close(
        b[..., inner, inner], a[..., rows, cols], atol=tolerance, rtol=tolerance
    )


def test_invariant_to_affine_intensity_change():
    image = _texture(32, 32, seed=2)
    mind = MIND()
    torch.testing.assert_close(mind(image)[0], mind(3.0 * image - 70.0)[0], atol=1e-5, rtol=1e-5)


def test_constant_image_gives_finite_ones():
    features = MIND()(torch.full((1, 1, 16, 16), 7.0))[0]
    assert torch.all(torch.isfinite(features))
    torch.testing.assert_close(features, torch.ones_like(features))


def test_rejects_bad_input_and_settings():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        MIND()(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="radius"):
        MIND(radius=-1)
    with pytest.raises(ValueError, match="dilation"):
        MIND(dilation=0)
    with pytest.raises(ValueError, match="variance_floor"):
        MIND(variance_floor=0.0)


def test_torchscript_script_matches_eager():
    mind = MIND(radius=2, dilation=1)
    scripted = torch.jit.script(mind)
    image = _texture(50, 30)
    torch.testing.assert_close(scripted(image)[0], mind(image)[0], atol=0, rtol=0)


def test_export_round_trip_and_metadata(tmp_path):
    mind = MIND()
    path = export_torchscript(mind, tmp_path / "models" / "mind.pt", example_shape=(1, 1, 64, 64))
    loaded = torch.jit.load(str(path))
    image = _texture(72, 80)
    torch.testing.assert_close(loaded(image)[0], mind(image)[0], atol=1e-6, rtol=1e-6)
    info = read_model_info(path)
    assert info_path(path).name == "mind.pt.json"
    assert info.interface == "regtrack"
    assert info.channels == (4,) and info.strides == (1,) and info.input_size is None
    assert info.output_shapes == ((1, 4, 64, 64),)
    assert ImpactModelInfo.read(info_path(path)) == info
    # stride 1, no resize: feature grid is the image grid
    assert info.layer_geometry((72, 80), (1.5, 2.0), (10.0, -5.0)) == [((1.5, 2.0), (10.0, -5.0))]


def test_native_wrapper_follows_impact_call_convention(tmp_path):
    mind = MIND()
    path = export_torchscript(
        NativeImpactWrapper(mind), tmp_path / "mind_native.pt", example_shape=(1, 1, 29, 29)
    )
    loaded = torch.jit.load(str(path))
    patches = _texture(29, 29).repeat(6, 3, 1, 1)  # IMPACT: N patches, C copied channels
    nb_layers = torch.tensor(1, dtype=torch.int16)
    stats = torch.tensor([-100.0, 1100.0, 500.0, 200.0])  # whole-image min, max, mean, std
    direction = torch.eye(2, dtype=torch.int16)
    out = loaded(patches, nb_layers, stats, direction)
    expected = mind.extract((patches[:, :1] + 100.0) / (1200.0 + 1e-6))
    assert len(out) == 1 and out[0].shape == (6, 4, 29, 29)
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)
    info = read_model_info(path)
    assert info.interface == "impact-native"
    assert info.impact_parameters["ImpactLayersMask"] == "1"
    assert "stats" in info.normalisation


def test_native_wrapper_is_differentiable_for_jacobian_mode():
    wrapper = torch.jit.script(NativeImpactWrapper(MIND()))
    patches = _texture(29, 29).repeat(4, 1, 1, 1).requires_grad_(True)
    out = wrapper(patches, None, torch.tensor([0.0, 1000.0, 500.0, 100.0]))
    out[0][:, :, 14, 14].sum().backward()  # IMPACT uses the patch centre
    assert torch.all(torch.isfinite(patches.grad)) and patches.grad.abs().sum() > 0


def test_native_wrapper_works_in_float16_as_with_mixed_precision():
    wrapper = torch.jit.script(NativeImpactWrapper(MIND())).half()
    out = wrapper(_texture(29, 29).half(), None, torch.tensor([0.0, 1000.0, 0.0, 0.0]))
    assert out[0].dtype == torch.float16 and torch.all(torch.isfinite(out[0]))


def test_load_extractor_by_name_and_file(tmp_path):
    assert isinstance(load_extractor("mind", radius=2), MIND)
    path = export_torchscript(MIND(), tmp_path / "mind.pt", example_shape=(1, 1, 32, 32))
    loaded = load_extractor(path)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert loaded(_texture(20, 20))[0].shape == (1, 4, 20, 20)
    with pytest.raises(ValueError, match="unknown extractor 'minds'"):
        load_extractor("minds")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_extractor(tmp_path / "missing.pt")


def test_export_rejects_bad_example_shape(tmp_path):
    with pytest.raises(ValueError, match="example_shape"):
        export_torchscript(MIND(), tmp_path / "m.pt", example_shape=(1, 3, 32, 32))


def test_sigma_smooths_the_image_first():
    """MIND(sigma) equals classic MIND of the Gaussian-smoothed image (away from borders)."""
    from scipy import ndimage

    image = _texture(48, 48)
    smoothed = ndimage.gaussian_filter(image[0, 0].double().numpy(), 1.0, truncate=3.0)
    smoothed_image = torch.from_numpy(smoothed).float()[None, None]
    # Min-max scaling inside MIND differs between the two inputs; MIND does not care.
    # The variance floor (a fraction of an image-wide mean) would see the borders too.
    got = MIND(sigma=1.0, variance_floor=1e-3)(image)[0][..., 8:-8, 8:-8]
    classic = MIND(sigma=0.0, variance_floor=1e-3)
    expected = classic(smoothed_image)[0][..., 8:-8, 8:-8]
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)
    assert not torch.allclose(got, classic(image)[0][..., 8:-8, 8:-8], atol=1e-2)
    with pytest.raises(ValueError, match="sigma"):
        MIND(sigma=-1.0)


def test_variance_floor_keeps_noise_in_flat_regions_from_the_descriptor():
    """Two noise draws of the same edge image: with the floor the flat half's descriptors
    agree far better between the draws, and the edge is described as before."""
    generator = torch.Generator().manual_seed(4)
    clean = torch.zeros(1, 1, 64, 64)
    clean[..., 32:] = 1000.0  # a flat dark half and a flat bright half, one strong edge
    draws = [clean + 20.0 * torch.randn(clean.shape, generator=generator) for _ in range(2)]
    flat = (..., slice(8, 56), slice(4, 24))
    edge = (..., slice(8, 56), slice(30, 34))
    errors = {}
    for floor in (1e-3, 1.0):
        mind = MIND(variance_floor=floor)
        a, b = (mind(d)[0] for d in draws)
        errors[floor] = (a - b)[flat].abs().mean().item(), (a - b)[edge].abs().mean().item()
    assert errors[1.0][0] < 0.25 * errors[1e-3][0]
    assert errors[1.0][1] < 0.05
