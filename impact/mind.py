"""2D MIND-SSC descriptors as a TorchScript-ready feature extractor.

MIND (modality independent neighbourhood descriptor, Heinrich et al., Medical Image
Analysis 16(7), 2012) describes each pixel by how similar small patches around it are to
each other; the self-similarity-context variant (MIND-SSC, Heinrich et al., MICCAI 2013)
compares pairs of patches *around* the pixel instead of the central patch with its
neighbours, which makes it robust to noise at the centre.

In 3D, MIND-SSC takes the six face neighbours at distance ``dilation`` and keeps the 12
pairs of them that are ``sqrt(2) * dilation`` apart (the pairs through the centre are
dropped). The 2D analogue used here takes the four neighbours left, up, right and down
at distance ``dilation`` and keeps the 4 pairs of perpendicular neighbours (up-left,
up-right, down-left, down-right); the 2 pairs of opposite neighbours are dropped, as in
3D. So 2D MIND-SSC has **4 channels**. This is the pattern and the channel order of the
2D MIND models published for the elastix IMPACT metric (``MIND/R{r}D{d}_2D.pt``, used
there with ``ImpactSubsetFeatures 4``), so features are interchangeable with them.
"""

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIND", "MIND_PAIRS"]

logger = logging.getLogger(__name__)

#: Neighbour pairs, as (row, col) offsets in units of ``dilation``, one per channel.
MIND_PAIRS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((-1, 0), (0, -1)),  # up - left
    ((0, 1), (-1, 0)),  # right - up
    ((1, 0), (0, -1)),  # down - left
    ((1, 0), (0, 1)),  # down - right
)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    """Return a normalised 1D Gaussian of ``sigma`` pixels, truncated at 3 sigma (length 1 at 0)."""
    half = int(3.0 * sigma + 0.5) if sigma > 0 else 0
    taps = torch.arange(-half, half + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2) if sigma > 0 else torch.ones(1)
    return weights / weights.sum()


def _pair_kernels() -> torch.Tensor:
    """Return the (4, 1, 3, 3) kernels giving I(x + a) - I(x + b) for each pair."""
    weight = torch.zeros(len(MIND_PAIRS), 1, 3, 3)
    for channel, ((ay, ax), (by, bx)) in enumerate(MIND_PAIRS):
        weight[channel, 0, 1 + ay, 1 + ax] += 1.0
        weight[channel, 0, 1 + by, 1 + bx] -= 1.0
    return weight


class MIND(nn.Module):
    """2D MIND-SSC descriptor maps of an image.

    For each pixel x and each neighbour pair (a, b) of :data:`MIND_PAIRS`, the patch
    distance is ``D(x) = mean over the (2r+1)^2 box of (I(. + a d) - I(. + b d))^2``,
    a box filter of squared differences. ``D`` is shifted so that its smallest channel
    is 0, the variance estimate ``V(x)`` is the mean of the shifted distances over the
    channels, clamped to ``[variance_floor, 1e3]`` times its mean over the image, and the
    descriptor is ``exp(-D / V)``, in (0, 1]. Borders use replicate padding, so the
    output has the size of the input.

    The image is first min-max scaled to [0, 1] per sample; MIND does not depend on an
    affine change of intensity, the scaling only keeps the tiny constant that makes a
    flat image finite (its descriptor is all ones) a relative one.

    The module is :func:`torch.jit.script`-able, runs on any device (the input is moved
    to the module's device) and computes in float32 whatever the module's dtype.

    Parameters
    ----------
    radius : int, optional
        Half-width r of the box filter over squared differences, in pixels (>= 0).
    dilation : int, optional
        Distance d from the centre to each of the four neighbours, in pixels (>= 1).
    sigma : float, optional
        Gaussian pre-smoothing of the image, in pixels (0: none, classic MIND-SSC).
        Cine-MRI noise otherwise dominates the patch distances: on the phantom's low-SNR
        and faint-tumour cases, sigma 1 cut the tracking centre error by 25-30 %.
    variance_floor : float, optional
        Smallest ``V(x)``, as a fraction of its mean over the image (> 0). Classic MIND
        uses 1e-3, which turns the noise of flat regions (lung, liver parenchyma) into
        full-range descriptor noise; at 1 a flat region stays near 1 in every frame and
        only structure at least as strong as the image's typical structure is normalised
        locally. On eight phantom cases it cut the centre error of MIND-only registration
        from 0.35 to 0.21 mm (appearance cases) and 0.73 to 0.51 mm (severe cases).

    Attributes
    ----------
    out_channels : int
        Number of descriptor channels, 4.
    strides : tuple of int
        Downsampling of each output layer with respect to the input, ``(1,)``.

    Examples
    --------
    >>> import torch
    >>> from impact import MIND
    >>> feats = MIND()(torch.rand(1, 1, 64, 64))
    >>> [tuple(f.shape) for f in feats]
    [(1, 4, 64, 64)]
    """

    out_channels: int
    radius: int
    dilation: int
    variance_floor: float

    def __init__(
        self, radius: int = 1, dilation: int = 2, sigma: float = 1.0, variance_floor: float = 1.0
    ) -> None:
        super().__init__()
        if not sigma >= 0:
            raise ValueError(f"MIND() 'sigma' must be >= 0 pixels, got {sigma!r}")
        if not 0 < variance_floor <= 1e3:
            raise ValueError(
                f"MIND() 'variance_floor' must be in (0, 1000] (1e-3: classic MIND), "
                f"got {variance_floor!r}"
            )
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"MIND() 'radius' must be an integer >= 0, got {radius!r}")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"MIND() 'dilation' must be an integer >= 1, got {dilation!r}")
        self.radius = radius
        self.dilation = dilation
        self.sigma = float(sigma)
        self.variance_floor = float(variance_floor)
        self.out_channels = len(MIND_PAIRS)
        self.strides = (1,)
        self.register_buffer("pair_kernels", _pair_kernels())
        self.register_buffer("smoothing", _gaussian_kernel(self.sigma))

    def extra_repr(self) -> str:
        return (
            f"radius={self.radius}, dilation={self.dilation}, sigma={self.sigma}, "
            f"variance_floor={self.variance_floor}"
        )

    def describe(self) -> dict[str, Any]:
        """Return what the exported model metadata records about this extractor."""
        return {
            "name": (
                f"mind_ssc_2d_r{self.radius}_d{self.dilation}_s{self.sigma:g}"
                f"_v{self.variance_floor:g}"
            ),
            "strides": [1],
            "offsets": [0.0],
            "input_size": None,
            "resize": None,
            "normalisation": None,  # MIND is invariant to affine intensity changes
            "source": {
                "radius": self.radius,
                "dilation": self.dilation,
                "sigma": self.sigma,
                "variance_floor": self.variance_floor,
                "pairs": "up-left, right-up, down-left, down-right (neighbours at dilation)",
            },
        }

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the descriptors of a batch of grey images.

        Parameters
        ----------
        x : Tensor, shape (N, 1, H, W), float
            Images in any intensity range; normally N = 1.

        Returns
        -------
        list of Tensor
            One tensor, shape (N, 4, H, W), values in (0, 1], on the module's device.
        """
        if x.dim() != 4 or x.size(1) != 1:
            raise ValueError("MIND() input must have shape (N, 1, H, W), got " + str(list(x.shape)))
        x = x.to(device=self.pair_kernels.device, dtype=torch.float32)
        low = torch.amin(x, dim=[1, 2, 3], keepdim=True)
        high = torch.amax(x, dim=[1, 2, 3], keepdim=True)
        return self.extract((x - low) / (high - low + 1e-6))

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the descriptors of images already scaled to [0, 1].

        Parameters
        ----------
        x : Tensor, shape (N, 1, H, W)
            Images scaled to [0, 1], on the module's device.

        Returns
        -------
        list of Tensor
            One tensor, shape (N, 4, H, W), in the dtype of ``x``.
        """
        dtype = x.dtype
        x = x.to(torch.float32)
        d = self.dilation
        r = self.radius
        x = self._smooth(x)
        padded = F.pad(x, [d, d, d, d], mode="replicate")
        diff = F.conv2d(padded, self.pair_kernels.to(torch.float32), dilation=d)
        sq = diff * diff
        if r > 0:
            sq = F.avg_pool2d(F.pad(sq, [r, r, r, r], mode="replicate"), 2 * r + 1, stride=1)
        dist = sq - torch.amin(sq, dim=1, keepdim=True)
        var = torch.mean(dist, dim=1, keepdim=True)
        var_mean = torch.mean(var, dim=[1, 2, 3], keepdim=True)
        var = torch.minimum(torch.maximum(var, var_mean * self.variance_floor), var_mean * 1e3)
        var = var + 1e-9  # a flat image: D = 0, V = 0, exp(-0) = 1
        return [torch.exp(-dist / var).to(dtype)]

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian pre-smoothing (replicate borders); identity for sigma 0."""
        half = self.smoothing.numel() // 2
        if half == 0:
            return x
        kernel = self.smoothing.to(torch.float32)
        x = F.conv2d(F.pad(x, [half, half, 0, 0], mode="replicate"), kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, [0, 0, half, half], mode="replicate"), kernel.view(1, 1, -1, 1))
