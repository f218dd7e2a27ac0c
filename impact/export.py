"""TorchScript export of the feature extractors, with a metadata file beside each model.

Two interfaces are exported:

``regtrack``
    ``forward(x) -> list[Tensor]`` with ``x`` of shape (1, 1, H, W) in any intensity
    range: what :class:`impact.MIND` and :class:`impact.SAM2HieraFeatures` do in Python.
    regtrack computes feature maps once per frame with it (IMPACT's static mode) and
    hands them to elastix as extra fixed/moving image pairs.

``impact-native``
    What the elastix IMPACT metric (ImpactElastix, ``Metric "Impact"``) loads with
    ``torch::jit::load``: ``forward(x, nb_layers, stats, direction) -> list[Tensor]``.
    Verified in ImpactElastix ``itkImpactModelConfiguration.h`` and
    ``ImpactTensorUtils.hxx`` and in the model builders of vboussot/ImpactLoss
    (``Data/Models/builds/{SAM,Mind}``):

    - ``x``: (N, C, h, w) patches, C = ``ImpactNumberOfChannels`` copies of the grey
      image, N = 1 in Static mode (one patch, or the whole image with
      ``ImpactPatchSize 0 0``), N = number of samples in Jacobian mode, which also
      back-propagates through the model;
    - ``nb_layers``: int16 scalar, the length of ``ImpactLayersMask``; the model must
      return exactly that many tensors;
    - ``stats``: float32 (min, max, mean, std) of the whole image, so that every patch
      gets the same intensity normalisation;
    - ``direction``: int16 (D, D) rounded image direction (used by 3D models only).

    elastix counts the arguments of ``forward`` and passes 1, 2 or 4 of them; it casts
    the model to float16 when ``ImpactUseMixedPrecision`` is true. The models apply
    their own normalisation: IMPACT passes raw intensities.
    :class:`NativeImpactWrapper` adapts our extractors to this interface.
"""

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ImpactModelInfo",
    "NativeImpactWrapper",
    "export_torchscript",
    "info_path",
    "quiet_torchscript_deprecation",
    "read_model_info",
]

logger = logging.getLogger(__name__)

INTERFACE_REGTRACK = "regtrack"
INTERFACE_NATIVE = "impact-native"
_FORMAT_VERSION = 1


class NativeImpactWrapper(nn.Module):
    """Adapt an extractor to the model interface of the elastix IMPACT metric.

    ``forward(x, nb_layers, stats, direction)``: takes the first channel of ``x`` (the
    C channels IMPACT sends are copies), scales it to [0, 1] with the image min and
    max in ``stats`` (or, without stats, with each patch's own), runs the extractor's
    ``extract`` at the patch size (no resizing: IMPACT already resampled the patch to
    ``ImpactVoxelSize``) and returns the first ``nb_layers`` layers.

    Parameters
    ----------
    extractor : MIND or SAM2HieraFeatures
        Any module with ``extract(x) -> list[Tensor]`` for (N, 1, h, w) images in
        [0, 1] and a ``describe()`` method.

    Notes
    -----
    In the parameter map: ``ImpactDimension 2``, ``ImpactNumberOfChannels 1`` (3 works
    too), ``ImpactLayersMask`` with one character per returned layer. For a SAM2.1
    extractor the patch side h must give a patch grid ``(h - 1) // 4 + 1`` that is a
    multiple of 8 (29 as in IMPACT's maps, 32, 64, ...), and the exported trunk is
    traced at the export patch size (see :func:`export_torchscript`).
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(extractor, "extract", None)):
            raise TypeError(
                f"NativeImpactWrapper() 'extractor' must have an extract() method "
                f"(MIND or SAM2HieraFeatures), got {type(extractor).__name__}"
            )
        self.extractor = extractor

    def forward(
        self,
        x: torch.Tensor,
        nb_layers: torch.Tensor | None = None,
        stats: torch.Tensor | None = None,
        direction: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Compute the feature maps of a batch of patches.

        Parameters
        ----------
        x : Tensor, shape (N, C, h, w)
            Raw-intensity patches; channel 0 is used.
        nb_layers : Tensor, optional
            Scalar: how many layers to return (the first ones); all when it is larger
            than the number of layers (elastix then reports the mismatch).
        stats : Tensor, shape (4,), optional
            (min, max, mean, std) of the whole image.
        direction : Tensor, optional
            Image direction; ignored (2D extractors are orientation agnostic).

        Returns
        -------
        list of Tensor
            One tensor per returned layer, shape (N, C_k, h_k, w_k).
        """
        x = x[:, :1]
        if stats is not None and stats.numel() == 4:
            low = stats[0].to(device=x.device, dtype=x.dtype)  # elastix keeps stats on CPU
            high = stats[1].to(device=x.device, dtype=x.dtype)
            x = (x - low) / (high - low + 1e-6)
        else:
            low_n = torch.amin(x, dim=[1, 2, 3], keepdim=True)
            high_n = torch.amax(x, dim=[1, 2, 3], keepdim=True)
            x = (x - low_n) / (high_n - low_n + 1e-6)
        features = self.extractor.extract(x)
        if nb_layers is not None:
            n = int(nb_layers.reshape(-1)[0].item())
            if 0 < n < len(features):
                features = features[:n]
        return features

    def describe(self) -> dict[str, Any]:
        """Return what the exported model metadata records about this model."""
        return {**self.extractor.describe(), "input_size": None, "resize": None}

    @contextlib.contextmanager
    def scripting_context(self, example_shape: Sequence[int]) -> Iterator[Any]:
        """Trace the extractor's trunk at the patch size, if it needs tracing."""
        inner = getattr(self.extractor, "scripting_context", None)
        if inner is None:
            yield None
            return
        with inner(example_shape, resize=False) as traced_shape:
            yield traced_shape


@dataclass(frozen=True)
class ImpactModelInfo:
    """What an exported feature model takes and returns; saved as JSON beside it.

    Attributes
    ----------
    name : str
        Extractor name, e.g. ``"mind_ssc_2d_r1_d2"``, ``"sam2.1_hiera_tiny"``.
    interface : str
        ``"regtrack"``: ``forward(x (1, 1, H, W)) -> list``; ``"impact-native"``:
        ``forward(x, nb_layers, stats, direction) -> list`` for elastix IMPACT.
    channels : tuple of int
        Channels of each returned layer.
    strides : tuple of int
        Downsampling of each layer, in model-input pixels.
    offsets : tuple of float
        Position of feature 0 of each layer, in model-input pixel indices: feature i
        of layer k sits at model-input index ``strides[k] * i + offsets[k]``.
    input_size : int or None
        Side of the square the image is resized to before the model; None: used as is.
    normalisation : str
        Intensity handling done inside the model (none is needed before).
    example_shape : tuple of int
        Input shape used for export and checking.
    output_shapes : tuple of tuple of int
        Output shapes for ``example_shape``.
    traced_shape : tuple of int or None
        Input shape of the traced SAM2.1 trunk (valid for that spatial size, any
        batch); None when the whole model is scripted.
    source : dict
        Extractor settings and provenance (checkpoint name, sha256, official).
    torch_version : str
        torch version that wrote the file.
    impact_parameters : dict
        For ``impact-native``: suggested elastix IMPACT parameter-map values.
    """

    name: str
    interface: str
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    offsets: tuple[float, ...]
    input_size: int | None
    normalisation: str
    example_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    traced_shape: tuple[int, ...] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    torch_version: str = torch.__version__
    impact_parameters: dict[str, Any] = field(default_factory=dict)
    format_version: int = _FORMAT_VERSION

    def layer_geometry(
        self,
        image_shape: Sequence[int],
        spacing: Sequence[float] = (1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0),
    ) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        """Spacing and origin of each layer's grid for an image of known geometry.

        Parameters
        ----------
        image_shape : sequence of int
            (H, W) of the image given to the model.
        spacing, origin : sequence of float
            The image's pixel spacing and the position of pixel (0, 0), in (row, col)
            order and the same units (e.g. mm); axis-aligned image assumed.

        Returns
        -------
        list of ((float, float), (float, float))
            Per layer: ((spacing_row, spacing_col), (origin_row, origin_col)).
        """
        geometry = []
        for stride, offset in zip(self.strides, self.offsets):
            layer_spacing, layer_origin = [], []
            for n, step, start in zip(image_shape[-2:], spacing, origin):
                scale = n / self.input_size if self.input_size else 1.0
                index0 = (offset + 0.5) * scale - 0.5 if self.input_size else offset
                layer_spacing.append(stride * scale * step)
                layer_origin.append(start + index0 * step)
            geometry.append((tuple(layer_spacing), tuple(layer_origin)))
        return geometry

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImpactModelInfo":
        data = dict(data)
        for key in ("channels", "strides", "offsets", "example_shape"):
            data[key] = tuple(data[key])
        data["output_shapes"] = tuple(tuple(s) for s in data["output_shapes"])
        if data.get("traced_shape") is not None:
            data["traced_shape"] = tuple(data["traced_shape"])
        return cls(**data)

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ImpactModelInfo":
        return cls.from_dict(json.loads(Path(path).read_text()))


def info_path(model_path: str | os.PathLike) -> Path:
    """Return the metadata file of an exported model: ``<model file>.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def read_model_info(model_path: str | os.PathLike) -> ImpactModelInfo:
    """Read the metadata written beside an exported model.

    Raises
    ------
    FileNotFoundError
        No ``<model file>.json`` beside the model (it was not written by
        :func:`export_torchscript`).
    """
    path = info_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no model metadata {str(path)!r}; export the model with "
            "impact.export_torchscript(), which writes it"
        )
    return ImpactModelInfo.read(path)


def export_torchscript(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    example_shape: Sequence[int] = (1, 1, 256, 256),
) -> Path:
    """Write an extractor as TorchScript, check it, and write its metadata beside it.

    The model is compiled with :func:`torch.jit.script`; a SAM2.1 trunk, which cannot be
    scripted, is traced with :func:`torch.jit.trace` first (at ``input_size`` for
    :class:`~impact.SAM2HieraFeatures`, at the patch size of ``example_shape`` for a
    :class:`NativeImpactWrapper`) and the rest scripted around it. The file is saved
    from the CPU, loaded back with :func:`torch.jit.load` and its outputs compared
    with the module's on random inputs of ``example_shape`` and of batch 2.

    Parameters
    ----------
    module : MIND, SAM2HieraFeatures or NativeImpactWrapper
        The extractor; a SAM2.1 one with PCA must have been fitted.
    path : str or path-like
        The TorchScript file to write (parent folders are created).
    example_shape : sequence of int, optional
        (N, 1, H, W): a typical input; for the native interface the patch size
        (e.g. ``(1, 1, 29, 29)``, or a whole image for ``ImpactPatchSize 0 0``).

    Returns
    -------
    Path
        The TorchScript file; its metadata is :func:`info_path` of it.

    Raises
    ------
    ValueError
        Bad ``example_shape``.
    RuntimeError
        The module does not return a list of tensors, or the saved model disagrees
        with it.
    """
    shape = _check_example_shape(example_shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _on_cpu(module).eval()
    example = _random_input(shape, seed=0)
    with torch.no_grad():
        expected = _as_feature_list(module(example), "the module")
    with quiet_torchscript_deprecation():
        scripted, traced_shape = _script(module, shape)
        torch.jit.save(scripted, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    _check_same(loaded, module, example, expected)
    _check_same(loaded, module, _random_input((2, *shape[1:]), seed=1), None)
    info = _model_info(module, shape, expected, traced_shape)
    info.write(info_path(path))
    logger.info("exported %s (%s) to %s: layers %s", info.name, info.interface, path, info.channels)
    return path


@contextlib.contextmanager
def quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence torch's "`torch.jit.*` is deprecated" warnings in this block.

    The elastix IMPACT metric loads models with LibTorch's ``torch::jit::load``, so
    TorchScript is the format it needs; the warning offers nothing to act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def _check_example_shape(example_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in example_shape)
    if len(shape) != 4 or shape[1] != 1 or min(shape) < 1:
        raise ValueError(
            f"export_torchscript() 'example_shape' must be (N, 1, H, W), got {tuple(example_shape)}"
        )
    return shape


def _on_cpu(module: nn.Module) -> nn.Module:
    """Return the module itself if it is on the CPU, else a CPU copy of it."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return module
    logger.info("exporting from a CPU copy of the module")
    return copy.deepcopy(module).cpu()


def _random_input(shape: Sequence[int], *, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) * 1000.0 - 200.0


def _as_feature_list(output: Any, what: str) -> list[torch.Tensor]:
    if not isinstance(output, list | tuple) or not all(torch.is_tensor(t) for t in output):
        raise RuntimeError(f"{what} must return a list of tensors, got {type(output).__name__}")
    return list(output)


def _script(module: nn.Module, shape: tuple[int, ...]) -> tuple[torch.jit.ScriptModule, Any]:
    """Script the module, inside its scripting context (trunk tracing) if it has one."""
    context = getattr(module, "scripting_context", None)
    manager = context(shape) if context is not None else contextlib.nullcontext()
    with manager as traced_shape:
        return torch.jit.script(module), traced_shape


def _check_same(
    loaded: torch.jit.ScriptModule,
    module: nn.Module,
    x: torch.Tensor,
    expected: list[torch.Tensor] | None,
) -> None:
    """Raise RuntimeError when the saved model's outputs differ from the module's."""
    with torch.no_grad():
        if expected is None:
            expected = _as_feature_list(module(x), "the module")
        got = _as_feature_list(loaded(x), "the exported model")
    same = len(got) == len(expected) and all(
        g.shape == e.shape and torch.allclose(g, e, rtol=1e-4, atol=1e-5)
        for g, e in zip(got, expected)
    )
    if not same:
        raise RuntimeError(
            f"the exported model disagrees with the module on an input of shape "
            f"{tuple(x.shape)} (shapes {[tuple(t.shape) for t in got]} vs "
            f"{[tuple(t.shape) for t in expected]}); please report this with the torch version"
        )


def _model_info(
    module: nn.Module,
    shape: tuple[int, ...],
    outputs: list[torch.Tensor],
    traced_shape: Any,
) -> ImpactModelInfo:
    described = module.describe()
    native = isinstance(module, NativeImpactWrapper)
    channels = tuple(int(t.shape[1]) for t in outputs)
    impact: dict[str, Any] = {}
    if native:
        impact = {
            "ImpactDimension": 2,
            "ImpactNumberOfChannels": 1,
            "ImpactLayersMask": "1" * len(outputs),
            "ImpactPatchSize": list(shape[2:]),
        }
    return ImpactModelInfo(
        name=described["name"],
        interface=INTERFACE_NATIVE if native else INTERFACE_REGTRACK,
        channels=channels,
        strides=tuple(described["strides"]),
        offsets=tuple(float(o) for o in described["offsets"]),
        input_size=described["input_size"],
        normalisation=_normalisation(described, native=native),
        example_shape=shape,
        output_shapes=tuple(tuple(int(n) for n in t.shape) for t in outputs),
        traced_shape=tuple(traced_shape) if traced_shape is not None else None,
        source=_jsonable(described.get("source", {})),
        impact_parameters=impact,
    )


def _normalisation(described: dict[str, Any], *, native: bool) -> str:
    """Describe, in order, the intensity and size handling inside the exported model."""
    if native:
        steps = ["channel 0 scaled to [0, 1] with the image (min, max) in IMPACT's stats"]
    else:
        steps = ["each image min-max scaled to [0, 1]"]
    if described.get("resize"):
        steps.append(described["resize"])
    if described.get("normalisation"):
        steps.append(described["normalisation"])
    return "; ".join(steps)


def _jsonable(value: Any) -> Any:
    """Turn tuples into lists recursively so that the JSON round trip is exact."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
