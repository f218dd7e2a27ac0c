"""The few ITK wrappers regtrack calls, loaded alone: about 1 s instead of 12.

``itk.ElastixRegistrationMethod`` goes through ITK's lazy loader, which loads the whole
``Elastix`` module with every ITK module it names as a dependency (smoothing, thresholding,
intensity filters, FFT, ...: 233 SWIG modules, 12 s on 2 cores), and whose image-filter
decorators import torch when it is installed (1.3 s more). regtrack needs four classes: the
parameter object, the registration method and transformix for 2D float images, and the numpy
bridge. Their SWIG proxy modules are importable on their own and pull in only what their
classes derive from, so they are imported directly. The classes are the very ones ITK's lazy
loader hands out later (``itk.ElastixRegistrationMethod[itk.Image[itk.F, 2], ...]`` is
``load().RegistrationMethod``), so code that uses ``itk`` itself still works beside this.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import threading
from types import SimpleNamespace

import numpy as np

__all__ = [
    "array_from_image",
    "default_threads",
    "image_from_array",
    "is_loaded",
    "load",
    "parameter_object",
    "registration_method",
    "set_threads",
    "transformix_filter",
]

_PIXEL_SUFFIX = {np.dtype(np.float32): "F2", np.dtype(np.uint8): "UC2"}  # itkImageF2, ...


_LOCK = threading.Lock()


def load() -> SimpleNamespace:
    """Import the wrappers once per process; later calls return the same namespace.

    One thread at a time: a sweep worker may start two tasks at once.
    """
    with _LOCK:
        return _load()


def is_loaded() -> bool:
    """Whether this process has loaded the wrappers (a forked worker inherits them)."""
    return _load.cache_info().currsize > 0


# Optional imports of ITK's that serve other hosts, not regtrack: IPython (tab completion in a
# notebook, 0.4 s) and dask.distributed (serialising ITK images, 0.5 s). They are skipped while
# the wrappers load unless already imported (a notebook, a dask worker keep them).
_OPTIONAL_HOSTS = ("IPython", "distributed")


@functools.cache
def _load() -> SimpleNamespace:
    with _skipped(_OPTIONAL_HOSTS):
        import itk.support.helpers

        # ITK's filter decorators import torch (when installed) only to accept torch tensors
        # as images; regtrack passes numpy arrays, so the 1.3 s import is skipped. A later
        # use of ``itk`` itself still works; it just takes no tensors.
        if hasattr(itk.support.helpers, "_HAVE_TORCH"):
            itk.support.helpers._HAVE_TORCH = False

        def module(name: str):
            return importlib.import_module(f"itk.{name}")

        parameters = module("elxParameterObjectPython")
        registration = module("itkElastixRegistrationMethodPython")
        transformix = module("itkTransformixFilterPython")
        buffers = module("itkPyBufferPython")
        images = module("itkImagePython")
        common = module("ITKCommonBasePython")
    return SimpleNamespace(
        ParameterObject=parameters.elastixParameterObject,
        RegistrationMethod=registration.itkElastixRegistrationMethodIF2IF2,
        TransformixFilter=transformix.itkTransformixFilterIF2,
        buffers=buffers,
        images=images,
        MultiThreaderBase=common.itkMultiThreaderBase,
    )


@contextlib.contextmanager
def _skipped(names):
    """Within the block, ``import name`` raises ImportError for the names not yet imported
    (ITK guards these imports with ``try``); afterwards they import normally."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def parameter_object():
    """A new, empty ``elastix::ParameterObject`` (``itk.ParameterObject.New()``)."""
    return load().ParameterObject.New()


def registration_method():
    """A new ``itk.ElastixRegistrationMethod`` for 2D float images."""
    return load().RegistrationMethod.New()


def transformix_filter(moving_image=None):
    """A new ``itk.TransformixFilter`` for 2D float images, on ``moving_image`` when given."""
    transformix = load().TransformixFilter.New()
    if moving_image is not None:
        transformix.SetMovingImage(moving_image)
    return transformix


def image_from_array(array: np.ndarray):
    """A 2D ITK image holding a copy of ``array`` (float32 or uint8, C-contiguous (H, W)).

    Spacing 1, origin 0, as ``itk.image_from_array``; the caller sets the geometry.
    """
    if array.ndim != 2 or array.dtype not in _PIXEL_SUFFIX:
        raise TypeError(
            f"image_from_array takes a 2D float32 or uint8 array, got {array.dtype} {array.shape}"
        )
    namespace = load()
    image = getattr(namespace.images, f"itkImage{_PIXEL_SUFFIX[array.dtype]}").New()
    image.SetRegions([array.shape[1], array.shape[0]])  # ITK sizes are (x, y) = (W, H)
    image.Allocate()
    # Copied into the buffer ITK owns: an image viewing a numpy array dangles once its Python
    # proxy is gone while elastix still holds the image, and PyBuffer's own deep copy goes
    # through itk.ImageDuplicator, i.e. ITK's lazy loader (0.6 s on first use).
    _buffer_view(image)[...] = array
    return image


def array_from_image(image) -> np.ndarray:
    """A numpy copy of a 2D ITK image (or of a filter's output): (H, W), or (H, W, 2) for a
    vector image such as a deformation field."""
    if hasattr(image, "GetOutput"):
        image.Update()
        image = image.GetOutput()
    return _buffer_view(image).copy()


# ITK pixel type of each image class regtrack meets -> numpy dtype of one component.
_COMPONENT_DTYPE = {"F2": np.float32, "UC2": np.uint8, "VF22": np.float32}


def _buffer_view(image) -> np.ndarray:
    """A numpy view of an image's pixel buffer, C order: (H, W) or (H, W, components).

    PyBuffer's own ``GetArrayViewFromImage`` asks ``isinstance(image, itk.VectorImage)``,
    which wakes ITK's lazy loader; the buffer and its shape are all that is needed.
    """
    pixel = type(image).__name__.removeprefix("itkImage")  # itkImageF2 -> F2
    if pixel not in _COMPONENT_DTYPE:
        raise TypeError(f"no numpy bridge for {type(image).__name__} in regtrack")
    buffer = getattr(load().buffers, f"itkPyBufferI{pixel}")
    size = image.GetBufferedRegion().GetSize()
    shape = (int(size[1]), int(size[0]))
    if image.GetNumberOfComponentsPerPixel() > 1:
        shape += (int(image.GetNumberOfComponentsPerPixel()),)
    memory = np.asarray(buffer._GetArrayViewFromImage(image))
    return memory.view(_COMPONENT_DTYPE[pixel]).reshape(shape)


def set_threads(threads: int) -> None:
    """ITK's process-wide thread limit and default (elastix and transformix run with this
    many)."""
    threader = load().MultiThreaderBase
    threader.SetGlobalMaximumNumberOfThreads(int(threads))
    threader.SetGlobalDefaultNumberOfThreads(int(threads))


def default_threads() -> int:
    """ITK's process-wide default thread count."""
    return int(load().MultiThreaderBase.GetGlobalDefaultNumberOfThreads())
