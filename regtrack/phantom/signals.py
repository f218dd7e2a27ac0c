"""Smooth random fields and signals, a smooth step and min-max scaling: what both phantom
generators draw their motion and appearance from."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["minmax_scale", "noise_field", "smooth_signal", "smoothstep"]


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """Cubic step from 0 (x <= 0) to 1 (x >= 1)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def noise_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    noise -= noise.mean()
    return noise / max(float(noise.std()), 1e-12)


def smooth_signal(times: np.ndarray, timescale_s: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random signal of time in [-1, 1] varying on about `timescale_s`."""
    freqs = rng.uniform(0.5, 1.5, 4) / timescale_s
    phases = rng.uniform(0.0, 2.0 * np.pi, 4)
    weights = rng.uniform(0.5, 1.0, 4) / np.arange(1, 5)
    waves = np.sin(2.0 * np.pi * freqs[:, None] * times[None, :] + phases[:, None])
    return (weights @ waves) / weights.sum()


def minmax_scale(frame: np.ndarray) -> np.ndarray:
    """One frame min-max scaled to 0..255 and rounded, float32 (constant frames give 0)."""
    frame = np.asarray(frame, dtype=np.float64)
    low, high = float(frame.min()), float(frame.max())
    scaled = (frame - low) * (255.0 / max(high - low, 1e-12))
    return np.round(scaled).astype(np.float32)
