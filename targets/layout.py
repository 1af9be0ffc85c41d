"""Fixed names of the files one builder writes and another reads, in one place: a builder
that reads them imports this module rather than the builder that writes them (whose every
edit would otherwise re-key the reader)."""

from __future__ import annotations


def gguf_file(type_name: str) -> str:
    """The GGUF export's file of one tensor type (`f16` -> `model-f16.gguf`)."""
    return f"model-{type_name}.gguf"
