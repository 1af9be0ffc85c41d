"""The one error type for everything a user can get wrong in a manifest.

A `SpecError` carries one or more `Problem`s; each names the file, the line, the
field path, what was expected, what was found and, where we know it, the fix.
`str(error)` is exactly what the user sees: no traceback, one block per problem.
A `SpecWarning` is shown the same way for what will be built but may surprise
(a GGUF matrix falling back to another type), and stops nothing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


def located(file: str, line: int | None, field: str, text: str, fix: str) -> str:
    """`file:line: field: text` and an indented `fix:` line, as every message is shown."""
    where = f"{file}:{line}" if line else file
    return f"{where}:{f' {field}:' if field else ''} {text}" + (f"\n  fix: {fix}" if fix else "")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    expected: str
    found: str
    fix: str = ""

    def __str__(self) -> str:
        return located(self.file, self.line, self.field, f"expected {self.expected}; found {self.found}", self.fix)


@dataclass(frozen=True)
class SpecWarning:
    """Something the build will do that the author may not expect; printed at compile time."""

    file: str
    line: int | None
    field: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return located(self.file, self.line, self.field, f"warning: {self.message}", self.fix)


class SpecError(Exception):
    """Bad input from a manifest, a profile or a command-line variable."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, file: str, line: int | None, field: str, expected: str, found: str, fix: str = "") -> "SpecError":
        return cls([Problem(file, line, field, expected, found, fix)])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `did you mean 'x'?` phrase for the closest choice, or '' when none is close."""
    # Compare case-folded so that 'nfc' finds 'NFC', but suggest the choice as written.
    by_folded = {str(c).casefold(): str(c) for c in sorted(set(choices), reverse=True)}
    close = difflib.get_close_matches(str(word).casefold(), list(by_folded), n=1, cutoff=0.6)
    return f"did you mean '{by_folded[close[0]]}'?" if close else ""


def one_of(choices: Iterable[str]) -> str:
    return "one of " + ", ".join(f"'{c}'" for c in sorted(set(choices)))


def either(choices: Iterable[str | int]) -> str:
    """`'a'`, `'a' or 'b'`, `'a', 'b' or 'c'` (numbers unquoted): where "one of" reads badly."""
    quoted = [f"'{c}'" if isinstance(c, str) else str(c) for c in sorted(set(choices))]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def a_step(kind: str) -> str:
    """'an init step', 'a train step': how a found step of the wrong kind is named."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} step"
