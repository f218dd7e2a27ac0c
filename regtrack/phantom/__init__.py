"""Cases with exactly known motion, from two generators.

- :mod:`regtrack.phantom.anatomical`: synthetic sagittal cine-MRI of thorax and upper abdomen
  (sliding organs, irregular breathing, appearance changes), :func:`generate_phantom` and the
  named case sets (:data:`CASE_SETS`).
- :mod:`regtrack.phantom.semisynthetic`: a real frame warped by known motion,
  :func:`semisynthetic_from_case` and :data:`SEMI_SYNTHETIC_SPECS`.

Both feed the demo, the tests and the accuracy benchmarks; every name is importable from
``regtrack.phantom``.
"""

from .anatomical import (
    APPEARANCE_SPECS,
    BENCHMARK_SPECS,
    CASE_SETS,
    FINE_MOTION_SPECS,
    NAMED_SPECS,
    REALISTIC_SPECS,
    SEVERE_SPECS,
    SITES,
    PhantomCase,
    PhantomSpec,
    generate_phantom,
    write_phantom_case,
)
from .semisynthetic import (
    SEMI_SYNTHETIC_SPECS,
    SemiSyntheticCase,
    SemiSyntheticSpec,
    generate_semisynthetic,
    semisynthetic_from_case,
)
from .signals import minmax_scale

__all__ = [
    "APPEARANCE_SPECS",
    "BENCHMARK_SPECS",
    "CASE_SETS",
    "FINE_MOTION_SPECS",
    "NAMED_SPECS",
    "REALISTIC_SPECS",
    "SEMI_SYNTHETIC_SPECS",
    "SEVERE_SPECS",
    "SITES",
    "PhantomCase",
    "PhantomSpec",
    "SemiSyntheticCase",
    "SemiSyntheticSpec",
    "generate_phantom",
    "generate_semisynthetic",
    "minmax_scale",
    "semisynthetic_from_case",
    "write_phantom_case",
]
