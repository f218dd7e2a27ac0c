"""Optional dependencies: which extra of ``pip install regtrack[...]`` a feature needs.

The core install tracks (``track``, ``realtime``, ``trackrad``, ``evaluate``, ``demo``); the
extras carry the rest. A feature whose extra is missing says which one, in one line, through
:func:`need_extra`, before anything heavy runs.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingExtraError", "need_extra"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "impact": ("torch",),
    "sam2": ("torch", "sam2", "hydra", "omegaconf", "iopath", "PIL"),
    "report": ("matplotlib", "jinja2", "imageio", "imageio_ffmpeg", "PIL", "contourpy"),
    "sweep": ("distributed", "matplotlib"),
}
"""Extra -> the modules it provides (import names)."""

_INSTALL = {
    # sam2 1.1.0 is an sdist that would build CUDA kernels: installed on its own, without them
    "sam2": " && SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0",
}


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed."""


def need_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` naming the extra when a module of ``extra`` is missing.

    Parameters
    ----------
    extra : str
        A key of :data:`EXTRAS`.
    feature : str
        What needs it, as the user asked for it (e.g. "the HTML report").
    """
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{feature} needs regtrack[{extra}] ({', '.join(missing)} not installed): "
            f"pip install -c constraints.txt 'regtrack[{extra}]'{_INSTALL.get(extra, '')}"
        )
