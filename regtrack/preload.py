"""Imported once by the fork server that starts regtrack's worker processes.

Real-time registration workers (and sweep workers on this machine) fork from that server, so
each starts with the engine imported and ITK's elastix wrappers loaded (about 1.5 s of a cold
start on 2 cores), and a worker that dies is replaced in a fraction of that.
"""

from . import engine, itk_elastix

itk_elastix.load()

__all__ = ["engine"]
