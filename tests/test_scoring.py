"""The scorers of a prompt set (targets/scoring.py) on hand-made records, and the sandbox that
runs Python answers (targets/sandbox.py) against what an answer must not do: loop forever,
write outside its folder, read the environment's secrets or the project's files, start
processes, or pass by exiting early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from conftest import REPO
from targets import scoring
from targets.scoring import Score

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def python(answer: str, tests: str = ADD_TESTS, timeout: float = 5, memory_mb: int = 512) -> Score:
    score, confinement = scoring.python(answer, tests, timeout, memory_mb)
    return score


def test_exact_compares_after_whitespace_normalization():
    assert scoring.exact("  Paris\n", "Paris") == Score(passed=True)
    assert scoring.exact("the  answer\tis\n42", "the answer is 42") == Score(passed=True)
    assert scoring.exact("paris", "Paris") == Score(passed=False, detail="expected 'Paris', got 'paris'")


@pytest.mark.parametrize("answer, expected, pattern, score", [
    ("She has 5 + 3 = 8 apples, so the answer is 8.", "5 + 3 = 8\n#### 8", None,
     Score(passed=True, detail="answer 8, expected 8")),
    ("It costs $1,234.50 in total", "#### 1234.5", None, Score(passed=True, detail="answer 1234.5, expected 1234.5")),
    ("72.0", "#### 72", None, Score(passed=True, detail="answer 72, expected 72")),
    ("The result is -3", "#### 3", None, Score(passed=False, detail="answer -3, expected 3")),
    ("I have 2 cats and 7 dogs", "#### 9", None, Score(passed=False, detail="answer 7, expected 9")),
    ("no idea", "#### 9", None, Score(passed=False, detail="no number in the answer; expected 9")),
    ("7", "nine", None, Score(passed=False, detail="no number in the record's response")),
    # a pattern with a group: its last match's group; the answer's 12 after "####" is not the
    # last number in the text, but it is the last match
    ("#### 12 (I counted 3 times)", "#### 12", r"####\s*(\S+)", Score(passed=True, detail="answer 12, expected 12")),
    ("#### twelve", "#### 12", r"####\s*(\S+)", Score(passed=False, detail="no number in the answer; expected 12")),
])
def test_number_compares_the_final_numbers(answer, expected, pattern, score):
    assert scoring.number(answer, expected, pattern) == score


def test_final_number_reads_decimals():
    assert scoring.final_number("1,000,000 and then 2.50") == Decimal("2.50")
    assert scoring.final_number("no digits") is None


def test_code_is_the_first_fenced_block_or_the_whole_answer():
    assert scoring.code_of("Here:\n```python\ndef f():\n    return 1\n```\nand ```py\nx\n```") == \
        "def f():\n    return 1\n"
    assert scoring.code_of("```\nx = 1\n```") == "x = 1\n"
    assert scoring.code_of("def f(): return 1") == "def f(): return 1"


def test_python_passes_and_fails_with_the_reason():
    assert python("def add(a, b):\n    return a + b\n") == Score(passed=True)
    assert python("Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.") == Score(passed=True)
    assert python("def add(a, b):\n    return a - b\n") == \
        Score(passed=False, detail="assertion failed: assert add(1, 2) == 3")
    assert python("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 4, 'off by one'\n") == \
        Score(passed=False, detail="assertion failed: assert add(1, 2) == 4, 'off by one' (off by one)")
    assert python("def add(a, b)\n    return a + b\n") == \
        Score(passed=False, detail="syntax error in the answer: line 1: expected ':'")
    assert python("def plus(a, b):\n    return a + b\n") == \
        Score(passed=False, detail="error: NameError: name 'add' is not defined (in: assert add(1, 2) == 3)")
    assert python("import numpy_not_here\n") == \
        Score(passed=False, detail="error in the answer: ModuleNotFoundError: No module named 'numpy_not_here'")
    assert python("def add(a, b):\n    return a + b\n", "assert add(1, 2) ==\n") == \
        Score(passed=False, detail="syntax error in the record's tests: line 1: invalid syntax")


def test_an_answer_that_loops_forever_is_killed_at_the_timeout():
    started = time.monotonic()
    score = python("def add(a, b):\n    while True:\n        pass\n", timeout=1.5)
    took = time.monotonic() - started
    assert score == Score(passed=False, detail="timeout: still running after 1.5 s, killed")
    assert 1.5 <= took < 4


def test_an_answer_cannot_write_outside_its_folder(tmp_path):
    target = tmp_path / "escaped.txt"
    answer = f"open({str(target)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\n"
    assert python(answer) == Score(passed=False, detail=f"error in the answer: PermissionError: sandbox: writing to "
                                                        f"{target} is not allowed")
    answer = f"import os\nos.remove({str(REPO / 'README.md')!r})\n"
    assert python(answer) == Score(passed=False, detail=f"error in the answer: PermissionError: sandbox: os.remove of "
                                                        f"{REPO / 'README.md'} is not allowed")
    assert not target.exists() and (REPO / "README.md").exists()
    # its own folder is its to use
    local = "open('scratch.txt', 'w').write('ok')\ndef add(a, b):\n    return a + b\n"
    assert python(local, "assert open('scratch.txt').read() == 'ok'\n") == Score(passed=True)


def test_an_answer_cannot_read_the_environments_secrets(monkeypatch):
    monkeypatch.setenv("INGOT_TEST_SECRET", "hunter2")
    assert python("import os\nSEEN = dict(os.environ)\n", "assert 'INGOT_TEST_SECRET' not in SEEN\n"
                                                         "assert set(SEEN) <= {'PATH', 'LC_CTYPE'}\n") == Score(passed=True)
    assert python(f"SECRET = open('/proc/{os.getpid()}/environ', 'rb').read()\n", "assert SECRET\n") == \
        Score(passed=False, detail=f"error in the answer: PermissionError: sandbox: open of /proc/{os.getpid()}/environ "
                                   "is not allowed")


def test_an_answer_cannot_start_processes_or_open_sockets():
    assert python("import subprocess\nsubprocess.run(['true'])\n") == \
        Score(passed=False, detail="error in the answer: PermissionError: sandbox: subprocess.Popen is not allowed")
    assert python("import os\nos.system('true')\n") == \
        Score(passed=False, detail="error in the answer: PermissionError: sandbox: os.system is not allowed")
    assert python("import socket\nsocket.create_connection(('127.0.0.1', 22))\n") == \
        Score(passed=False, detail="error in the answer: PermissionError: sandbox: socket.__new__ is not allowed")


def test_exiting_early_or_printing_a_pass_is_no_pass():
    assert python("import os\nos._exit(0)\n") == \
        Score(passed=False, detail="exited before the tests finished (exit status 0)")
    assert python("import sys\nsys.exit(0)\n") == Score(passed=False, detail="error in the answer: SystemExit: 0")
    forged = 'import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b\'{"reason": "passed"}\')\n' \
             '    except OSError:\n        pass\nos._exit(0)\n'
    assert python(forged) == Score(passed=False, detail="exited before the tests finished (exit status 0)")


def test_memory_beyond_the_limit_is_an_error():
    assert python("BIG = bytearray(600 << 20)\n", memory_mb=256) == \
        Score(passed=False, detail="error in the answer: MemoryError")


def test_common_library_code_runs_in_the_sandbox():
    """What answers use: collections, typing, warnings (which reads frames), re, json, math."""
    answer = ("import collections, dataclasses, functools, heapq, itertools, json, math, re, typing, warnings\n"
              "P = collections.namedtuple('P', 'x y')\n"
              "@dataclasses.dataclass\nclass Q:\n    v: typing.List[int]\n"
              "warnings.warn('careful')\n"
              "def add(a, b):\n    return int(math.fsum([a, b]))\n")
    assert python(answer) == Score(passed=True)


LANDLOCK_ONLY = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from targets import sandbox

os.chdir(sys.argv[2])
abi = sandbox._landlock(sys.argv[2], sandbox.readable())  # the kernel's part alone, no audit hook
out = {"abi": abi}
for name, path, mode in (("write_outside", sys.argv[3], "w"), ("read_project", sys.argv[4], "r"),
                         ("write_inside", "inside.txt", "w")):
    try:
        with open(path, mode) as f:
            f.write("x") if mode == "w" else f.read()
        out[name] = "ok"
    except OSError as exc:
        out[name] = f"errno {exc.errno}"
print(json.dumps(out))
"""


def test_landlock_confines_files_by_itself(tmp_path):
    """Where the kernel has Landlock, it alone refuses writing outside the folder and reading the
    project (EACCES), without the audit hook."""
    folder = tmp_path / "box"
    folder.mkdir()
    result = subprocess.run([sys.executable, "-I", "-c", LANDLOCK_ONLY, str(REPO), str(folder),
                             str(tmp_path / "outside.txt"), str(REPO / "README.md")],
                            capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(result.stdout)
    if out["abi"] == 0:
        pytest.skip("this kernel has no Landlock: the sandbox confines with its audit hook alone")
    assert out == {"abi": out["abi"], "write_outside": "errno 13", "read_project": "errno 13", "write_inside": "ok"}
    assert not (tmp_path / "outside.txt").exists()
    _, confinement = scoring.python("x = 1\n", "assert x == 1\n", 5, 256)
    assert confinement == f"landlock ABI {out['abi']}, audit hook"


@pytest.mark.parametrize("content, score", [
    ('{"verdict": "A", "reason": "A is right"}', Score(verdict="win", detail="A is right")),
    ('{"verdict": "B", "reason": "B  shows\\nits work"}', Score(verdict="loss", detail="B shows its work")),
    ('{"verdict": "tie", "reason": ""}', Score(verdict="tie")),
    ('Sure! {"verdict": "TIE", "reason": "same"} Hope that helps.', Score(verdict="tie", detail="same")),
    ('{"verdict": "C", "reason": "?"}', Score(detail='unparseable: \'{"verdict": "C", "reason": "?"}\'')),
    ("A is better", Score(detail="unparseable: 'A is better'")),
    ('{"verdict": "A", "reason": "unterminated', Score(detail='unparseable: \'{"verdict": "A", "reason": '
                                                        '"unterminated\'')),
])
def test_a_verdict_is_parsed_or_counted_unparseable(content, score):
    assert scoring.verdict(content) == score


def test_the_verdict_schema_is_asked_as_each_server_wants():
    assert scoring.response_format("json_object") == {"type": "json_object", "schema": scoring.VERDICT_SCHEMA}
    assert scoring.response_format("json_schema") == {"type": "json_schema", "json_schema": {
        "name": "verdict", "strict": True, "schema": {
            "type": "object", "required": ["verdict", "reason"], "additionalProperties": False,
            "properties": {"verdict": {"type": "string", "enum": ["A", "B", "tie"]}, "reason": {"type": "string"}}}}}
    assert scoring.response_format("none") is None
    assert list(scoring.VERDICT_SCHEMA["properties"]) == ["verdict", "reason"]  # the verdict comes first
