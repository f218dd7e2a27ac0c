"""SAM2.1 video tracking of the frame-0 mask, streaming, with bounded memory.

:func:`load_sam2_video` builds sam2's ``SAM2VideoPredictor`` from the config the sam2
package ships for the checkpoint's size (``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``,
size read from the weights) with the hydra overrides ``build_sam2_video_predictor``
applies, and loads an official or fine-tuned SAM2.1 checkpoint (``{"model": state_dict}``)
strictly. :class:`SamTracker` then drives ``SAM2Base.track_step`` one frame at a time:
frame 0 is prompted with its mask (as ``add_new_mask`` does), every later frame is tracked
from the memory of frame 0 and of the frames just before it, never from a later frame.

Memory is bounded whatever the sequence length. For the next frame ``track_step`` reads
the spatial memory of the conditioning frame 0 and of the last ``num_maskmem - 1`` frames
(6 for SAM2.1), and the object pointer (one 256-vector) of the last
``max_obj_ptrs_in_encoder - 1`` frames (15). The tracker keeps exactly that: older frames
are dropped, frames outside the spatial window keep only their pointer, and no image
features are cached. So at most 16 frame states are held (:attr:`SamTracker.stored_frames`),
at most 7 with spatial memory (:attr:`SamTracker.memory_frames`); given the sequence length
(``num_frames``), the answers equal those of ``SAM2VideoPredictor.propagate_in_video`` run
on the whole sequence.

``image_size`` trades fidelity for speed. 1024 is SAM2's own input. Smaller multiples of
32 work: the Hiera position embedding is interpolated to the token grid, the memory
attention's RoPE is computed for the smaller grid (set through the hydra overrides
``feat_sizes``), and the prompt encoder and mask decoder follow ``image_size``. But RoPE
counts tokens, so at 512 one position step spans twice the image distance SAM2 was trained
with, and the encoder sees objects at half the scale: a smaller size is a different
operating point whose accuracy has to be measured, not assumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import check_frame, check_frames, check_mask
from .extras import need_extra

if TYPE_CHECKING:  # torch and sam2 are imported on first use: `import regtrack` stays cheap
    import torch

__all__ = ["DEFAULT_IMAGE_SIZE", "SamAnswer", "SamTracker", "load_sam2_video", "track_sam"]

logger = logging.getLogger(__name__)

#: SAM2's own model input side.
DEFAULT_IMAGE_SIZE = 1024
#: Per-frame intensity percentiles mapped to 0 and 1: cine-MRI has no fixed intensity scale,
#: gain changes frame to frame, and a few bright pixels (vessels, fat) would squash min-max.
INTENSITY_PERCENTILES = (0.5, 99.5)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # sam2's video loader normalises with these
_IMAGENET_STD = (0.229, 0.224, 0.225)
_LONG_SEQUENCE = 2**31 - 1  # num_frames for track_step when the length is unknown
_FIX_HINT = (
    "get an official SAM2.1 checkpoint (sam2.1_hiera_tiny.pt, sam2.1_hiera_small.pt, "
    "sam2.1_hiera_base_plus.pt or sam2.1_hiera_large.pt, as the sam2 repository's "
    "checkpoints/download_ckpts.sh downloads them) or a fine-tuned one saved as "
    '{"model": state_dict}, and pass checkpoint=PATH or set REGTRACK_SAM2_CHECKPOINT'
)


@dataclass(frozen=True)
class SamAnswer:
    """SAM2.1's answer for one frame.

    Attributes
    ----------
    mask : ndarray of bool, shape (H, W)
        The tracked target on the frame's grid.
    score : float
        The mask decoder's predicted IoU of that mask, in [0, 1] (1 on the prompted frame 0).
    object_score : float
        Probability that the target is in the frame (sigmoid of SAM2's object score); below
        0.5 SAM2 answers an empty mask.
    ms : float
        Wall time of the call, preprocessing included.
    """

    mask: np.ndarray
    score: float
    object_score: float
    ms: float


def _import_sam2():
    """Import sam2's builder, saying how to install it when it is missing."""
    need_extra("sam2", "the SAM2.1 tracker")
    from sam2 import build_sam

    return build_sam


def _hint(exc: Exception) -> Exception:
    """The same error with the fix appended, for errors raised while finding the file."""
    return type(exc)(f"{exc}. To fix: {_FIX_HINT}")


def _check_image_size(image_size: Any) -> int:
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise TypeError(f"image_size must be an integer multiple of 32, got {image_size!r}")
    if image_size < 64 or image_size % 32:
        raise ValueError(
            f"image_size must be a multiple of 32 and at least 64 (e.g. 256, 512, 1024), got "
            f"{image_size}: the Hiera trunk downsamples by 32"
        )
    return int(image_size)


def _overrides(image_size: int) -> list[str]:
    """Hydra overrides for another model input size (sam2's config says 1024)."""
    grid = image_size // 16  # memory attention runs on the stride-16 feature map
    layer = "++model.memory_attention.layer"
    return [
        f"++model.image_size={image_size}",
        f"{layer}.self_attention.feat_sizes=[{grid},{grid}]",
        f"{layer}.cross_attention.feat_sizes=[{grid},{grid}]",
    ]


def _resolve_device(device: Any) -> torch.device:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _load_weights(model: torch.nn.Module, state: dict, info: Any) -> None:
    """Load the checkpoint strictly; a mismatch names the file, the keys and the fix."""
    name = info.path.name
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another size or a damaged file
        raise ValueError(
            f"{name}: its weights do not fit SAM2.1-{info.variant} ({str(exc)[:300]}). "
            f"To fix: {_FIX_HINT}"
        ) from exc
    if missing or unexpected:
        raise ValueError(
            f"{name} does not hold the SAM2.1-{info.variant} model: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}. To fix: {_FIX_HINT}"
        )


def load_sam2_video(
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    image_size: int | None = None,
    variant: str | None = None,
) -> torch.nn.Module:
    """Build SAM2.1's video predictor and load a checkpoint into it.

    Parameters
    ----------
    checkpoint : str or path-like, optional
        An official SAM2.1 file (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``) or a
        fine-tuned one in the same layout (``{"model": state_dict}``). Default: the
        ``REGTRACK_SAM2_CHECKPOINT`` environment variable.
    device : str or torch.device, optional
        Default: ``"cuda"`` when available, else ``"cpu"``.
    image_size : int, optional
        Side of the square model input, a multiple of 32; default 1024, SAM2's own. Smaller
        sizes are much faster on a CPU but are not what SAM2 was trained at (module
        docstring).
    variant : str, optional
        ``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"``; default: read from the
        weights (width and depth of the trunk).

    Returns
    -------
    sam2.sam2_video_predictor.SAM2VideoPredictor
        In eval mode on ``device``, with ``checkpoint_info``
        (:class:`impact.sam2_hiera.Sam2CheckpointInfo`) attached.

    Raises
    ------
    FileNotFoundError
        The checkpoint file does not exist.
    ValueError
        No checkpoint given, a file that is not a SAM2.1 checkpoint (not a torch file, wrong
        keys, wrong shapes), or a bad ``image_size``.
    TypeError
        ``image_size`` is not an integer.
    ImportError
        The sam2 package is not installed.
    """
    image_size = _check_image_size(image_size)
    build_sam = _import_sam2()
    from impact.sam2_hiera import VARIANTS, read_checkpoint

    try:
        info, state = read_checkpoint(checkpoint, variant=variant)
    except (FileNotFoundError, ValueError) as exc:
        raise _hint(exc) from exc.__cause__
    if "no_obj_embed_spatial" not in state:  # checked before the (slow) build
        raise ValueError(
            f"{info.path.name} looks like a SAM 2.0 checkpoint (no 'no_obj_embed_spatial' "
            f"weight); the tracker needs SAM2.1 weights. To fix: {_FIX_HINT}"
        )
    # Built on the CPU and loaded there: one copy of the weights on the device, not two.
    model = build_sam.build_sam2_video_predictor(
        VARIANTS[info.variant].config,
        None,
        device="cpu",
        hydra_overrides_extra=_overrides(image_size),
    )
    _load_weights(model, state, info)
    model = model.to(_resolve_device(device)).eval()
    model.checkpoint_info = info
    logger.info(
        "SAM2.1-%s video predictor from %s, image_size %d, on %s",
        info.variant,
        info.path,
        image_size,
        model.device,
    )
    return model


def _hole_filling_available() -> bool:
    """sam2 fills small mask holes with its CUDA extension only; without it, it warns on
    every frame and skips, so we skip quietly (the answers are the same)."""
    import importlib.util

    return importlib.util.find_spec("sam2._C") is not None


@contextlib.contextmanager
def _predicted_iou(model: torch.nn.Module) -> Iterator[dict]:
    """Catch the IoU predictions of the mask decoder call inside ``track_step``
    (``track_step`` keeps the chosen mask but drops its score)."""
    caught: dict = {}

    def hook(module, inputs, outputs):
        caught["iou"] = outputs[1]  # MaskDecoder returns masks, iou_pred, tokens, object score

    handle = model.sam_mask_decoder.register_forward_hook(hook)
    try:
        yield caught
    finally:
        handle.remove()


class SamTracker:
    """Track one target through a sequence fed frame by frame with SAM2.1.

    Parameters
    ----------
    model : SAM2VideoPredictor
        From :func:`load_sam2_video`; any ``SAM2Base`` works.
    num_frames : int, optional
        Length of the sequence when known. SAM2 scales the temporal encoding of object
        pointers by ``min(num_frames, 16)``; giving it reproduces
        ``SAM2VideoPredictor`` exactly on short sequences. Default: a long sequence.
    percentiles : (float, float), optional
        Intensity percentiles of each frame mapped to 0 and 1.

    Attributes
    ----------
    stored_frames : int
        Frames whose state is held (conditioning frame included), at most
        :attr:`max_stored_frames`.
    memory_frames : int
        Of those, the frames holding spatial memory, at most ``model.num_maskmem``.

    Examples
    --------
    >>> tracker = SamTracker(load_sam2_video("sam2.1_hiera_tiny.pt"))  # doctest: +SKIP
    >>> tracker.init(frames[0], first_mask)                          # doctest: +SKIP
    >>> answer = tracker.step(frames[1])                              # doctest: +SKIP
    >>> answer.mask.shape, answer.score                               # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        num_frames: int | None = None,
        percentiles: tuple[float, float] = INTENSITY_PERCENTILES,
    ) -> None:
        import torch

        self.model = model
        self.device = model.device
        self.image_size = int(model.image_size)
        self.num_frames = _LONG_SEQUENCE if num_frames is None else int(num_frames)
        self.percentiles = tuple(float(p) for p in percentiles)
        self._mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._fill_holes = getattr(model, "fill_hole_area", 0) > 0 and _hole_filling_available()
        self._memory_window, self._pointer_window = _windows(model)
        self._shape: tuple[int, int] | None = None
        self._index = -1
        self._outputs: dict[str, dict[int, dict]] = {}
        self._pos_enc = None

    @property
    def max_stored_frames(self) -> int:
        """Bound on :attr:`stored_frames`: frame 0 plus the longer of the two windows."""
        return 1 + max(self._memory_window, self._pointer_window)

    @property
    def stored_frames(self) -> int:
        return sum(len(v) for v in self._outputs.values())

    @property
    def memory_frames(self) -> int:
        return sum("maskmem_features" in out for v in self._outputs.values() for out in v.values())

    @property
    def frame_index(self) -> int:
        """Index of the last frame answered; -1 before :meth:`init`."""
        return self._index

    def init(self, frame0: np.ndarray, mask0: np.ndarray) -> SamAnswer:
        """Start (or restart) tracking: frame 0 and the target's mask on it.

        Parameters
        ----------
        frame0 : ndarray, shape (H, W)
            Any intensity range; NaN or inf is refused.
        mask0 : ndarray, shape (H, W)
            Binary (bool or 0/1), not empty.

        Returns
        -------
        SamAnswer
            The prompt as SAM2 keeps it (resampled to the model input and back), score 1.
        """
        start = time.perf_counter()
        frame0 = check_frame(frame0, 0)
        if frame0.ndim != 2:
            raise ValueError(f"frame0 must be a 2D (H, W) frame, got shape {frame0.shape}")
        mask0 = check_mask(mask0, frame0.shape, name="mask0")
        # not initialised until frame 0 succeeds: a failed init must not leave half a state
        self._shape, self._index = None, -1
        self._outputs = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        with self._context():
            out, features = self._prompt_frame(frame0, mask0)
            logits = self._encode_prompt_memory(out, features)
            self._outputs["cond_frame_outputs"][0] = self._compact(out)
            mask = _to_frame_mask(logits, frame0.shape)
        self._shape, self._index = frame0.shape, 0
        return SamAnswer(mask, 1.0, _sigmoid(out["object_score_logits"]), _ms(start))

    def step(self, frame: np.ndarray) -> SamAnswer:
        """Track the target into the next frame.

        Parameters
        ----------
        frame : ndarray, shape (H, W)
            The frame after the last one given, same shape as frame 0.

        Returns
        -------
        SamAnswer
        """
        start = time.perf_counter()
        if self._shape is None:
            raise RuntimeError("SamTracker.step() before init(): call init(frame0, mask0) first")
        frame = check_frame(frame, self._index + 1)
        if frame.shape != self._shape:
            raise ValueError(
                f"frame {self._index + 1} has shape {frame.shape} but frame 0 is {self._shape}; "
                "every frame of a sequence must have the same shape"
            )
        index = self._index + 1
        with self._context(), _predicted_iou(self.model) as caught:
            feats, pos, sizes = self._features(frame)
            out = self.model.track_step(
                frame_idx=index,
                is_init_cond_frame=False,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=None,
                output_dict=self._outputs,
                num_frames=self.num_frames,
                run_mem_encoder=True,
            )
            self._outputs["non_cond_frame_outputs"][index] = self._compact(out)
            self._index = index
            self._forget()
            mask = _to_frame_mask(self._filled(out["pred_masks"]), self._shape)
        # track_step keeps the candidate with the highest predicted IoU: its score is the max
        score = float(caught["iou"].float().max())
        return SamAnswer(mask, score, _sigmoid(out["object_score_logits"]), _ms(start))

    # ------------------------------------------------------------------ internals

    def _context(self) -> contextlib.ExitStack:
        """inference_mode, and bfloat16 autocast on CUDA as sam2's examples run it."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        return stack

    def _prepare(self, frame: np.ndarray) -> torch.Tensor:
        """(H, W) frame -> (1, 3, S, S) model input, normalised as sam2's video loader does."""
        import torch
        import torch.nn.functional as F

        low, high = np.percentile(frame, self.percentiles)
        x = torch.from_numpy(frame).to(self.device)[None, None]
        x = ((x - float(low)) / max(float(high - low), 1e-6)).clamp_(0.0, 1.0)
        size = (self.image_size, self.image_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x.expand(-1, 3, -1, -1) - self._mean) / self._std

    def _features(self, frame: np.ndarray) -> tuple[list, list, list]:
        """Backbone features of one frame, flattened as track_step takes them."""
        backbone_out = self.model.forward_image(self._prepare(frame))
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out)
        return feats, pos, sizes

    def _prompt_frame(self, frame0: np.ndarray, mask0: np.ndarray) -> tuple[dict, tuple]:
        """Run frame 0 with its mask as SAM2VideoPredictor.add_new_mask does."""
        import torch
        import torch.nn.functional as F

        size = (self.image_size, self.image_size)
        mask = torch.from_numpy(mask0.astype(np.float32)).to(self.device)[None, None]
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False, antialias=True)
        mask = (mask >= 0.5).float()
        if not mask.any():
            raise ValueError(
                f"mask0 ({int(mask0.sum())} pixels) vanishes when resized to the model input "
                f"({self.image_size} x {self.image_size}); use a larger image_size"
            )
        features = self._features(frame0)
        out = self.model.track_step(
            frame_idx=0,
            is_init_cond_frame=True,
            current_vision_feats=features[0],
            current_vision_pos_embeds=features[1],
            feat_sizes=features[2],
            point_inputs=None,
            mask_inputs=mask,
            output_dict=self._outputs,
            num_frames=self.num_frames,
            run_mem_encoder=False,
        )
        return out, features

    def _encode_prompt_memory(self, out: dict, features: tuple) -> torch.Tensor:
        """Encode frame 0's memory as propagate_in_video_preflight does: from the low-res
        logits, upsampled and binarised, so the memory equals sam2's own predictor's."""
        import torch.nn.functional as F

        logits = self._filled(out["pred_masks"])
        size = (self.image_size, self.image_size)
        high_res = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out["maskmem_features"], out["maskmem_pos_enc"] = self.model._encode_new_memory(
            current_vision_feats=features[0],
            feat_sizes=features[2],
            pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,
        )
        return logits

    def _compact(self, out: dict) -> dict:
        """What later frames read of this one; the memory in bfloat16 as sam2 stores it, one
        shared copy of the (frame-independent) memory position encoding."""
        import torch

        if self._pos_enc is None or self._pos_enc[-1].shape != out["maskmem_pos_enc"][-1].shape:
            self._pos_enc = [x.clone() for x in out["maskmem_pos_enc"]]
        return {
            "maskmem_features": out["maskmem_features"].to(torch.bfloat16),
            "maskmem_pos_enc": self._pos_enc,
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _forget(self) -> None:
        """Drop what no later frame reads: states older than both windows, and the spatial
        memory of frames outside the memory window (their pointer stays)."""
        outputs = self._outputs["non_cond_frame_outputs"]
        for t in list(outputs):
            age = self._index - t  # 0 for the frame just tracked
            if age >= max(self._memory_window, self._pointer_window):
                del outputs[t]
            elif age >= self._memory_window and "maskmem_features" in outputs[t]:
                outputs[t] = {"obj_ptr": outputs[t]["obj_ptr"]}

    def _filled(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._fill_holes:
            return logits
        from sam2.utils.misc import fill_holes_in_mask_scores

        return fill_holes_in_mask_scores(logits, self.model.fill_hole_area)


def _windows(model: torch.nn.Module) -> tuple[int, int]:
    """How many past frames the next frame reads: spatial memory, object pointers.

    Memory: frame t-1, then every r-th frame (r = ``memory_temporal_stride_for_eval``) for
    ``num_maskmem - 2`` more, reaching back to t - 1 - (num_maskmem - 2) r. Pointers: the
    last ``max_obj_ptrs_in_encoder - 1`` frames.
    """
    stride = max(int(getattr(model, "memory_temporal_stride_for_eval", 1)), 1)
    memory = (model.num_maskmem - 2) * stride + 1 if model.num_maskmem > 1 else 0
    pointers = model.max_obj_ptrs_in_encoder - 1 if model.use_obj_ptrs_in_encoder else 0
    return memory, pointers


def _to_frame_mask(logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Low-res mask logits -> bool mask on the frame grid (bilinear, > 0, as sam2)."""
    import torch.nn.functional as F

    logits = F.interpolate(logits.float(), size=shape, mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).cpu().numpy()


def _sigmoid(logits: torch.Tensor) -> float:
    return float(logits.float().sigmoid().max())


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def track_sam(
    frames: np.ndarray,
    first_mask: np.ndarray,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    image_size: int | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Track the frame-0 mask through a whole sequence with SAM2.1 (offline convenience).

    Parameters
    ----------
    frames : ndarray or lazy reader, shape (T, H, W)
    first_mask : ndarray, shape (H, W)
        Binary mask of the target in frame 0.
    checkpoint, device, image_size
        As :func:`load_sam2_video`; ignored when ``model`` is given.
    model : SAM2VideoPredictor, optional
        An already loaded model (saves loading it per sequence).

    Returns
    -------
    masks : ndarray of uint8, shape (T, H, W)
        0/1; frame 0 is ``first_mask``.
    records : list of dict
        One per frame: ``index``, ``source`` ("given" for frame 0, "sam" after),
        ``sam_score`` (predicted IoU), ``sam_object_score``, ``elapsed_ms``.
    """
    n_frames, shape = check_frames(frames)
    first_mask = check_mask(first_mask, shape)
    if model is None:
        model = load_sam2_video(checkpoint, device=device, image_size=image_size)
    tracker = SamTracker(model, num_frames=n_frames)
    masks = np.zeros((n_frames, *shape), dtype=np.uint8)
    masks[0] = first_mask
    answer = tracker.init(frames[0], first_mask)
    records = [_record(0, "given", answer)]
    for index in range(1, n_frames):
        answer = tracker.step(frames[index])
        masks[index] = answer.mask
        records.append(_record(index, "sam", answer))
    return masks, records


def _record(index: int, source: str, answer: SamAnswer) -> dict:
    return {
        "index": index,
        "source": source,
        "sam_score": answer.score,
        "sam_object_score": answer.object_score,
        "elapsed_ms": answer.ms,
    }
