"""Shared fixtures: temporary Ingot projects, run through the real `doit`.

A temporary project is a copy of this checkout's code (compiler/, targets/,
dodo.py, pyproject.toml) with manifests and data written inline by the test, so a
test can edit anything, builder code included, without touching the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ("compiler", "targets", "runner.py", "dodo.py", "pyproject.toml")
TINY_CORPUS_DOCS = 300


@pytest.fixture(autouse=True, scope="session")
def no_remote_from_the_environment():
    """The remote cache (compiler/remote.py) is off unless a test sets it: a developer's
    INGOT_REMOTE, INGOT_REMOTE_PUSH or INGOT_REMOTE_TOKEN never reaches a test's `doit`."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("INGOT_REMOTE", "INGOT_REMOTE_PUSH", "INGOT_REMOTE_TOKEN"):
            mp.delenv(name, raising=False)
        yield


class Project:
    """A temporary Ingot project and the commands a user would run in it."""

    def __init__(self, root: Path):
        self.root = root

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")

    def edit(self, rel: str, old: str, new: str) -> None:
        text = self.read(rel)
        assert old in text, f"{old!r} not in {rel}"
        (self.root / rel).write_text(text.replace(old, new, 1), encoding="utf-8")

    def doit(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run `python -m doit ARGS` in the project; fail the test on a non-zero exit unless check=False."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def build_files(self) -> dict[str, tuple[int, int]]:
        """Every path under build/ with its size and mtime, to prove a command touched nothing."""
        build = self.root / "build"
        if not build.exists():
            return {}
        return {str(p.relative_to(build)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in build.rglob("*")}


def build_pipeline(p: Project, pipeline: str, steps: dict) -> dict:
    """Write pipeline `pipeline` (not a default one) with `steps` and build it, and whatever it
    needs, in this interpreter; the steps it needs must build; returns each of its own tasks'
    result (None, or doit's TaskFailed)."""
    import yaml

    import runner
    from compiler import graph, project

    p.write(f"specs/pipelines/{pipeline}.yaml",
            yaml.safe_dump({"kind": "pipeline", "name": pipeline, "default": False, "steps": steps}, sort_keys=False))
    g = graph.compile_graph(project.load(p.root))
    results = {task: runner.run(g, task) for task in g.plans if task.startswith((f"{pipeline}.", "main.", "dataset."))}
    assert {r for t, r in results.items() if not t.startswith(f"{pipeline}.")} <= {None}
    return {t: r for t, r in results.items() if t.startswith(f"{pipeline}.")}


def kill_at_first_checkpoint(p: Project, task: str) -> Path:
    """Run `doit TASK` in project `p` and kill it (SIGKILL, its whole process group) as soon as a
    checkpoint of any build is on disk; returns the store's work folder."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-m", "doit", task], cwd=p.root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = p.root / "build" / "store" / ".work"
    deadline = time.monotonic() + 240
    while not list(work.glob("*/checkpoints/step-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "doit ended before the first checkpoint"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return work


def ran(result: subprocess.CompletedProcess) -> list[str]:
    """Tasks doit executed (its `.  name` lines), in order."""
    return [line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")]


def skipped(result: subprocess.CompletedProcess) -> list[str]:
    """Tasks doit found up to date (its `-- name` lines)."""
    return [line[3:].strip() for line in result.stdout.splitlines() if line.startswith("-- ")]


def require_llama_cpp() -> None:
    """llama-cpp-python (requirements-llama.txt): CI installs it, so there its absence fails;
    elsewhere a test that needs it skips and says how to install it."""
    import importlib.util

    from compiler import quants

    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail(f"llama-cpp-python is not installed; .ci/run installs {quants.LLAMA_EXTRA}")
        pytest.skip(f"llama-cpp-python is not installed: {quants.LLAMA_INSTALL}")


def tiny_corpus(n: int = TINY_CORPUS_DOCS) -> list[str]:
    """Real English/Python text from the documentation that ships with CPython: paragraphs of
    the pydoc topics, enough to train a small tokenizer in well under a second."""
    from pydoc_data.topics import topics

    paras = [p.strip() for name in sorted(topics) for p in topics[name].split("\n\n") if len(p.strip()) > 80]
    return paras[:n]


PROJECT_FILES = ("specs", "models", "data")  # the default project: manifests, plug-in modules, data files


def copy_project_files(root: Path) -> None:
    """This checkout's manifests and what they read (models/ plug-ins, data/ files) into `root`."""
    for name in PROJECT_FILES:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))


def write_files(p: "Project", files: dict[str, str], named: dict[str, str], **replace: tuple[str, str]) -> None:
    """`files` (path -> text, dedented) into the project, with (old, new) replaced once in the
    file `named[keyword]` for each keyword of `replace` (a test's variation of a fixed project)."""
    for rel, text in files.items():
        text = textwrap.dedent(text).lstrip("\n")
        for old, new in [v for k, v in replace.items() if named[k] == rel]:
            assert old in text, f"{old!r} not in {rel}"
            text = text.replace(old, new, 1)
        p.write(rel, text)


def code_project(root: Path) -> Project:
    """A new project at `root` holding a copy of this checkout's code and nothing else."""
    root.mkdir(parents=True)
    for name in CODE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    return Project(root)


def qa_records(n: int = 60) -> list[dict]:
    """Instruction/response records from the Python docs: "Explain TOPIC." and the first
    paragraph of that pydoc topic (cut to 600 characters)."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paras = [p.strip() for p in topics[name].split("\n\n") if len(p.strip()) > 80]
        if paras:
            out.append({"instruction": f"Explain {name} in Python.", "response": paras[0][:600]})
    return out[:n]


QA_SPEC = """
    kind: dataset
    name: qa
    sources:
      - type: files
        glob: qa/*.jsonl
        fields:
          instruction: instruction
          response: response
    split:
      validation: 0.2
"""


def add_qa(project: "Project", n: int = 60) -> None:
    """An instruction/response dataset `qa` and the project's default chat template."""
    import json

    project.write("qa/qa.jsonl", "".join(json.dumps(r) + "\n" for r in qa_records(n)))
    project.write("specs/datasets/qa.yaml", QA_SPEC)
    project.write("specs/templates/chat.jinja", (REPO / "specs" / "templates" / "chat.jinja").read_text())


@pytest.fixture
def make_project(tmp_path):
    """make_project() -> an empty project (code only); write manifests with project.write()."""

    def make() -> Project:
        return code_project(tmp_path / "proj")

    return make


TINY_SPECS = {
    "specs/datasets/docs.yaml": """
        kind: dataset
        name: docs
        sources:
          - type: files
            glob: data/*.jsonl
        filters:
          min_chars: 20
        split:
          validation: 0.1
    """,
    "specs/models/tiny.yaml": """
        kind: model
        name: tiny
        hidden_size: 32
        intermediate_size: 64
        layers: 2
        heads: 4
        kv_heads: 2
        vocab_size: 512
        max_positions: 128
    """,
    "specs/pipelines/main.yaml": """
        kind: pipeline
        name: main
        steps:
          tok:
            kind: tokenizer
            dataset: docs
            vocab_size: 400
          init:
            kind: init
            model: tiny
            tokenizer: tok
    """,
}


@pytest.fixture
def tiny_project(make_project):
    """A small dataset -> tokenizer -> init project on 300 paragraphs of the Python docs."""
    import json

    project = make_project()
    project.write("data/docs.jsonl", "\n".join(json.dumps({"text": t}) for t in tiny_corpus()) + "\n")
    for rel, text in TINY_SPECS.items():
        project.write(rel, text)
    return project
