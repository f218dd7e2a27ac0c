"""Shared fixtures: sequences with exactly known motion, small enough for fast tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def textured_canvas(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth random texture with structure at several scales (registrable everywhere)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size, size))
    canvas = sum(ndimage.gaussian_filter(noise, s) * s for s in (2, 4, 8))
    return (canvas - canvas.min()).astype(np.float32) * 100


def disk(shape, centre, radius) -> np.ndarray:
    rows, cols = np.indices(shape)
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def translated_sequence(shifts, *, shape=(96, 96), radius=10, seed=0):
    """Frames cut from one canvas at integer shifts (row, col), intensities rescaled per frame,
    and the exact masks: content (and target) at frame t sit at x + shift_t."""
    canvas = textured_canvas(256, seed)
    centre = np.array(shape) // 2
    top = (256 - np.array(shape)) // 2
    frames, masks = [], []
    for t, (dr, dc) in enumerate(shifts):
        r0, c0 = top[0] - dr, top[1] - dc
        gain, offset = 1.0 + 0.3 * np.sin(t), 20.0 * np.cos(t)
        frames.append(canvas[r0 : r0 + shape[0], c0 : c0 + shape[1]] * gain + offset)
        masks.append(disk(shape, centre + (dr, dc), radius))
    return np.stack(frames).astype(np.float32), np.stack(masks).astype(np.uint8)


@pytest.fixture(scope="session")
def jump_sequence():
    """Target jumps 20 px within 4 frames and stays there, plus small breathing."""
    shifts = [(0, 0), (3, 1), (8, 2), (14, 3), (20, 4), (21, 3), (19, 4), (20, 2)]
    return translated_sequence(shifts)


@pytest.fixture(scope="session")
def translated():
    """The :func:`translated_sequence` factory."""
    return translated_sequence


@pytest.fixture(scope="session")
def random_sam21(tmp_path_factory):
    """(checkpoint path, model): SAM2.1-tiny with random weights, saved as the official files
    are (``{"model": state_dict}``). No real checkpoint can be downloaded here; nothing
    scored with it says anything about accuracy."""
    pytest.importorskip("sam2", reason="the sam2 package (extra regtrack[sam2]) is not installed")
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "random_sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, model
