"""Static-mode IMPACT: feature maps as extra elastix channels (multi-metric registration).

A preset asks for features with IMPACT's own keys plus ``(ImpactMode "Static")``::

    (Registration "MultiMetricMultiResolutionRegistration")
    (Metric "AdvancedMeanSquares")        // the distance, repeated for every channel
    (ImpactMode "Static")
    (ImpactModelsPath0 "mind")            // "mind", "sam2.1_tiny", ... or a TorchScript file
    (ImpactLayersMask0 "1")               // which layers the model returns are used
    (ImpactLayersWeight0 1)               // weight of each used layer
    (ImpactPCA0 0)                        // > 0: PCA to that many channels per layer

Features of frame 0 are computed once, those of frame t once per frame (no feature updates
during optimisation, which is what IMPACT's static mode means), resized to the frame grid, and
handed to elastix as one fixed/moving image pair per channel; the per-pair entries of the
parameter map are repeated to match and the layer weight is shared among its channels.
Native IMPACT (``(Metric "Impact")``) is elastix's own plugin: :func:`resolve_native_models`
exports the named models for it, and :data:`NATIVE_IMPACT_MISSING` is the error when it is absent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .extras import need_extra
from .mind import mind_descriptors
from .parameters import to_elastix_values

__all__ = [
    "NATIVE_IMPACT_MISSING",
    "FeatureExtractor",
    "FeatureSpec",
    "expand_for_channels",
    "feature_spec",
    "resolve_native_models",
    "uses_native_impact",
]

logger = logging.getLogger(__name__)

# Entries elastix expects once per fixed/moving pair in a multi-metric registration.
_PER_PAIR_KEYS = (
    "Metric",
    "FixedImagePyramid",
    "MovingImagePyramid",
    "Interpolator",
    "ImageSampler",
)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a static-mode preset compares.

    Attributes
    ----------
    model : str
        ``"mind"``, ``"sam2.1_tiny"`` (and other SAM2.1 sizes) or a TorchScript file.
    layers : tuple of int
        Indices of the model outputs used (from ``ImpactLayersMask0``).
    layer_weights : tuple of float
        One weight per used layer (``ImpactLayersWeight0``).
    pca_components : int
        Channels kept per layer by PCA fitted on frame 0 (0: all; SAM2.1 models only).
    image_weight : tuple of float
        Weight of the frames themselves as an extra channel, one value or one per resolution;
        empty for features only. A preset asks for it with two metrics, ``(Metric "AdvancedNormalizedCorrelation"
        "AdvancedMeanSquares")``: the first compares the frames, the second every feature
        channel, weighted by ``Metric0Weight`` and ``Metric1Weight``.
    feature_weight : tuple of float
        Total weight of the feature channels, one value or one per resolution (elastix takes
        per-resolution metric weights: features can lead at coarse levels, frames at fine).
    """

    model: str
    layers: tuple[int, ...] = (0,)
    layer_weights: tuple[float, ...] = (1.0,)
    pca_components: int = 0
    image_weight: tuple[float, ...] = ()
    feature_weight: tuple[float, ...] = (1.0,)


def feature_spec(parameter_maps) -> FeatureSpec | None:
    """The :class:`FeatureSpec` of a static-mode preset, or None for an intensity preset."""
    parameter_map = dict(parameter_maps.GetParameterMap(0))
    if parameter_map.get("ImpactMode", ("",))[0].lower() != "static":
        return None
    model = parameter_map.get("ImpactModelsPath0", ("",))[0]
    if not model:
        raise ValueError(
            'a static-mode preset (ImpactMode "Static") needs (ImpactModelsPath0 "mind") or '
            "another model name or TorchScript file."
        )
    mask = parameter_map.get("ImpactLayersMask0", ("1",))[0]
    layers = tuple(i for i, flag in enumerate(mask) if flag == "1")
    weights = tuple(
        float(w) for w in parameter_map.get("ImpactLayersWeight0", ("1",) * len(layers))
    )
    if len(weights) != len(layers):
        raise ValueError(
            f"ImpactLayersWeight0 has {len(weights)} values but ImpactLayersMask0 {mask!r} selects "
            f"{len(layers)} layers; give one weight per selected layer."
        )
    pca = int(float(parameter_map.get("ImpactPCA0", ("0",))[0]))
    metrics = parameter_map.get("Metric", ())
    image_weight, feature_weight = (), (1.0,)
    if len(metrics) == 2:
        image_weight = tuple(float(v) for v in parameter_map.get("Metric0Weight", ("1",)))
        feature_weight = tuple(float(v) for v in parameter_map.get("Metric1Weight", ("1",)))
    elif len(metrics) != 1:
        raise ValueError(
            f"a static-mode preset takes one Metric (for the features) or two (frames, then "
            f"features), not {len(metrics)}: {metrics}"
        )
    return FeatureSpec(
        model=model,
        layers=layers,
        layer_weights=weights,
        pca_components=pca,
        image_weight=image_weight,
        feature_weight=feature_weight,
    )


class FeatureExtractor:
    """Turns a (H, W) frame into a list of (H, W) float32 feature channels with weights.

    Parameters
    ----------
    spec : FeatureSpec
    reference : ndarray, shape (H, W)
        Frame 0: fits the PCA when the spec asks for one.
    device : str, optional
        Torch device; default CUDA when available, else CPU.
    checkpoint : str, optional
        SAM2.1 checkpoint for SAM2 feature models (default: ``REGTRACK_SAM2_CHECKPOINT``).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        reference: np.ndarray,
        *,
        device: str | None = None,
        checkpoint: str | None = None,
    ):
        self.spec = spec
        self.device = "cpu"
        self.model = None
        self._layers = spec.layers
        if spec.model.lower() != "mind":  # MIND runs on OpenCV (regtrack.mind), no torch
            self._load_model(reference, device, checkpoint)
        self.weights = self._channel_weights(reference)

    def _load_model(self, reference, device, checkpoint) -> None:
        need_extra("impact", f"the {self.spec.model} feature preset")
        import torch

        from impact import load_extractor

        spec = self.spec
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        options = {}
        if spec.model.lower().startswith("sam2"):
            options.update(layers=spec.layers, pca_components=spec.pca_components or None)
            checkpoint = checkpoint or os.environ.get("REGTRACK_SAM2_CHECKPOINT")
            options.update(checkpoint=checkpoint, device=self.device)
        self.model = load_extractor(spec.model, **options).to(self.device).eval()
        if spec.pca_components and hasattr(self.model, "fit_pca"):
            self.model.fit_pca(reference)
        self._layers = None if "layers" in options else spec.layers

    def _maps(self, frame: np.ndarray) -> list[np.ndarray]:
        """The selected layers, each (C, h, w) float32 on the frame grid."""
        if self.model is None:
            maps = [mind_descriptors(frame)]
        else:
            maps = self._model_maps(frame)
        return maps if self._layers is None else [maps[i] for i in self._layers]

    def _model_maps(self, frame: np.ndarray) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frame, np.float32))[None, None].to(self.device)
        with torch.inference_mode():
            maps = self.model(x)
        on_grid = [
            m
            if m.shape[-2:] == frame.shape
            else F.interpolate(m, size=frame.shape, mode="bilinear", align_corners=False)
            for m in maps
        ]
        return [m[0].float().cpu().numpy() for m in on_grid]

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        """Feature channels of one frame, each (H, W) float32 on the frame grid."""
        channels = [np.ascontiguousarray(c) for m in self._maps(frame) for c in m]
        if self.spec.image_weight:
            channels.insert(0, np.ascontiguousarray(frame, np.float32))
        return channels

    def _channel_weights(self, reference: np.ndarray) -> list[tuple[float, ...]]:
        """Per channel, its weight at each resolution (or one for all): each layer's weight
        shared equally among its channels, the frame's own weight first when it is used."""
        sizes = [int(m.shape[0]) for m in self._maps(reference)]
        weights = [
            tuple(total * w / n for total in self.spec.feature_weight)
            for w, n in zip(self.spec.layer_weights, sizes, strict=True)
            for _ in range(n)
        ]
        return [self.spec.image_weight, *weights] if self.spec.image_weight else weights


def expand_for_channels(parameter_maps, weights: list[tuple[float, ...]]):
    """A copy of the parameter maps with one metric (and pyramid, ...) per channel.

    With two metrics given, the first is for channel 0 (the frames), the second for the rest.
    """
    from . import itk_elastix

    expanded = itk_elastix.parameter_object()
    for index in range(parameter_maps.GetNumberOfParameterMaps()):
        parameter_map = dict(parameter_maps.GetParameterMap(index))
        parameter_map["Registration"] = ("MultiMetricMultiResolutionRegistration",)
        for key in _PER_PAIR_KEYS:
            value = parameter_map.get(key)
            if value:
                parameter_map[key] = (value[0],) + (value[-1],) * (len(weights) - 1)
        for channel, weight in enumerate(weights):
            parameter_map[f"Metric{channel}Weight"] = to_elastix_values([float(w) for w in weight])
        expanded.AddParameterMap(parameter_map)
    return expanded


def uses_native_impact(parameter_maps) -> bool:
    """True when a preset asks elastix for its IMPACT plugin metric."""
    return any(
        "Impact" in dict(parameter_maps.GetParameterMap(i)).get("Metric", ())
        for i in range(parameter_maps.GetNumberOfParameterMaps())
    )


NATIVE_IMPACT_MISSING = (
    'this preset uses elastix\'s IMPACT metric (Metric "Impact"), but itk-elastix could not '
    "load the IMPACT plugin: it looks for the libraries ImpactMetricCuda and then ImpactMetric "
    "(libImpactMetric.so / ImpactMetric.dll) with the system loader, i.e. on LD_LIBRARY_PATH "
    "(PATH on Windows) and the standard library folders. Install the ImpactElastix plugin "
    "release built for your itk-elastix version and put its library folder on LD_LIBRARY_PATH, "
    "or use a static-mode preset that needs no plugin: impact_mind (MIND features) or "
    "impact_sam2 (SAM2.1 features, with REGTRACK_SAM2_CHECKPOINT)."
)


def resolve_native_models(
    parameter_maps,
    cache_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
):
    """Replace built-in model names in ``ImpactModelsPath{k}`` by exported TorchScript files.

    Native IMPACT loads TorchScript files in elastix's IMPACT interface; a preset may name
    ``"mind"`` (or ``"sam2.1_tiny"``, ... with ``checkpoint``, default
    ``REGTRACK_SAM2_CHECKPOINT``) and regtrack writes the file once into ``cache_dir`` (default
    ``$XDG_CACHE_HOME/regtrack/impact``, with ``XDG_CACHE_HOME`` defaulting to ``~/.cache``),
    named after the checkpoint it came from, so another checkpoint gets its own file.
    """
    need_extra("impact", "a native IMPACT preset")
    from impact import EXTRACTOR_NAMES

    from . import itk_elastix

    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cache = Path(cache_dir or Path(cache_home) / "regtrack" / "impact")
    resolved = itk_elastix.parameter_object()
    for index in range(parameter_maps.GetNumberOfParameterMaps()):
        parameter_map = dict(parameter_maps.GetParameterMap(index))
        for key, values in parameter_map.items():
            if key.startswith("ImpactModelsPath"):
                patch = _patch_size(parameter_map, key.removeprefix("ImpactModelsPath"))
                parameter_map[key] = tuple(
                    str(_native_model_file(v, cache, patch, checkpoint))
                    if v.lower() in EXTRACTOR_NAMES
                    else v
                    for v in values
                )
        resolved.AddParameterMap(parameter_map)
    return resolved


def _checkpoint_key(checkpoint) -> str:
    """A short key of a checkpoint file: its resolved path, size and modification time."""
    import hashlib

    if not checkpoint:
        return "nockpt"
    path = Path(checkpoint).resolve()
    stat = path.stat() if path.exists() else None
    ident = f"{path}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _patch_size(parameter_map: dict, level: str) -> int:
    values = parameter_map.get(f"ImpactPatchSize{level}", ("29",))
    return max(int(float(v)) for v in values) or 256


def _native_model_file(name: str, cache: Path, patch: int, checkpoint=None) -> Path:
    """Export the built-in extractor ``name`` for the native interface, once per patch size
    and (for weighted models) per checkpoint file."""
    from impact import NativeImpactWrapper, export_torchscript, load_extractor

    options, source = {}, ""
    if name.lower() != "mind":
        options["checkpoint"] = checkpoint or os.environ.get("REGTRACK_SAM2_CHECKPOINT")
        source = "_" + _checkpoint_key(options["checkpoint"])
    path = cache / f"{name.lower()}_native_{patch}{source}.pt"
    if not path.exists():
        wrapper = NativeImpactWrapper(load_extractor(name, **options))
        export_torchscript(wrapper, path, example_shape=(1, 1, patch, patch))
        logger.info("exported %s for native IMPACT to %s", name, path)
    return path
