"""Benchmark pages: ``regtrack report benchmarks/results/<name>.json`` -> ``<name>.html``.

Each benchmark JSON names itself (``"benchmark": "accuracy"``); a builder registered for that
name turns it into tables and figures, and :func:`write_benchmark_page` lays them out. A new
benchmark registers its own builder::

    @benchmark_page("budget")
    def _budget(data):
        return "Accuracy against the time budget", [Table(...)], [("caption", figure)], []

and can reuse :func:`tradeoff_figure` (accuracy against cost, Pareto front drawn) and
:func:`percentile_table` (latency percentiles). A JSON with no builder gets a generic page
of its results.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import need_extra
from .page import Table, write_benchmark_page

__all__ = [
    "BENCHMARK_PAGES",
    "benchmark_page",
    "pareto_front",
    "percentile_table",
    "report_benchmark",
    "tradeoff_figure",
]

Builder = Callable[[dict], tuple[str, list[Table], list[tuple[str, Any]], list[str]]]
#: Benchmark name -> builder of (title, tables, figures, notes).
BENCHMARK_PAGES: dict[str, Builder] = {}


def benchmark_page(name: str) -> Callable[[Builder], Builder]:
    """Register the page builder of the benchmark whose JSON says ``"benchmark": name``."""

    def register(builder: Builder) -> Builder:
        BENCHMARK_PAGES[name] = builder
        return builder

    return register


def report_benchmark(json_path: str | Path, *, out: str | Path | None = None) -> Path:
    """Write the page of a benchmark JSON beside it (``accuracy.json`` -> ``accuracy.html``).

    Parameters
    ----------
    json_path : path
        A JSON written by one of ``benchmarks/*.py``.
    out : path, optional
        Page to write instead.

    Returns
    -------
    Path
        The page.

    Raises
    ------
    ValueError
        When the file is missing or is not a JSON object.
    MissingExtraError
        When regtrack[report] is not installed.
    """
    need_extra("report", "a benchmark page")
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"cannot read benchmark results {json_path}: {error}; expected a JSON file written "
            "by benchmarks/*.py (e.g. benchmarks/results/accuracy.json)"
        ) from error
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ValueError(f"{json_path} is not a benchmark JSON object (found a {found})")  # noqa: TRY004
    builder = BENCHMARK_PAGES.get(str(data.get("benchmark")), _generic_page)
    title, tables, figures, notes = builder(data)
    return write_benchmark_page(json_path, title, tables, figures, notes=notes, out=out)


# --------------------------------------------------------------------------- reusable parts


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better).

    Parameters
    ----------
    points : sequence of (x, y)

    Returns
    -------
    list of int
        Sorted by x.
    """
    order = sorted(range(len(points)), key=lambda k: (points[k][0], points[k][1]))
    front, best_y = [], math.inf
    for k in order:
        if points[k][1] < best_y:
            front.append(k)
            best_y = points[k][1]
    return front


def tradeoff_figure(
    points: Mapping[str, tuple[float, float]],
    xlabel: str,
    ylabel: str,
    *,
    log: tuple[bool, bool] = (True, True),
    floor: float = 1e-4,
    title: str = "",
):
    """Scatter of cost against error per method, with the Pareto front (both lower = better).

    Parameters
    ----------
    points : mapping of label to (x, y)
        E.g. seconds per frame and centre distance per method.
    xlabel, ylabel : str
    log : (bool, bool)
        Log scale on x, y.
    floor : float
        Values below it are drawn at it on a log axis (a method that costs nothing).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    labels = list(points)
    xy = np.array([points[label] for label in labels], dtype=float).reshape(-1, 2)
    shown = xy.copy()
    for axis in (0, 1):
        if log[axis]:
            shown[:, axis] = np.maximum(shown[:, axis], floor)
    figure = Figure(figsize=(8.5, 5.0), layout="constrained")
    ax = figure.subplots()
    front = pareto_front([tuple(p) for p in xy])
    ax.plot(
        shown[front, 0], shown[front, 1], "-", color="#999999", lw=1, zorder=1, label="Pareto front"
    )
    for k, label in enumerate(labels):
        marker = "o" if k in front else "s"
        ax.plot(*shown[k], marker, ms=8, label=label, zorder=2)
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log" if log[0] else "linear")
    ax.set_yscale("log" if log[1] else "linear")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.2 rather than 2x10^-1
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    return figure


def percentile_table(
    title: str,
    samples: Mapping[str, Sequence[float]],
    *,
    percentiles: Sequence[float] = (50, 90, 95, 99),
    unit: str = "ms",
    note: str = "",
) -> Table:
    """Latency percentiles per method, the fastest in bold.

    Parameters
    ----------
    title : str
    samples : mapping of label to values
        Per-frame latencies of each method.
    percentiles : sequence of float
    unit : str
    note : str

    Returns
    -------
    Table
    """
    rows = []
    for label, values in samples.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        cells = [float(np.percentile(values, p)) if values.size else None for p in percentiles]
        rows.append([label, *cells, float(values.max()) if values.size else None])
    columns = ["method", *(f"p{p:g} {unit}" for p in percentiles), f"max {unit}"]
    n = len(percentiles) + 1
    return Table(
        title,
        columns,
        rows,
        formats=[None] + [".1f"] * n,
        best={k: "min" for k in range(1, n + 1)},
        note=note,
    )


# --------------------------------------------------------------------------- accuracy

_PEER_NAMES = {
    "copy_first_mask": "copy the first mask",
    "dis_flow": "OpenCV DIS optical flow",
    "tvl1_flow": "scikit-image TV-L1 optical flow",
}
_ACCURACY_COLUMNS = (  # (key, header, format, best)
    ("dsc", "DSC", ".4f", "max"),
    ("centre_distance_mm", "CD mm", ".3f", "min"),
    ("hd95_mm", "HD95 mm", ".2f", "min"),
    ("masd_mm", "MASD mm", ".3f", "min"),
    ("relative_d98", "rel D98", ".4f", "max"),
)


def method_label(name: str) -> str:
    """``regtrack:bspline_ncc`` -> ``regtrack bspline_ncc``; peers by their full names."""
    if name.startswith("regtrack:"):
        return "regtrack " + name.split(":", 1)[1]
    return _PEER_NAMES.get(name, name)


_CASE_SET_TITLES = {
    "benchmark": "Benchmark cases",
    "appearance": "Appearance-stress cases",
    "severe": "Severe appearance cases",
    "realistic": "MR-like cases (smooth organs, per-frame 0..255 scaling)",
    "fine": "Fine sliding motion (drift, slab blending, faint target)",
}
"""Page headings of :data:`regtrack.phantom.CASE_SETS`."""


def _case_sets(cases: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Cases grouped as in the README: benchmark cases, appearance-stress cases, others."""
    from ..phantom import CASE_SETS, NAMED_SPECS

    groups = [
        (_CASE_SET_TITLES[name], [c for c in cases if c in specs])
        for name, specs in CASE_SETS.items()
    ]
    groups.append(("Other cases", [c for c in cases if c not in NAMED_SPECS]))
    return [(name, members) for name, members in groups if members]


def _mean_row(results: dict, cases: list[str], method: str) -> list[Any]:
    """Mean metrics over cases; seconds per frame as the README states them."""
    rows = [results[c][method] for c in cases if method in results[c]]
    cells: list[Any] = [method_label(method)]
    for key, *_ in _ACCURACY_COLUMNS:
        values = [r[key] for r in rows if key in r]
        cells.append(statistics.mean(values) if values else None)
    seconds = [r["s_per_frame_median"] for r in rows if "s_per_frame_median" in r]
    cells.append(statistics.median(seconds) if seconds else None)
    cells.append(max(seconds) if seconds else None)
    return cells


@benchmark_page("accuracy")
def _accuracy_page(data: dict):
    results = data["results"]
    cases = list(results)
    methods = list(dict.fromkeys(m for c in cases for m in results[c]))
    tables, figures = [], []
    for set_name, members in _case_sets(cases):
        rows = [_mean_row(results, members, m) for m in methods]
        tables.append(
            Table(
                f"{set_name}: mean over {len(members)} cases",
                [
                    "method",
                    *(h for _, h, _, _ in _ACCURACY_COLUMNS),
                    "s/frame",
                    "slowest case s/frame",
                ],
                rows,
                formats=[None, *(f for _, _, f, _ in _ACCURACY_COLUMNS), ".3f", ".3f"],
                best={k + 1: b for k, (*_, b) in enumerate(_ACCURACY_COLUMNS)},
                note=f"Cases: {', '.join(members)}. Official TrackRAD metrics (frame 0 excluded), "
                "mean over cases; s/frame is the median of the per-case medians. Best in bold.",
            )
        )
        points = {row[0]: (row[6], row[2]) for row in rows if None not in (row[6], row[2])}
        caption = (
            f"{set_name}: centre distance against time per frame (lower-left is better; the "
            "line joins the methods nothing beats on both)"
        )
        figure = tradeoff_figure(
            points, "seconds per frame (median)", "centre distance (mm)", title=set_name
        )
        figures.append((caption, figure))
    for key, header, fmt, best in (
        ("dsc", "DSC", ".3f", "max"),
        ("centre_distance_mm", "CD mm", ".2f", "min"),
    ):
        rows = [[case, *(results[case].get(m, {}).get(key) for m in methods)] for case in cases]
        tables.append(
            Table(
                f"Per case: {header}",
                ["case", *map(method_label, methods)],
                rows,
                formats=[None, *[fmt] * len(methods)],
                best_in_rows=best,
                note="Best method per case in bold.",
            )
        )
    figures.append(
        ("Centre distance per case and method (log scale)", _per_case_bars(results, cases, methods))
    )
    hashes = (data.get("preset_sha256") or {}).items()
    cases_asked = data.get("cases", "see tables")
    notes = [
        f"regtrack against its peers on phantom cases with exactly known motion ({cases_asked}).",
        f"elastix threads: {data.get('itk_threads')}; preset file hashes: "
        + ", ".join(f"{method_label(k)} {v}" for k, v in hashes),
    ]
    return "Accuracy and speed: regtrack and its peers", tables, figures, notes


def _per_case_bars(results: dict, cases: list[str], methods: list[str]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(cases))
    for k, method in enumerate(methods):
        values = [results[c].get(method, {}).get("centre_distance_mm", np.nan) for c in cases]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, values, width, label=method_label(method))
    ax.set_xticks(x, cases, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("centre distance (mm)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=3)
    return figure


# --------------------------------------------------------------------------- features


@benchmark_page("features")
def _features_page(data: dict):
    from matplotlib.figure import Figure

    rows = [[r["extractor"], r["device"], r["median_ms"], r["p95_ms"]] for r in data["results"]]
    table = Table(
        "Feature extraction, one frame",
        ["extractor", "device", "median ms", "p95 ms"],
        rows,
        formats=[None, None, ".1f", ".1f"],
        best={2: "min", 3: "min"},
        note=f"Frame {' x '.join(map(str, data.get('frame', [])))}, after warm-up; torch "
        f"threads: {data.get('torch_threads')}.",
    )
    figure = Figure(figsize=(9, 0.9 + 0.45 * len(rows)), layout="constrained")
    ax = figure.subplots()
    labels = [f"{r[0]} ({r[1]})" for r in rows]
    medians, p95 = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    y = np.arange(len(rows))
    ax.barh(y, medians, color="#1f77b4", label="median")
    ax.errorbar(p95, y, fmt="|", color="#d62728", ms=14, mew=2, label="p95")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per frame")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    notes = ["Time to compute the IMPACT feature maps of one frame."]
    return "Feature extraction speed", [table], [("Milliseconds per frame", figure)], notes


# --------------------------------------------------------------------------- report


@benchmark_page("report")
def _report_page(data: dict):
    """benchmarks/report.py: seconds to write a run's report, per stage, and movie size."""
    from matplotlib.figure import Figure

    stages = ("load", "trajectory", "plots", "movie", "metrics", "page")
    rows, medians = [], {}
    for kind, runs in (data.get("results") or {}).items():
        if not runs:
            continue
        walls = [r["wall_s"] for r in runs]
        medians[kind] = [statistics.median(r["stages_s"].get(s, 0.0) for r in runs) for s in stages]
        rows.append(
            [
                kind,
                statistics.median(walls),
                min(walls),
                len(runs),
                *medians[kind],
                runs[0]["movie_bytes"] / 1e6,
                runs[0]["movie_frames"],
            ]
        )
    case = data.get("case", {})
    target = data.get("target", {})
    table = Table(
        "Writing one run's report",
        [
            "movie",
            "wall s (median)",
            "wall s (min)",
            "repeats",
            *(f"{s} s" for s in stages),
            "movie MB",
            "movie frames",
        ],
        rows,
        formats=[None, ".1f", ".1f", "d", *[".2f"] * len(stages), ".1f", "d"],
        note=f"`regtrack report RUN` in a fresh interpreter (imports included), pinned to "
        f"{data.get('cores_used')} cores; stages from the report's summary.json. Target: under "
        f"{target.get('wall_s')} s and {target.get('movie_mb')} MB.",
    )
    figure = Figure(figsize=(9, 1.2 + 0.6 * max(len(medians), 1)), layout="constrained")
    ax = figure.subplots()
    left = np.zeros(len(medians))
    for k, stage in enumerate(stages):
        widths = np.array([values[k] for values in medians.values()])
        ax.barh(list(medians), widths, left=left, label=stage)
        left += widths
    ax.set_xlabel("seconds (median over repeats)")
    ax.legend(ncols=len(stages), fontsize=8, loc="lower right")
    shape = " x ".join(map(str, case.get("shape", [])))
    note = f"Phantom {case.get('phantom')}: {case.get('frames')} frames of {shape} px, "
    notes = [note + "tracked with the default preset (tracking not timed)."]
    return "Report writing time", [table], [("Where the seconds go", figure)], notes


# --------------------------------------------------------------------------- budget


def _budget_label(budget) -> str:
    return "unlimited" if budget is None else f"{budget:g} s"


@benchmark_page("budget")
def _budget_page(data: dict):
    """benchmarks/budget.py: accuracy against the per-frame budget, latency percentiles."""
    from matplotlib.figure import Figure

    summary = data.get("summary", [])
    rows = [
        [
            _budget_label(r["budget_s"]),
            r["dsc"],
            r["centre_distance_mm"],
            r["p99_ms"],
            r["max_ms"],
            f"{r['misses']}/{r['frames']}",
            100 * r["fallback_share"],
        ]
        for r in summary
    ]
    table = Table(
        "Mean over cases per budget",
        ["budget", "DSC", "CD mm", "p99 ms", "max ms", "deadline misses", "fallback %"],
        rows,
        formats=[None, ".4f", ".3f", ".0f", ".0f", None, ".0f"],
        best={1: "max", 2: "min"},
        note="Each case replayed at its acquisition rate; latency from a frame's arrival to "
        "its answer. 'unlimited' is the offline run with the preset's full schedule.",
    )
    runs = data.get("runs", [])
    latency = {
        _budget_label(r["budget_s"]): np.concatenate(
            [q["latency_ms"] for q in runs if q["budget_s"] == r["budget_s"]]
        )
        for r in summary
    }
    figure = Figure(figsize=(10, 4), layout="constrained")
    dsc_ax, cd_ax = figure.subplots(1, 2)
    finite = [r for r in summary if r["budget_s"] is not None]
    budgets = [r["budget_s"] for r in finite]
    for case in data.get("cases", []):
        per_case = {q["budget_s"]: q["scores"] for q in runs if q["case"] == case}
        dsc_ax.plot(budgets, [per_case[b]["dsc"] for b in budgets], "o-", ms=3, label=case)
        cd_ax.plot(budgets, [per_case[b]["centre_distance_mm"] for b in budgets], "o-", ms=3)
    for ax, key, label in ((dsc_ax, "dsc", "DSC"), (cd_ax, "centre_distance_mm", "CD mm")):
        reference = [r[key] for r in summary if r["budget_s"] is None]
        if reference:
            ax.axhline(reference[0], color="k", ls="--", lw=1, label="unlimited (mean)")
        ax.plot(budgets, [r[key] for r in finite], "k-o", lw=2, label="mean")
        ax.set_xscale("log")
        ax.set_xlabel("budget per frame (s)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    dsc_ax.legend(fontsize=7)
    tables = [table, percentile_table("Latency, all cases pooled", latency)]
    machine = data.get("machine", {})
    notes = [
        (
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores; elastix in a "
            "worker process, answers at the deadline from the last good mask."
        )
    ]
    return "Accuracy against the time budget", tables, [("Accuracy per budget", figure)], notes


# --------------------------------------------------------------------------- anything else


def _generic_page(data: dict):
    """Tables of whatever ``results`` holds: a list of records or a mapping of records."""
    name = str(data.get("benchmark", "benchmark"))
    results = data.get("results")
    tables = []
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        tables.append(_records_table("Results", results))
    elif isinstance(results, dict) and results:
        records = [
            {"": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in results.items()
        ]
        tables.append(_records_table("Results", records))
    notes = [f"No dedicated page for the '{name}' benchmark yet: its results as they are."]
    return f"Benchmark: {name}", tables, [], notes


def _records_table(title: str, records: list[dict]) -> Table:
    columns = list(dict.fromkeys(k for r in records for k in r))
    rows = [[_cell(r.get(c)) for c in columns] for r in records]
    return Table(title, columns, rows, formats=["auto"] * len(columns))


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
