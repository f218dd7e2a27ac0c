"""Reading and writing cine-MRI cases.

Three input layouts are understood (see :func:`read_case`):

* a TrackRAD case folder::

      <case>/images/<case>_frames.mha
      <case>/targets/<case>_first_label.mha
      <case>/targets/<case>_labels.mha          (optional ground truth)
      <case>/frame-rate.json, b-field-strength.json, scanned-region.json

* the challenge container's input folder::

      input/images/mri-linacs/<sequence>.mha
      input/images/mri-linac-target/<mask>.mha
      input/frame-rate.json, b-field-strength.json, scanned-region.json

* a single sequence file (``.mha``, ``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``) plus a mask
  file given with ``mask=``.

In memory, frames are ``(T, H, W)`` float32 (row = H, column = W), masks ``(H, W)`` bool, and
label sequences ``(T, H, W)`` uint8 0/1. ``spacing_mm`` is a ``(row, col)`` pair.

Axes on disk. ``SimpleITK.GetArrayFromImage`` returns the ITK axes reversed. A TrackRAD file
holds time on ITK axis 0, H on ITK axis 1 and W on ITK axis 2, so its array is ``(W, H, T)``
and a frame's row spacing is the ITK spacing[1], its column spacing the ITK spacing[2].
Files written by other tools usually hold time on the last ITK axis (array ``(T, H, W)``,
row = ITK axis 1, column = ITK axis 0). The rule used here: with time on ITK axis 0 the two
frame axes are (row, col) = (lower, higher) ITK axis, as in TrackRAD; with time on any other
axis they are (higher, lower), the usual numpy image convention. A 4D file with one size-1
axis besides time (e.g. a NIfTI ``(W, H, 1, T)``) is read as 2D + time. The conversion
happens only here; outputs are written back with the input's exact geometry.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .checks import as_binary_mask, check_frame_rate, check_spacing

__all__ = [
    "Case",
    "FrameReader",
    "Geometry",
    "case_from_arrays",
    "case_from_frame",
    "check_start",
    "container_output_path",
    "output_path_for",
    "read_case",
    "read_mask",
    "write_masks",
    "write_trackrad_case",
]

logger = logging.getLogger(__name__)

#: File name endings read as image files when a folder is searched.
IMAGE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
#: Largest difference between mask and frame spacing that still counts as equal, in mm.
SPACING_TOLERANCE_MM = 1e-3
#: Frames per read when time is not the file's fastest axis.
DEFAULT_CHUNK_FRAMES = 32
#: Bytes per read when time is the file's fastest axis (ITK axis 0, as in TrackRAD).
DEFAULT_CHUNK_BYTES = 256 * 2**20

_CONTAINER_SEQUENCE_DIR = Path("images") / "mri-linacs"
_CONTAINER_MASK_DIR = Path("images") / "mri-linac-target"
_CONTAINER_OUTPUT_FILE = Path("images") / "mri-linac-series-targets" / "output.mha"
_FRAME_RATE_JSON = "frame-rate.json"
_FIELD_STRENGTH_JSON = "b-field-strength.json"
_SCANNED_REGION_JSON = "scanned-region.json"


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Geometry of a sequence file: what is needed to write an output exactly like it.

    Parameters
    ----------
    size : tuple of int
        ITK size (x, y, z[, t]) of the image in the file.
    spacing : tuple of float
        ITK spacing, one value per axis.
    origin : tuple of float
        ITK origin, one value per axis.
    direction : tuple of float
        ITK direction cosines, row-major, ``len(size) ** 2`` values.
    time_axis : int
        ITK axis holding time (0 for TrackRAD files).

    Raises
    ------
    ValueError
        If the fields disagree in length, ``time_axis`` is not an axis of the image, or the
        image is not 2D + time.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    time_axis: int

    def __post_init__(self) -> None:
        ndim = len(self.size)
        if ndim not in (3, 4):
            raise ValueError(
                f"Geometry: a 2D + time image has 3 (or 4, one of size 1) ITK axes, got size "
                f"{self.size}; regtrack reads 2D cine sequences only"
            )
        if len(self.spacing) != ndim or len(self.origin) != ndim:
            raise ValueError(
                f"Geometry: size {self.size}, spacing {self.spacing} and origin {self.origin} "
                "must have one value per ITK axis"
            )
        if len(self.direction) != ndim * ndim:
            raise ValueError(
                f"Geometry: direction needs {ndim * ndim} values for a {ndim}D image, "
                f"got {len(self.direction)}"
            )
        if not 0 <= self.time_axis < ndim:
            raise ValueError(
                f"time_axis={self.time_axis} is not an axis of a {ndim}D image of ITK size "
                f"{self.size}; pass a value from 0 to {ndim - 1}"
            )
        _frame_axes(self.size, self.time_axis)  # raises when the image is not 2D + time

    @property
    def pixel_type(self) -> str:
        """The file's pixel type in SimpleITK's words, e.g. "16-bit signed integer"."""
        return sitk.GetPixelIDValueAsString(self._reader.GetPixelID())

    @property
    def ndim(self) -> int:
        """Number of ITK axes of the file (3, or 4 with a size-1 axis)."""
        return len(self.size)

    @property
    def frame_axes(self) -> tuple[int, int]:
        """ITK axes holding a frame's rows and columns."""
        return _frame_axes(self.size, self.time_axis)

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """(row, col) spacing of one frame in mm."""
        row, col = self.frame_axes
        return (float(self.spacing[row]), float(self.spacing[col]))

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.size[self.time_axis])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame."""
        row, col = self.frame_axes
        return (int(self.size[row]), int(self.size[col]))

    @classmethod
    def from_reader(cls, reader: sitk.ImageFileReader | sitk.Image, time_axis: int) -> Geometry:
        """Geometry of an image, or of a file whose information a reader has read."""
        return cls(
            size=tuple(int(s) for s in reader.GetSize()),
            spacing=tuple(float(s) for s in reader.GetSpacing()),
            origin=tuple(float(o) for o in reader.GetOrigin()),
            direction=tuple(float(d) for d in reader.GetDirection()),
            time_axis=int(time_axis),
        )

    def with_frames(self, n_frames: int) -> Geometry:
        """The same geometry with ``n_frames`` frames (1 for a first-frame mask file)."""
        size = list(self.size)
        size[self.time_axis] = int(n_frames)
        return Geometry(tuple(size), self.spacing, self.origin, self.direction, self.time_axis)

    def from_frame(self, start: int) -> Geometry:
        """The frames ``start``, ``start + 1``, ... of this geometry: fewer frames, and the
        origin moved along the time axis to frame ``start``."""
        n = len(self.size)
        direction = np.reshape(self.direction, (n, n))
        step = direction[:, self.time_axis] * self.spacing[self.time_axis] * start
        origin = tuple(float(o) for o in np.add(self.origin, step))
        size = list(self.size)
        size[self.time_axis] -= int(start)
        return Geometry(tuple(size), self.spacing, origin, self.direction, self.time_axis)


def _frame_axes(size: tuple[int, ...], time_axis: int) -> tuple[int, int]:
    """(row, col) ITK axes of a frame; see the module docstring for the rule."""
    axes = [k for k in range(len(size)) if k != time_axis]
    if len(axes) > 2:
        axes = [k for k in axes if size[k] != 1]
    if len(axes) != 2:
        raise ValueError(
            f"an image of ITK size {size} with time on ITK axis {time_axis} is not 2D + time: "
            "besides time it needs exactly two axes larger than 1; regtrack reads 2D cine "
            "sequences only (pass time_axis= if time was guessed wrongly)"
        )
    low, high = axes
    return (low, high) if time_axis == 0 else (high, low)


def _array_order(geometry: Geometry) -> tuple[int, ...]:
    """Permutation of a SimpleITK array (reversed ITK axes) to (T, H, W, size-1 axes...)."""
    last = geometry.ndim - 1
    row, col = geometry.frame_axes
    main = (geometry.time_axis, row, col)
    rest = [k for k in range(geometry.ndim) if k not in main]
    return tuple(last - k for k in (*main, *rest))


def _from_file_array(array: np.ndarray, geometry: Geometry, dtype: Any) -> np.ndarray:
    """SimpleITK array (or view) in the file's layout -> new C-contiguous (n, H, W) array."""
    ordered = array.transpose(_array_order(geometry))
    ordered = ordered.reshape(ordered.shape[:3])
    return np.array(ordered, dtype=dtype, order="C", copy=True)


def _to_file_array(frames: np.ndarray, geometry: Geometry, dtype: Any) -> np.ndarray:
    """(n, H, W) -> C-contiguous SimpleITK array in the file's layout."""
    order = _array_order(geometry)
    expanded = frames.reshape(frames.shape + (1,) * (geometry.ndim - 3))
    return np.ascontiguousarray(expanded.transpose(np.argsort(order)), dtype=dtype)


def _image_from_frames(frames: np.ndarray, geometry: Geometry, dtype: Any) -> sitk.Image:
    """SimpleITK image of (n, H, W) frames with ``geometry``'s spacing, origin and direction."""
    image = sitk.GetImageFromArray(_to_file_array(frames, geometry, dtype), isVector=False)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _trackrad_geometry(
    n_frames: int, frame_shape: tuple[int, int], spacing_mm: tuple[float, float]
) -> Geometry:
    """Geometry of a TrackRAD file: ITK size (T, H, W), time spacing 1, identity direction."""
    height, width = frame_shape
    return Geometry(
        size=(int(n_frames), int(height), int(width)),
        spacing=(1.0, float(spacing_mm[0]), float(spacing_mm[1])),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        time_axis=0,
    )


def _default_time_axis(size: tuple[int, ...]) -> int:
    """Time axis when nothing tells: 0 for 3D files (TrackRAD), the last for 4D (NIfTI)."""
    return 0 if len(size) == 3 else len(size) - 1


# --------------------------------------------------------------------------- file access


def _open_reader(path: Path, what: str) -> sitk.ImageFileReader:
    """ImageFileReader with the file's information read; clear errors when it cannot be."""
    if not path.is_file():
        raise ValueError(f"{what} not found: expected a file at {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        reason = _first_line(err)
        if "No such file" in reason:  # SimpleITK's words for a header it cannot parse
            reason = "its header cannot be parsed"
        raise ValueError(
            f"cannot read the {what} {path}: {reason}; the file is truncated or not an image "
            f"({', '.join(IMAGE_SUFFIXES)}): copy or export it again"
        ) from err
    _check_complete(reader, path, what)
    return reader


def _execute(reader: sitk.ImageFileReader, path: Path, what: str) -> sitk.Image:
    """Run a reader, naming the file when SimpleITK fails."""
    try:
        return reader.Execute()
    except RuntimeError as err:
        reason = _first_line(err)
        if "No such file" in reason and path.is_file():  # SimpleITK's words for short data
            reason = "its pixel data ends early"
        raise ValueError(
            f"cannot read the {what} {path}: {reason}; the file is truncated or corrupt (an "
            "interrupted copy?): copy or export it again"
        ) from err


def _check_complete(reader: sitk.ImageFileReader, path: Path, what: str) -> None:
    """ValueError when an uncompressed .mha holds less pixel data than its header says."""
    if path.suffix.lower() != ".mha":
        return
    with path.open("rb") as file:
        head = file.read(8192)
    end = head.find(b"ElementDataFile = LOCAL")
    if end < 0 or b"CompressedData = True" in head[:end]:
        return
    header_bytes = head.index(b"\n", end) + 1
    pixel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), 1)
    item = sitk.GetArrayViewFromImage(pixel).itemsize * reader.GetNumberOfComponents()
    expected = int(np.prod(reader.GetSize())) * item
    found = path.stat().st_size - header_bytes
    if found < expected:
        raise ValueError(
            f"the {what} {path} is truncated: it holds {found} of the {expected} bytes of "
            "pixel data its header announces (an interrupted copy?); copy or export it again"
        )


def _first_line(err: Exception) -> str:
    """The informative part of a SimpleITK error (its last non-empty line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else repr(err)


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with one of :data:`IMAGE_SUFFIXES`."""
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _image_stem(path: Path) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _image_suffix(path: Path) -> str:
    """Image suffix of ``path`` (``.nii.gz`` counts as one)."""
    return path.name[len(_image_stem(path)) :] or ".mha"


# --------------------------------------------------------------------------- FrameReader


class FrameReader:
    """Lazy, streaming access to the frames of a sequence file.

    Frames are read on demand through ``sitk.ImageFileReader`` with an extraction region, so
    a sequence is never loaded whole unless asked (``np.asarray(reader)`` or
    ``reader.read(0, len(reader))``). It behaves like a read-only ``(T, H, W)`` array for
    ``len``, integer and slice indexing, iteration and ``np.asarray``.

    Parameters
    ----------
    path : str or Path
        Sequence file (``.mha``, ``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``).
    time_axis : int, optional
        ITK axis holding time. Default: 0 for 3D files (TrackRAD), the last axis for 4D.
    dtype : dtype, optional
        Type of the returned frames; float32 by default (uint8 for label files).
    chunk_size : int, optional
        Frames per file read when iterating or indexing single frames. Default: 32, or as
        many frames as fit in 256 MiB when time is ITK axis 0, since every read of such a
        file (time is its fastest axis) touches the whole file.
    first_frame : int, optional
        The file's frame that is frame 0 here; the frames before it are left out
        (:meth:`from_frame`).

    Attributes
    ----------
    path : Path
    geometry : Geometry
    dtype : numpy.dtype
    chunk_size : int

    Raises
    ------
    ValueError
        If the file is missing or unreadable, is not 2D + time, or has fewer than 2 frames.
        Reads raise ValueError when a frame holds NaN or inf.

    Examples
    --------
    >>> frames = FrameReader("case/images/case_frames.mha")  # doctest: +SKIP
    >>> frames.read(0, 8).shape  # doctest: +SKIP
    (8, 270, 270)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        time_axis: int | None = None,
        dtype: Any = np.float32,
        chunk_size: int | None = None,
        what: str = "sequence",
        first_frame: int = 0,
    ) -> None:
        self.path, self.what = Path(path), what
        self._reader = _open_reader(self.path, what)
        size = tuple(self._reader.GetSize())
        axis = _default_time_axis(size) if time_axis is None else int(time_axis)
        self.geometry = Geometry.from_reader(self._reader, axis)
        check_spacing(self.geometry.spacing_mm, f"the {what} {self.path}")
        if self.geometry.n_frames < 2:
            raise ValueError(
                f"{what} {self.path} has {self.geometry.n_frames} frame (ITK size {size}, "
                f"time on ITK axis {axis}); tracking needs at least 2 frames. If time is on "
                "another axis, pass time_axis="
            )
        self.first_frame = int(first_frame)
        if not 0 <= self.first_frame <= self.geometry.n_frames - 2:
            raise ValueError(
                f"{what} {self.path} has {self.geometry.n_frames} frames: from frame "
                f"{self.first_frame} on fewer than 2 are left; start at most at frame "
                f"{self.geometry.n_frames - 2}"
            )
        self.geometry = self.geometry.from_frame(self.first_frame)
        self.dtype = np.dtype(dtype)
        self.chunk_size = self._choose_chunk_size(chunk_size)
        self._cache: tuple[int, np.ndarray] | None = None
        logger.debug("opened %s: geometry %s, chunk %d", self.path, self.geometry, self.chunk_size)

    def _choose_chunk_size(self, chunk_size: int | None) -> int:
        """Chunk size to use; see the class docstring."""
        if chunk_size is not None:
            if int(chunk_size) < 1:
                raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
            return int(chunk_size)
        if self.geometry.time_axis != 0:
            return DEFAULT_CHUNK_FRAMES
        height, width = self.geometry.frame_shape
        frame_bytes = height * width * max(self.dtype.itemsize, 4)
        return max(DEFAULT_CHUNK_FRAMES, DEFAULT_CHUNK_BYTES // frame_bytes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W)."""
        return (self.geometry.n_frames, *self.geometry.frame_shape)

    @property
    def pixel_type(self) -> str:
        """The file's pixel type in SimpleITK's words, e.g. "16-bit signed integer"."""
        return sitk.GetPixelIDValueAsString(self._reader.GetPixelID())

    @property
    def ndim(self) -> int:
        """Always 3, like the ``(T, H, W)`` array this stands for."""
        return 3

    def __len__(self) -> int:
        return self.geometry.n_frames

    def __repr__(self) -> str:
        return f"FrameReader({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def read(self, start: int, stop: int) -> np.ndarray:
        """Read frames ``start`` to ``stop - 1`` with one streaming file read.

        Parameters
        ----------
        start, stop : int
            Frame range, ``0 <= start < stop <= len(self)``.

        Returns
        -------
        ndarray, shape (stop - start, H, W)
            C-contiguous, of ``self.dtype``.
        """
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= len(self):
            raise ValueError(
                f"FrameReader.read(start={start}, stop={stop}): need 0 <= start < stop <= "
                f"{len(self)} (the number of frames of {self.path})"
            )
        index = [0] * self.geometry.ndim
        size = list(self.geometry.size)
        index[self.geometry.time_axis] = start + self.first_frame
        size[self.geometry.time_axis] = stop - start
        self._reader.SetExtractIndex(index)
        self._reader.SetExtractSize(size)
        image = _execute(self._reader, self.path, self.what)
        frames = _from_file_array(sitk.GetArrayViewFromImage(image), self.geometry, self.dtype)
        self._check_finite(frames, start + self.first_frame)  # the file's frame numbers
        return frames

    def _check_finite(self, frames: np.ndarray, start: int) -> None:
        """Raise ValueError when a frame of a float chunk holds NaN or inf."""
        if not np.issubdtype(frames.dtype, np.floating):
            return
        bad = ~np.isfinite(frames).reshape(len(frames), -1).all(axis=1)
        if bad.any():
            first = start + int(np.argmax(bad))
            raise ValueError(
                f"sequence {self.path} has NaN or inf values in frame {first} "
                f"({int(bad.sum())} bad frames in [{start}, {start + len(frames)})); "
                "repair the file, e.g. with np.nan_to_num, before tracking"
            )

    def __getitem__(self, item: int | slice | tuple[Any, ...]) -> np.ndarray:
        if isinstance(item, tuple):  # frames[t, rows, cols]: read the frames, then index
            return self[item[0]][(slice(None),) * isinstance(item[0], slice) + item[1:]]
        if isinstance(item, slice):
            return self._read_slice(item)
        t = operator.index(item)
        n = len(self)
        if not -n <= t < n:
            raise IndexError(f"frame {t} is out of range for a sequence of {n} frames")
        t %= n
        start = (t // self.chunk_size) * self.chunk_size
        if self._cache is None or self._cache[0] != start:
            self._cache = (start, self.read(start, min(start + self.chunk_size, n)))
        return self._cache[1][t - start].copy()

    def _read_slice(self, item: slice) -> np.ndarray:
        """Frames selected by a slice, as one (n, H, W) array."""
        start, stop, step = item.indices(len(self))
        if len(range(start, stop, step)) == 0:
            return np.empty((0, *self.geometry.frame_shape), dtype=self.dtype)
        if step == 1:
            return self.read(start, stop)
        return np.stack([self[t] for t in range(start, stop, step)])

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield the frames in order, ``chunk_size`` frames per file read."""
        n = len(self)
        for start in range(0, n, self.chunk_size):
            yield from self.read(start, min(start + self.chunk_size, n))

    def from_frame(self, start: int) -> FrameReader:
        """The same file from frame ``start`` of this reader on, as lazy as this one."""
        return FrameReader(
            self.path,
            time_axis=self.geometry.time_axis,
            dtype=self.dtype,
            chunk_size=self.chunk_size,
            what=self.what,
            first_frame=self.first_frame + int(start),
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        frames = self.read(0, len(self))
        return frames if dtype is None else frames.astype(dtype, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "time_axis": self.geometry.time_axis,
            "dtype": self.dtype,
            "chunk_size": self.chunk_size,
            "what": self.what,
            "first_frame": self.first_frame,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            time_axis=state["time_axis"],
            dtype=state["dtype"],
            chunk_size=state["chunk_size"],
            what=state.get("what", "sequence"),
            first_frame=state.get("first_frame", 0),
        )


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One cine-MRI case: frames, the first frame's mask, and what is known about it.

    Attributes
    ----------
    name : str
        Case name (the TrackRAD case id, or the file name).
    frames : FrameReader or ndarray, shape (T, H, W), float32
        The sequence. Both kinds support ``len``, ``frames[t]``, slicing and ``np.asarray``.
    first_mask : ndarray, shape (H, W), bool
        Mask of frame 0.
    labels : FrameReader or ndarray, shape (T, H, W), uint8, or None
        Ground-truth masks of all frames, when present.
    spacing_mm : tuple of float
        (row, col) pixel spacing in mm.
    geometry : Geometry or None
        Geometry of the sequence file, used to write outputs like it; None for arrays.
    frame_rate_hz : float, optional
    field_strength_t : float, optional
    scanned_region : str, optional
        "thorax", "abdomen" or "pelvis" in TrackRAD.
    files : dict of str, optional
        Where it was read from: ``frames``, ``mask`` and, when present, ``labels`` paths.
    """

    name: str
    frames: FrameReader | np.ndarray
    first_mask: np.ndarray
    labels: FrameReader | np.ndarray | None
    spacing_mm: tuple[float, float]
    geometry: Geometry | None
    frame_rate_hz: float | None = None
    field_strength_t: float | None = None
    scanned_region: str | None = None
    files: dict | None = None


@dataclass(frozen=True)
class _Layout:
    """Files of one case found on disk."""

    name: str
    frames: Path
    mask: Path | None
    labels: Path | None
    metadata_dir: Path | None


def read_case(
    path: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    time_axis: int | None = None,
) -> Case:
    """Read a case from a TrackRAD case folder, the challenge /input folder, or a file.

    Parameters
    ----------
    path : str or Path
        A TrackRAD case folder (``<case>/images/<case>_frames.mha`` ...), the challenge
        container's input folder (``input/images/mri-linacs/*.mha`` ...), or one sequence
        file (``.mha``, ``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``).
    mask : str or Path, optional
        First-frame mask file; required for a single sequence file, overrides the folder's
        own otherwise. Either one frame of the sequence's geometry (size 1 on the time axis)
        or a 2D image whose array is ``(H, W)``.
    labels : str or Path, optional
        Ground-truth sequence file; overrides ``targets/<case>_labels.mha``.
    time_axis : int, optional
        ITK axis of the sequence holding time. By default it is the axis where the mask has
        size 1 and the sequence does not; when that is ambiguous, ITK axis 0 (TrackRAD).

    Returns
    -------
    Case
        ``frames`` (and ``labels``) are lazy :class:`FrameReader` objects; NaN or inf frames
        raise ValueError when they are read.

    Raises
    ------
    ValueError
        When a file is missing or unreadable, the mask is empty, not binary, or does not fit
        the frames (shape or spacing), or the sequence has fewer than 2 frames.
    """
    path = Path(path)
    layout = _find_layout(path)
    mask_path = Path(mask) if mask is not None else layout.mask
    if mask_path is None:
        raise ValueError(
            f"read_case({str(path)!r}) needs the first frame's mask: pass mask=<mask file> "
            "with a single sequence file"
        )
    labels_path = Path(labels) if labels is not None else layout.labels
    frames_info = _open_reader(layout.frames, "sequence")
    mask_info = _open_reader(mask_path, "first-frame mask")
    if time_axis is None:
        time_axis = _detect_time_axis(frames_info.GetSize(), mask_info.GetSize())
    frames = FrameReader(layout.frames, time_axis=time_axis)
    first_mask = read_mask(mask_path, frames.geometry)
    gt = None if labels_path is None else _open_labels(labels_path, frames.geometry)
    metadata = _read_metadata(layout.metadata_dir)
    logger.info("read case %s: %d frames of %s", layout.name, len(frames), frames.shape[1:])
    return Case(
        name=layout.name,
        frames=frames,
        first_mask=first_mask,
        labels=gt,
        spacing_mm=frames.geometry.spacing_mm,
        geometry=frames.geometry,
        files={
            name: str(p.resolve())
            for name, p in (("frames", layout.frames), ("mask", mask_path), ("labels", labels_path))
            if p
        },
        **metadata,
    )


def case_from_frame(case: Case, start: int) -> Case:
    """``case`` tracked from frame ``start``: frames ``start``, ``start + 1``, ... with the
    label of frame ``start`` as the given mask.

    Every frame is mapped onto the frame whose mask is given, so that frame's noise is in
    every answer; a later start is a new draw of it on the same anatomy and motion (a sweep's
    ``starts``). Frames read from a file stay lazy (:meth:`FrameReader.from_frame`).

    Raises
    ------
    ValueError
        When the case has no labels, ``start`` leaves fewer than 2 frames, or the label of
        frame ``start`` is empty.
    """
    if start == 0:
        return case
    check_start(case, start)
    first_mask = as_binary_mask(np.asarray(case.labels[start]), f"the label of frame {start}")
    files = {k: v for k, v in (case.files or {}).items() if k != "mask"}  # the mask: a label
    return Case(
        name=case.name,
        frames=_from_frame(case.frames, start),
        first_mask=first_mask,
        labels=_from_frame(case.labels, start),
        spacing_mm=case.spacing_mm,
        geometry=None if case.geometry is None else case.geometry.from_frame(start),
        frame_rate_hz=case.frame_rate_hz,
        field_strength_t=case.field_strength_t,
        scanned_region=case.scanned_region,
        files=files,
    )


def check_start(case: Case, start: int) -> None:
    """ValueError unless ``case`` can be tracked from frame ``start`` (reads no frame): a
    start other than 0 needs the case's labels and 2 frames from it on."""
    n_frames = len(case.frames)
    if start and case.labels is None:
        raise ValueError(
            f"case {case.name} has no labels: tracking it from frame {start} needs the label "
            f"of that frame (targets/{case.name}_labels.mha); start it from frame 0 only"
        )
    if not 0 <= start <= n_frames - 2:
        raise ValueError(
            f"case {case.name} has {n_frames} frames: a start at frame {start} leaves fewer "
            f"than 2; start at most at frame {n_frames - 2}"
        )


def _from_frame(frames: FrameReader | np.ndarray, start: int) -> FrameReader | np.ndarray:
    return frames.from_frame(start) if isinstance(frames, FrameReader) else frames[start:]


def _find_layout(path: Path) -> _Layout:
    """Recognise the layout at ``path``; ValueError naming the expected files otherwise."""
    if not path.exists():
        raise ValueError(
            f"{path} does not exist; pass a TrackRAD case folder, a challenge input folder "
            "or a sequence file"
        )
    if path.is_file():
        return _Layout(_image_stem(path), path, None, None, None)
    if (path / _CONTAINER_SEQUENCE_DIR).is_dir():
        return _container_layout(path)
    if (path / "images").is_dir():
        return _case_folder_layout(path)
    raise ValueError(
        f"{path} is neither a TrackRAD case folder (expected "
        f"{path / 'images' / (path.name + '_frames.mha')}) nor a challenge input folder "
        f"(expected {path / _CONTAINER_SEQUENCE_DIR}/<sequence>.mha)"
    )


def _container_layout(folder: Path) -> _Layout:
    """Files of the challenge container's input folder."""
    frames = _single_image(folder / _CONTAINER_SEQUENCE_DIR, "sequence")
    mask = _single_image(folder / _CONTAINER_MASK_DIR, "first-frame mask")
    name = _image_stem(frames).removesuffix("_frames")
    return _Layout(name, frames, mask, None, folder)


def _case_folder_layout(folder: Path) -> _Layout:
    """Files of a TrackRAD case folder (<case>/images, <case>/targets, json files)."""
    expected = folder / "images" / f"{folder.name}_frames.mha"
    frames = expected
    if not expected.is_file():
        found = [p for p in sorted((folder / "images").glob("*_frames.*")) if _is_image_file(p)]
        if len(found) != 1:
            raise ValueError(
                f"sequence not found: expected a file at {expected} (found "
                f"{len(found)} *_frames files in {folder / 'images'})"
            )
        frames = found[0]
    prefix = _image_stem(frames).removesuffix("_frames")
    targets = folder / "targets"
    labels = targets / f"{prefix}_labels.mha"
    return _Layout(
        name=prefix,
        frames=frames,
        mask=targets / f"{prefix}_first_label.mha",
        labels=labels if labels.is_file() else None,
        metadata_dir=folder,
    )


def _single_image(folder: Path, what: str) -> Path:
    """The one image file in ``folder``."""
    found = sorted(p for p in folder.iterdir() if _is_image_file(p)) if folder.is_dir() else []
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(
            f"{what} not found: expected exactly one image file ({', '.join(IMAGE_SUFFIXES)}) "
            f"in {folder}, found {names}"
        )
    return found[0]


def _detect_time_axis(seq_size: tuple[int, ...], mask_size: tuple[int, ...]) -> int | None:
    """ITK axis where the mask has size 1 and the sequence not, all else equal; else None."""
    padded = tuple(mask_size) + (1,) * (len(seq_size) - len(mask_size))
    if len(padded) != len(seq_size):
        return None
    candidates = [
        k
        for k in range(len(seq_size))
        if padded[k] == 1 < seq_size[k]
        and all(padded[j] == seq_size[j] for j in range(len(seq_size)) if j != k)
    ]
    if len(candidates) == 1:
        logger.debug("time axis from mask size %s: ITK axis %d", mask_size, candidates[0])
        return candidates[0]
    logger.info(
        "cannot tell the time axis from mask size %s and sequence size %s; using the default",
        mask_size,
        seq_size,
    )
    return None


def _open_labels(path: Path, geometry: Geometry) -> FrameReader:
    """Ground-truth sequence, checked to match the frames' geometry."""
    labels = FrameReader(path, time_axis=geometry.time_axis, dtype=np.uint8, what="labels")
    if labels.geometry.size != geometry.size:
        raise ValueError(
            f"labels {path} have ITK size {labels.geometry.size} but the sequence has "
            f"{geometry.size}; pass the labels of this sequence"
        )
    _check_spacing(labels.geometry.spacing_mm, geometry.spacing_mm, f"labels {path}")
    return labels


def _read_metadata(folder: Path | None) -> dict[str, Any]:
    """frame rate, field strength and scanned region from a case's json files (None if absent)."""
    if folder is None:
        return {}
    rate = _read_json(folder / _FRAME_RATE_JSON, (int, float))
    if rate is not None:
        try:
            rate = check_frame_rate(rate, f"the frame rate in {folder / _FRAME_RATE_JSON}")
        except ValueError as err:
            warnings.warn(
                f"{err}; ignoring it (offline tracking does not need it; `realtime` then "
                "needs --frame-rate)",
                RuntimeWarning,
                stacklevel=4,
            )
            rate = None
    field = _read_json(folder / _FIELD_STRENGTH_JSON, (int, float))
    region = _read_json(folder / _SCANNED_REGION_JSON, (str,))
    return {
        "frame_rate_hz": None if rate is None else float(rate),
        "field_strength_t": None if field is None else float(field),
        "scanned_region": region,
    }


def _read_json(path: Path, types: tuple[type, ...]) -> Any:
    """One json value of one of ``types``; None when the file is absent."""
    if not path.is_file():
        logger.info("no %s; leaving it unset", path)
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}; it must hold one json value") from err
    if isinstance(value, bool) or not isinstance(value, types):
        kinds = " or ".join(t.__name__ for t in types)
        # a bad file is a bad value, not a bad argument type: ValueError like other file errors
        raise ValueError(f"{path} must hold a single {kinds} value, got {value!r}")  # noqa: TRY004
    return value


# --------------------------------------------------------------------------- masks


def read_mask(path: str | os.PathLike[str], geometry: Geometry) -> np.ndarray:
    """Read a first-frame mask that belongs to a sequence of the given geometry.

    Parameters
    ----------
    path : str or Path
        Mask file: one frame in the sequence's layout (size 1 on the time axis, e.g. a
        TrackRAD ``(W, H, 1)`` first label), or a 2D image whose array is ``(H, W)``.
    geometry : Geometry
        Geometry of the sequence (``FrameReader.geometry``).

    Returns
    -------
    ndarray, shape (H, W), bool

    Raises
    ------
    ValueError
        If the file is missing or unreadable, does not match the frames in shape or spacing
        (tolerance 1e-3 mm), is empty, or has more than two values. A 0/k mask (e.g. 0/255)
        is accepted with a RuntimeWarning.
    """
    path = Path(path)
    reader = _open_reader(path, "first-frame mask")
    sizes, spacing = reader.GetSize(), reader.GetSpacing()
    check_spacing([s for n, s in zip(sizes, spacing) if n > 1], f"the first-frame mask {path}")
    image = _execute(reader, path, "first-frame mask")
    values, spacing_mm = _mask_frame(image, geometry, path)
    _check_spacing(spacing_mm, geometry.spacing_mm, f"mask {path}")
    return as_binary_mask(values, f"mask {path}")


def _mask_frame(
    image: sitk.Image, geometry: Geometry, path: Path
) -> tuple[np.ndarray, tuple[float, float]]:
    """The (H, W) values of a mask image and its (row, col) spacing."""
    size, spacing = image.GetSize(), image.GetSpacing()
    array = sitk.GetArrayFromImage(image)
    if len(size) == 2 and array.shape == geometry.frame_shape:
        return array, (float(spacing[1]), float(spacing[0]))
    one_frame = geometry.with_frames(1)
    padding = one_frame.ndim - len(size)
    if len(size) >= 3 and padding >= 0 and tuple(size) + (1,) * padding == one_frame.size:
        frame = _from_file_array(array.reshape((1,) * padding + array.shape), one_frame, None)
        row, col = geometry.frame_axes
        return frame[0], (float(spacing[row]), float(spacing[col]))
    height, width = geometry.frame_shape
    raise ValueError(
        f"mask {path} has ITK size {tuple(size)} but the frames are {height} x {width} "
        f"(H x W; sequence ITK size {geometry.size}, time on ITK axis {geometry.time_axis}): "
        f"expected ITK size {one_frame.size} or a 2D image of ITK size ({width}, {height}). "
        "Pass the first-frame mask of this sequence, or time_axis= if time was guessed wrongly"
    )


def _check_spacing(found: tuple[float, float], expected: tuple[float, float], what: str) -> None:
    """ValueError when two (row, col) spacings differ by more than the tolerance."""
    if max(abs(a - b) for a, b in zip(found, expected)) > SPACING_TOLERANCE_MM:
        raise ValueError(
            f"{what} has (row, col) spacing {found} mm but the frames have {expected} mm "
            f"(tolerance {SPACING_TOLERANCE_MM} mm); resample it onto the frames' grid"
        )


# --------------------------------------------------------------------------- arrays


def case_from_arrays(
    frames: np.ndarray,
    first_mask: np.ndarray,
    *,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    name: str = "array",
    labels: np.ndarray | None = None,
) -> Case:
    """Build a :class:`Case` from arrays, checking them as :func:`read_case` checks files.

    Parameters
    ----------
    frames : array_like, shape (T, H, W)
        The sequence; copied to C-contiguous float32. T must be at least 2.
    first_mask : array_like, shape (H, W)
        Mask of frame 0, 0/1 (0/k is accepted with a RuntimeWarning).
    spacing_mm : tuple of float, optional
        (row, col) pixel spacing in mm.
    name : str, optional
    labels : array_like, shape (T, H, W), optional
        Ground-truth masks, 0/1; returned as uint8.

    Returns
    -------
    Case
        With ``geometry=None``.

    Raises
    ------
    ValueError
        On a wrong shape, fewer than 2 frames, NaN or inf frames, an empty or non-binary
        mask, or a non-positive spacing.

    Examples
    --------
    >>> frames = np.random.rand(3, 8, 9).astype(np.float32)
    >>> mask = np.zeros((8, 9), bool); mask[2:5, 3:6] = True
    >>> case_from_arrays(frames, mask).frames.shape
    (3, 8, 9)
    """
    frames = _checked_frames(frames)
    mask = np.asarray(first_mask)
    if mask.shape != frames.shape[1:]:
        raise ValueError(
            f"case_from_arrays(): first_mask has shape {mask.shape} but a frame is "
            f"{frames.shape[1:]} (frames are (T, H, W)); pass the (H, W) mask of frame 0"
        )
    return Case(
        name=str(name),
        frames=frames,
        first_mask=as_binary_mask(mask, "first_mask"),
        labels=None if labels is None else _checked_labels(labels, frames.shape),
        spacing_mm=_checked_spacing(spacing_mm),
        geometry=None,
    )


def _checked_frames(frames: Any) -> np.ndarray:
    """(T, H, W) frames as C-contiguous float32, checked."""
    array = np.asarray(frames)
    if array.ndim != 3:
        raise ValueError(
            f"frames must be 3D (T, H, W), but they are {array.ndim}D with shape {array.shape}"
        )
    if len(array) < 2:
        raise ValueError(f"frames have shape {array.shape}: tracking needs at least 2 frames")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if bad.any():
        raise ValueError(
            f"frames hold NaN or inf values (first in frame {int(np.argmax(bad))}, "
            f"{int(bad.sum())} frames in all); replace them, e.g. with np.nan_to_num"
        )
    return array


def _checked_labels(labels: Any, shape: tuple[int, ...]) -> np.ndarray:
    """(T, H, W) ground truth as C-contiguous uint8 0/1."""
    array = np.asarray(labels)
    if array.shape != shape:
        raise ValueError(
            f"labels have shape {array.shape} but the frames are {shape}; pass (T, H, W) labels"
        )
    return np.ascontiguousarray(as_binary_mask(array, "labels", allow_empty=True), dtype=np.uint8)


def _checked_spacing(spacing_mm: Any) -> tuple[float, float]:
    """(row, col) spacing as two positive finite floats."""
    values = tuple(float(s) for s in np.ravel(spacing_mm))
    if len(values) != 2:
        raise ValueError(
            f"spacing_mm must be two positive numbers (row, col) in mm, got {spacing_mm!r}"
        )
    row, col = check_spacing(values, "spacing_mm")
    return (row, col)


# --------------------------------------------------------------------------- writing


def write_masks(
    path: str | os.PathLike[str],
    masks: np.ndarray,
    *,
    geometry: Geometry | None,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
) -> Path:
    """Write predicted masks as a compressed uint8 file shaped exactly like the input.

    The file gets the input's ITK size, spacing, origin, direction and time axis. It is
    written to a temporary folder beside ``path`` and moved into place with ``os.replace``,
    so no half-written output is ever left at ``path``.

    Parameters
    ----------
    path : str or Path
        Output file; its suffix picks the format (``.mha`` for the challenge). Missing
        parent folders are created.
    masks : ndarray, shape (T, H, W)
        0/1 or bool masks; a ``np.memmap`` works.
    geometry : Geometry or None
        Geometry of the input sequence (``case.geometry``). None writes the TrackRAD layout
        (time on ITK axis 0) with ``spacing_mm``.
    spacing_mm : tuple of float, optional
        (row, col) spacing, used only when ``geometry`` is None.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the masks do not match the geometry or hold values other than 0 and 1; nothing is
        written then.
    """
    path = Path(path)
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be 3D (T, H, W), but they have shape {masks.shape}")
    if geometry is None:
        geometry = _trackrad_geometry(len(masks), masks.shape[1:], _checked_spacing(spacing_mm))
    expected = (geometry.n_frames, *geometry.frame_shape)
    if masks.shape != expected:
        raise ValueError(
            f"masks have shape {masks.shape} but the input sequence is {expected} (T, H, W); "
            "write one mask per input frame"
        )
    _check_zero_one(masks)
    _write_image(_image_from_frames(masks, geometry, np.uint8), path, compress=True)
    logger.info("wrote %d masks to %s", len(masks), path)
    return path


def _check_zero_one(masks: np.ndarray, chunk: int = 64) -> None:
    """ValueError when masks hold values other than 0 and 1 (checked a chunk at a time)."""
    if masks.dtype == bool:
        return
    for start in range(0, len(masks), chunk):
        block = masks[start : start + chunk]
        bad = (block != 0) & (block != 1)
        if bad.any():
            raise ValueError(
                f"masks must hold only 0 and 1, but frame {start + int(np.argmax(bad.any((1, 2))))}"
                f" holds {block[bad][0]!r}; pass (masks > 0) for a binary mask (a 0/255 output "
                "breaks the official metrics)"
            )


def _write_image(image: sitk.Image, path: Path, *, compress: bool) -> None:
    """Write through a temporary folder beside ``path``, then move the file(s) into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(scratch / path.name), useCompression=compress)
        # data files (.raw/.zraw of a .mhd) first, the named file last
        for written in sorted(scratch.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, path.parent / written.name)
    except RuntimeError as err:
        raise ValueError(f"cannot write {path}: SimpleITK says: {_first_line(err)}") from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_json(path: Path, value: Any) -> None:
    """Write one json value atomically."""
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(json.dumps(value, allow_nan=False))
    os.replace(scratch, path)


def write_trackrad_case(
    directory: str | os.PathLike[str],
    name: str,
    frames: np.ndarray,
    first_mask: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    frame_rate_hz: float = 4.0,
    field_strength_t: float = 0.35,
    scanned_region: str = "abdomen",
) -> Path:
    """Write arrays as a TrackRAD case folder ``directory/name``.

    Frames go to ``images/<name>_frames.mha`` as float32 (uncompressed, for fast streaming)
    in the TrackRAD convention: time on ITK axis 0, so the SimpleITK array is ``(W, H, T)``.
    The first mask goes to ``targets/<name>_first_label.mha`` (array ``(W, H, 1)``), labels
    to ``targets/<name>_labels.mha`` (both uint8, compressed), and the metadata to
    ``frame-rate.json``, ``b-field-strength.json`` and ``scanned-region.json``.

    Parameters
    ----------
    directory : str or Path
        Folder that receives the case folder.
    name : str
        Case name, e.g. ``"A_001"``.
    frames : array_like, shape (T, H, W)
    first_mask : array_like, shape (H, W)
    labels : array_like, shape (T, H, W), optional
    spacing_mm : tuple of float, optional
        (row, col) spacing in mm.
    frame_rate_hz, field_strength_t : float, optional
    scanned_region : str, optional

    Returns
    -------
    Path
        The case folder.

    Raises
    ------
    ValueError
        On invalid inputs (as :func:`case_from_arrays`) or a bad name; nothing is written.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name must be a plain folder name such as 'A_001', got {name!r}")
    from .runfolder import writing

    check_frame_rate(frame_rate_hz)
    case = case_from_arrays(frames, first_mask, spacing_mm=spacing_mm, name=name, labels=labels)
    folder = Path(directory) / name
    geometry = _trackrad_geometry(len(case.frames), case.first_mask.shape, case.spacing_mm)
    files = {
        "frames": folder / "images" / f"{name}_frames.mha",
        "mask": folder / "targets" / f"{name}_first_label.mha",
        "labels": folder / "targets" / f"{name}_labels.mha",
        "rate": folder / _FRAME_RATE_JSON,
        "field": folder / _FIELD_STRENGTH_JSON,
        "region": folder / _SCANNED_REGION_JSON,
    }
    if case.labels is None:
        del files["labels"]
    with writing(files.values(), fix=f"write the case under another name than {name!r}"):
        _write_image(
            _image_from_frames(case.frames, geometry, np.float32), files["frames"], compress=False
        )
        _write_image(
            _image_from_frames(case.first_mask[None], geometry.with_frames(1), np.uint8),
            files["mask"],
            compress=True,
        )
        if case.labels is not None:
            write_masks(files["labels"], case.labels, geometry=geometry)
        _write_json(files["rate"], float(frame_rate_hz))
        _write_json(files["field"], float(field_strength_t))
        _write_json(files["region"], str(scanned_region))
    return folder


def output_path_for(input_path: str | os.PathLike[str]) -> Path:
    """Where the masks predicted for an input belong.

    Parameters
    ----------
    input_path : str or Path
        What was given to :func:`read_case`.

    Returns
    -------
    Path
        * challenge input folder ``.../input`` (or a file inside it):
          ``.../output/images/mri-linac-series-targets/output.mha``;
        * TrackRAD case folder ``<case>``: ``<case>/output.mha``;
        * single sequence file ``<dir>/<stem><suffix>``: ``<dir>/<stem>_output<suffix>``
          (same format as the input).
    """
    path = Path(input_path)
    root = _container_root(path)
    if root is not None:
        return container_output_path(root.parent / "output")
    if path.is_dir():
        return path / "output.mha"
    return path.with_name(f"{_image_stem(path)}_output{_image_suffix(path)}")


def container_output_path(output_dir: str | os.PathLike[str]) -> Path:
    """The masks file the challenge expects in its output folder (``/output``)."""
    return Path(output_dir) / _CONTAINER_OUTPUT_FILE


def _container_root(path: Path) -> Path | None:
    """The challenge input folder ``path`` is, or whose sequence folder holds ``path``."""
    if (path / _CONTAINER_SEQUENCE_DIR).is_dir() or (path.name == "input" and not path.is_file()):
        return path
    root = path.parent.parent.parent
    if path.is_file() and path.parent == root / _CONTAINER_SEQUENCE_DIR:
        return root
    return None
