"""Compile-time checks of a dataset's curation settings (filters): see check()."""

from __future__ import annotations

from .project import Node, Project


def check(project: Project, node: Node) -> None:
    """Validate a dataset node's filters; resolve `filters.tokenizer` into node.deps["tokenizer"]."""
