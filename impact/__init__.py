"""IMPACT feature extractors for regtrack: MIND-SSC and SAM2.1 Hiera layers.

Each extractor maps a grey image, a tensor of shape (1, 1, H, W), to a list of feature
maps, and exports to TorchScript for the elastix IMPACT metric or regtrack's static
feature mode. Nothing heavy is imported here: ``sam2`` and hydra are imported only when
a SAM2.1 extractor is built.
"""

import os
import zipfile
from pathlib import Path
from typing import Any

from torch import nn

from impact.export import (
    ImpactModelInfo,
    NativeImpactWrapper,
    export_torchscript,
    info_path,
    read_model_info,
)
from impact.mind import MIND
from impact.sam2_hiera import SAM2HieraFeatures, inspect_checkpoint

__all__ = [
    "EXTRACTOR_NAMES",
    "MIND",
    "ImpactModelInfo",
    "NativeImpactWrapper",
    "SAM2HieraFeatures",
    "export_torchscript",
    "info_path",
    "inspect_checkpoint",
    "load_extractor",
    "read_model_info",
]

#: Names accepted by :func:`load_extractor`, with the SAM2.1 variant they select.
EXTRACTOR_NAMES: dict[str, str | None] = {
    "mind": None,
    "sam2.1_tiny": "tiny",
    "sam2.1_small": "small",
    "sam2.1_base_plus": "base_plus",
    "sam2.1_large": "large",
}

_MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def load_extractor(name_or_path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Build or load a feature extractor by name or file.

    Parameters
    ----------
    name_or_path : str or path-like
        ``"mind"``; ``"sam2.1_tiny"``, ``"sam2.1_small"``, ``"sam2.1_base_plus"`` or
        ``"sam2.1_large"`` (the checkpoint comes from ``checkpoint=`` or the
        ``REGTRACK_SAM2_CHECKPOINT`` environment variable); the path of a TorchScript
        file written by :func:`export_torchscript`; or the path of a SAM2.1 checkpoint.
    **kwargs
        Settings of the extractor (:class:`MIND`, :class:`SAM2HieraFeatures`); for a
        TorchScript file only ``device``.

    Returns
    -------
    nn.Module
        Called as ``module(x)`` with ``x`` of shape (1, 1, H, W), it returns a list of
        feature maps.

    Raises
    ------
    ValueError
        An unknown name, or a file that is neither TorchScript nor a SAM2.1 checkpoint.
    FileNotFoundError
        A path that does not exist.

    Examples
    --------
    >>> import torch
    >>> from impact import load_extractor
    >>> [tuple(f.shape) for f in load_extractor("mind")(torch.rand(1, 1, 32, 32))]
    [(1, 4, 32, 32)]
    """
    key = str(name_or_path).lower()
    if key == "mind":
        return MIND(**kwargs)
    if key in EXTRACTOR_NAMES:
        return SAM2HieraFeatures(variant=EXTRACTOR_NAMES[key], **kwargs)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if _is_torchscript(path):
            return _load_torchscript(path, **kwargs)
        return SAM2HieraFeatures(path, **kwargs)
    known = (
        f"use one of {list(EXTRACTOR_NAMES)}, a TorchScript file written by "
        "impact.export_torchscript(), or a SAM2.1 checkpoint"
    )
    if path.suffix in _MODEL_SUFFIXES or len(path.parts) > 1:
        raise FileNotFoundError(f"extractor file {str(path)!r} does not exist; {known}")
    raise ValueError(f"unknown extractor {str(name_or_path)!r}: {known}")


def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive: a zip holding compiled code (``*/code/...``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_torchscript(path: Path, *, device: Any = None) -> nn.Module:
    import torch

    from impact.export import quiet_torchscript_deprecation

    with quiet_torchscript_deprecation():
        module = torch.jit.load(str(path), map_location=device or "cpu")
    return module.eval()
