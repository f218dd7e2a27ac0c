"""The OpenCV MIND-SSC of the tracking path (regtrack.mind) against impact.MIND, its reference."""

import numpy as np
import pytest

from regtrack.mind import MIND_PAIRS, mind_descriptors


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A cine-MRI-like test image: smooth blobs, an edge and noise, grey values 0-1000."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = 400 + 300 * np.sin(rows / 7.0) * np.cos(cols / 11.0)
    image += 250 * (cols > width // 2) + rng.normal(0, 30, (height, width))
    return image.astype(np.float32)


def _torch_mind(image: np.ndarray, **settings) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from impact import MIND

    with torch.inference_mode():
        return MIND(**settings)(torch.from_numpy(image)[None, None])[0][0].numpy()


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the defaults the impact_mind preset uses
        {"radius": 2, "dilation": 3, "sigma": 0.0, "variance_floor": 1e-3},
        {"sigma": 1.5},
    ],
)
def test_agrees_with_the_torch_extractor_to_1e5(settings):
    # Both compute in float32; with variance floors far below 1 (not regtrack's) the two
    # filters' rounding, amplified by exp(-D / V), reaches a few 1e-5.
    image = _texture(70, 90)
    ours = mind_descriptors(image, **settings)
    assert ours.shape == (len(MIND_PAIRS), 70, 90) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _torch_mind(image, **settings), rtol=0, atol=1e-5)


def test_is_invariant_to_an_affine_change_of_grey_values():
    image = _texture(40, 50, seed=1)
    np.testing.assert_allclose(
        mind_descriptors(image), mind_descriptors(3.0 * image + 50.0), rtol=0, atol=1e-5
    )


def test_a_flat_image_describes_as_all_ones():
    assert np.array_equal(mind_descriptors(np.full((12, 9), 7.0)), np.ones((4, 12, 9), np.float32))


def test_channels_follow_the_documented_pairs():
    # One bright pixel: channel "down - right" compares I(x + (d, 0)) and I(x + (0, d)), so it
    # differs from the others only where those two neighbours differ.
    image = np.zeros((21, 21), np.float32)
    image[10, 10] = 1.0
    features = mind_descriptors(image, radius=0, dilation=2, sigma=0.0)
    down_right = MIND_PAIRS.index(((1, 0), (0, 1)))
    # Pixel (8, 10): its down neighbour is the bright one, its right one is dark.
    assert features[down_right, 8, 10] < 1.0
    # Pixel (12, 10): its down (14, 10) and right (12, 12) neighbours are both dark, so that
    # pair's distance is the smallest and its descriptor 1; up (10, 10) is the bright one.
    up_left = MIND_PAIRS.index(((-1, 0), (0, -1)))
    assert features[down_right, 12, 10] == 1.0 > features[up_left, 12, 10]


def test_refuses_a_stack():
    with pytest.raises(ValueError, match=r"one \(H, W\) image"):
        mind_descriptors(np.zeros((2, 8, 8)))
