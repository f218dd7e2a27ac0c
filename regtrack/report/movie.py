"""The overlay movie: every frame with the predicted and true contours, its time and source.

Frames are drawn with Pillow (a dependency of matplotlib and imageio) rather than matplotlib:
a figure per frame costs ~50 ms, a Pillow draw ~2 ms, and a 250-frame report must take
seconds. Encoding is imageio's ffmpeg writer (H.264 MP4) or its GIF writer.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np

from .data import RunData, is_fallback, missed_deadline

__all__ = ["SOURCE_COLOURS", "movie_fps", "render_frame", "write_movie"]

logger = logging.getLogger(__name__)

#: Contour and badge colour per kind of answer (colour-blind-safe against the cyan truth).
SOURCE_COLOURS = {
    "given": (170, 130, 255),
    "registration": (255, 210, 30),
    "sam": (255, 140, 0),  # the SAM2.1 tracker answering by choice (method "sam")
    "fallback": (255, 70, 70),
    "missing": (150, 150, 150),
}
TRUTH_COLOUR = (0, 229, 255)
#: Longest side of the drawn image in pixels: readable on a laptop, small as H.264.
DISPLAY_SIZE = 640
#: The same for a GIF: a GIF compresses MR noise badly (LZW, 256 colours), so it is drawn
#: smaller (about 25 MB for 250 frames instead of 110 MB at full size).
GIF_DISPLAY_SIZE = 320
_BAND = 48  # caption band above the image, px
_BLOCK = 16  # H.264 wants frame sides divisible by 16


def source_kind(record: dict | None) -> str:
    """ "given", "registration", "sam" (the SAM2.1 tracker by choice), "fallback" or "missing"
    (frame not answered)."""
    if record is None:
        return "missing"
    return "fallback" if is_fallback(record) else str(record["source"])


def movie_fps(frame_rate_hz: float | None) -> float:
    """Playback rate: real time when the acquisition rate is known, kept within 2-30 fps."""
    return float(min(max(frame_rate_hz or 4.0, 2.0), 30.0))


class _Canvas:
    """Fixed layout of one movie frame: the whole frame on the left, a zoom on the target
    and the frame's numbers on the right, a caption band on top."""

    def __init__(
        self,
        frame_shape: tuple[int, int],
        focus: tuple[slice, slice] | None,
        display_size: int = DISPLAY_SIZE,
    ) -> None:
        from PIL import ImageFont

        height, width = frame_shape
        self.scale = display_size / max(height, width)
        self.image_size = (round(width * self.scale), round(height * self.scale))  # (w, h)
        self.focus = focus
        self.panel = display_size // 2 if focus is not None else 0
        self.size = (
            _round_up(self.image_size[0] + self.panel, _BLOCK),
            _round_up(max(self.image_size[1], self.panel + 120) + _BAND, _BLOCK),
        )
        self.font = _font(ImageFont, 18)
        self.small = _font(ImageFont, 14)


def focus_box(masks, frame_shape: tuple[int, int], margin: float = 0.35) -> tuple[slice, slice]:
    """A fixed square around everywhere the target goes, for the zoom panel.

    Parameters
    ----------
    masks : iterable of ndarray (T, H, W)
        Prediction and ground-truth stacks; their union over time sets the box.
    frame_shape : (int, int)
    margin : float
        Extra room on each side, as a fraction of the box's side.
    """
    union = np.zeros(frame_shape, dtype=bool)
    for stack in masks:
        for start in range(0, len(stack), 64):
            union |= np.asarray(stack[start : start + 64]).any(axis=0)
    if not union.any():
        return slice(0, frame_shape[0]), slice(0, frame_shape[1])
    rows, cols = np.nonzero(union)
    side = max(np.ptp(rows), np.ptp(cols), 8) * (1 + 2 * margin)
    side = int(min(np.ceil(side), *frame_shape))
    centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    box = []
    for c, n in zip(centre, frame_shape):
        start = int(np.clip(round(c - side / 2), 0, n - side))
        box.append(slice(start, start + side))
    return box[0], box[1]


def _font(module, size: int):
    try:  # Pillow >= 10.1 scales its built-in font when FreeType is there
        return module.load_default(size=size)
    except (TypeError, OSError):
        return module.load_default()


def _round_up(value: int, block: int) -> int:
    return -(-int(value) // block) * block


def _grey(frame: np.ndarray) -> np.ndarray:
    """uint8 grey levels, 0.5-99.5 percentile window of this frame (MR scaling varies)."""
    low, high = np.percentile(frame, (0.5, 99.5))
    scaled = (np.asarray(frame, dtype=np.float32) - low) / max(float(high - low), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a binary mask as (n, 2) arrays of (col, row), pixel centres at ints.

    contourpy ships with matplotlib; the 0.5 level of the 0/1 image runs half-way between
    inside and outside pixel centres, the mask's true edge.
    """
    import contourpy

    if not mask.any():
        return []
    rows, cols = np.nonzero(mask)
    r0, c0 = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
    crop = np.asarray(mask[r0 : rows.max() + 2, c0 : cols.max() + 2], dtype=np.float64)
    crop = np.pad(crop, 1)  # closes outlines that touch the crop's edge
    lines = contourpy.contour_generator(z=crop).lines(0.5)
    return [line + (c0 - 1, r0 - 1) for line in lines]


def render_frame(
    canvas: _Canvas,
    frame: np.ndarray | None,
    predicted: np.ndarray | None,
    truth: np.ndarray | None,
    caption: str,
    kind: str,
    details: list[str] = (),
    label: str | None = None,
) -> np.ndarray:
    """One movie frame as an (h, w, 3) uint8 RGB array.

    Parameters
    ----------
    canvas : _Canvas
    frame : ndarray (H, W) or None
        The MR frame; None draws the contours on black (input not available).
    predicted, truth : ndarray (H, W) or None
        Masks whose outlines are drawn: the prediction in the source's colour, the truth
        in cyan on top of it (thinner, so both show where they agree).
    caption : str
        Frame number and time.
    kind : str
        Key of ``SOURCE_COLOURS``; shown as a coloured badge.
    details : list of str
        Lines of per-frame numbers printed under the zoom panel.
    label : str, optional
        Badge text (default ``kind``), e.g. "fallback: previous".
    """
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", canvas.size, (20, 20, 20))
    draw = ImageDraw.Draw(picture)
    grey = None if frame is None else _grey(frame)
    outlines = [
        (m, c, w)
        for m, c, w in ((predicted, SOURCE_COLOURS[kind], 3), (truth, TRUTH_COLOUR, 1))
        if m is not None
    ]
    _draw_view(picture, draw, grey, outlines, None, canvas.scale, (0, _BAND))
    if canvas.focus is not None:
        rows, cols = canvas.focus
        zoom = canvas.panel / (rows.stop - rows.start)
        origin = (canvas.image_size[0], _BAND)
        _draw_view(picture, draw, grey, outlines, canvas.focus, zoom, origin)
        draw.rectangle(
            [
                (cols.start * canvas.scale, rows.start * canvas.scale + _BAND),
                (cols.stop * canvas.scale - 1, rows.stop * canvas.scale + _BAND - 1),
            ],
            outline=(200, 200, 200),
        )
        for k, line in enumerate(details):
            xy = (origin[0] + 10, _BAND + canvas.panel + 8 + 20 * k)
            draw.text(xy, line, fill=(230, 230, 230), font=canvas.small)
    _draw_band(draw, canvas, caption, kind, label or kind, truth is not None)
    return np.asarray(picture)


def _draw_view(picture, draw, grey, outlines, box, scale, origin) -> None:
    """Paste (a crop of) the frame at ``origin`` scaled by ``scale`` and outline the masks."""
    from PIL import Image

    if grey is not None:
        crop = grey if box is None else grey[box]
        size = (round(crop.shape[1] * scale), round(crop.shape[0] * scale))
        image = Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR)
        picture.paste(image.convert("RGB"), origin)
    for mask, colour, width in outlines:
        for line in _contours(mask if box is None else mask[box]):
            # pixel centre i sits at (i + 0.5) * scale in the resized image
            points = (line + 0.5) * scale + origin
            draw.line([tuple(p) for p in points], fill=colour, width=width, joint="curve")


def _draw_band(
    draw, canvas: _Canvas, caption: str, kind: str, label: str, with_truth: bool
) -> None:
    """Caption band: frame and time, the source badge, a colour legend."""
    draw.text((8, 4), caption, fill=(240, 240, 240), font=canvas.font)
    badge = draw.textbbox((14, 27), label, font=canvas.small)
    draw.rectangle((8, 25, badge[2] + 6, badge[3] + 3), fill=SOURCE_COLOURS[kind])
    draw.text((14, 27), label, fill=(0, 0, 0), font=canvas.small)
    legend = [("prediction", SOURCE_COLOURS["registration"])]
    if kind == "fallback":
        legend[0] = ("prediction (fallback)", SOURCE_COLOURS["fallback"])
    if with_truth:
        legend.append(("ground truth", TRUTH_COLOUR))
    x = canvas.size[0] - 8
    for text, colour in reversed(legend):
        x -= draw.textlength(text, font=canvas.small)
        draw.text((x, 27), text, fill=colour, font=canvas.small)
        draw.line((x - 22, 36, x - 6, 36), fill=colour, width=3)
        x -= 34


def _caption(index: int, n_frames: int, time: float, unit: str) -> str:
    when = f"t = {time:.2f} s" if unit == "s" else "frame rate unknown"
    return f"frame {index} / {n_frames - 1}   {when}"


def _details(record: dict | None, width: int = 40) -> list[str]:
    """The numbers of one frame's record, for the panel under the zoom (``width`` chars)."""
    if record is None:
        return textwrap.wrap("not answered (run incomplete)", width)
    lines = []
    metric, iterations = record.get("metric_value"), record.get("iterations")
    if isinstance(metric, (int, float)) and np.isfinite(metric):
        lines += [f"metric {metric:.4f}", f"{iterations} iterations"]
    budget = _finite(record.get("budget_ms"))
    of = "" if budget is None else f" of {budget:.0f}"
    if record.get("elapsed_ms"):
        lines.append(f"{record['elapsed_ms']:.0f}{of} ms")
    if missed_deadline(record):
        lines.append(f"deadline{of} ms MISSED")
    if record.get("area_px") is not None:
        lines.append(f"area {record['area_px']} px")
    sam_score = _finite(record.get("sam_score"))
    if sam_score is not None:  # only when the SAM2.1 tracker ran on this frame
        lines.append(f"SAM score {sam_score:.3f}")
    reason = str(record.get("reason") or "")
    if reason:  # the gate's or the fallback's reason, wrapped to the panel's width
        lines += textwrap.wrap(f"reason: {reason}", width)[:5]
    return lines


def _finite(value) -> float | None:
    """A record's number, or None when it is missing or NaN (not measured on this frame)."""
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def iter_movie_frames(run: RunData, display_size: int = DISPLAY_SIZE):
    """Yield the RGB movie frames of a run, one per frame of the sequence.

    Parameters
    ----------
    run : RunData
    display_size : int
        Longest side of the whole-frame view in pixels; the zoom panel is half as wide.
    """
    stacks = [run.masks] + ([run.labels] if run.labels is not None else [])
    shape = run.masks.shape[1:]
    canvas = _Canvas(shape, focus_box(stacks, shape), display_size)
    width = max(14, canvas.panel // 8)  # characters per line under the zoom
    times, unit = run.times()
    frames_iter = iter(run.frames) if run.frames is not None else None
    labels_iter = iter(run.labels) if run.labels is not None else None
    for t in range(run.n_frames):
        frame = next(frames_iter) if frames_iter is not None else None
        truth = next(labels_iter) if labels_iter is not None else None
        record = run.records[t] if t < run.n_done else None
        predicted = run.masks[t] if record is not None else None
        caption = _caption(t, run.n_frames, float(times[t]), unit)
        kind = source_kind(record)
        label = f"fallback: {record['source']}" if kind == "fallback" else kind
        details = _details(record, width)
        yield render_frame(canvas, frame, predicted, truth, caption, kind, details, label)


def write_movie(run: RunData, path: str | Path, *, fps: float | None = None) -> Path:
    """Write the overlay movie: MP4 (H.264) or, for a ``.gif`` path, an animated GIF.

    Parameters
    ----------
    run : RunData
    path : path
        ``.mp4`` or ``.gif``.
    fps : float, optional
        Playback rate; default :func:`movie_fps` of the acquisition rate.

    Returns
    -------
    Path
    """
    import imageio.v2 as imageio

    path = Path(path)
    fps = float(fps or movie_fps(run.frame_rate_hz))
    gif = path.suffix.lower() == ".gif"
    if gif:
        # loop forever; a GIF frame time is in ms
        writer = imageio.get_writer(path, mode="I", duration=1000.0 / fps, loop=0)
    else:
        writer = imageio.get_writer(
            path,
            format="FFMPEG",
            fps=fps,
            codec="libx264",
            quality=5,
            macro_block_size=_BLOCK,
            ffmpeg_log_level="error",
            output_params=["-preset", "veryfast", "-movflags", "+faststart"],
        )
    with writer:
        for image in iter_movie_frames(run, GIF_DISPLAY_SIZE if gif else DISPLAY_SIZE):
            writer.append_data(image)
    logger.info("wrote %s (%d frames at %.1f fps)", path, run.n_frames, fps)
    return path
