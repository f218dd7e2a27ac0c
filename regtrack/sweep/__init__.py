"""Registration parameter sweeps: a TOML grid of settings over many cases, on dask.distributed.

>>> from regtrack.sweep import load_sweep_spec, run_sweep, sweep_report
>>> spec = load_sweep_spec("sweep.toml")                       # doctest: +SKIP
>>> run_sweep(spec, "results/", workers=2)                     # doctest: +SKIP
>>> sweep_report("results/")                                   # doctest: +SKIP

``regtrack sweep SPEC --out RESULTS`` and ``regtrack sweep report RESULTS`` do the same.
"""

from .execute import SweepSummary, run_sweep, run_task
from .report import format_report, pareto_front, rank_settings, sweep_report
from .results import ResultsDB, open_results
from .spec import Setting, SweepSpec, SweepTask, load_sweep_spec, parse_sweep_spec

__all__ = [
    "ResultsDB",
    "Setting",
    "SweepSpec",
    "SweepSummary",
    "SweepTask",
    "format_report",
    "load_sweep_spec",
    "open_results",
    "pareto_front",
    "parse_sweep_spec",
    "rank_settings",
    "run_sweep",
    "run_task",
    "sweep_report",
]
