"""The files of one run folder and how to read them; light enough for the report to import.

A run folder (``regtrack track --out``) holds
- ``run.json``: what was asked (case, its files and their fingerprints, settings);
- ``frames.jsonl``: one record per frame, appended and flushed as each frame is answered;
- ``masks.partial.npy``: the masks so far (a memory-mapped (T, H, W) uint8 array);
- ``displacement.partial.npy``: optional (T, H, W, 2) float32 fields, mm (row, col);
- ``output.mha``: the final masks, written once every frame is done (unless the run was given
  another output file);
- ``run.lock``: present while a process writes the folder; holds its pid.

This module imports neither elastix nor torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunFiles", "read_records"]


@dataclass(frozen=True)
class RunFiles:
    """Paths of one run's output folder: the one list of what a run writes."""

    directory: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))

    @property
    def settings(self) -> Path:
        return self.directory / "run.json"

    @property
    def records(self) -> Path:
        return self.directory / "frames.jsonl"

    @property
    def masks(self) -> Path:
        return self.directory / "masks.partial.npy"

    @property
    def fields(self) -> Path:
        return self.directory / "displacement.partial.npy"

    @property
    def output(self) -> Path:
        return self.directory / "output.mha"

    @property
    def lock(self) -> Path:
        return self.directory / "run.lock"

    @property
    def required(self) -> tuple[Path, ...]:
        """The files every run has once it started: what a reader of results needs."""
        return (self.settings, self.records, self.masks)

    @property
    def results(self) -> tuple[Path, ...]:
        """Every result file a run may write (not the lock)."""
        return (*self.required, self.fields, self.output)


def read_records(path: str | Path) -> list[dict]:
    """Per-frame records of ``frames.jsonl``: frames 0..n-1 in order.

    A torn last line (a crash mid-write) or a record out of order ends the list, so what is
    returned is exactly the frames a resumed run would keep. A missing file gives ``[]``.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or record.get("index") != len(records):
            break
        records.append(record)
    return records
