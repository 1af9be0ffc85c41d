"""Builders: one module per artifact kind, all of the same shape.

Each module `targets/<kind>.py` declares `OUTPUTS` (glob patterns of the files it
writes, each of which must match; or `outputs(spec)` where they depend on the spec)
and a `build(job)` that writes them into `job.out` and returns its metrics. A spec
may name another module than its kind's (`Export.builder()`: `export` or `gguf`).
Builders never parse YAML, compute keys or know about doit; heavy imports (torch,
transformers, tokenizers) stay inside functions. A builder reads another entry's manifest and
typed files through `compiler.entries`, and a tokenizer through `load_tokenizer` here.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compiler.inputs import Input


TOKENIZER_JSON = "tokenizer.json"  # of a tokenizer entry


class BuildError(Exception):
    """A problem with the data a builder was given (a bad record, say), not a bug."""


@dataclass
class Job:
    task: str                     # e.g. `gladius.tokenizer`
    spec: Any                     # the step's validated pydantic spec
    out: Path                     # staging directory to write OUTPUTS into
    inputs: dict[Input, Path] = field(default_factory=dict)  # compiler.inputs.Input -> its store entry
    models: dict[str, Any] = field(default_factory=dict)   # spec field -> ModelSpec
    files: list[list[Path]] = field(default_factory=list)  # per source, the files to read
    root: Path = Path(".")
    work: Path | None = None      # survives a killed build of the same key: resume state
    key: str = ""                 # the step's content key (a report's identity)

    def log(self, message: str) -> None:
        """Progress for the terminal (doit shows a step's output live with verbosity 2)."""
        print(f"  [{self.task}] {message}", file=sys.stderr, flush=True)


class StatusLine:
    """One line on stderr, rewritten in place (`\\r`) at most four times a second: progress of a
    long step (training, reading a dataset)."""

    def __init__(self):
        self.t0 = self.last = time.perf_counter()
        self.shown = False

    def show(self, line: str, final: bool = False) -> None:
        """Show `line`, unless the last one went up less than 0.25 s ago (a `final` one always)."""
        now = time.perf_counter()
        if now - self.last < 0.25 and not final:
            return
        self.last = now
        sys.stderr.write(f"\r  {line}  ")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


def load_tokenizer(folder: Path):
    """The `tokenizers.Tokenizer` of a tokenizer entry (or of any folder with a tokenizer.json,
    a teacher's): the one place that file is loaded. A new object each call, not a cached one:
    callers set options on it (the tokens builder's `encode_special_tokens`), which a shared
    object would carry into the next step built in the same process; loading takes milliseconds."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / TOKENIZER_JSON))


def read_tokenizer_json(folder: Path) -> dict:
    """A tokenizer entry's tokenizer.json as plain JSON: the vocabulary, merges and added tokens
    as written (what a GGUF file embeds), not as `tokenizers` rebuilds them."""
    return json.loads((Path(folder) / TOKENIZER_JSON).read_text(encoding="utf-8"))


def special_tokens(tokenizer_dir: Path) -> dict[str, str]:
    """Role (bos, eos, unk, pad) -> token text of a tokenizer entry, from special_tokens_map.json: a
    value written as transformers' {"content": ...} is its content; other keys (such as
    additional_special_tokens) and empty roles are left out."""
    names = json.loads((Path(tokenizer_dir) / "special_tokens_map.json").read_text())
    out = {}
    for role in ("bos", "eos", "unk", "pad"):
        value = names.get(f"{role}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value:
            out[role] = value
    return out


def special_ids(tokenizer_dir: Path, tok=None) -> dict[str, int | None]:
    """Role -> id of each special token in a tokenizer entry (None when not in its vocabulary);
    `tok`, when the caller has loaded it already."""
    tok = load_tokenizer(tokenizer_dir) if tok is None else tok
    return {role: tok.token_to_id(text) for role, text in special_tokens(tokenizer_dir).items()}


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (store entries are never modified, so sharing the bytes is safe), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def safetensors_header(path: Path) -> tuple[dict, int]:
    """Tensor name -> {dtype, shape, data_offsets} of a safetensors file, and the offset where its
    data starts; the file must be exactly as long as the header says."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if 8 + n <= size else None
            header.pop("__metadata__", None)
            end = max((t["data_offsets"][1] for t in header.values()), default=0)
        except (struct.error, ValueError, AttributeError, KeyError, TypeError, IndexError):
            raise BuildError(f"{path}: not a safetensors file (its header does not parse)") from None
    if 8 + n + end != size:
        raise BuildError(f"{path}: {size:,} bytes, but its header describes {8 + n + end:,} (truncated or corrupt)")
    return header, 8 + n
