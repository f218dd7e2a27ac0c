"""The per-frame engine: flatten, crop, register frame 0 onto frame t, warp mask(0), gate.

Per frame t: fixed = frame t, moving = frame 0 (no drift), initialised with a translation that
takes the target from where it was a frame ago back to frame 0 (a fixed-size carry: chaining
whole elastix transforms makes each frame slower than the last), metric optionally restricted
to a region of interest around the previous mask, then mask(0) is warped onto frame t.
:class:`Engine` holds what stays fixed over a sequence; the streaming tracker
(:mod:`regtrack.realtime`) decides which frame it registers, when, and with which schedule.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import itk_elastix
from .budget import LADDER, Schedule, check_budget, scaled_maps
from .candidates import (
    Candidate,
    Choice,
    choose_candidate,
    flow_candidate,
    flow_context,
    grown,
    keyframe_mask,
)
from .checks import check_tracker_settings, has_signal
from .features import (
    NATIVE_IMPACT_MISSING,
    FeatureExtractor,
    expand_for_channels,
    feature_spec,
    resolve_native_models,
    uses_native_impact,
)
from .flowstart import register_from_start
from .gate import centroid_mm, folded_fraction, registration_gate
from .intensity import flatten_intensity
from .parameters import DEFAULT_PRESET, load_parameter_maps
from .reference import Reference
from .refine import refine_points
from .registration import (
    RegistrationError,
    displacement_field,
    field_from_points,
    register_pair,
    warp_mask,
    warp_mask_to,
)
from .transform import mapped_points

METHODS = ("registration", "sam", "hybrid")

__all__ = [
    "METHODS",
    "Engine",
    "FrameResult",
    "Keyframe",
    "TrackerSettings",
    "answered_with",
    "flatten_intensity",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerSettings:
    """How frames are registered; everything but the elastix parameters themselves.

    Attributes
    ----------
    preset : str or path or list of paths
        Elastix preset name from ``parameter_maps/`` or parameter file(s).
    overrides : dict
        Elastix parameter overrides, e.g. ``{"MaximumNumberOfIterations": [100, 100, 100]}``.
    roi : bool or None
        Crop frame t to the previous mask's bounding box grown by ``roi_margin_mm``, so the
        metric and the B-spline grid cover only the target's neighbourhood (default): the
        target moves free of structures that slide otherwise (chest wall, a large organ's
        far side). ``None`` (auto) turns it on only for targets smaller than
        ``roi_max_area_mm2``; on the real abdominal case (a 109 cm2 target) the whole frame
        lost 0.03 DSC to the ROI.
    roi_margin_mm : float
    roi_max_area_mm2 : float
    roi_grid_spacing_mm : float or None
        B-spline control-point spacing when the ROI is on (``FinalGridSpacingInPhysicalUnits``,
        unless given as an override): the crop is small, so a finer grid costs little and
        can follow the target's own deformation (through-plane change of its cross-section).
        None keeps the preset's spacing. The registration started from the flow
        (``start``) keeps the preset's spacing (or the override): it corrects a map that is
        already close, and a finer grid moved it further from the truth.
    flatten_sigma_mm : float
        Each frame is divided by its own Gaussian-smoothed copy (sigma in mm) before it is
        registered: the receive-coil bias field stays put while the anatomy moves under it,
        which no global intensity metric can absorb; dividing it out leaves local contrast.
        0 registers the frames as they are.
    calibrate_step_sizes : bool
        Estimate ASGD's step sizes once on frame 0 (:meth:`Engine.build`) and keep them for
        every frame, instead of estimating them again in every elastix call (~120 ms of a
        350 x 350 call). False: elastix's per-call estimation.
    refine_flow : bool
        After each registration, correct the map near the target by optical flow between
        frame t and frame 0 as the registration left it (:mod:`regtrack.refine`), kept only
        when it makes the two look more alike there.
    flow_candidate : bool
        Besides the registration, map the target's neighbourhood by optical flow from frame t
        straight to frame 0, and let the flow answer while the motion is fine
        (:mod:`regtrack.candidates`): flow wins fine, sliding motion of a faint target, the
        registration large motion. ``FrameResult.candidate`` says which answered.
    candidate_agree_mm, flow_max_shift_mm : float
        The flow answers only while the previous answer lies within ``flow_max_shift_mm`` of
        the target's frame-0 place and the flow's target within ``candidate_agree_mm`` of the
        registration's: flow straight to frame 0 loses the target after a jump without
        telling.
    start : {"auto", "translation", "flow"}
        Where each frame's registration starts. "flow": the fast tracker's dense map of the
        target's neighbourhood (DIS flow from frame t to the reference, started from the
        shift below, :mod:`regtrack.flowstart`); the reference pulled back by it is the
        moving image, and the preset's finest level corrects it. A frame whose started
        registration fails or fails its gate is answered by the flow itself, with the reason
        (``candidate_reason``). "translation": the shift that carries the previous answer
        back to frame 0, then the preset's whole pyramid (and the flow candidate and
        refinement above). "auto" (default): "flow" while the motion is fine (the previous
        answer within ``flow_max_shift_mm`` of the target's frame-0 place), "translation"
        after a jump, where the whole pyramid's capture range is needed.
    start_only : bool
        Answer with the flow's start alone, no registration, wherever the registration would
        have started from it (with ``start="flow"`` or ``"auto"``): the fast tracker's own
        accuracy, the baseline the registration has to beat.
    reference : {"average", "first"}
        What the flow (the flow candidate, the flow start, the flow rung) and the refinement
        map each frame onto. "first": frame 0. "average": frame 0 averaged with the frames
        answered so far while the motion is fine, each pulled back onto frame 0 by DIS flow
        from frame 0 (:mod:`regtrack.reference`): it cuts the noise of frame 0 that every
        answer otherwise inherits. The registration itself and the mask stay on frame 0.
    min_area_ratio, max_area_ratio : float
        Quality gate: a registered mask whose area leaves this range relative to the previous
        frame's answer is rejected and the previous mask kept (through-plane motion changes
        the area slowly; a jump means a failed registration).
    budget_s : float or None
        Seconds each frame may take: the schedule (iterations, samples) is chosen to fit it
        (:mod:`regtrack.budget`). None: the preset's full schedule.
    total_budget_s : float or None
        Seconds for the whole sequence (offline): each frame gets what is left divided by the
        frames left.
    method : {"registration", "sam", "hybrid"}
        "registration": elastix alone. "sam": the SAM2.1 video tracker alone (a peer).
        "hybrid": SAM's mask of frame t initialises the registration (translation and ROI),
        and answers when the registration fails its gate or misses its deadline; without a
        checkpoint, hybrid says so once and runs registration alone.
    sam_checkpoint : str or None
        SAM2.1 checkpoint file, for the SAM tracker and for SAM2.1 feature presets
        (``impact_sam2``) alike (default: the ``REGTRACK_SAM2_CHECKPOINT`` variable).
    sam_image_size : int or None
        SAM2.1 input side (default: the model's 1024; smaller is faster on a CPU).
    check_folds : bool or None
        Reject a registration whose B-spline folds (Jacobian determinant <= 0) inside the ROI;
        costs one displacement field per frame (about 11 ms). None: on in hybrid mode.
    max_jump_mm, agree_mm : float
        Hybrid gate: a registration whose centroid moved more than ``max_jump_mm`` from the
        previous frame while SAM's did not, and that lies more than ``agree_mm`` from SAM's,
        is replaced by SAM's mask (:func:`regtrack.gate.hybrid_decision`).
    """

    preset: Any = DEFAULT_PRESET
    overrides: dict = field(default_factory=dict)
    roi: bool | None = True
    roi_margin_mm: float = 30.0
    roi_max_area_mm2: float = 2000.0
    roi_grid_spacing_mm: float | None = 8.0
    flatten_sigma_mm: float = 0.0
    min_area_ratio: float = 0.5
    max_area_ratio: float = 2.0
    budget_s: float | None = None
    total_budget_s: float | None = None
    method: str = "registration"
    sam_checkpoint: str | None = None
    sam_image_size: int | None = None
    check_folds: bool | None = None
    max_jump_mm: float = 10.0
    agree_mm: float = 3.0
    calibrate_step_sizes: bool = True
    refine_flow: bool = True
    flow_candidate: bool = True
    candidate_agree_mm: float = 3.0
    flow_max_shift_mm: float = 15.0
    start: str = "auto"
    start_only: bool = False
    reference: str = "average"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "budget_s", check_budget(self.budget_s, "budget_s"))
        object.__setattr__(
            self, "total_budget_s", check_budget(self.total_budget_s, "total_budget_s")
        )
        check_tracker_settings(self)  # a bad value fails here, not frames later


@dataclass(frozen=True)
class FrameResult:
    """The answer for one frame.

    ``source`` is "given" (frame 0), "registration", "sam" (the SAM2.1 tracker's mask: method
    "sam", or hybrid mode when the registration was rejected or late), or "previous" (the
    last good mask: the gate rejected the registration, elastix failed, or the deadline came
    first). ``reason`` says why, ``gate`` what the hybrid gate decided ("pass", "sam").
    ``schedule`` names the iteration/sample schedule used (:mod:`regtrack.budget`) and
    ``work`` its iterations x samples; ``budget_ms`` and ``latency_ms`` (arrival to answer)
    are set by the streaming tracker when it runs under a budget. Frame 0's answer carries
    ``step_sizes``: the ASGD step-size parameters estimated once on frame 0 and used for every
    later frame (:attr:`Engine.step_sizes`). ``answered_by`` is the frame whose result this
    answer is: the frame itself for its own registration, an earlier frame when the newest
    finished earlier result answers (0: the given mask), -1 when SAM's mask of this frame
    answers. ``start_age`` is how many frames old the position was that this frame's
    registration started from (0: SAM's mask of this frame; -1: no registration started).
    ``candidate`` says which map answered a registered frame ("registration" or "flow",
    :mod:`regtrack.candidates`; "" when none did) and ``candidate_reason`` why the flow was
    passed over. ``start`` is where the registration started: "translation" or "flow" (the fast
    tracker's dense map, :mod:`regtrack.flowstart`); ``start_correction_mm`` how far the
    registration moved the target's centre from where that map put it (NaN unless a
    registration started from the flow answered).
    """

    index: int
    mask: np.ndarray
    source: str
    reason: str = ""
    metric_value: float = float("nan")
    iterations: int = 0
    registration_ms: float = 0.0
    feature_ms: float = 0.0
    elapsed_ms: float = 0.0
    initial_shift_mm: tuple[float, float] = (0.0, 0.0)
    roi: bool = False
    schedule: str = ""
    work: int = 0
    sam_score: float = float("nan")
    gate: str = ""
    budget_ms: float = float("nan")
    latency_ms: float = float("nan")
    displacement_mm: np.ndarray | None = None
    step_sizes: dict | None = None
    refined: bool = False
    answered_by: int = -1
    start_age: int = -1
    candidate: str = ""
    candidate_reason: str = ""
    start: str = "translation"
    start_correction_mm: float = float("nan")

    def record(self) -> dict:
        """The JSON-serialisable per-frame record (no arrays)."""
        values = asdict(self)
        del values["mask"], values["displacement_mm"]
        if self.step_sizes is None:
            del values["step_sizes"]
        values["area_px"] = int(self.mask.sum())
        return values


def answered_with(source: str, candidate: str) -> str:
    """What answered a frame, from its record's ``source`` and ``candidate``: "registration"
    (elastix's map), "flow" (the fast tracker's: the flow candidate or the flow rung) or the
    fallback's source ("previous", "sam")."""
    return "flow" if source == "registration" and candidate == "flow" else source


def _roi_box(mask: np.ndarray, margin_mm: float, spacing_mm) -> tuple[slice, slice]:
    """The mask's bounding box grown by ``margin_mm`` on every side, clipped to the frame."""
    margin = np.ceil(margin_mm / np.asarray(spacing_mm)).astype(int)
    rows, cols = np.nonzero(mask)
    low = np.maximum([rows.min(), cols.min()] - margin, 0)
    high = np.minimum(np.array([rows.max(), cols.max()]) + margin + 1, mask.shape)
    return slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1]))


# With the ROI on, elastix sees frame 0 only around its target: the ROI margin, plus this for
# the motion since the previous answer. The initial translation takes the fixed ROI onto the
# target's frame-0 box grown by the margin, give or take that motion; a sample mapped further
# out is skipped, as outside any image. The crop saves a third of a small registration's
# time (elastix smooths the whole moving image for every pyramid level).
_MOVING_EXTRA_MM = 30.0


def _moving_box(first_mask, settings: TrackerSettings, spacing_mm) -> tuple[slice, slice]:
    return _roi_box(first_mask, settings.roi_margin_mm + _MOVING_EXTRA_MM, spacing_mm)


def _use_roi(settings: TrackerSettings, first_mask: np.ndarray, spacing_mm) -> bool:
    if settings.roi is not None:
        return settings.roi
    area_mm2 = first_mask.sum() * spacing_mm[0] * spacing_mm[1]
    return bool(area_mm2 < settings.roi_max_area_mm2)


def _overrides(settings: TrackerSettings, use_roi: bool) -> dict:
    """The elastix overrides, with the ROI grid spacing unless the user set one."""
    overrides = dict(settings.overrides)
    if use_roi and settings.roi_grid_spacing_mm:
        overrides.setdefault("FinalGridSpacingInPhysicalUnits", settings.roi_grid_spacing_mm)
    return overrides


@dataclass(frozen=True)
class Keyframe:
    """A recent frame and the answer a full registration gave it (the flow rung's reference
    after a jump, :meth:`Engine.track_frame`)."""

    index: int
    frame: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Engine:
    """What stays fixed over a sequence: parameter maps, frame 0 (or its features), ROI policy."""

    parameter_maps: dict  # Schedule -> itk.ParameterObject
    works: dict  # Schedule -> iterations x samples
    moving: Any  # frame 0, or its feature channels
    frame0: np.ndarray  # frame 0 as registered (flattened when asked), for the refinement
    frame0_range: tuple[float, float]  # its grey-value range, the flow candidate's 8-bit scale
    extractor: FeatureExtractor | None
    first_mask: np.ndarray
    first_centroid: np.ndarray
    settings: TrackerSettings
    spacing_mm: tuple[float, float]
    use_roi: bool
    step_sizes: dict  # ASGD's estimates on frame 0, fixed for every frame ({}: estimated per frame)
    moving_box: tuple[slice, slice] | None = None  # the part of frame 0 elastix is given
    start_maps: dict | None = None  # Schedule -> maps of the registration started by the flow
    reference: Reference | None = None  # the flow's reference, averaged over the frames
    _features: dict = field(default_factory=dict, repr=False)  # the reference's, while current

    def flow_reference(self, shift_mm) -> np.ndarray:
        """What the flow and the refinement map a frame onto: frame 0, or, while the motion
        is fine (the translation carry ``shift_mm`` within ``flow_max_shift_mm``), its
        average with the frames tracked so far (``TrackerSettings.reference``): the average
        is built from such frames, and after a jump frame 0 stays as it is."""
        averaged = self.reference is not None and self.fine(shift_mm)
        return self.reference.image if averaged else self.frame0

    def fine(self, shift_mm) -> bool:
        """The motion is fine: the target lies within ``flow_max_shift_mm`` of its frame-0
        place (``shift_mm``: the translation that carries it back there)."""
        return bool(np.hypot(*shift_mm) <= self.settings.flow_max_shift_mm)

    def started_moving(self, shift_mm):
        """Elastix's moving image for a registration started from the flow: frame 0 (or its
        features), or, where the flow maps onto the averaged reference, the reference: the
        start and the registration then see the same, less noisy, frame 0."""
        if self.reference is None or not self.reference.frames or not self.fine(shift_mm):
            return self.moving
        image = self.reference.image
        if self.extractor is None:
            return image
        if self._features.get("frames") != self.reference.frames:
            self._features.update(frames=self.reference.frames, moving=self.extractor(image))
        return self._features["moving"]

    @property
    def check_folds(self) -> bool:
        """Folds are looked for when asked, and by default in hybrid mode (SAM can take over)."""
        if self.settings.check_folds is None:
            return self.settings.method == "hybrid"
        return self.settings.check_folds

    @classmethod
    def build(cls, frame0, first_mask, settings, spacing_mm) -> Engine:
        spacing_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
        frame0 = flatten_intensity(frame0, settings.flatten_sigma_mm, spacing_mm)
        use_roi = _use_roi(settings, first_mask, spacing_mm)
        parameter_maps = _loaded_maps(settings, _overrides(settings, use_roi))
        spec = feature_spec(parameter_maps)
        extractor = (
            FeatureExtractor(spec, frame0, checkpoint=settings.sam_checkpoint) if spec else None
        )
        moving = extractor(frame0) if extractor else frame0
        if extractor:
            parameter_maps = expand_for_channels(parameter_maps, extractor.weights)
        box = _roi_box(first_mask, settings.roi_margin_mm, spacing_mm) if use_roi else None
        moving_box = _moving_box(first_mask, settings, spacing_mm) if use_roi else None
        step_sizes = _trial_run(parameter_maps, moving, spacing_mm, box, moving_box)
        if settings.calibrate_step_sizes and step_sizes:
            parameter_maps = with_step_sizes(parameter_maps, step_sizes)
        scaled = {
            schedule: (None, 1) if schedule.flow_only else scaled_maps(parameter_maps, schedule)
            for schedule in LADDER
        }
        start_maps = None
        if settings.start in ("flow", "auto"):
            started = finest_level(_loaded_maps(settings, settings.overrides))
            if extractor:
                started = expand_for_channels(started, extractor.weights)
            sizes = _trial_run(started, moving, spacing_mm, box, moving_box)
            if settings.calibrate_step_sizes and sizes:
                started = with_step_sizes(started, sizes)
            start_maps = {
                schedule: scaled_maps(started, schedule)[0]
                for schedule in LADDER
                if not schedule.flow_only
            }
        reference = None
        if settings.reference == "average":
            region = flow_context(box or (slice(None), slice(None)), frame0.shape, spacing_mm)
            value_range = (float(frame0.min()), float(frame0.max()))
            reference = Reference(frame0, region, value_range, spacing_mm)
        return cls(
            parameter_maps={schedule: maps for schedule, (maps, _) in scaled.items()},
            works={schedule: work for schedule, (_, work) in scaled.items()},
            moving=moving,
            frame0=frame0,
            frame0_range=(float(frame0.min()), float(frame0.max())),
            extractor=extractor,
            first_mask=first_mask,
            first_centroid=centroid_mm(first_mask, spacing_mm),
            settings=settings,
            spacing_mm=spacing_mm,
            use_roi=use_roi,
            step_sizes=step_sizes if settings.calibrate_step_sizes else {},
            moving_box=moving_box,
            start_maps=start_maps,
            reference=reference,
        )

    def track_frame(
        self,
        frame,
        previous,
        index,
        *,
        schedule: Schedule = LADDER[0],
        return_fields=False,
        keyframe: Keyframe | None = None,
    ) -> FrameResult:
        """Register frame 0 onto one frame and warp mask(0); fall back to the previous mask.
        A frame answered while the motion is fine is then averaged into the flow's reference
        (:mod:`.reference`). ``keyframe``: a recent frame a full registration answered, which
        the flow rung maps onto after a jump."""
        if schedule.flow_only and return_fields:  # a field is the registration's: its smallest
            schedule = LADDER[-2]
        start = time.perf_counter()
        frame = flatten_intensity(frame, self.settings.flatten_sigma_mm, self.spacing_mm)
        result = self._track(frame, previous, index, schedule, return_fields, start, keyframe)
        # The lean rungs and the flow rung (a tight budget) skip the work: it costs as much as
        # the flow rung itself. After a jump frame 0 stays as it is.
        if (
            self.reference is None
            or result.source != "registration"
            or index == 0
            or not schedule.full
        ):
            return result
        shift = self.first_centroid - centroid_mm(result.mask, self.spacing_mm)
        if self.fine(shift):
            self._average_in(frame, shift)
            result = replace(result, elapsed_ms=(time.perf_counter() - start) * 1e3)
        return result

    def _average_in(self, frame, shift_mm) -> None:
        """An answered frame joins the flow's reference (its own stage in ``stages_ms``)."""
        self.reference.add(frame, shift_mm)

    def _track(
        self, frame, previous, index, schedule, return_fields, start, keyframe=None
    ) -> FrameResult:
        features_start = time.perf_counter()
        fixed = self.extractor(frame) if self.extractor else frame
        feature_ms = (time.perf_counter() - features_start) * 1e3 if self.extractor else 0.0
        shift = tuple(
            float(v) for v in self.first_centroid - centroid_mm(previous, self.spacing_mm)
        )
        box = (
            _roi_box(previous, self.settings.roi_margin_mm, self.spacing_mm)
            if self.use_roi
            else None
        )
        common = {
            "index": index,
            "initial_shift_mm": shift,
            "roi": self.use_roi,
            "feature_ms": feature_ms,
            "schedule": schedule.name,
            "work": self.works[schedule],
        }
        if not has_signal(frame[box or (slice(None), slice(None))]):
            reason = "frame has no signal (constant) in the target's neighbourhood"
            return _fallback(previous, reason, start, **common)
        if schedule.flow_only:
            return self._track_by_flow(frame, previous, box, shift, start, common, keyframe)
        # Started from the flow, the translation-started registration is not needed (fields,
        # which map the whole frame, and the lean rungs, which skip the flow, still take it;
        # start "auto" starts from the flow only while the motion is fine).
        started = self.start_maps is not None and schedule.flow_candidate and not return_fields
        if started and (self.settings.start == "flow" or self.fine(shift)):
            common["start"] = "flow"
            return self._track_from_flow(
                frame, fixed, previous, box, shift, schedule, start, common
            )
        try:
            registration = register_pair(
                fixed,
                self.moving,
                self.parameter_maps[schedule],
                spacing_mm=self.spacing_mm,
                fixed_box=box,
                moving_box=self.moving_box,
                initial_shift_mm=shift,
            )
        except RegistrationError as error:
            return _fallback(previous, str(error), start, **common)
        # The mask can only land near where the target was (the ROI); the whole frame is
        # mapped only when a field is wanted.
        whole = (slice(None), slice(None))
        area = whole if self.check_folds or return_fields else (box or whole)
        points = mapped_points(
            registration.transform_parameters, frame.shape, self.spacing_mm, box=area
        )
        refined, candidate, passed_over = False, "registration", ""
        near = box or _roi_box(previous, self.settings.roi_margin_mm, self.spacing_mm)
        local = _within(near, area)
        fine = self.fine(shift)
        lean = not schedule.flow_candidate  # a small rung under a tight budget: no second map
        if points is not None and self.settings.flow_candidate and lean:
            passed_over = f"no flow on schedule {schedule.name}"
        elif points is not None and self.settings.flow_candidate and fine:
            # Against the registration before its refinement: the agreement check allows
            # millimetres, and the refinement is not needed when the flow answers.
            choice = self._choose(frame, near, points[:, local[0], local[1]], shift)
            points[:, local[0], local[1]] = choice.chosen.points
            candidate, passed_over = choice.chosen.name, choice.reason
        elif points is not None and self.settings.flow_candidate:
            # No flow is computed where it could not answer: the target is far from frame 0.
            passed_over = f"target {np.hypot(*shift):.0f} mm from frame 0"
        if points is not None and self.settings.refine_flow and candidate == "registration":
            refinement = refine_points(
                frame[near],
                self.flow_reference(shift),
                points[:, local[0], local[1]],
                self.spacing_mm,
            )
            points[:, local[0], local[1]], refined = refinement.points, refinement.accepted
        if points is None:
            mask = warp_mask(self.first_mask, registration)
        else:
            mask = np.zeros(frame.shape, bool)
            mask[area] = warp_mask_to(self.first_mask, points, self.spacing_mm)
        folds, field_mm = 0.0, None
        if self.check_folds or return_fields:
            field_mm = (
                displacement_field(registration)
                if points is None
                else field_from_points(points, self.spacing_mm)
            )
            region = np.zeros(mask.shape, bool)
            region[box or whole] = True
            folds = folded_fraction(field_mm, self.spacing_mm, region) if self.check_folds else 0
        reason = registration_gate(
            mask, registration.metric_value, int(previous.sum()), self.settings, folds
        )
        if reason:
            return _fallback(previous, reason, start, **common)
        return _registered(
            mask,
            registration,
            start,
            refined=refined,
            displacement_mm=field_mm if return_fields else None,
            candidate=candidate,
            candidate_reason=passed_over,
            **common,
        )

    def _track_from_flow(self, frame, fixed, previous, box, shift, schedule, start, common):
        """The fast tracker's map starts the registration; the flow answers if it fails."""
        box = box or (slice(0, frame.shape[0]), slice(0, frame.shape[1]))
        flow_points, started, reason = self._flow_started(frame, fixed, box, shift, schedule)
        mask = self._pulled_back(flow_points, box, previous.shape)
        if started is not None:
            registration = started.registration
            answer, reason = self._answer(started.points, box, previous, registration)
            if answer is not None:
                return _registered(
                    answer,
                    registration,
                    start,
                    candidate="registration",
                    start_correction_mm=self._moved(mask, answer),
                    **common,
                )
        return self._answer_by_flow(
            mask, previous, reason, f"{reason}; the flow too: ", start, common
        )

    def _flow_started(self, frame, fixed, box, shift, schedule):
        """The fast tracker's map of ``box`` (frame-0 positions, mm) and the registration
        started from it: (map, started, "") or, with ``start_only`` or when elastix fails,
        (map, None, why)."""
        room = grown(box, frame.shape, np.ceil(_START_ROOM_MM / np.asarray(self.spacing_mm)))
        flow = flow_candidate(
            frame, self.flow_reference(shift), room, shift, self.spacing_mm, self.frame0_range
        )
        inner = _within(box, room)
        flow_points = flow.points[:, inner[0], inner[1]]
        if self.settings.start_only:
            return flow_points, None, "start only (start_only=True)"
        maps = self.start_maps[schedule]
        try:
            moving = self.started_moving(shift)
            started = register_from_start(
                fixed, moving, flow.points, room, box, maps, self.spacing_mm
            )
        except RegistrationError as error:
            return flow_points, None, str(error)
        return flow_points, started, ""

    def _track_by_flow(self, frame, previous, box, shift, start, common, keyframe=None):
        """The flow rung: the fast tracker's map at half resolution answers alone, onto the
        reference while the motion is fine, onto the ``keyframe`` (when given) after a jump."""
        box = box or (slice(0, frame.shape[0]), slice(0, frame.shape[1]))
        why = "flow rung: no registration fits the budget"
        if keyframe is not None and not self.fine(shift):
            mask = keyframe_mask(frame, keyframe.frame, keyframe.mask, box, self.spacing_mm)
            why += f"; mapped onto frame {keyframe.index}, registered"
            return self._answer_by_flow(mask, previous, why, "flow rung: ", start, common)
        flow = flow_candidate(
            frame,
            self.flow_reference(shift),
            box,
            shift,
            self.spacing_mm,
            self.frame0_range,
            finest_scale=1,
        )
        mask = self._pulled_back(flow.points, box, previous.shape)
        return self._answer_by_flow(mask, previous, why, "flow rung: ", start, common)

    def _answer_by_flow(self, mask, previous, why, refused, start, common):
        """The flow's ``mask`` answers (``why``: the ``candidate_reason``); if the gate
        refuses it, the previous mask, the gate's reason after ``refused``."""
        mask, reason = self._gated(mask, previous)
        if reason:
            return _fallback(previous, f"{refused}{reason}", start, **common)
        return FrameResult(
            mask=mask,
            source="registration",
            metric_value=float("nan"),
            iterations=0,
            registration_ms=0.0,
            elapsed_ms=(time.perf_counter() - start) * 1e3,
            candidate="flow",
            candidate_reason=why,
            **common,
        )

    def _answer(self, points, box, previous, registration=None):
        """mask(0) pulled back by ``points`` over ``box``, and why the gate refuses it ('')."""
        return self._gated(self._pulled_back(points, box, previous.shape), previous, registration)

    def _pulled_back(self, points, box, shape) -> np.ndarray:
        """mask(0) pulled back by ``points`` (frame-0 positions, mm) of the ``box`` pixels."""
        mask = np.zeros(shape, bool)
        mask[box] = warp_mask_to(self.first_mask, points, self.spacing_mm)
        return mask

    def _gated(self, mask, previous, registration=None):
        """``mask``, or None and why the gate refuses it."""
        metric = registration.metric_value if registration else 0.0
        reason = registration_gate(mask, metric, int(previous.sum()), self.settings)
        return (None, reason) if reason else (mask, "")

    def _choose(self, frame, near, registered, shift) -> Choice:
        """The registration's map of the ``near`` part or the flow's (:mod:`.candidates`)."""
        flow = flow_candidate(
            frame, self.flow_reference(shift), near, shift, self.spacing_mm, self.frame0_range
        )
        registration = Candidate("registration", registered)
        return choose_candidate(
            registration,
            flow,
            centroids_mm=[self._centroid(c.points) for c in (registration, flow)],
            target_shift_mm=float(np.hypot(*shift)),
            agree_mm=self.settings.candidate_agree_mm,
            max_shift_mm=self.settings.flow_max_shift_mm,
        )

    def _moved(self, before, after) -> float:
        """How far (mm) the centre of mask ``after`` lies from that of ``before`` (NaN if
        either is empty)."""
        apart = centroid_mm(after, self.spacing_mm) - centroid_mm(before, self.spacing_mm)
        return float(np.hypot(*apart))

    def _centroid(self, points) -> np.ndarray | None:
        """Centroid (mm, within the part) of mask(0) pulled back by ``points``; None if empty."""
        mask = warp_mask_to(self.first_mask, points, self.spacing_mm)
        return centroid_mm(mask, self.spacing_mm) if mask.any() else None


# The calibration run offsets frame 0 from itself by this much (mm), so the metric has the
# gradient of a frame that moved a little, as frame 1 has.
_CALIBRATION_SHIFT_MM = (2.0, 2.0)
_STEP_SIZE_NAMES = ("SP_a", "SP_A", "SP_alpha", "SigmoidMax", "SigmoidMin", "SigmoidScale")
_SIGMOID_SCALE_FLOOR = 1e-8  # elastix's default; the log rounds the estimate to 6 decimals


def _trial_run(parameter_maps, images, spacing_mm, box, moving_box) -> dict[str, list[float]]:
    """Run elastix once, one iteration per level, on frame 0 against itself shifted a little:
    a bad preset fails here, before any output, and ASGD's automatic estimation reports the
    step sizes (its most expensive part: ~120 ms of every 350 x 350 call), which can then be
    fixed for every frame instead of estimated again."""
    trial = itk_elastix.parameter_object()
    for index in range(parameter_maps.GetNumberOfParameterMaps()):
        parameter_map = dict(parameter_maps.GetParameterMap(index))
        levels = len(parameter_map.get("MaximumNumberOfIterations", ("1",)))
        parameter_map["MaximumNumberOfIterations"] = ("1",) * levels
        trial.AddParameterMap(parameter_map)
    try:
        registration = register_pair(
            images,
            images,
            trial,
            spacing_mm=spacing_mm,
            fixed_box=box,
            moving_box=moving_box,
            initial_shift_mm=_CALIBRATION_SHIFT_MM,
        )
    except RegistrationError as error:
        if uses_native_impact(parameter_maps):
            raise ValueError(NATIVE_IMPACT_MISSING) from error
        raise ValueError(
            f"the elastix parameter maps are not usable: {error}. Check the component names "
            "and values in the preset or overrides against the elastix manual."
        ) from error
    return registration.step_sizes


def with_step_sizes(parameter_maps, step_sizes: dict[str, list[float]]):
    """A copy of ``parameter_maps`` whose ASGD stages use these step sizes instead of
    estimating them (``AutomaticParameterEstimation "false"``).

    ``step_sizes`` holds one value per level of every estimating stage, in stage order, as
    :func:`regtrack.registration.read_step_sizes` returns them.
    """
    fixed = itk_elastix.parameter_object()
    used = 0
    for index in range(parameter_maps.GetNumberOfParameterMaps()):
        parameter_map = dict(parameter_maps.GetParameterMap(index))
        if _estimates_step_sizes(parameter_map):
            levels = int(parameter_map.get("NumberOfResolutions", ("1",))[0])
            for name in _STEP_SIZE_NAMES:
                values = step_sizes[name][used : used + levels]
                if name == "SigmoidScale":
                    values = [max(v, _SIGMOID_SCALE_FLOOR) for v in values]
                parameter_map[name] = tuple(repr(float(v)) for v in values)
            parameter_map["AutomaticParameterEstimation"] = ("false",)
            used += levels
        fixed.AddParameterMap(parameter_map)
    return fixed


def _estimates_step_sizes(parameter_map) -> bool:
    optimizer = parameter_map.get("Optimizer", ("",))[0]
    automatic = parameter_map.get("AutomaticParameterEstimation", ("false",))[0]
    return optimizer == "AdaptiveStochasticGradientDescent" and automatic == "true"


# The flow-started registration's moving image covers the ROI and this much more (mm): the
# room its correction may need; samples mapped beyond it are skipped.
_START_ROOM_MM = 10.0
# A start that is already close needs small steps: ASGD's estimate allows a pixel a step.
_START_MAX_STEP_MM = 0.2


def _loaded_maps(settings: TrackerSettings, overrides):
    """The preset's maps with ``overrides``; a native IMPACT preset's model names (``"mind"``)
    resolved to the TorchScript files the plugin loads."""
    parameter_maps = load_parameter_maps(settings.preset, overrides)
    if uses_native_impact(parameter_maps):
        return resolve_native_models(parameter_maps, checkpoint=settings.sam_checkpoint)
    return parameter_maps


def finest_level(parameter_maps):
    """The maps reduced to their finest level at the preset's own grid spacing, with small
    steps: a registration that corrects a start that is already close (measured on
    synthetic_dev d09/d11/d13: these limits lost least to the start; more levels, a finer
    grid or longer steps moved further from the truth)."""
    finest = itk_elastix.parameter_object()
    for index in range(parameter_maps.GetNumberOfParameterMaps()):
        parameter_map = _last_level(dict(parameter_maps.GetParameterMap(index)))
        parameter_map["NumberOfResolutions"] = ("1",)
        parameter_map["ImagePyramidSchedule"] = ("1", "1")
        parameter_map["GridSpacingSchedule"] = ("1",)
        parameter_map.setdefault("MaximumNumberOfIterations", ("30",))
        parameter_map["MaximumStepLength"] = (repr(_START_MAX_STEP_MM),)
        finest.AddParameterMap(parameter_map)
    return finest


# Parameters elastix reads per resolution (entry k for level k; one entry serves all levels).
_PER_LEVEL = (
    "MaximumNumberOfIterations",
    "NumberOfSpatialSamples",
    "NumberOfHistogramBins",
    "SP_a",
    "SP_A",
    "SP_alpha",
)
_IMPACT_LEVEL_KEY = re.compile(r"^(Impact[A-Za-z]+?)(\d+)$")  # ImpactVoxelSize2: level 2's


def _last_level(parameter_map: dict) -> dict:
    """The map's last level as a one-level map: per-level lists keep their last entry and
    IMPACT's keys given per level (``ImpactVoxelSize{k}``, ...) the last level's, as level 0.
    Else a one-level registration reads level 0's: the coarsest features and samples."""
    levels = int(parameter_map.get("NumberOfResolutions", ("1",))[0])
    out = {}
    for key, values in parameter_map.items():
        impact = _IMPACT_LEVEL_KEY.match(key)
        if impact and f"{impact[1]}{levels - 1}" in parameter_map:  # given per level
            if int(impact[2]) == levels - 1:
                out[f"{impact[1]}0"] = values
        elif key in _PER_LEVEL and len(values) == levels:
            out[key] = values[-1:]
        else:
            out[key] = values
    return out


def _within(inner: tuple[slice, slice], outer: tuple[slice, slice]) -> tuple[slice, slice]:
    """``inner`` (frame slices) as slices of the ``outer`` part of the frame."""
    return tuple(
        slice((i.start or 0) - (o.start or 0), (i.stop - (o.start or 0)) if i.stop else None)
        for i, o in zip(inner, outer, strict=True)
    )


def _registered(mask, registration, began: float, **fields) -> FrameResult:
    """The answer of a registration that passed its gate."""
    return FrameResult(
        mask=mask,
        source="registration",
        metric_value=registration.metric_value,
        iterations=registration.iterations,
        registration_ms=registration.elapsed_ms,
        elapsed_ms=(time.perf_counter() - began) * 1e3,
        **fields,
    )


def _fallback(previous, reason: str, began: float, **common) -> FrameResult:
    warnings.warn(
        f"frame {common['index']}: {reason}; kept the previous frame's mask.",
        RuntimeWarning,
        stacklevel=4,
    )
    logger.info("frame %d falls back to the previous mask: %s", common["index"], reason)
    elapsed_ms = (time.perf_counter() - began) * 1e3
    return FrameResult(
        mask=previous, source="previous", reason=reason, elapsed_ms=elapsed_ms, **common
    )
