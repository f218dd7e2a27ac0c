"""Reports of a sweep: ranking tables (all cases, per scanned site), plots, JSON and markdown.

Per setting, each case's repeats and starts (the frames it was tracked from) are averaged
first, then the cases (each case counts once, as in the official mean over cases). Beside the
means, each setting is set against the first one run by run (each case, repeat and start
scored for both): a setting that beats it on about half of the runs is level with it,
whatever the means say. Only ``ok`` rows are averaged; a setting that failed on some case is
ranked after the complete ones, since its mean leaves that case out. A case
without labels has no scores: it counts in the time per frame, not in the score means, and
the report says how many cases were scored.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from ..extras import need_extra
from ..runfolder import strict_json, writing
from .results import open_results

__all__ = ["METRICS", "format_report", "pareto_front", "rank_settings", "sweep_report"]

logger = logging.getLogger(__name__)

#: (key, header, decimals, higher is better) of the columns of the ranking.
METRICS = (
    ("dsc", "DSC", 4, True),
    ("hd95_mm", "HD95 mm", 2, False),
    ("masd_mm", "MASD mm", 2, False),
    ("centre_distance_mm", "CD mm", 2, False),
    ("relative_d98", "rel D98", 4, True),
    ("s_per_frame", "s/frame", 3, False),
)
_KEYS = tuple(m[0] for m in METRICS)


def sweep_report(results_dir, *, by: str = "dsc", plots: bool = True) -> dict:
    """Rank the settings of a sweep; write plots, JSON and markdown (:func:`format_report`
    makes the tables text).

    Parameters
    ----------
    results_dir : path
        The sweep's RESULTS folder.
    by : str
        Metric to rank by (one of :data:`METRICS`); best first.
    plots : bool
        Write the PNG plots.

    Returns
    -------
    dict
        ``ranking`` (one entry per setting, best first), ``by_site``, ``axes`` and ``files``
        (what was written to ``RESULTS/report/``).
    """
    if plots:
        need_extra("sweep", "the sweep report's plots (--no-plots skips them)")
    if by not in _KEYS:
        raise ValueError(f"cannot rank by {by!r}; use one of {', '.join(_KEYS)}")
    with open_results(results_dir) as db:
        rows = db.rows()
    if not rows:
        raise ValueError(f"{results_dir} holds no finished task yet; run the sweep first.")
    axes = varying_keys(rows)
    ranking = rank_settings(rows, by=by, axes=axes)
    by_site = site_table(rows, axes)
    folder = Path(results_dir) / "report"
    cases, scored = case_counts(rows)
    report = {
        "by": by,
        "axes": axes,
        "cases": cases,
        "cases_scored": scored,
        "ranking": ranking,
        "by_site": by_site,
    }
    names = ["ranking.json", "ranking.md"]
    if plots:
        names += [f"axis_{axis}.png" for axis in axes] + ["pareto.png"]
    with writing([folder / n for n in names], fix=f"move {folder} away first"):
        folder.mkdir(exist_ok=True)
        files = _write_tables(folder, report)
        if plots:
            files += plot_axes(ranking, axes, folder) + [plot_pareto(ranking, folder)]
    report["files"] = [str(p) for p in files]
    report["folder"] = str(folder)
    logger.info("sweep report written to %s", folder)
    return report


def format_report(report: dict) -> str:
    """How many cases were scored, the ranking and the per-site table of
    :func:`sweep_report`'s result, as text."""
    return (
        f"{scored_line(report['cases'], report['cases_scored'])}\n"
        f"{format_ranking(report['ranking'], by=report['by'])}\n\n"
        f"{format_sites(report['by_site'])}\n\nreport: {report['folder']}"
    )


def case_counts(rows: list[dict]) -> tuple[int, int]:
    """(cases in the rows, cases scored against labels in at least one ok row)."""
    cases = {row["case_name"] for row in rows}
    scored = {
        row["case_name"]
        for row in rows
        if row["status"] == "ok" and row.get("n_frames_scored") is not None
    }
    return len(cases), len(scored)


def scored_line(cases: int, scored: int) -> str:
    """One line: how many cases the scores are a mean over."""
    line = f"{scored} of {cases} case(s) scored against labels"
    if scored < cases:
        line += (
            f"; {cases - scored} without scores (no labels, or every run failed): "
            "their times and fallbacks count, not their scores"
        )
    return line


def varying_keys(rows: list[dict]) -> list[str]:
    """Setting keys whose value differs between the settings (the sweep's axes)."""
    settings = {row["setting_id"]: row["setting"] for row in rows}
    keys = sorted({k for values in settings.values() for k in values})
    return [k for k in keys if len({_text(v.get(k)) for v in settings.values()}) > 1]


def _text(value) -> str:
    if value is None:
        return "default"
    return json.dumps(value) if not isinstance(value, str) else value


def _label(values: dict, axes: list[str]) -> str:
    shown = []
    for key in axes:
        value = values.get(key)
        text = _text(value).replace(" ", "") if not isinstance(value, str) else Path(value).name
        shown.append(f"{key}={text.lower() if isinstance(value, bool) else text}")
    return " ".join(shown) or "base"


def _case_means(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(setting, case) -> metric means over that case's ok repeats and starts."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            grouped.setdefault((row["setting_id"], row["case_name"]), []).append(row)
    return {
        key: {
            **{m: _mean([r[m] for r in group]) for m in _KEYS},
            "scanned_region": group[0]["scanned_region"] or "unknown",
        }
        for key, group in grouped.items()
    }


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def rank_settings(rows: list[dict], *, by: str = "dsc", axes: list[str] | None = None) -> list:
    """One entry per setting: values, label, case counts and metric means; best first.

    Settings with a failed row come after those without, whatever their means.
    """
    axes = varying_keys(rows) if axes is None else axes
    per_case = _case_means(rows)
    entries = {}
    for row in rows:
        entry = entries.setdefault(
            row["setting_id"],
            {
                "setting_id": row["setting_id"],
                "label": _label(row["setting"], axes),
                "setting": row["setting"],
                "cases": set(),
                "scored": set(),
                "starts": set(),
                "failed_rows": 0,
            },
        )
        entry["cases"].add(row["case_name"])
        entry["starts"].add(row["start"])
        if row["status"] == "ok" and row.get("n_frames_scored") is not None:
            entry["scored"].add(row["case_name"])
        entry["failed_rows"] += row["status"] != "ok"
    ranking = []
    for setting_id, entry in entries.items():
        cases = [v for (s, _), v in per_case.items() if s == setting_id]
        ranking.append(
            {
                **entry,
                "cases": len(entry["cases"]),
                "cases_ok": len(cases),
                "cases_scored": len(entry["scored"]),
                "scored": sorted(entry["scored"]),
                "starts": sorted(entry["starts"]),
                **{m: _mean([c[m] for c in cases]) for m in _KEYS},
            }
        )
    higher = {m[0]: m[3] for m in METRICS}[by]

    def order(entry):
        value = entry[by]
        missing = value is None or math.isnan(value)
        return (
            entry["failed_rows"] > 0,
            missing,
            -value if higher and not missing else (value if not missing else 0.0),
        )

    ranking.sort(key=order)
    for rank, entry in enumerate(ranking, 1):
        entry["rank"] = rank
    _against_first(rows, ranking, by, higher)
    return ranking


def _against_first(rows: list[dict], ranking: list[dict], by: str, higher: bool) -> None:
    """Each entry's ``beats_first``: [runs where it scores better than the first setting, runs
    scored for both] (a run: a case, repeat and start); None for the first itself."""
    scores = {
        (row["setting_id"], row["case_name"], row["repeat"], row["start"]): row[by]
        for row in rows
        if row["status"] == "ok" and row[by] is not None
    }
    first = ranking[0]["setting_id"] if ranking else None
    for entry in ranking:
        pairs = [
            (value, scores[(first, *run)])
            for (setting, *run), value in scores.items()
            if setting == entry["setting_id"] and (first, *run) in scores
        ]
        better = sum(value > theirs if higher else value < theirs for value, theirs in pairs)
        entry["beats_first"] = None if entry["setting_id"] == first else [better, len(pairs)]


def site_table(rows: list[dict], axes: list[str]) -> list[dict]:
    """Per (setting, scanned region): metric means over that region's cases."""
    labels = {row["setting_id"]: _label(row["setting"], axes) for row in rows}
    grouped: dict[tuple[str, str], list[dict]] = {}
    for (setting_id, _), values in _case_means(rows).items():
        grouped.setdefault((setting_id, values["scanned_region"]), []).append(values)
    return [
        {
            "setting_id": s,
            "label": labels[s],
            "scanned_region": region,
            "cases_ok": len(group),
            **{m: _mean([g[m] for g in group]) for m in _KEYS},
        }
        for (s, region), group in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def pareto_front(seconds, accuracy) -> np.ndarray:
    """Boolean mask of the points no other point beats on both time (lower) and accuracy.

    Parameters
    ----------
    seconds, accuracy : sequence of float
        Time per frame (lower is better) and accuracy (higher is better) of each point.
    """
    seconds, accuracy = np.asarray(seconds, float), np.asarray(accuracy, float)
    front = np.ones(len(seconds), bool)
    for i in range(len(seconds)):
        no_worse = (seconds <= seconds[i]) & (accuracy >= accuracy[i])
        better = (seconds < seconds[i]) | (accuracy > accuracy[i])
        front[i] = not np.any(no_worse & better)
    return front


# --------------------------------------------------------------------------- tables


def _cell(value, decimals: int) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{decimals}f}"
    )


def format_ranking(ranking: list[dict], *, by: str = "dsc") -> str:
    """Fixed-width ranking table (mean over cases)."""
    width = max(len("setting"), *(len(e["label"]) for e in ranking))
    header = (
        f"{'#':>3} {'id':<11} {'setting':<{width}} {'cases':>7} {'failed':>6} {'beats #1':>9}"
        + "".join(f"{title:>10}" for _, title, _, _ in METRICS)
    )
    title = f"ranking by {by}, mean over cases; beats #1: runs (case, repeat, start) better"
    lines = [title, header, "-" * len(header)]
    for e in ranking:
        lines.append(
            f"{e['rank']:>3} {e['setting_id']:<11} {e['label']:<{width}} "
            f"{e['cases_ok']:>3}/{e['cases']:<3} {e['failed_rows']:>6} {_runs(e):>9}"
            + "".join(f"{_cell(e[k], d):>10}" for k, _, d, _ in METRICS)
        )
    return "\n".join(lines)


def _runs(entry: dict) -> str:
    """``k/n`` of an entry's ``beats_first``, "-" for the first setting."""
    counts = entry.get("beats_first")
    return f"{counts[0]}/{counts[1]}" if counts else "-"


def format_sites(by_site: list[dict]) -> str:
    """Fixed-width table of the means per scanned site."""
    width = max(len("setting"), *(len(e["label"]) for e in by_site))
    header = f"{'site':<10} {'id':<11} {'setting':<{width}} {'cases':>5}" + "".join(
        f"{title:>10}" for _, title, _, _ in METRICS
    )
    lines = ["per scanned site, mean over its cases", header, "-" * len(header)]
    for e in by_site:
        lines.append(
            f"{e['scanned_region']:<10} {e['setting_id']:<11} {e['label']:<{width}} "
            f"{e['cases_ok']:>5}" + "".join(f"{_cell(e[k], d):>10}" for k, _, d, _ in METRICS)
        )
    return "\n".join(lines)


def _markdown(entries: list[dict], first: list[tuple[str, str]]) -> str:
    headers = [title for _, title in first] + [title for _, title, _, _ in METRICS]
    lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    for e in entries:
        cells = [str(e[key]) for key, _ in first]
        cells += [_cell(e[k], d) for k, _, d, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_tables(folder: Path, report: dict) -> list[Path]:
    json_path, md_path = folder / "ranking.json", folder / "ranking.md"
    json_path.write_text(strict_json(report, indent=2, default=str))
    ranking = [
        {**e, "cases": f"{e['cases_ok']}/{e['cases']}", "beats_first": _runs(e)}
        for e in report["ranking"]
    ]
    md_path.write_text(
        f"## Ranking by {report['by']} (mean over cases)\n\n"
        + _markdown(
            ranking,
            [
                ("rank", "#"),
                ("setting_id", "id"),
                ("label", "setting"),
                ("cases", "cases ok"),
                ("failed_rows", "failed"),
                ("beats_first", "beats #1 (runs)"),
            ],
        )
        + "\n\n## Per scanned site\n\n"
        + _markdown(
            report["by_site"],
            [
                ("scanned_region", "site"),
                ("setting_id", "id"),
                ("label", "setting"),
                ("cases_ok", "cases"),
            ],
        )
        + "\n"
    )
    return [json_path, md_path]


# --------------------------------------------------------------------------- plots


def _figure(size=(6.4, 4.2)):
    # A bare Figure renders with Agg and leaves pyplot's global state (and backend) alone.
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _positions(values: list) -> tuple[list[float], list[str]]:
    """x positions of axis values: numbers as they are, anything else as categories."""
    texts = [_text(v) for v in values]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], texts
    order = sorted(set(texts))
    return [float(order.index(t)) for t in texts], order


def plot_axes(ranking: list[dict], axes: list[str], folder: Path) -> list[Path]:
    """One PNG per axis: DSC and centre distance of every setting against the axis value."""
    paths = []
    for axis in axes:
        values = [e["setting"].get(axis) for e in ranking]
        x, ticks = _positions(values)
        figure = _figure((9.0, 3.8))
        for plot, (metric, title) in zip(
            figure.subplots(1, 2), (("dsc", "DSC"), ("centre_distance_mm", "CD mm"))
        ):
            y = [e[metric] if e[metric] is not None else np.nan for e in ranking]
            plot.scatter(x, y, alpha=0.6, label="one setting (mean over cases)")
            means = {xv: np.nanmean([yv for xx, yv in zip(x, y) if xx == xv]) for xv in set(x)}
            line_x = sorted(means)
            plot.plot(line_x, [means[v] for v in line_x], "k-", lw=1, label="mean per value")
            plot.set_xlabel(axis)
            plot.set_ylabel(title)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                plot.set_xticks(range(len(ticks)), ticks, rotation=20, fontsize=8)
            plot.grid(alpha=0.3)
        plot.legend(fontsize=7)
        figure.suptitle(f"{axis}: mean over cases per setting")
        path = folder / f"axis_{axis}.png"
        figure.savefig(path, dpi=110)
        paths.append(path)
    return paths


def plot_pareto(ranking: list[dict], folder: Path) -> Path:
    """Accuracy (DSC) against seconds per frame, the Pareto front marked and labelled."""
    points = [e for e in ranking if e["dsc"] is not None and e["s_per_frame"] is not None]
    seconds = [e["s_per_frame"] for e in points]
    accuracy = [e["dsc"] for e in points]
    front = pareto_front(seconds, accuracy) if points else np.zeros(0, bool)
    figure = _figure((7.5, 5.0))
    plot = figure.subplots()
    plot.scatter(seconds, accuracy, c="tab:gray", alpha=0.6, label="setting")
    chosen = sorted((s, a, e) for s, a, e, f in zip(seconds, accuracy, points, front) if f)
    if chosen:
        plot.step([c[0] for c in chosen], [c[1] for c in chosen], "r-", where="post", lw=1)
        plot.scatter(
            [c[0] for c in chosen], [c[1] for c in chosen], c="tab:red", label="Pareto front"
        )
        middle = (min(seconds) + max(seconds)) / 2
        for s, a, e in chosen:
            # Labels point inwards, so those on the right stay inside the axes.
            right = s > middle
            plot.annotate(
                e["label"],
                (s, a),
                fontsize=6,
                xytext=(-3 if right else 3, 3),
                textcoords="offset points",
                ha="right" if right else "left",
            )
    plot.set_xlabel("seconds per frame (mean over cases)")
    plot.set_ylabel("DSC (mean over cases)")
    plot.set_title("accuracy vs time per frame")
    plot.grid(alpha=0.3)
    plot.legend(fontsize=8)
    path = folder / "pareto.png"
    figure.savefig(path, dpi=110)
    return path
