"""Report figures, drawn with matplotlib's object API on the Agg canvas.

``matplotlib.figure.Figure`` is used without pyplot: no global figure state, no GUI backend
chosen behind the user's back, and nothing to close. Each function takes the arrays of
:mod:`regtrack.report.data` and returns a Figure; :func:`png_bytes` renders one.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["PLOT_COLOURS", "STAGE_COLOURS", "png_bytes", "quality_figure", "trajectory_figure"]

#: Colours per kind of answer on a white page (the movie's yellow is too pale there).
PLOT_COLOURS = {
    "given": "#7b52d6",
    "registration": "#1f77b4",
    "sam": "#ff7f0e",
    "fallback": "#d62728",
    "missing": "#999999",
}
#: The kinds of answer drawn per frame, in legend order (quality_figure's ``kinds``).
_ANSWER_KINDS = ("given", "registration", "sam", "fallback")
TRUTH_COLOUR = "#222222"
_WIDTH_IN = 11.0


def _figure(n_rows: int, height_per_row: float = 2.1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_WIDTH_IN, 0.6 + height_per_row * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure, axes


def _time_label(unit: str) -> str:
    return "time (s)" if unit == "s" else "frame"


def _frame_axis(ax, time: np.ndarray, unit: str) -> None:
    """Frame numbers along the top when the bottom axis is in seconds."""
    if unit != "s" or len(time) < 2 or time[1] <= 0:
        return
    rate = 1.0 / (time[1] - time[0])
    top = ax.secondary_xaxis("top", functions=(lambda t: t * rate, lambda f: f / rate))
    top.set_xlabel("frame")


def _shade_missing(ax, time: np.ndarray, done: int) -> None:
    """Grey band over the frames an interrupted run did not answer."""
    if done < len(time):
        step = time[1] - time[0] if len(time) > 1 else 1.0
        start, stop = time[done] - step / 2, time[-1] + step / 2
        ax.axvspan(start, stop, color="#bbbbbb", alpha=0.35, lw=0, label="not answered")


def trajectory_figure(traj) -> Any:
    """Centroid position along both image axes over time, prediction against truth.

    Parameters
    ----------
    traj : regtrack.report.data.Trajectory

    Returns
    -------
    matplotlib.figure.Figure
        One panel per image axis (rows drawn with up as in the image), plus the centroid
        error when the truth is known. Fallback frames are circled, gate rejections crossed.
    """
    with_truth = traj.ground_truth_mm is not None
    figure, axes = _figure(3 if with_truth else 2)
    time = traj.time
    done = int(np.sum([s != "missing" for s in traj.source]))
    names = ("row position (mm)\nup as in the image", "column position (mm)")
    for k, (ax, name) in enumerate(zip(axes, names)):
        if with_truth:
            ax.plot(
                time,
                traj.ground_truth_mm[:, k],
                color=TRUTH_COLOUR,
                ls="--",
                lw=1.2,
                label="ground truth",
            )
        ax.plot(
            time,
            traj.predicted_mm[:, k],
            color=PLOT_COLOURS["registration"],
            lw=1.6,
            label="prediction",
        )
        _mark_frames(ax, time, traj.predicted_mm[:, k], traj.fallback, traj.gate_rejected)
        _shade_missing(ax, time, done)
        ax.set_ylabel(name)
    axes[0].invert_yaxis()  # row numbers grow downwards in the image
    if with_truth:
        error = np.linalg.norm(traj.predicted_mm - traj.ground_truth_mm, axis=1)
        axes[2].plot(time, error, color=PLOT_COLOURS["fallback"], lw=1.2)
        _mark_frames(axes[2], time, error, traj.fallback, traj.gate_rejected)
        _shade_missing(axes[2], time, done)
        axes[2].set_ylabel("centroid error (mm)")
        axes[2].set_ylim(bottom=0)
    axes[-1].set_xlabel(_time_label(traj.time_unit))
    _frame_axis(axes[0], time, traj.time_unit)
    axes[0].legend(loc="upper right", ncols=5, fontsize=9, framealpha=0.9)
    return figure


def _mark_frames(ax, time, values, fallback, rejected) -> None:
    """Open circle on fallback frames, a cross on gate rejections."""
    if fallback.any():
        ax.plot(
            time[fallback],
            values[fallback],
            "o",
            mfc="none",
            ms=8,
            color=PLOT_COLOURS["fallback"],
            label="fallback",
        )
    if rejected.any():
        ax.plot(
            time[rejected],
            values[rejected],
            "x",
            ms=7,
            mew=1.8,
            color="black",
            label="gate rejected",
        )


def quality_figure(data: dict[str, Any], n_frames: int) -> Any:
    """Per-frame quality timeline: metric, iterations, time against budget, time per stage
    (when the records have it), area, source.

    Parameters
    ----------
    data : dict
        Output of :func:`regtrack.report.data.quality`.
    n_frames : int
        Frames of the sequence (the x axis spans them even for an interrupted run).

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = ["metric_value", "iterations", "ms", "area", "source"]
    if "sam_score" in data:
        panels.insert(1, "sam_score")
    if "stages_ms" in data:  # where each frame's time went
        panels.insert(panels.index("ms") + 1, "stages")
    figure, axes = _figure(len(panels), 1.6)
    time, unit = data["time"], data["time_unit"]
    step = (time[1] - time[0]) if len(time) > 1 else 1.0
    span = (-0.5 * step, (n_frames - 0.5) * step)
    kinds = np.where(data["fallback"], "fallback", np.array(data["source"], dtype=object))
    for ax, panel in zip(axes, panels):
        _QUALITY_PANELS[panel](ax, data, time, kinds)
        if len(time) < n_frames:  # interrupted run: the frames not answered, greyed
            ax.axvspan((len(time) - 0.5) * step, span[1], color="#bbbbbb", alpha=0.35, lw=0)
        ax.set_xlim(*span)
    axes[-1].set_xlabel(_time_label(unit))
    _frame_axis(axes[0], time, unit)
    return figure


def _dots(ax, time, values, kinds, label: str) -> None:
    """One value per frame, coloured by the kind of answer."""
    finite = np.isfinite(values)
    ax.plot(time[finite], values[finite], color="#cccccc", lw=0.8, zorder=1)
    for kind in _ANSWER_KINDS:
        pick = finite & (kinds == kind)
        if pick.any():
            ax.plot(
                time[pick], values[pick], ".", ms=5, color=PLOT_COLOURS[kind], label=kind, zorder=2
            )
    ax.set_ylabel(label)


def _metric_panel(ax, data, time, kinds) -> None:
    _dots(ax, time, data.get("metric_value", np.full(len(time), np.nan)), kinds, "metric value")
    ax.legend(loc="upper right", ncols=3, fontsize=8, framealpha=0.9)


def _sam_panel(ax, data, time, kinds) -> None:
    _dots(ax, time, data["sam_score"], kinds, "SAM score")


def _iterations_panel(ax, data, time, kinds) -> None:
    _dots(ax, time, data.get("iterations", np.full(len(time), np.nan)), kinds, "iterations")


def _ms_panel(ax, data, time, kinds) -> None:
    """Milliseconds per frame, split into registration and features, against the budget."""
    elapsed = data.get("elapsed_ms", np.full(len(time), np.nan))
    ax.plot(time, elapsed, color="#1f77b4", lw=1.2, label="total")
    if "registration_ms" in data:
        ax.plot(time, data["registration_ms"], color="#2ca02c", lw=0.8, label="registration")
    if "feature_ms" in data and np.nanmax(np.r_[data["feature_ms"], 0]) > 0:
        ax.plot(time, data["feature_ms"], color="#9467bd", lw=0.8, label="features")
    if "latency_ms" in data:  # arrival to answer, when the streaming tracker ran
        ax.plot(time, data["latency_ms"], color="#ff7f0e", lw=0.8, label="latency")
    if "budget_ms" in data:
        ax.step(
            time, data["budget_ms"], where="mid", color="#d62728", ls="--", lw=1.2, label="budget"
        )
    missed = data["deadline_missed"]
    if missed.any():
        ax.plot(time[missed], elapsed[missed], "v", color="#d62728", ms=6, label="deadline missed")
    ax.set_ylabel("ms per frame")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", ncols=5, fontsize=8, framealpha=0.9)


#: One colour per stage of a frame (:data:`regtrack.stages.STAGES`), in the order drawn.
STAGE_COLOURS = {
    "queue": "#c7c7c7",
    "dispatch": "#8c564b",
    "preprocess": "#e377c2",
    "features": "#9467bd",
    "registration": "#2ca02c",
    "flow": "#17becf",
    "refinement": "#bcbd22",
    "reference": "#aec7e8",
    "warp": "#1f77b4",
    "other": "#7f7f7f",
    "return": "#c49c94",
    "waited": "#ff9896",
    "answer": "#ff7f0e",
}


def _stages_panel(ax, data, time, kinds) -> None:
    """Each frame's time as a bar stacked by stage (arrival to answer), against the budget."""
    stages = data["stages_ms"]
    step = (time[1] - time[0]) if len(time) > 1 else 1.0
    bottom = np.zeros(len(time))
    for name, values in stages.items():
        values = np.nan_to_num(values, nan=0.0)
        if not values.any():
            continue
        colour = STAGE_COLOURS.get(name, "#aaaaaa")
        ax.bar(time, values, 0.85 * step, bottom=bottom, color=colour, lw=0, label=name)
        bottom += values
    if "budget_ms" in data:
        ax.step(
            time, data["budget_ms"], where="mid", color="#d62728", ls="--", lw=1.2, label="budget"
        )
    ax.set_ylabel("ms per stage")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", ncols=7, fontsize=7, framealpha=0.9)


def _area_panel(ax, data, time, kinds) -> None:
    _dots(ax, time, data["area_mm2"], kinds, "mask area (mm²)")


def _source_panel(ax, data, time, kinds) -> None:
    """Which answer each frame got, and where the gate said no."""
    sources = data["source"]
    names = ["given", "registration"] + sorted({s for s in sources} - {"given", "registration"})
    level = {name: k for k, name in enumerate(names)}
    y = np.array([level[s] for s in sources])
    for kind in _ANSWER_KINDS:
        pick = kinds == kind
        if pick.any():
            ax.plot(time[pick], y[pick], "|", ms=10, mew=2, color=PLOT_COLOURS[kind])
    rejected = data["gate_rejected"]
    if rejected.any():
        ax.plot(time[rejected], y[rejected], "x", color="black", ms=7, label="gate rejected")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_ylabel("answer")


_QUALITY_PANELS = {
    "metric_value": _metric_panel,
    "sam_score": _sam_panel,
    "iterations": _iterations_panel,
    "ms": _ms_panel,
    "stages": _stages_panel,
    "area": _area_panel,
    "source": _source_panel,
}


def png_bytes(figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
