"""The one Jinja environment reports are rendered in, and its compile-time check.

Sandboxed (a template cannot reach `__class__`, `__subclasses__` or other internals),
undefined variables are errors, and a few formatting filters keep numbers consistent
across templates. The compiler parses and compiles every report template before anything
is built (a syntax error or an unknown filter names the template's file and line); the
report builder renders with the same environment. Jinja only: the compiler imports this.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def thousands(value) -> str:
    """1234567 -> '1,234,567'; floats keep two decimals."""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def fixed(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def percent(value, digits: int = 2) -> str:
    """0.1234 -> '12.34%'."""
    return f"{100 * value:.{digits}f}%"


def size(n: int) -> str:
    """Bytes for people: '1.4 MB', '512 B' (decimal units, as file managers show)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def to_json(value, indent: int = 2) -> str:
    return json.dumps(value, indent=indent, sort_keys=True)


FILTERS = {"thousands": thousands, "fixed": fixed, "percent": percent, "size": size, "json": to_json}


def environment(folder: Path):
    """A sandboxed environment loading templates from `folder`."""
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=FileSystemLoader(str(folder)), undefined=StrictUndefined,
                               keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                               autoescape=False)
    env.filters.update(FILTERS)
    return env


class TemplateProblem(Exception):
    """A template that does not parse or compile: `file` (as named to the loader), `line`."""

    def __init__(self, file: str, line: int | None, message: str):
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


_REMEMBERED: dict[tuple, tuple] = {}  # (check, path) -> (stamps of the files read, files read, result)


def _remembered(check: Callable[[Path], tuple[list[Path], object]], path: Path):
    """check(path) -> (files read, result), remembered while none of those files changes: a
    compile asks for the same template more than once (resolving, then digesting; several steps
    sharing one chat template), and `doit gc` compiles once per profile."""
    hit = _REMEMBERED.get((check, path))
    if hit is not None and hit[0] is not None and hit[0] == _stamps(hit[1]):
        return hit[2]
    files, result = check(path)
    _REMEMBERED[(check, path)] = (_stamps(files), files, result)
    return result


def _stamps(files: list[Path]) -> tuple | None:
    try:
        return tuple((f, (st := os.stat(f)).st_size, st.st_mtime_ns, st.st_ino) for f in files)
    except OSError:
        return None


def check(path: Path) -> list[Path]:
    """Parse and compile the template at `path` and every template it includes, imports or
    extends (looked up beside it); return all their paths, `path` first."""
    return list(_remembered(_check, path))


def chat_problem(path: Path) -> tuple[int | None, str] | None:
    """(line, message) of what stops a chat template from parsing as the builders render it
    (targets/chat.py, with the loop controls transformers' renderer adds), or None."""
    return _remembered(_chat, path)


def _chat(path: Path) -> tuple[list[Path], tuple[int | None, str] | None]:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    try:
        env.from_string(path.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as exc:
        return [path], (exc.lineno, f"{type(exc).__name__}: {exc.message}")
    except UnicodeDecodeError as exc:
        return [path], (None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    except RecursionError:
        return [path], (None, "expressions or blocks nested too deep to parse")
    return [path], None


def _check(path: Path) -> tuple[list[Path], list[Path]]:
    import jinja2
    from jinja2 import meta

    env = environment(path.parent)
    seen: list[Path] = []
    todo = [path.name]
    while todo:
        name = todo.pop(0)
        file = path.parent / name
        if file in seen:
            continue
        if not file.is_file():
            raise TemplateProblem(str(seen[-1]) if seen else str(path), None,
                                  f"it includes, imports or extends '{name}', which is not a file beside it")
        seen.append(file)
        source = file.read_text(encoding="utf-8")
        try:
            tree = env.parse(source, name, str(file))
            env.compile(tree, name, str(file))  # unknown filters and tests are found here
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(str(file), exc.lineno, f"{type(exc).__name__}: {exc.message}") from None
        todo += [n for n in meta.find_referenced_templates(tree) if n is not None]
    return seen, seen
