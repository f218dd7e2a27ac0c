"""Runtime budgets: pick the registration schedule that fits the time a frame may take.

A schedule scales the preset's iterations and spatial samples (the number of resolutions stays:
the coarse levels are what catch large motion, and each costs little). Elastix's time is close
to linear in the work it does, sum over levels of iterations x samples, so a cost model
``ms = a + b * work`` fitted on this machine's own measurements (a few calibration runs on
frame 0, then every answered frame) predicts each schedule's time. The scheduler takes the
largest schedule whose prediction, with a safety margin, fits the time left.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FLOW_RUNG",
    "LADDER",
    "CostModel",
    "Schedule",
    "check_budget",
    "choose_schedule",
    "scaled_maps",
]


@dataclass(frozen=True)
class Schedule:
    """A fraction of the preset's iterations and spatial samples (1.0 and 1.0: the preset),
    and the image pyramid: "" keeps the preset's, "recursive" smooths and downsamples each
    level from the one before (elastix's Recursive pyramid) instead of smoothing the whole
    image for every level, which is most of a small registration's fixed cost.
    ``flow_candidate`` False skips the engine's second answer by optical flow (a full-resolution
    flow over the target's neighbourhood, :mod:`regtrack.candidates`) on this rung.
    ``flow_only``: no registration; the fast tracker answers alone (the last rung)."""

    iterations: float = 1.0
    samples: float = 1.0
    pyramid: str = ""
    flow_candidate: bool = True
    flow_only: bool = False

    @property
    def name(self) -> str:
        if self.flow_only:
            return "flow"
        suffix = f"/{self.pyramid}" if self.pyramid else ""
        return f"it{self.iterations:g}/s{self.samples:g}{suffix}"

    @property
    def full(self) -> bool:
        """A rung whose answer is as good as offline: a registration with the flow's second
        answer (the top rungs)."""
        return self.flow_candidate and not self.flow_only

    @property
    def kind(self) -> str:
        """What the cost model fits on its own: the pyramid, or "flow" for the flow rung."""
        return "flow" if self.flow_only else self.pyramid


# Largest first. On the real case, one elastix thread, nothing else running: the preset
# scored DSC 0.969 at a median 63 ms a frame, half of both 0.965 at 43 ms and the smallest
# rung 0.957 at 32 ms with the preset's smoothing pyramid; the recursive pyramid gave the same
# scores 10-13 ms sooner (0.969 at 53 ms, 0.965 at 30, 0.958 at 23), so the rungs from half
# down use it. On the faint synthetic_dev cases it cost the full schedule 0.004-0.01 DSC,
# so the top rungs keep the preset's (benchmarks/budget.py --ladder). On the phantoms,
# 1 level x 10 iterations lost 0.05-0.2 DSC on the jump and large-organ cases, so the
# ladder stops here.
# The rungs from half down also skip the flow candidate: they exist for budgets too tight for
# the full schedule, where its full-resolution flow would cost as much again.
# The last rung registers nothing: the fast tracker's flow at half resolution answers alone.
# Under a budget the smallest registration rung cannot meet reliably it keeps answers fresh:
# on the real case (one process, nothing else running) the smallest registration rung took a
# median 29 ms a frame for DSC 0.958 / CD 1.77 mm, the flow rung 9 ms for 0.956 / 1.16 mm.
LADDER = (
    Schedule(1.0, 1.0),
    Schedule(0.67, 0.75),
    Schedule(0.5, 0.5, "recursive", flow_candidate=False),
    Schedule(0.33, 0.5, "recursive", flow_candidate=False),
    Schedule(0.25, 0.35, "recursive", flow_candidate=False),
    Schedule(0.17, 0.25, "recursive", flow_candidate=False),
    Schedule(0.1, 0.2, "recursive", flow_candidate=False),
    Schedule(0.0, 0.0, flow_only=True),
)
FLOW_RUNG = LADDER[-1]
_PYRAMIDS = {"recursive": "RecursiveImagePyramid"}

_MIN_SAMPLES = 64


def check_budget(seconds, name: str = "budget") -> float | None:
    """A budget in seconds as a float; None (or inf) means unlimited.

    Raises
    ------
    ValueError
        For 0, negative, NaN or non-numeric budgets.
    """
    if seconds is None:
        return None
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {seconds!r}") from None
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"{name} must be a positive number of seconds (e.g. 0.25), got {seconds!r}; "
            "leave it out for no limit."
        )
    return None if math.isinf(value) else value


def scaled_maps(parameter_maps, schedule: Schedule):
    """A copy of ``parameter_maps`` with iterations and samples scaled; returns (maps, work).

    ``work`` is the sum over stages and levels of iterations x samples (the cost model's x).
    """
    from . import itk_elastix

    scaled = itk_elastix.parameter_object()
    work = 0
    for index in range(parameter_maps.GetNumberOfParameterMaps()):
        parameter_map = dict(parameter_maps.GetParameterMap(index))
        iterations = _scale(
            parameter_map.get("MaximumNumberOfIterations", ("500",)), schedule.iterations, 1
        )
        samples = _scale(
            parameter_map.get("NumberOfSpatialSamples", ("5000",)), schedule.samples, _MIN_SAMPLES
        )
        parameter_map["MaximumNumberOfIterations"] = tuple(str(v) for v in iterations)
        if schedule.pyramid:
            for side in ("Fixed", "Moving"):
                key = f"{side}ImagePyramid"
                pairs = len(parameter_map.get(key, ("",)))  # one per image pair (channel)
                parameter_map[key] = (f"{side}{_PYRAMIDS[schedule.pyramid]}",) * pairs
        if "NumberOfSpatialSamples" in parameter_map:
            parameter_map["NumberOfSpatialSamples"] = tuple(str(v) for v in samples)
        per_level = samples if len(samples) == len(iterations) else [samples[0]] * len(iterations)
        work += sum(i * s for i, s in zip(iterations, per_level, strict=True))
        scaled.AddParameterMap(parameter_map)
    return scaled, work


def _scale(values, fraction: float, minimum: int) -> list[int]:
    return [max(minimum, round(int(float(v)) * fraction)) for v in values]


class CostModel:
    """``ms = a + b * work`` fitted on recent measurements of this machine, one fit per
    pyramid kind (a schedule's ``pyramid``): the pyramid changes the fixed cost ``a``.

    The prediction is inflated by the ``quantile`` of observed/fitted ratios (at least
    ``margin``), so a frame that runs slow now and then still fits: 0.9 lets about one frame
    in ten run over; the real-time tracker, whose answers should nearly all be fresh, uses
    0.98.

    The machine's speed changes (other software starts and stops), so the model forgets and
    re-measures:

    - with ``window_s``, a kind's fit and spread use only its observations of the last
      ``window_s`` seconds (at least its newest three): a load spike ages out;
    - with ``retry_s``, a kind not observed for ``retry_s`` seconds (one that looked too slow
      and was not chosen since) is predicted from its *reference* (its first observations,
      the calibration) scaled by the machine's slowdown now: how much slower than their own
      references the newest observations of the kinds that did run were. When the rungs
      that ran say the machine is fast again, the kind is predicted fast again, chosen when
      it fits, and measured anew (its older observations are dropped then); under a lasting
      load it is predicted slow like them.

    ``clock`` gives the time of an observation made without one (``time.perf_counter``).
    """

    def __init__(
        self,
        history: int = 64,
        margin: float = 1.15,
        quantile: float = 0.9,
        *,
        window_s: float | None = None,
        retry_s: float | None = None,
        clock=time.perf_counter,
    ) -> None:
        self._observations: dict[str, deque[tuple[float, float, float]]] = {}
        self._references: dict[str, list[tuple[float, float]]] = {}
        self._fits: dict[str, tuple[tuple, tuple[float, float, float]]] = {}
        self._reference_fits: dict[str, tuple[int, tuple[float, float, float]]] = {}
        self.history = history
        self.margin = margin
        self.quantile = quantile
        self.window_s = window_s
        self.retry_s = retry_s
        self.clock = clock

    def __len__(self) -> int:
        return sum(len(kind) for kind in self._observations.values())

    def observe(self, work: float, ms: float, kind: str = "", at: float | None = None) -> None:
        """One registration of ``work`` took ``ms``, finishing at ``at`` (default: now)."""
        if math.isfinite(ms) and ms > 0:
            at = self.clock() if at is None else float(at)
            observed = self._observations.setdefault(kind, deque(maxlen=self.history))
            if observed and self.retry_s is not None and at - observed[-1][0] > self.retry_s:
                observed.clear()  # measured anew after a pause: its older costs say less
            observed.append((at, float(work), float(ms)))
            reference = self._references.setdefault(kind, [])
            if len(reference) < _REFERENCE_SIZE:
                reference.append((float(work), float(ms)))

    @staticmethod
    def _fit(observations) -> tuple[float, float]:
        work, ms = np.array(observations, dtype=float).T
        if np.ptp(work) == 0:
            return 0.0, float(np.mean(ms) / max(work[0], 1.0))
        # the least-squares line in closed form: no BLAS call in the tracker's process
        centred = work - work.mean()
        slope = float(np.sum(centred * (ms - ms.mean())) / np.sum(centred * centred))
        intercept = float(ms.mean() - slope * work.mean())
        if slope <= 0:
            return float(np.mean(ms)), 0.0
        return max(float(intercept), 0.0), float(slope)

    def _spread_fit(self, observations, slope=None) -> tuple[float, float, float]:
        """The line and its spread: the ``quantile`` of observed/fitted, at least ``margin``.

        Observations of a single work give no slope: with ``slope`` (the kind's calibrated
        one) the line of that slope through their mean, else a line through the origin."""
        works = {work for work, _ in observations}
        if len(works) == 1 and slope:
            mean_ms = float(np.mean([ms for _, ms in observations]))
            intercept = max(mean_ms - slope * works.pop(), 0.0)
        else:
            intercept, slope = self._fit(observations)
        observed = np.array(observations, dtype=float)
        fitted = intercept + slope * observed[:, 0]
        spread = np.quantile(observed[:, 1] / np.maximum(fitted, 1e-6), self.quantile)
        return intercept, slope, max(self.margin, float(spread))

    def _recent(self, kind: str, now: float) -> list[tuple[float, float]]:
        """A kind's (work, ms) of the last ``window_s`` (at least its newest three)."""
        observed = self._observations[kind]
        if self.window_s is None:
            return [(work, ms) for _, work, ms in observed]
        recent = [(work, ms) for at, work, ms in observed if at >= now - self.window_s]
        if len(recent) < _KEEP:
            recent = [(work, ms) for _, work, ms in list(observed)[-_KEEP:]]
        return recent

    def predict(self, work: float, kind: str = "") -> float:
        """Predicted milliseconds, safety margin included (inf before any measurement of
        this kind)."""
        observations = self._observations.get(kind)
        if not observations:
            return math.inf
        now = self.clock()
        if self.retry_s is not None and now - observations[-1][0] > self.retry_s:
            slowdown = self.slowdown(now)
            if slowdown is not None:
                intercept, slope, spread = self._reference_fit(kind)
                return (intercept + slope * work) * slowdown * spread
        recent = self._recent(kind, now)
        key = (len(recent), observations[-1][0], recent[0])
        cached = self._fits.get(kind)
        if cached is None or cached[0] != key:  # refitted when its observations change
            # a window of one rung only (its larger rungs not chosen since): the calibrated slope,
            # else the line through the origin would predict them too slow to be tried again
            slope = self._reference_fit(kind)[1] if kind in self._references else None
            cached = self._fits[kind] = key, self._spread_fit(recent, slope)
        intercept, slope, spread = cached[1]
        return (intercept + slope * work) * spread

    def _reference_fit(self, kind: str) -> tuple[float, float, float]:
        reference = self._references[kind]
        cached = self._reference_fits.get(kind)
        if cached is None or cached[0] != len(reference):  # fixed once it is complete
            cached = self._reference_fits[kind] = len(reference), self._spread_fit(reference)
        return cached[1]

    def slowdown(self, now: float | None = None) -> float | None:
        """How much slower than their references the newest observations (of the last
        ``retry_s``, any kind) ran: their median ratio; None when there are none."""
        now = self.clock() if now is None else now
        newest = sorted(
            (at, work, ms, kind)
            for kind, observed in self._observations.items()
            for at, work, ms in list(observed)[-_SLOWDOWN_SAMPLES:]
            if self.retry_s is None or at >= now - self.retry_s
        )[-_SLOWDOWN_SAMPLES:]
        if not newest:
            return None
        ratios = []
        for _, work, ms, kind in newest:
            intercept, slope, _ = self._reference_fit(kind)
            ratios.append(ms / max(intercept + slope * work, 1e-6))
        return float(np.median(ratios))


# A kind's reference: its first observations (the calibration on frame 0, both kinds on
# every worker at once, as the frames will run).
_REFERENCE_SIZE = 8
_KEEP = 3  # a kind keeps at least this many observations however old
_SLOWDOWN_SAMPLES = 4  # the newest observations that say how fast the machine is now


def choose_schedule(
    available_ms: float | None,
    works: dict,
    cost: CostModel,
    *,
    next_frame_ms: float | None = None,
    free_for_next: bool = True,
) -> Schedule:
    """The largest rung of :data:`LADDER` predicted to fit ``available_ms``.

    ``works`` maps each schedule to its work. None (unlimited) gives the full preset; when no
    rung fits, the smallest is chosen (the caller answers at its deadline regardless).

    ``next_frame_ms`` is the time until the next frame arrives: a rung predicted to run past
    it keeps its worker busy when that frame comes, so it is chosen only when
    ``free_for_next`` (another worker will be free for that frame); otherwise the rung must
    also fit ``next_frame_ms``, and the pipeline keeps up with the frame rate.
    """
    limit = available_ms
    if next_frame_ms is not None and not free_for_next:
        limit = next_frame_ms if limit is None else min(limit, next_frame_ms)
    if limit is None:
        return LADDER[0]
    for schedule in LADDER:
        if cost.predict(works[schedule], schedule.kind) <= limit:
            return schedule
    return LADDER[-1]
