"""How an evaluate step scores a prompt set's answers, one item at a time.

`exact`: the answer equals the record's response once runs of whitespace are one space and
the ends stripped. `number`: the final number of each (the last match of NUMBER, or of the
step's `pattern`, commas removed) compared as decimals, so `72`, `72.0` and `$72.` agree.
`python`: the answer's code (the first fenced block, or the whole answer) followed by the
response's unit tests, run in a confined child process (targets/sandbox.py). `judge`: the
judge's rubric rendered with the item (`rubric`), its JSON verdict parsed (`verdict`): `A` (the
model's answer) better is a win, `B` (the reference's) a loss. Reads and writes nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from targets import BuildError, sandbox

NUMBER = r"-?\d[\d,]*(?:\.\d+)?"  # GSM8K's answers: `#### 1,234`, `... so she has 18 dollars.`
FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
VERDICTS = {"A": "win", "B": "loss", "tie": "tie"}
REASON_CHARS = 200  # of a verdict's reason, asked of the judge (a JSON schema's maxLength) and kept
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)},
                   "reason": {"type": "string", "maxLength": REASON_CHARS}},
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Score:
    """One item's result: `passed` (exact, number, python) or `verdict` (judge), and why."""

    passed: bool | None = None
    verdict: str | None = None
    detail: str | None = None


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact(answer: str, expected: str) -> Score:
    if normalize(answer) == normalize(expected):
        return Score(passed=True)
    return Score(passed=False, detail=f"expected {_quote(normalize(expected))}, got {_quote(normalize(answer))}")


def final_number(text: str, pattern: str | None = None) -> Decimal | None:
    """The last number in `text` (the last match of `pattern`, its first group if it has
    groups), commas removed; None when there is none or it does not read as a number."""
    matches = list(re.finditer(pattern or NUMBER, text))
    if not matches:
        return None
    last = matches[-1]
    found = last.group(1) if last.re.groups else last.group(0)
    try:
        return Decimal((found or "").replace(",", "").strip())
    except InvalidOperation:
        return None


def number(answer: str, expected: str, pattern: str | None = None) -> Score:
    want, got = final_number(expected, pattern), final_number(answer, pattern)
    if want is None:
        return Score(passed=False, detail="no number in the record's response")
    if got is None:
        return Score(passed=False, detail=f"no number in the answer; expected {_plain(want)}")
    return Score(passed=got == want, detail=f"answer {_plain(got)}, expected {_plain(want)}")


def code_of(answer: str) -> str:
    """The code of an answer: its first fenced block (```python, ```py or ```), else all of it."""
    fenced = FENCE.search(answer)
    return fenced.group(1) if fenced else answer


def python(answer: str, tests: str, timeout: float, memory_mb: int) -> tuple[Score, str]:
    """The answer's code and the record's tests in the sandbox: the score (detail: why it failed:
    the assertion, the error, a syntax error, the timeout) and how the child was confined."""
    outcome = sandbox.run(code_of(answer), tests, timeout, memory_mb)
    return Score(passed=outcome.passed, detail=outcome.detail), outcome.confinement


def response_format(kind: str) -> dict | None:
    """The `response_format` asking the judge for a verdict: llama.cpp's `json_object` with a
    schema, OpenAI's `json_schema`, or none."""
    if kind == "json_object":
        return {"type": "json_object", "schema": VERDICT_SCHEMA}
    if kind == "json_schema":  # OpenAI's strict mode takes no maxLength: the rubric asks for a short reason
        schema = {**VERDICT_SCHEMA, "properties": {**VERDICT_SCHEMA["properties"], "reason": {"type": "string"}}}
        return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}
    return None


def rubric(files: list[Path]):
    """render(instruction, answer, reference, expected) -> the judge's message, from the rubric
    `files[0]` (it may include the others, beside it) in the report's sandboxed environment."""
    from jinja2 import TemplateError

    from compiler import templates

    template = templates.environment(files[0].parent).get_template(files[0].name)

    def render(instruction: str, answer: str, reference: str, expected: str | None) -> str:
        try:
            return template.render(instruction=instruction, answer=answer, reference=reference, expected=expected)
        except TemplateError as exc:
            raise BuildError(f"judge template {files[0].name}: {type(exc).__name__}: {exc}; it is given "
                             "`instruction`, `answer`, `reference` and `expected`") from None

    return render


def verdict(content: str) -> Score:
    """The judge's answer as a verdict: a JSON object (alone, or the first in the text) with
    `verdict` A, B or tie; anything else is `unparseable`, with what it said."""
    data = _json_object(content)
    choice = data.get("verdict") if isinstance(data, dict) else None
    if not isinstance(choice, str) or choice.strip() not in VERDICTS and choice.strip().lower() != "tie":
        return Score(detail=f"unparseable: {_quote(normalize(content))}")
    reason = data.get("reason")
    reason = normalize(reason)[:REASON_CHARS] if isinstance(reason, str) else ""
    return Score(verdict=VERDICTS.get(choice.strip(), "tie"), detail=reason or None)


def _json_object(text: str):
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.JSONDecoder().raw_decode(text[start:])[0]
    except ValueError:
        return None


def _plain(value: Decimal) -> str:
    """A decimal as people write it: 72, 0.5, -3 (never 7.2E+1)."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _quote(text: str, most: int = 200) -> str:
    return repr(text if len(text) <= most else text[:most] + "...")
