"""HTML pages: the report of one run (``index.html``) and benchmark pages.

Pages come from Jinja2 templates shipped in ``regtrack/report/templates`` with autoescape on,
so every value from a results folder (case names, reasons, paths) is escaped by Jinja2. The
pages carry their own CSS and embed their figures as PNG data URIs: they open offline, from
a copied folder or an e-mail attachment, with nothing fetched from anywhere. Only the movie is
a separate file beside the page (relative link).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import need_extra
from .data import load_run, quality, quality_json, summary, trajectory

__all__ = ["Table", "write_benchmark_page", "write_report"]

logger = logging.getLogger(__name__)

_DATA_FILES = ("trajectory.json", "quality.json", "trajectory.png", "quality.png", "summary.json")
_DATA_FILES = ("trajectory.json", "quality.json", "trajectory.png", "quality.png", "summary.json")
_METRIC_COLUMNS = (  # (key, header, format): the five official TrackRAD metrics
    ("dsc", "DSC", ".4f"),
    ("hd95_mm", "HD95 mm", ".2f"),
    ("masd_mm", "MASD mm", ".3f"),
    ("centre_distance_mm", "CD mm", ".3f"),
    ("relative_d98", "rel D98", ".4f"),
)


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A table for a page.

    Attributes
    ----------
    title : str
    columns : sequence of str
        Header cells.
    rows : sequence of sequences
        Cells: numbers (formatted with ``formats``), strings, or None (shown as "-").
    formats : sequence of str or None, optional
        Format spec per column for numeric cells, e.g. ``".4f"``, or ``"auto"`` (four
        significant digits, no exponent below 10^9); None: ``str``.
    best : dict of int to str, optional
        Column index -> "max" or "min": that column's best value is shown in bold
        (the comparison against the peers at a glance).
    best_in_rows : str, optional
        "max" or "min": bold the best numeric cell of each row instead (methods as columns).
    note : str, optional
        A sentence under the table (how the numbers were made).
    """

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    formats: Sequence[str | None] | None = None
    best: dict[int, str] = field(default_factory=dict)
    note: str = ""
    best_in_rows: str | None = None

    def cells(self) -> list[list[dict]]:
        """Rows of ``{"text", "numeric", "bold"}`` dicts, ready for the template."""
        best = {col: self._best_value(col, how) for col, how in self.best.items()}
        out = []
        for row in self.rows:
            cells = []
            row_best = _best(row, self.best_in_rows) if self.best_in_rows else None
            for col, value in enumerate(row):
                numeric = _is_number(value)
                target = row_best if self.best_in_rows else best.get(col)
                bold = numeric and target is not None and math.isclose(value, target)
                cells.append({"text": self._text(col, value), "numeric": numeric, "bold": bold})
            out.append(cells)
        return out

    def _text(self, col: int, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        spec = self.formats[col] if self.formats and col < len(self.formats) else None
        if spec == "auto" and _is_number(value):
            return _auto(value)
        if spec and _is_number(value):
            return format(value, spec)
        return str(value)

    def _best_value(self, col: int, how: str) -> float | None:
        return _best([row[col] for row in self.rows if col < len(row)], how)


def _best(values: Sequence[Any], how: str) -> float | None:
    """The largest ("max") or smallest ("min") finite number among ``values``."""
    numbers = [v for v in values if _is_number(v) and math.isfinite(v)]
    if not numbers:
        return None
    return max(numbers) if how == "max" else min(numbers)


def _auto(value: float) -> str:
    """Four significant digits, but 18130 rather than 1.813e+04."""
    if isinstance(value, (int, np.integer)) or not math.isfinite(value):
        return str(value)
    if 1e3 <= abs(value) < 1e9:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- rendering


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("regtrack.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a template typo fails loudly, not silently blank
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, path: Path, **context: Any) -> Path:
    from .. import __version__

    context.setdefault("version", __version__)
    context.setdefault("generated", datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    html = _environment().get_template(template).render(**context)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(html, encoding="utf-8")
    os.replace(scratch, path)  # a browser never sees a half-written page
    return path


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_entry(caption: str, figure: Any, png_path: Path | None = None) -> dict:
    """{"caption", "src", "file"} for a matplotlib Figure, PNG bytes or a PNG file."""
    from .plots import png_bytes

    if isinstance(figure, (bytes, bytearray)):
        png = bytes(figure)
    elif isinstance(figure, (str, os.PathLike)):
        png = Path(figure).read_bytes()
    else:
        png = png_bytes(figure)
    if png_path is not None:
        png_path.write_bytes(png)
    return {"caption": caption, "src": _data_uri(png), "file": png_path.name if png_path else None}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, allow_nan=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- run report


def write_report(
    results_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    gif: bool = False,
    fps: float | None = None,
) -> Path:
    """Write the report of a tracking run: movie, plots, metrics and ``index.html``.

    Parameters
    ----------
    results_dir : path
        A results folder of :func:`regtrack.run.track_case` (``regtrack track --out``); an
        interrupted run is reported as far as it went.
    out : path, optional
        Report folder (default ``results_dir/report``).
    gif : bool
        Write the movie as an animated GIF (for slides) instead of an MP4.
    fps : float, optional
        Movie playback rate (default: the acquisition rate, within 2-30 fps).

    Returns
    -------
    Path
        The report's ``index.html``. Beside it: ``movie.mp4`` (or ``movie.gif``),
        ``trajectory.png``/``.json``, ``quality.png``/``.json`` and ``summary.json`` (the
        facts on the page, the metrics and the seconds each part took).

    Raises
    ------
    ValueError
        When ``results_dir`` holds no results (it names the files it expected).
    MissingExtraError
        When regtrack[report] is not installed.
    """
    need_extra("report", "the HTML report")

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    from ..runfolder import writing

    run = load_run(results_dir)
    folder = Path(out) if out is not None else run.directory / "report"
    names = (*_DATA_FILES, "index.html", "movie.gif" if gif else "movie.mp4")
    with writing([folder / name for name in names], fix="pass --out with another folder"):
        return _write_run_report(run, folder, gif, fps, timings, lap)


def _write_run_report(run, folder: Path, gif: bool, fps, timings: dict, lap) -> Path:
    """The body of :func:`write_report`, once its files are claimed."""
    from .movie import movie_fps, write_movie
    from .plots import quality_figure, trajectory_figure

    folder.mkdir(parents=True, exist_ok=True)
    facts = summary(run)
    lap("load")
    traj = trajectory(run)
    _write_json(folder / "trajectory.json", traj.to_json())
    frames_quality = quality(run)
    _write_json(folder / "quality.json", quality_json(frames_quality))
    lap("trajectory")
    figures = [
        _figure_entry(
            "Where the target is: mask centroid along both image axes",
            trajectory_figure(traj),
            folder / "trajectory.png",
        ),
        _figure_entry(
            "How each frame went: similarity metric, iterations, time against the budget, "
            "mask area, answer source and gate decisions",
            quality_figure(frames_quality, run.n_frames),
            folder / "quality.png",
        ),
    ]
    lap("plots")
    movie = write_movie(run, folder / ("movie.gif" if gif else "movie.mp4"), fps=fps)
    lap("movie")
    metrics, metrics_note = _run_metrics(run)
    lap("metrics")
    facts["metrics"] = metrics
    facts["movie"] = {
        "file": movie.name,
        "fps": fps or movie_fps(run.frame_rate_hz),
        "bytes": movie.stat().st_size,
        "frames": run.n_frames,
    }
    index = _render(
        "index.html.j2",
        folder / "index.html",
        title=f"regtrack report: {run.name}",
        facts=facts,
        fact_rows=_fact_rows(run, facts),
        movie=facts["movie"],
        gif=movie.suffix == ".gif",
        swatches=_swatches(facts["has_ground_truth"], facts["sam_ran"]),
        figures=figures,
        metrics=_metrics_table(run.name, metrics, metrics_note),
        source_rows=sorted(facts["sources"].items(), key=lambda kv: -kv[1]),
        settings_json=json.dumps(run.settings, indent=2, default=str),
        files=[*_DATA_FILES, movie.name],
    )
    lap("page")
    facts["render_s"] = timings
    _write_json(folder / "summary.json", facts)
    logger.info("report of %s written to %s in %.1f s", run.name, index, sum(timings.values()))
    return index


def _swatches(with_truth: bool, with_sam: bool) -> list[tuple[str, str]]:
    """Legend of the movie's colours, taken from the movie module so they cannot disagree."""
    from .movie import SOURCE_COLOURS, TRUTH_COLOUR

    labels = {
        "given": "given (frame 0)",
        "registration": "registration",
        "sam": "SAM2.1 tracker",
        "fallback": "fallback",
        "missing": "not answered",
    }
    if not with_sam:
        del labels["sam"]
    rows = [(labels[k], _hex(SOURCE_COLOURS[k])) for k in labels]
    if with_truth:
        rows.append(("ground truth", _hex(TRUTH_COLOUR)))
    return rows


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _run_metrics(run) -> tuple[dict | None, str]:
    """Official metrics of the answered frames against the ground truth, and a note."""
    from ..metrics import evaluate_case

    if run.labels is None:
        return None, "no ground truth for this case: no metrics"
    done = run.n_done
    try:
        scores = evaluate_case(
            np.asarray(run.masks[:done]),
            np.asarray(run.labels[:done]),
            scanned_region=run.scanned_region,
        )
    except ValueError as error:
        return None, f"metrics not computed: {error}"
    note = "Official TrackRAD2025 metrics (frame 0 excluded, 1 mm pixels as officially)."
    if run.missing is not None:
        note += f" Computed on the answered frames 0-{done - 1} only ({run.status})."
    return scores, note


def _metrics_table(case: str, metrics: dict | None, note: str) -> Table | None:
    if metrics is None:
        return Table("Metrics", [], [], note=note)
    values = [metrics[key] for key, _, _ in _METRIC_COLUMNS]
    return Table(
        "Metrics",
        ["case", *(header for _, header, _ in _METRIC_COLUMNS), "frames scored"],
        [[name, *values, int(metrics["n_frames_scored"])] for name in (case, "mean (1 case)")],
        formats=[None, *(f for _, _, f in _METRIC_COLUMNS), "d"],
        note=note,
    )


def _fact_rows(run, facts: dict) -> list[tuple[str, str]]:
    """(label, value) lines of the summary box."""

    def ms(value):
        return "-" if value is None else f"{value:.0f} ms"

    spacing = facts["spacing_mm"]
    frame = f"{facts['frame_shape'][0]} x {facts['frame_shape'][1]} px, "
    frame += f"{spacing[0]:g} x {spacing[1]:g} mm"
    rate = facts["frame_rate_hz"]
    timing = f"median {ms(facts['ms_per_frame_median'])}, p95 {ms(facts['ms_per_frame_p95'])}, "
    timing += f"max {ms(facts['ms_per_frame_max'])}"
    rows = [
        ("case", facts["case"]),
        ("frames answered", f"{facts['frames_done']} of {facts['n_frames']}"),
        ("frame", frame),
        ("frame rate", f"{rate:g} Hz" if rate else "unknown"),
        ("preset", str(facts["preset"])),
        ("time per frame", timing),
        ("fallback frames", str(facts["fallback_frames"])),
        ("gate rejections", str(facts["gate_rejected_frames"])),
    ]
    if facts["budget_ms"] is not None:
        missed = facts["deadline_missed_frames"]
        rows.append(("budget", f"{facts['budget_ms']:.0f} ms per frame, missed on {missed} frames"))
    if facts["schedules"]:
        counts = (f"{name} on {n} frame{'s' * (n != 1)}" for name, n in facts["schedules"].items())
        rows.append(("schedules", "; ".join(counts)))
    if facts.get("candidates"):
        counts = (f"{name} on {n} frame{'s' * (n != 1)}" for name, n in facts["candidates"].items())
        rows.append(("answered by", "; ".join(counts)))
    if facts.get("start_correction_mm"):
        moved = facts["start_correction_mm"]
        n = moved["frames"]
        words = f"{moved['median']:.2f} mm median, {moved['max']:.2f} mm at most"
        rows.append(("start moved by the registration", f"{words} ({n} frame{'s' * (n != 1)})"))
    if facts["scanned_region"]:
        rows.append(("scanned region", facts["scanned_region"]))
    rows.append(("ground truth", "yes" if facts["has_ground_truth"] else "no"))
    rows.append(("output.mha", "written" if facts["output_written"] else "not in this folder"))
    rows.append(("results folder", str(run.directory.resolve())))
    return rows


# --------------------------------------------------------------------------- benchmark pages


def write_benchmark_page(
    json_path: str | os.PathLike,
    title: str,
    tables: Sequence[Table],
    figures: Sequence[tuple[str, Any]] = (),
    *,
    notes: Sequence[str] = (),
    out: str | os.PathLike | None = None,
) -> Path:
    """Write one self-contained HTML page for a benchmark's JSON.

    Parameters
    ----------
    json_path : path
        The benchmark's JSON; its ``machine`` entry (see ``benchmarks/accuracy.py``) is shown
        and the file linked.
    title : str
    tables : sequence of Table
    figures : sequence of (caption, figure)
        matplotlib Figures, PNG bytes or PNG files; embedded in the page.
    notes : sequence of str
        Sentences shown under the title (what was measured, how to read it).
    out : path, optional
        Page to write (default: the JSON's path with ``.html``).

    Returns
    -------
    Path
        The page.
    """
    from ..runfolder import check_not_inputs, writing

    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    page = Path(out) if out is not None else json_path.with_suffix(".html")
    check_not_inputs({"--out": page}, [json_path])
    page.parent.mkdir(parents=True, exist_ok=True)
    machine = data.get("machine") if isinstance(data, dict) else None
    with writing([page], fix="pass --out with another page"):
        return _render(
            "benchmark.html.j2",
            page,
            title=title,
            notes=list(notes),
            tables=list(tables),
            figures=[_figure_entry(caption, figure) for caption, figure in figures],
            machine=_machine_rows(machine),
            json_link=os.path.relpath(json_path, page.parent),
        )


def _machine_rows(machine: dict | None) -> list[tuple[str, str]]:
    """(label, value) lines naming the machine a benchmark ran on."""
    if not machine:
        return [("machine", "not recorded in the JSON")]
    rows = []
    for key in ("cpu", "cores", "gpu", "python", "platform"):
        if key in machine:
            rows.append((key, "none" if machine[key] is None else str(machine[key])))
    versions = machine.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    return rows
