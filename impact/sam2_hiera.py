"""SAM2.1 Hiera image-encoder features, built from an official SAM2.1 checkpoint.

The trunk of the SAM2.1 image encoder (a Hiera vision transformer) is built by hydra from
the config files shipped inside the ``sam2`` package (``configs/sam2.1/sam2.1_hiera_*.yaml``,
key ``model.image_encoder.trunk``) and loaded, strictly, from the ``image_encoder.trunk.*``
weights of the checkpoint's ``"model"`` dict. Only the blocks up to the last selected
stage are kept: the first two stage ends of SAM2.1-tiny need 3 of its 12 blocks.

Stage outputs at a model input of side ``s`` (``input_size``), for SAM2.1-tiny:

=====  =======  ======  ================
stage  channels stride  shape at s=1024
=====  =======  ======  ================
0      96       4       (1, 96, 256, 256)
1      192      8       (1, 192, 128, 128)
2      384      16      (1, 384, 64, 64)
3      768      32      (1, 768, 32, 32)
=====  =======  ======  ================

Small has the same channels; base-plus 112/224/448/896; large 144/288/576/1152.

``input_size`` trades fidelity for time. 1024 is SAM2's own input: the features are the
ones it was trained to produce, and a 256x256 cine frame gets one stage-0 vector per
pixel; the cost grows with the number of tokens (the square of the side) and faster in
the globally attending blocks. Measured for SAM2.1-tiny (random weights, torch 2.13 CPU,
2 threads, shared machine, best of several runs) per 256x256 frame:

==========  ==============  ====================
input_size  layers (0, 1)   all four stages
==========  ==============  ====================
256         26 ms           109 ms
512         122 ms          403 ms
1024        636 ms          2065 ms
==========  ==============  ====================

So on a CPU the first two stages at 256-512 fit a real-time frame budget, 1024 does not;
on a GPU 1024 is the natural choice.

The Hiera trunk of sam2 1.1.0 cannot be compiled by :func:`torch.jit.script` (its
attention tests an optional module, ``if self.q_pool:``). :func:`impact.export_torchscript`
therefore traces the trunk with :func:`torch.jit.trace` at the size it sees (``input_size``
for this module, the patch size for :class:`impact.NativeImpactWrapper`) and scripts the
rest around it; see :meth:`SAM2HieraFeatures.scripting_context`.
"""

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_ENV_VAR",
    "OFFICIAL_URL",
    "VARIANTS",
    "SAM2HieraFeatures",
    "Sam2CheckpointInfo",
    "inspect_checkpoint",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_ENV_VAR = "REGTRACK_SAM2_CHECKPOINT"
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_TRUNK_PREFIX = "image_encoder.trunk."
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Variant:
    config: str  # sam2 package resource
    filename: str  # official file name
    embed_dim: int
    num_blocks: int


#: The four SAM2.1 sizes: sam2 config resource, official file, trunk width and depth.
VARIANTS: dict[str, _Variant] = {
    "tiny": _Variant("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", 96, 12),
    "small": _Variant("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", 96, 16),
    "base_plus": _Variant(
        "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", 112, 24
    ),
    "large": _Variant("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", 144, 48),
}

# Official files whose size and sha256 are known here: (bytes, sha256).
_OFFICIAL_FILES: dict[str, tuple[int, str]] = {
    "tiny": (156_008_466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
}

# Tokens of a file name that name a variant, most specific first.
_NAME_TOKENS = (
    ("base_plus", "base_plus"),
    ("b+", "base_plus"),
    ("tiny", "tiny"),
    ("small", "small"),
    ("large", "large"),
    ("hiera_t.", "tiny"),
    ("hiera_s.", "small"),
    ("hiera_l.", "large"),
)


def _official_list() -> str:
    return ", ".join(OFFICIAL_URL + v.filename for v in VARIANTS.values())


@dataclass(frozen=True)
class Sam2CheckpointInfo:
    """What a SAM2.1 checkpoint file is.

    Attributes
    ----------
    path : Path
        The file.
    variant : str
        ``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"``, from the trunk weights.
    size_bytes : int
        File size.
    official : bool or None
        True when size and sha256 match the official file of ``variant``, False when
        they do not, None when no reference hash is recorded for ``variant``.
    sha256 : str or None
        The file's sha256, computed only when its size matches the official file.
    """

    path: Path
    variant: str
    size_bytes: int
    official: bool | None
    sha256: str | None


def _resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """Return the checkpoint path from the argument or the environment variable."""
    source = "checkpoint="
    if checkpoint is None:
        checkpoint = os.environ.get(CHECKPOINT_ENV_VAR) or None
        source = f"${CHECKPOINT_ENV_VAR}="
    if checkpoint is None:
        raise ValueError(
            f"no SAM2.1 checkpoint given: pass checkpoint=... or set {CHECKPOINT_ENV_VAR}; "
            f"official files: {_official_list()}"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM2.1 checkpoint {source}{str(checkpoint)!r} does not exist or is not a file; "
            f"download one of the official files ({_official_list()}) and pass its path"
        )
    return path


def _read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """Return the checkpoint's ``"model"`` dict, refusing files that are not SAM2.1's."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint"
        reason = (str(exc).strip().splitlines() or [""])[0]  # torch appends pages of advice
        raise ValueError(
            f"{str(path)!r} could not be read as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{reason}); expected an official SAM2.1 file such as {VARIANTS['tiny'].filename} "
            f"({OFFICIAL_URL})"
        ) from exc
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or not any(k.startswith(_TRUNK_PREFIX) for k in model):
        raise ValueError(
            f"{str(path)!r} is not a SAM2.1 checkpoint: it has no 'model' dict with "
            f"'{_TRUNK_PREFIX}*' weights; pass an official SAM2.1 file ({_official_list()})"
        )
    return model


def _trunk_of(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk weights of a ``"model"`` dict, prefix removed."""
    n = len(_TRUNK_PREFIX)
    return {k[n:]: v for k, v in model.items() if k.startswith(_TRUNK_PREFIX)}


def _read_trunk_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Return the trunk weights (prefix removed) and whether the file looks like SAM2.1."""
    model = _read_model_state(path)
    return _trunk_of(model), "no_obj_embed_spatial" in model


def _variant_from_weights(state: dict[str, torch.Tensor]) -> str | None:
    """Return the variant whose trunk width and depth match the weights, or None."""
    embed = state.get("pos_embed")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if embed is None or not blocks:
        return None
    for name, variant in VARIANTS.items():
        if embed.shape[1] == variant.embed_dim and max(blocks) + 1 == variant.num_blocks:
            return name
    return None


def _variant_from_name(path: Path) -> str | None:
    """Return the variant named by the file name, or None."""
    name = path.name.lower()
    return next((variant for token, variant in _NAME_TOKENS if token in name), None)


def _resolve_variant(state: dict[str, torch.Tensor], path: Path, variant: str | None) -> str:
    """Pick the variant: the argument, else the weights, else the file name."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not a SAM2.1 size; use one of {list(VARIANTS)}")
    by_weights = _variant_from_weights(state)
    by_name = _variant_from_name(path)
    chosen = variant or by_weights or by_name
    if chosen is None:
        raise ValueError(
            f"cannot tell which SAM2.1 size {str(path)!r} holds (trunk width/depth match none "
            f"of {list(VARIANTS)}); pass variant=... or use an official file ({_official_list()})"
        )
    if by_name is not None and by_name != chosen:
        logger.warning("file name %s suggests SAM2.1-%s, using %s", path.name, by_name, chosen)
    return chosen


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_official(path: Path, variant: str) -> Sam2CheckpointInfo:
    """Compare the file with the official one; hash it only when the size matches."""
    size = path.stat().st_size
    reference = _OFFICIAL_FILES.get(variant)
    official, sha = None, None
    if reference is not None and size == reference[0]:
        sha = _sha256(path)
        official = sha == reference[1]
    elif reference is not None:
        official = False
    name = VARIANTS[variant].filename
    if official:
        logger.info("%s is the official %s (sha256 %s)", path, name, sha)
    elif sha is not None:
        logger.warning("%s has the size of the official %s but sha256 %s", path, name, sha)
    elif official is False:
        logger.info("%s is not the official %s (%d bytes, not %d)", path, name, size, reference[0])
    else:
        logger.info("%s: no reference hash recorded for %s, not checked", path, name)
    return Sam2CheckpointInfo(path, variant, size, official, sha)


def inspect_checkpoint(
    checkpoint: str | os.PathLike | None = None, *, variant: str | None = None
) -> Sam2CheckpointInfo:
    """Tell which SAM2.1 checkpoint a file is, without building a model.

    Parameters
    ----------
    checkpoint : str or path-like, optional
        The checkpoint; default: the ``REGTRACK_SAM2_CHECKPOINT`` environment variable.
    variant : str, optional
        Force the size instead of inferring it from the weights.

    Returns
    -------
    Sam2CheckpointInfo

    Raises
    ------
    ValueError
        No checkpoint given, or the file is not a readable SAM2.1 checkpoint.
    FileNotFoundError
        The file does not exist.
    """
    return read_checkpoint(checkpoint, variant=variant)[0]


def read_checkpoint(
    checkpoint: str | os.PathLike | None = None, *, variant: str | None = None
) -> tuple[Sam2CheckpointInfo, dict[str, torch.Tensor]]:
    """Find, read and identify a SAM2.1 checkpoint, reading the file once.

    For code that needs the whole model (e.g. the SAM2.1 video tracker of
    ``regtrack.sam``), not only the trunk :class:`SAM2HieraFeatures` keeps.

    Parameters
    ----------
    checkpoint : str or path-like, optional
        The checkpoint; default: the ``REGTRACK_SAM2_CHECKPOINT`` environment variable.
    variant : str, optional
        Force the size instead of inferring it from the weights.

    Returns
    -------
    info : Sam2CheckpointInfo
        As :func:`inspect_checkpoint` returns it.
    state : dict of str to Tensor
        The checkpoint's ``"model"`` dict (all weights, on the CPU).

    Raises
    ------
    ValueError
        No checkpoint given, or the file is not a readable SAM2.1 checkpoint.
    FileNotFoundError
        The file does not exist.
    """
    path = _resolve_checkpoint(checkpoint)
    state = _read_model_state(path)
    info = _check_official(path, _resolve_variant(_trunk_of(state), path, variant))
    return info, state


def _build_trunk(variant: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate the Hiera trunk from sam2's config with hydra and load it strictly."""
    from importlib.resources import files

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = files("sam2").joinpath(VARIANTS[variant].config)
    cfg = OmegaConf.load(str(config))
    trunk = instantiate(cfg.model.image_encoder.trunk)
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"the checkpoint's trunk weights do not fit SAM2.1-{variant} ({exc}); pass the "
            f"right variant=... or an official SAM2.1 file ({_official_list()})"
        ) from exc
    return trunk.eval()


def _load_trunk(
    checkpoint: str | os.PathLike | None, variant: str | None
) -> tuple[nn.Module, Sam2CheckpointInfo]:
    """Find, check and load the trunk of a SAM2.1 checkpoint."""
    path = _resolve_checkpoint(checkpoint)
    state, looks_sam21 = _read_trunk_state(path)
    variant = _resolve_variant(state, path, variant)
    if not looks_sam21:
        warnings.warn(
            f"{path.name} has no SAM2.1-only weights ('no_obj_embed_spatial'): it may be a "
            "SAM 2.0 checkpoint; its trunk loads but its features are not SAM2.1's",
            RuntimeWarning,
            stacklevel=3,
        )
    info = _check_official(path, variant)
    return _build_trunk(variant, state), info


class _HieraStages(nn.Module):
    """The blocks of a Hiera trunk up to its last selected stage end.

    Runs exactly as ``Hiera.forward`` of sam2 1.1.0 (patch embedding, windowed position
    embedding, blocks) but stops after the last wanted stage and returns only those.
    """

    def __init__(self, trunk: nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        ends = [trunk.stage_ends[k] for k in layers]
        self.patch_embed = trunk.patch_embed
        self.pos_embed = trunk.pos_embed
        self.pos_embed_window = trunk.pos_embed_window
        self.blocks = nn.ModuleList(list(trunk.blocks)[: max(ends) + 1])
        self.output_blocks = ends

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # (N, h, w, C)
        pos = F.interpolate(self.pos_embed, size=(x.shape[1], x.shape[2]), mode="bicubic")
        reps = [a // b for a, b in zip(pos.shape, self.pos_embed_window.shape)]
        x = x + (pos + self.pos_embed_window.tile(reps)).permute(0, 2, 3, 1)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.output_blocks:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class _PCAProjection(nn.Module):
    """Project (N, C, h, w) features on k principal axes: a 1x1 convolution."""

    def __init__(self, channels: int, components: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(components, channels, 1, 1))
        self.register_buffer("bias", torch.zeros(components))

    def fit(self, features: torch.Tensor) -> None:
        """Fit the axes on (1, C, h, w) features: top-k eigenvectors of their covariance."""
        k = self.weight.shape[0]
        flat = features.detach().flatten(2)[0].double()  # (C, h*w)
        mean = flat.mean(dim=1, keepdim=True)
        centred = flat - mean
        cov = centred @ centred.T / max(flat.shape[1] - 1, 1)
        _, vectors = torch.linalg.eigh(cov)
        axes = vectors[:, -k:].flip(1).T  # (k, C), largest variance first
        signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
        axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
        self.weight.copy_(axes[:, :, None, None].to(self.weight))
        self.bias.copy_((-(axes @ mean)[:, 0]).to(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class SAM2HieraFeatures(nn.Module):
    """Feature maps of the SAM2.1 Hiera trunk at selected stage ends.

    ``forward`` min-max scales each image to [0, 1], resizes it (bilinear, antialiased)
    to ``input_size x input_size`` as SAM2 does, repeats it to 3 channels, applies the
    ImageNet mean and std, runs the trunk and returns the selected stage outputs,
    optionally reduced by PCA.

    Parameters
    ----------
    checkpoint : str or path-like, optional
        An official SAM2.1 checkpoint (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``).
        Default: the ``REGTRACK_SAM2_CHECKPOINT`` environment variable.
    variant : str, optional
        ``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"``; default: inferred from
        the weights (width and depth of the trunk), else from the file name.
    layers : sequence of int, optional
        Stage ends to return, strictly increasing, in 0-3. Default: the first two.
    input_size : int, optional
        Side of the square model input, a multiple of 32. 1024 is SAM2's own resolution:
        features are those it was trained with, and a 256x256 frame gets one stage-0
        vector per pixel, but the trunk costs about 20 times more than at 256 (tokens
        grow with the square of the side, global attention faster). 512 or 256 trade
        detail and fidelity to SAM2's training for speed; timings are in the module
        docstring. Frames that are not square are stretched to the square.
    pca_components : int, optional
        Reduce each selected layer to this many channels by a PCA fitted with
        :meth:`fit_pca`. Default: no reduction.
    device : str or torch.device, optional
        Default: ``"cuda"`` when available, else ``"cpu"``.

    Attributes
    ----------
    checkpoint_info : Sam2CheckpointInfo
        Which file was loaded, its variant and whether it is the official file.
    channels : tuple of int
        Channels of each returned layer (after PCA, if any).
    strides : tuple of int
        Downsampling of each layer with respect to the model input (4, 8, 16, 32).

    Raises
    ------
    ValueError
        No checkpoint given, a file that is not a SAM2.1 checkpoint, or bad settings.
    FileNotFoundError
        The checkpoint file does not exist.

    Examples
    --------
    >>> feats = SAM2HieraFeatures("sam2.1_hiera_tiny.pt", input_size=512)  # doctest: +SKIP
    >>> [tuple(f.shape) for f in feats(torch.rand(1, 1, 256, 256))]  # doctest: +SKIP
    [(1, 96, 128, 128), (1, 192, 64, 64)]
    """

    input_size: int
    pca_fitted: bool

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        variant: str | None = None,
        layers: Sequence[int] = (0, 1),
        input_size: int = 1024,
        pca_components: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        layers = _check_layers(layers)
        _check_input_size(input_size)
        trunk, self.checkpoint_info = _load_trunk(checkpoint, variant)
        self.variant = self.checkpoint_info.variant
        self.layers = layers
        self.input_size = input_size
        self.stages = _HieraStages(trunk, layers)
        self.strides = tuple(_stage_stride(trunk, k) for k in layers)
        self.patch_stride = _stage_stride(trunk, 0)
        widths = [trunk.blocks[e].dim_out for e in self.stages.output_blocks]
        self.pca = nn.ModuleList(_pca_modules(widths, pca_components))
        self.pca_fitted = False
        self.channels = tuple(pca_components or c for c in widths)
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.to(_resolve_device(device)).eval()
        logger.info(
            "SAM2.1-%s trunk: layers %s, %d of %d blocks kept, input %d",
            self.variant,
            layers,
            len(self.stages.blocks),
            len(trunk.blocks),
            input_size,
        )

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, layers={self.layers}, input_size={self.input_size}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the feature maps of a batch of grey images.

        Parameters
        ----------
        x : Tensor, shape (N, 1, H, W), float
            Images in any intensity range; normally N = 1.

        Returns
        -------
        list of Tensor
            One tensor per selected layer k, shape (N, channels[k], input_size /
            strides[k], input_size / strides[k]), on the module's device.
        """
        if x.dim() != 4 or x.size(1) != 1:
            raise ValueError(
                "SAM2HieraFeatures() input must have shape (N, 1, H, W), got " + str(list(x.shape))
            )
        return self.extract(self._prepare(x))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Min-max scale each image to [0, 1] and resize it to the model input size."""
        x = x.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        low = torch.amin(x, dim=[1, 2, 3], keepdim=True)
        high = torch.amax(x, dim=[1, 2, 3], keepdim=True)
        x = (x - low) / (high - low + 1e-6)
        size = [self.input_size, self.input_size]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the feature maps of images already scaled to [0, 1], at their own size.

        Parameters
        ----------
        x : Tensor, shape (N, 1, h, w)
            Images in [0, 1], on the module's device; ``(h - 1) // 4 + 1`` must be a
            multiple of 8 (e.g. h in 29-32, 61-64, ..., any multiple of 32).

        Returns
        -------
        list of Tensor
            One tensor per selected layer, shape (N, channels[k], ~h / strides[k],
            ~w / strides[k]).
        """
        return self._project(self._stage_features(x))

    def _stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.expand(-1, 3, -1, -1) - self.pixel_mean) / self.pixel_std
        return self.stages(x)

    def _project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(self.pca) == 0:
            return features
        if not self.pca_fitted:
            raise RuntimeError(
                "SAM2HieraFeatures was built with pca_components but the PCA is not fitted: "
                "call fit_pca(reference_image) first"
            )
        out: list[torch.Tensor] = []
        for i, projection in enumerate(self.pca):
            out.append(projection(features[i]))
        return out

    @torch.no_grad()
    def fit_pca(self, image: np.ndarray | torch.Tensor) -> "SAM2HieraFeatures":
        """Fit the PCA of each selected layer on a reference image.

        Parameters
        ----------
        image : ndarray or Tensor, shape (H, W) or (1, 1, H, W)
            The reference image, e.g. the first frame of the sequence.

        Returns
        -------
        SAM2HieraFeatures
            ``self``, whose outputs now have ``pca_components`` channels per layer.
        """
        if len(self.pca) == 0:
            raise RuntimeError("fit_pca() needs a module built with pca_components=k")
        x = torch.as_tensor(image if torch.is_tensor(image) else np.asarray(image))
        if x.dim() == 2:
            x = x[None, None]
        if x.dim() != 4 or tuple(x.shape[:2]) != (1, 1):
            raise ValueError(
                f"fit_pca() image must be (H, W) or (1, 1, H, W), got {tuple(x.shape)}"
            )
        features = self._stage_features(self._prepare(x.float()))
        for projection, layer in zip(self.pca, features):
            projection.fit(layer)
        self.pca_fitted = True
        logger.info("PCA fitted: %s channels per layer", self.channels)
        return self

    def describe(self) -> dict[str, Any]:
        """Return what the exported model metadata records about this extractor."""
        info = self.checkpoint_info
        return {
            "name": f"sam2.1_hiera_{self.variant}",
            "strides": list(self.strides),
            "offsets": [(stride - self.patch_stride) / 2 for stride in self.strides],
            "input_size": self.input_size,
            "resize": f"bilinear antialiased resize to {self.input_size} x {self.input_size}",
            "normalisation": f"repeated to 3 channels, ImageNet mean {list(_IMAGENET_MEAN)} "
            f"and std {list(_IMAGENET_STD)}",
            "source": {
                "checkpoint": info.path.name,
                "variant": self.variant,
                "layers": list(self.layers),
                "official": info.official,
                "sha256": info.sha256,
                "pca_components": self.channels[0] if len(self.pca) else None,
            },
        }

    @contextlib.contextmanager
    def scripting_context(
        self, example_shape: Sequence[int], *, resize: bool = True
    ) -> Iterator[tuple[int, ...]]:
        """Swap in a traced trunk while the module is scripted; yield the traced shape.

        Parameters
        ----------
        example_shape : sequence of int
            Shape (N, 1, H, W) of the inputs the exported module will get.
        resize : bool, optional
            True when inputs go through :meth:`forward` (the trunk then sees
            ``input_size``); False when they go straight to :meth:`extract`.
        """
        n, _, h, w = example_shape
        size = (self.input_size, self.input_size) if resize else (h, w)
        example = torch.zeros(n, 3, *size, device=self.pixel_mean.device)
        eager = self.stages
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation notes, nothing to act on
            traced = torch.jit.trace(eager, example)
        self.stages = traced
        try:
            yield (n, 3, *size)
        finally:
            self.stages = eager


def _check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    layers = tuple(int(k) for k in layers)
    if not layers or list(layers) != sorted(set(layers)) or not set(layers) <= {0, 1, 2, 3}:
        raise ValueError(
            f"SAM2HieraFeatures() 'layers' must be strictly increasing stage indices in 0-3, "
            f"e.g. (0, 1); got {layers!r}"
        )
    return layers


def _check_input_size(input_size: int) -> None:
    if not isinstance(input_size, int) or input_size < 32 or input_size % 32:
        raise ValueError(
            f"SAM2HieraFeatures() 'input_size' must be a multiple of 32 (e.g. 256, 512, 1024), "
            f"got {input_size!r}"
        )


def _stage_stride(trunk: nn.Module, stage: int) -> int:
    """Downsampling of a stage end: patch embedding stride times the q-pooling strides."""
    stride = trunk.patch_embed.proj.stride[0]
    return stride * trunk.q_stride[0] ** min(stage, len(trunk.q_pool_blocks))


def _pca_modules(widths: Sequence[int], components: int | None) -> list[nn.Module]:
    if components is None:
        return []
    if not isinstance(components, int) or not 0 < components <= min(widths):
        raise ValueError(
            f"SAM2HieraFeatures() 'pca_components' must be an integer in 1..{min(widths)} "
            f"(the narrowest selected layer), or None; got {components!r}"
        )
    return [_PCAProjection(c, components) for c in widths]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)
