"""Builders: one module per artifact kind, all of the same shape.

Each module `targets/<kind>.py` declares `OUTPUTS` (glob patterns of the files it
writes, each of which must match) and a `build(job)` that writes them into
`job.out` and returns its metrics. Builders never parse YAML, compute keys or know
about doit; heavy imports (torch, transformers, tokenizers) stay inside functions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class BuildError(Exception):
    """A problem with the data a builder was given (a bad record, say), not a bug."""


@dataclass
class Job:
    task: str                     # e.g. `gladius.tokenizer`
    spec: Any                     # the step's validated pydantic spec
    out: Path                     # staging directory to write OUTPUTS into
    inputs: dict[str, Path] = field(default_factory=dict)  # spec field -> input's store entry
    models: dict[str, Any] = field(default_factory=dict)   # spec field -> ModelSpec
    files: list[list[Path]] = field(default_factory=list)  # per source, the files to read
    root: Path = Path(".")
    work: Path | None = None      # survives a killed build of the same key: resume state

    def log(self, message: str) -> None:
        """Progress for the terminal (doit shows a step's output live with verbosity 2)."""
        print(f"  [{self.task}] {message}", file=sys.stderr, flush=True)
