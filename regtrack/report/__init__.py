"""Reports a physicist looks at: one HTML page per tracking run or benchmark.

>>> from regtrack.report import write_report, report_benchmark
>>> write_report("run/")                                  # doctest: +SKIP
PosixPath('run/report/index.html')
>>> report_benchmark("benchmarks/results/accuracy.json")  # doctest: +SKIP
PosixPath('benchmarks/results/accuracy.html')

A run's report holds an overlay movie (MP4, or GIF), the target's trajectory, a per-frame
quality timeline, the official metrics when there is ground truth, and ``index.html`` tying
them together offline. The numbers behind each plot are returned by :func:`trajectory` and
:func:`quality` and saved beside the page as JSON.

matplotlib, imageio and Jinja2 are imported only when a report is written.
"""

from .benchmarks import (
    BENCHMARK_PAGES,
    benchmark_page,
    pareto_front,
    percentile_table,
    report_benchmark,
    tradeoff_figure,
)
from .data import RunData, Trajectory, load_run, quality, trajectory
from .page import Table, write_benchmark_page, write_report

__all__ = [
    "BENCHMARK_PAGES",
    "RunData",
    "Table",
    "Trajectory",
    "benchmark_page",
    "load_run",
    "pareto_front",
    "percentile_table",
    "quality",
    "report_benchmark",
    "tradeoff_figure",
    "trajectory",
    "write_benchmark_page",
    "write_report",
]
