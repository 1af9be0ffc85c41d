"""The remote cache of store entries (compiler/remote.py) against real servers on loopback.

Three remotes, started here: a directory; nginx with its WebDAV module taking plain
GET/PUT/HEAD (under /auth/, 401 without the right bearer token; under /norange/, no byte
ranges); and moto's standalone S3-compatible server, through s3fs. Most tests run once per scheme (`remote_url`).
Projects are tiny (conftest's corpus: a dataset, a tokenizer, its tokens, a 4-step train and
a report), built once per module and copied to other paths as fresh clones with an empty
build/; one slow test takes the repository's own default project (specs/) through each
remote. Every `doit` is the real one, in a fresh interpreter; the remote's files are damaged
behind its back through the server's own storage (nginx's folder, boto3 for S3).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from compiler import graph, project, remote, store
from compiler.entries import MANIFEST, EntryManifest
from compiler.keys import file_digest
from conftest import REPO, Project, code_project, copy_project_files, ran, tiny_corpus
from servers import NGINX_INSTALL, Nginx, free_port, nginx_binary

SCHEMES = ("dir", "http", "s3")
TOKEN = "t0ken-for-the-tests"  # what nginx's /auth/ location takes
TEMPLATE = "specs/templates/training-report.md.jinja"
TASKS = ["dataset.docs", "main.tok", "main.tok@docs", "main.student", "main.report"]
PIPELINE = """
kind: pipeline
name: main
steps:
  tok: {kind: tokenizer, dataset: docs, vocab_size: 400}
  student: {kind: train, model: tiny, tokenizer: tok, data: docs, max_steps: 4, batch_size: 4, seq_len: 32,
            eval: {every: 2, batches: 1}}
  report: {kind: report, train: student, loss_rows: 4}
"""
MODEL = """
kind: model
name: {name}
hidden_size: {width}
intermediate_size: {ffn}
layers: {layers}
heads: 4
kv_heads: 2
vocab_size: 512
max_positions: 128
"""
REPORT_LINE = "report: build/main/report/report.html (Markdown: build/main/report/report.md)"


# ---------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    binary = nginx_binary()
    if binary is None:
        message = f"nginx is not installed: {NGINX_INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (.ci/run installs it)")
        pytest.skip(message)
    try:
        server = Nginx(tmp_path_factory.mktemp("nginx"), TOKEN, binary)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on loopback, and the AWS variables that point s3fs (and boto3) at it,
    for this module."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    server.stop()


# ---------------------------------------------------------------- a remote, and its files behind its back

class Where:
    """A remote's URL, and its files as the server holds them (to list, damage or remove them
    without going through compiler/remote.py)."""

    def __init__(self, url: str):
        self.url = url

    def open(self) -> remote.Remote:
        return remote.open_remote(self.url)

    def sizes(self) -> dict[str, int]:
        """Every file the server holds under the prefix: name -> bytes."""
        raise NotImplementedError

    def names(self) -> list[str]:
        return sorted(self.sizes())

    def get(self, rel: str) -> bytes:
        raise NotImplementedError

    def put(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        raise NotImplementedError

    def inflight(self) -> dict[str, int]:
        """Files of uploads still under way (name -> bytes so far), where the server shows them."""
        return {}


class FolderWhere(Where):
    """A directory remote, or nginx's folder behind an http one."""

    def __init__(self, url: str, folder: Path, spool: Path | None = None):
        super().__init__(url)
        self.folder, self.spool = folder, spool

    def sizes(self) -> dict[str, int]:
        return files_under(self.folder)

    def get(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def put(self, rel: str, data: bytes) -> None:
        (self.folder / rel).write_bytes(data)

    def delete(self, rel: str) -> None:
        (self.folder / rel).unlink()

    def inflight(self) -> dict[str, int]:
        if self.spool is not None:  # nginx's request bodies, spooled until the PUT completes
            return {f"spool/{name}": size for name, size in files_under(self.spool).items()}
        return {n: size for n, size in self.sizes().items() if n.endswith(".tmp")}  # DirRemote's temporaries


class S3Where(Where):
    def __init__(self, client, bucket: str, prefix: str):
        super().__init__(f"s3://{bucket}/{prefix}")
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def sizes(self) -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return {o["Key"][len(self.prefix) + 1:]: o["Size"] for page in pages for o in page.get("Contents", ())}

    def get(self, rel: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{rel}")["Body"].read()

    def put(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{rel}", Body=data)

    def delete(self, rel: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{rel}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed into place, or its folder removed, since it was listed
        return 0


def files_under(folder: Path) -> dict[str, int]:
    """Every file under `folder`: relative name -> bytes, listed while a transfer may be moving or
    removing them (os.walk skips a folder that vanishes)."""
    return {(Path(d) / n).relative_to(folder).as_posix(): _size(Path(d) / n)
            for d, _, names in os.walk(folder) for n in names}


_names = itertools.count()


def make_where(scheme: str, request, tmp: Path) -> Where:
    """A fresh, empty remote of the scheme: a new folder, a new path on nginx, a new bucket."""
    n = next(_names)
    if scheme == "dir":
        where = FolderWhere(str(tmp / f"remote-{n}"), tmp / f"remote-{n}")
    elif scheme == "http":
        server = request.getfixturevalue("nginx")
        where = FolderWhere(server.url(f"cache-{n}/ingot"), server.data / f"cache-{n}" / "ingot", server.body)
    else:
        client = request.getfixturevalue("s3_server")
        client.create_bucket(Bucket=f"cache-{n}")
        where = S3Where(client, f"cache-{n}", "ingot")
    return where


@pytest.fixture(params=SCHEMES)
def remote_url(request, tmp_path) -> Where:
    """An empty remote of each scheme in turn; `.url` is what INGOT_REMOTE takes."""
    return make_where(request.param, request, tmp_path)


@contextlib.contextmanager
def progress():
    bar = remote.Progress("test", 0)  # the real one; under a megabyte it draws nothing
    try:
        yield bar
    finally:
        bar.close()


# ---------------------------------------------------------------- projects

def write_small(p: Project) -> Project:
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n"
                                        "split:\n  validation: 0.1\n")
    p.write("specs/models/tiny.yaml", MODEL.format(name="tiny", width=32, ffn=64, layers=2))
    p.write(TEMPLATE, (REPO / TEMPLATE).read_text())
    p.write("specs/pipelines/main.yaml", PIPELINE)
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    """Clone A: docs -> tok -> tok@docs -> student (4 steps) -> report, built once, no remote."""
    p = write_small(code_project(tmp_path_factory.mktemp("a") / "proj"))
    assert ran(p.doit()) == TASKS
    return p


def clone(p: Project, dest: Path) -> Project:
    """A fresh clone of the project at another path: its files, no build/."""
    shutil.copytree(p.root, dest, ignore=lambda folder, names: ["build"] if Path(folder) == p.root else
                    [n for n in names if n == "__pycache__"])
    return Project(dest)


def keys_of(p: Project) -> dict[str, str | None]:
    g = graph.compile_graph(project.load(p.root))
    return {t: g.key(t) for t in g.plans}


def entry_bytes(p: Project, key: str) -> dict[str, bytes]:
    folder = store.entry(p.root, key)
    return {q.relative_to(folder).as_posix(): q.read_bytes() for q in sorted(folder.rglob("*")) if q.is_file()}


def warnings(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("ingot:")]


def push_entries(where: Where, p: Project, tasks: list[str]) -> dict[str, str]:
    """Push the project's entries of `tasks` with the library (setup for a test of the reader)."""
    keys = keys_of(p)
    cache = where.open()
    for task in tasks:
        assert remote.push(cache, p.root, keys[task], task)
    return {t: keys[t] for t in tasks}


# ---------------------------------------------------------------- 1. the interface

def test_each_scheme_stores_and_serves_bytes_whole_and_resumes_a_download(remote_url, tmp_path):
    cache = remote_url.open()
    assert cache.resumable
    assert cache.size("k/missing.bin") is None and cache.read("k/missing.bin") is None
    assert not remote.has(cache, "k")

    data = random.Random(1).randbytes(3 * remote.CHUNK + 12_345)  # several chunks, the last one short
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with progress() as bar:
        cache.upload(src, "k/sub/blob.bin", bar)
        cache.upload(empty, "k/empty", bar)
    assert cache.size("k/sub/blob.bin") == len(data) and cache.read("k/sub/blob.bin") == data
    assert cache.size("k/empty") == 0 and cache.read("k/empty") == b""
    assert remote_url.get("k/sub/blob.bin") == data  # what the server itself holds

    whole = tmp_path / "whole.bin"
    with progress() as bar:
        cache.download("k/sub/blob.bin", whole, 0, bar)
    assert whole.read_bytes() == data
    for offset in (1, remote.CHUNK, len(data) - 1):  # a cut-off download, resumed from its last byte
        part = tmp_path / f"part-{offset}.bin"
        part.write_bytes(data[:offset])
        with progress() as bar:
            cache.download("k/sub/blob.bin", part, offset, bar)
        assert part.read_bytes() == data, offset

    again = random.Random(2).randbytes(1000)  # an upload replaces the file whole
    src.write_bytes(again)
    with progress() as bar:
        cache.upload(src, "k/sub/blob.bin", bar)
    assert cache.read("k/sub/blob.bin") == again and cache.size("k/sub/blob.bin") == 1000
    with progress() as bar, pytest.raises(remote.RemoteError) as gone:
        cache.download("k/nothing", tmp_path / "nothing", 0, bar)
    assert str(gone.value) == f"remote {remote_url.url}: k/nothing is gone"


def test_a_server_that_ignores_range_sends_the_file_whole_and_the_download_starts_over(nginx, tmp_path):
    cache = remote.open_remote(nginx.url("norange/cache"))
    data = random.Random(3).randbytes(2 * remote.CHUNK + 7)
    (tmp_path / "src").write_bytes(data)
    with progress() as bar:
        cache.upload(tmp_path / "src", "k/blob", bar)
    ranged = urllib.request.Request(nginx.url("norange/cache/k/blob"), headers={"Range": "bytes=10-"})
    with urllib.request.urlopen(ranged) as response:  # the server does ignore it
        assert response.status == 200 and len(response.read()) == len(data)
    part = tmp_path / "part"
    part.write_bytes(data[:remote.CHUNK])
    with progress() as bar:
        cache.download("k/blob", part, remote.CHUNK, bar)
    assert part.read_bytes() == data


def test_push_uploads_an_entry_byte_for_byte_once_and_pull_commits_it_verified(remote_url, built, tmp_path):
    keys = keys_of(built)
    key = keys["main.student"]
    assert remote.push(remote_url.open(), built.root, key, "main.student")
    assert not remote.push(remote_url.open(), built.root, key, "main.student")  # the remote has it: nothing sent
    local = entry_bytes(built, key)
    assert remote_url.names() == sorted(f"{key}/{name}" for name in local)
    assert {n: remote_url.get(f"{key}/{n}") for n in local} == local  # manifest.json too, byte for byte
    assert remote.has(remote_url.open(), key)

    other = tmp_path / "other"
    assert remote.pull(remote_url.open(), other, key, "main.student")
    assert store.verify(other, key) == []
    assert {q.relative_to(store.entry(other, key)).as_posix(): q.read_bytes()
            for q in store.entry(other, key).rglob("*") if q.is_file()} == local
    assert list((other / store.STORE / ".work").iterdir()) == []  # the pull's partial files are spent
    assert not remote.pull(remote_url.open(), other, keys["main.report"], "main.report")  # not there: False


# ---------------------------------------------------------------- 2. two clones, one remote

def test_two_clones_share_one_remote(remote_url, built, tmp_path, monkeypatch):
    url, keys = remote_url.url, keys_of(built)
    monkeypatch.setenv("INGOT_REMOTE", url)
    out = built.doit("push").stdout.splitlines()
    assert out == [".  push", *(f"{t}: pushed ({keys[t][:12]})" for t in TASKS),
                   "push: 5 pushed, 0 remote, 0 not built"]
    out = built.doit("push", "main.tok").stdout.splitlines()
    assert out == [".  push", f"dataset.docs: already in the remote ({keys['dataset.docs'][:12]})",
                   f"main.tok: already in the remote ({keys['main.tok'][:12]})",
                   "push: 0 pushed, 2 remote, 0 not built"]

    b = clone(built, tmp_path / "elsewhere" / "deeper" / "clone-b")  # another checkout path, an empty build/
    out = b.doit("status", "--remote").stdout.splitlines()
    assert out == [".  status", *(f"{t}: remote ({keys[t][:12]}; `doit` or `doit pull` fetches it)" for t in TASKS),
                   "status: 0 local, 5 remote, 0 missing, 0 pending"]
    out = b.doit("status").stdout.splitlines()  # without --remote: a key waits for entries that are not here
    assert out == [".  status", f"dataset.docs: missing ({keys['dataset.docs'][:12]}; `doit` builds it)",
                   "main.tok: pending (its key waits for dataset.docs)",
                   "main.tok@docs: pending (its key waits for dataset.docs, main.tok)",
                   "main.student: pending (its key waits for main.tok, main.tok@docs)",
                   "main.report: pending (its key waits for main.student)",
                   "status: 0 local, 1 missing, 4 pending"]

    out = b.doit("pull", "main.tok").stdout.splitlines()  # the named step and what it consumes
    assert out == [".  pull", f"dataset.docs: pulled ({keys['dataset.docs'][:12]})",
                   f"main.tok: pulled ({keys['main.tok'][:12]})", "pull: 2 pulled, 0 local, 0 missing, 0 pending"]
    result = b.doit()
    assert ran(result) == []
    assert result.stdout.splitlines() == [
        "-- dataset.docs", "-- main.tok",
        *itertools.chain.from_iterable([f"  [{t}] pulled entry {keys[t][:12]} from {url}", f"-- {t}"]
                                       for t in TASKS[2:]),
        REPORT_LINE]
    assert warnings(result) == []
    assert keys_of(b) == keys  # the same keys at another path
    assert set(store.keys(b.root)) == set(keys.values())
    for key in keys.values():  # every entry byte-identical to A's, its manifest included
        assert entry_bytes(b, key) == entry_bytes(built, key)
    assert b.read("build/main/report/report.md") == built.read("build/main/report/report.md")
    assert b.doit("verify").stdout.splitlines()[-1] == "verify: 5 sound, 0 corrupt, 0 missing, 0 pending"

    # B edits only the report template and pushes what it builds: only the report runs
    monkeypatch.setenv("INGOT_REMOTE_PUSH", "1")
    (b.root / TEMPLATE).write_text(b.read(TEMPLATE) + "\nEdited in clone B.\n")
    result = b.doit()
    assert ran(result) == ["main.report"]
    edited = keys_of(b)["main.report"]
    assert edited != keys["main.report"]
    assert f"  [main.report] pushed entry {edited[:12]} to {url}" in result.stdout.splitlines()
    assert b.read("build/main/report/report.md").endswith("\n\nEdited in clone B.\n")

    # a third clone with the same edit gets B's report from the remote
    monkeypatch.delenv("INGOT_REMOTE_PUSH")
    c = clone(b, tmp_path / "clone-c")
    result = c.doit()
    assert ran(result) == []
    assert f"  [main.report] pulled entry {edited[:12]} from {url}" in result.stdout.splitlines()
    assert c.read("build/main/report/report.md") == b.read("build/main/report/report.md")


def test_the_remote_can_be_named_in_pyproject_and_the_environment_wins(built, tmp_path, monkeypatch):
    where = FolderWhere(str(tmp_path / "shared"), tmp_path / "shared")
    push_entries(where, built, ["dataset.docs"])
    b = clone(built, tmp_path / "b")
    key = keys_of(built)["dataset.docs"]
    setting = f'\n[tool.ingot]\nremote = "file://{where.folder}"\n'
    (b.root / "pyproject.toml").write_text(b.read("pyproject.toml") + setting)
    remote_line = f"dataset.docs: remote ({key[:12]}; `doit` or `doit pull` fetches it)"
    assert b.doit("status", "--remote", "dataset.docs").stdout.splitlines()[1] == remote_line
    monkeypatch.setenv("INGOT_REMOTE", str(tmp_path / "empty"))  # the environment's remote is asked instead
    assert b.doit("status", "--remote", "dataset.docs").stdout.splitlines()[1] == \
        f"dataset.docs: missing ({key[:12]}; `doit` builds it)"
    monkeypatch.delenv("INGOT_REMOTE")
    shutil.copytree(where.folder, b.root / "shared-cache")  # a relative path is the project's folder, from anywhere
    (b.root / "pyproject.toml").write_text(b.read("pyproject.toml").replace(f"file://{where.folder}", "shared-cache"))
    assert b.doit("status", "--remote", "dataset.docs").stdout.splitlines()[1] == remote_line
    monkeypatch.chdir(tmp_path)
    assert remote.configured(b.root).path == b.root.resolve() / "shared-cache"
    (b.root / "pyproject.toml").write_text(b.read("pyproject.toml").replace('"shared-cache"', "5"))
    before = b.build_files()
    result = b.doit(check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"ingot: {b.root / 'pyproject.toml'}: `[tool.ingot] remote` must be a URL "
                                          "string, found 5; nothing was built"]
    assert b.build_files() == before


@pytest.fixture(params=SCHEMES)
def scheme(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def default_project(request, tmp_path_factory):
    """Clone A of the repository's own project (specs/), built once with INGOT_REMOTE_PUSH=1 to a
    directory remote, then pushed to an http and an s3 one: (A, scheme -> remote, its tasks)."""
    a = code_project(tmp_path_factory.mktemp("default") / "proj")
    copy_project_files(a.root)
    tmp = tmp_path_factory.mktemp("default-remotes")
    wheres = {s: make_where(s, request, tmp) for s in SCHEMES}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INGOT_REMOTE", wheres["dir"].url)
        mp.setenv("INGOT_REMOTE_PUSH", "1")
        result = a.doit()
        tasks = ran(result)
        pushed = [line for line in result.stdout.splitlines() if line.startswith("  [") and " pushed entry " in line]
        assert len(pushed) == len(tasks) and "gladius.report" in tasks, result.stdout
        mp.delenv("INGOT_REMOTE_PUSH")
        assert a.doit("push").stdout.splitlines()[-1] == f"push: 0 pushed, {len(tasks)} remote, 0 not built"
        for s in ("http", "s3"):
            mp.setenv("INGOT_REMOTE", wheres[s].url)
            assert a.doit("push").stdout.splitlines()[-1] == f"push: {len(tasks)} pushed, 0 remote, 0 not built"
    return a, wheres, tasks


@pytest.mark.slow  # the default project's cold build (~40 s), once for the three schemes
def test_the_default_project_comes_from_each_remote_and_only_the_report_follows_a_template_edit(
        default_project, scheme, tmp_path, monkeypatch):
    a, wheres, tasks = default_project
    monkeypatch.setenv("INGOT_REMOTE", wheres[scheme].url)
    b = clone(a, tmp_path / "ci" / "clone-b")
    result = b.doit()
    assert ran(result) == []
    keys, url = keys_of(a), wheres[scheme].url
    assert [line for line in result.stdout.splitlines() if line.startswith("  [")] == \
        [f"  [{t}] pulled entry {keys[t][:12]} from {url}" for t in tasks]
    assert warnings(result) == []
    assert b.read("build/gladius/report/report.md") == a.read("build/gladius/report/report.md")
    assert keys_of(b) == keys
    assert b.doit("verify").stdout.splitlines()[-1] == f"verify: {len(tasks)} sound, 0 corrupt, 0 missing, 0 pending"
    (b.root / "specs/templates/training-report.md.jinja").write_text(
        b.read("specs/templates/training-report.md.jinja") + "\nA line a pull request adds.\n")
    assert ran(b.doit()) == ["gladius.report"]
    assert b.read("build/gladius/report/report.md").endswith("\n\nA line a pull request adds.\n")


# ---------------------------------------------------------------- 3. damaged remote entries

def flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


# what is done to main.tok's entry on the remote, behind its back
DAMAGE = ["file deleted", "byte flipped", "file cut short", "manifest not JSON", "manifest of another key",
          "push cut off before the manifest"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_remote_entry_is_missing_with_one_warning_and_built_here(remote_url, built, damage, tmp_path,
                                                                         monkeypatch):
    keys = push_entries(remote_url, built, ["dataset.docs", "main.tok"])
    key, url = keys["main.tok"], remote_url.url
    name = "tokenizer.json"
    data = remote_url.get(f"{key}/{name}")
    manifest = remote_url.get(f"{key}/{MANIFEST}")
    digest = EntryManifest.model_validate_json(manifest).outputs[name].xxh3_128
    if damage == "file deleted":
        remote_url.delete(f"{key}/{name}")
        why = f"{name}: remote {url}: {key}/{name} is gone"
    elif damage == "byte flipped":
        remote_url.put(f"{key}/{name}", flip(data))
        (tmp_path / "flipped").write_bytes(flip(data))
        why = f"{name}: xxh3 {file_digest(tmp_path / 'flipped')[:12]}, the manifest says {digest[:12]}"
    elif damage == "file cut short":
        remote_url.put(f"{key}/{name}", data[:1000])
        why = f"{name}: 1,000 bytes, the manifest says {len(data):,}"
    elif damage == "manifest not JSON":
        remote_url.put(f"{key}/{MANIFEST}", manifest[:len(manifest) // 2])
        why = "its manifest.json does not read (1 validation error for EntryManifest)"
    elif damage == "manifest of another key":
        remote_url.put(f"{key}/{MANIFEST}", remote_url.get(f"{keys['dataset.docs']}/{MANIFEST}"))
        why = f"its manifest.json is of key {keys['dataset.docs'][:12]}"
    else:
        remote_url.delete(f"{key}/{MANIFEST}")
        why = None

    monkeypatch.setenv("INGOT_REMOTE", url)
    b = clone(built, tmp_path / "b")
    result = b.doit("main.tok")
    assert ran(result) == ["main.tok"]
    assert result.stdout.splitlines()[0] == f"  [dataset.docs] pulled entry {keys['dataset.docs'][:12]} from {url}"
    warning = f"ingot: main.tok: the remote's entry {key[:12]} is damaged ({why}); treated as missing"
    assert warnings(result) == ([] if why is None else [warning])
    assert keys_of(b)["main.tok"] == key  # built here, to the same bytes
    out = b.doit("verify", "main.tok").stdout.splitlines()
    assert out == [".  verify", f"main.tok: ok ({key[:12]})", "verify: 1 sound, 0 corrupt, 0 missing, 0 pending"]
    assert not (b.root / store.STORE / ".work" / key).exists()  # the pull's partial files went with the build


# ---------------------------------------------------------------- 4. kill -9 during a push or a pull

KILL_PIPELINE = """
kind: pipeline
name: main
steps:
  tok: {kind: tokenizer, dataset: docs, vocab_size: 400}
  big-a: {kind: init, model: big, tokenizer: tok}
  big-b: {kind: init, model: big, tokenizer: tok, seed: 1}
"""
KILL_TASKS = ["dataset.docs", "main.tok", "main.big-a", "main.big-b"]
KILLS = 10  # per side (push, pull), half at delays spread over an uninterrupted run, half at a byte count
ROUND = 5   # kills in a row on what the last one left, then an uninterrupted run must finish the job


@pytest.fixture(scope="module")
def big_built(tmp_path_factory) -> Project:
    """docs -> tok -> two initialized models of 9.8M parameters (39 MB of weights each, so that
    kills land inside a transfer), built once."""
    p = write_small(code_project(tmp_path_factory.mktemp("big") / "proj"))
    p.write("specs/models/big.yaml", MODEL.format(name="big", width=384, ffn=1536, layers=4))
    p.write("specs/pipelines/main.yaml", KILL_PIPELINE)
    assert ran(p.doit()) == KILL_TASKS
    return p


def doit_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def partial_pulls(p: Project) -> dict[str, int]:
    """A pull's files still being downloaded (or left by a killed pull): name -> bytes so far."""
    return {name: size for name, size in files_under(p.root / store.STORE / ".work").items()
            if name.split("/")[1:2] == ["pull"]}


def kill_once(p: Project, args: list[str], trigger: tuple[str, float], inflight, seen) -> str:
    """Start `doit ARGS` in its own session and SIGKILL its process group when the trigger fires:
    ("delay", seconds) after the start, or ("bytes", n) once a file in flight (`inflight()`: name
    -> bytes) has grown past n bytes. Where it landed: `exited` (doit had finished), `inside a
    file` (a file was in flight), `between files` (something moved since the start, `seen()`
    tells), `start-up` (nothing had)."""
    first, state = inflight(), seen()
    proc = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=p.root, env=doit_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    how, x = trigger
    started = time.monotonic()
    moving: dict[str, int] = {}
    try:
        while proc.poll() is None and time.monotonic() - started < 120:
            moving = {n: s for n, s in inflight().items() if s > first.get(n, -1)}  # grown since the start
            if (how == "delay" and time.monotonic() - started >= x) or \
                    (how == "bytes" and any(s >= x for s in moving.values())):
                break
            time.sleep(0.0005)
        exited = proc.poll() is not None
    finally:  # even when the test fails here: no doit outlives it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if exited:
        assert proc.returncode == 0, f"doit {' '.join(args)} failed before the kill:\n{err.decode(errors='replace')}"
        return "exited"
    if moving:
        return "inside a file"
    return "between files" if seen() != state else "start-up"


def assert_remote_sound(where: Where, source: Project, keys: list[str], scratch: Path, when: str) -> int:
    """Every entry of the remote that has a manifest.json has every file it lists, of the size
    and xxh3 listed (read back through the remote, as a pull reads it); every file at its own
    name is whole (the size of the pushed one: uploads are whole or not at all, a temporary file
    aside); nothing else is there but folders of these keys. Returns how many entries have a manifest."""
    held = where.sizes()
    assert {name.split("/")[0] for name in held} <= set(keys), f"{when}: {sorted(held)}"
    for name, size in held.items():
        key, _, rel = name.partition("/")
        if not rel.endswith(".tmp"):
            assert size == (store.entry(source.root, key) / rel).stat().st_size, f"{when}: {name} is not whole"
    cache, complete = where.open(), 0
    got = scratch / "read-back"
    for key in keys:
        data = cache.read(f"{key}/{MANIFEST}")
        if data is None:
            continue
        complete += 1
        manifest = EntryManifest.model_validate_json(data)
        assert manifest.key == key, when
        for name, o in manifest.outputs.items():
            assert cache.size(f"{key}/{name}") == o.size, f"{when}: {key}/{name}"
            got.unlink(missing_ok=True)
            with progress() as bar:
                cache.download(f"{key}/{name}", got, 0, bar)
            assert file_digest(got) == o.xxh3_128, f"{when}: {key}/{name}"
    return complete


def assert_local_sound(p: Project, keys: list[str], when: str) -> int:
    """Every entry folder of the store verifies (manifest, every listed file's size and xxh3, nothing
    unlisted) and is one of `keys`; every friendly link points at such an entry. Returns how many."""
    found = store.keys(p.root)
    for key in found:
        assert key in keys, f"{when}: {key}"
        assert store.verify(p.root, key) == [], f"{when}: {key}: {store.verify(p.root, key)}"
    for link in (p.root / "build").rglob("*"):
        if link.is_symlink() and not link.name.startswith("."):
            target = link.resolve()
            assert target.parent == (p.root / store.STORE).resolve() and target.name in found, f"{when}: {link}"
    return len(found)


def store_files(p: Project) -> dict[str, int]:
    return files_under(p.root / store.STORE)


def triggers(rng: random.Random, wall: float, big: int, by_bytes: bool) -> list[tuple[str, float]]:
    """KILLS triggers in random order: delays spread over [0, 1.1 x the uninterrupted run), each
    uniform within its own share of it; where uploads in flight can be seen, half of them byte
    counts spread over (2%, 100%) of a big file instead, so that they land inside a transfer."""
    n = KILLS // 2 if by_bytes else KILLS

    def spread(lo: float, hi: float, k: int) -> list[float]:
        return [lo + (i + rng.random()) * (hi - lo) / k for i in range(k)]

    out = [("delay", d) for d in spread(0.0, 1.1 * wall, n)]
    out += [("bytes", b) for b in spread(0.02 * big, big, KILLS - n)]
    rng.shuffle(out)
    return out


def tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())


# Where the kills landed in one run of the file on a 2-core machine, of 10 per side, as start-up /
# between files / inside a file / after doit had exited: dir push 5/0/5/0, pull 3/0/6/1; http push
# 3/0/5/2, pull 2/2/5/1; s3 push 5/2/0/3 (an S3 upload in flight cannot be seen, so those inside a
# file count as between files), pull 4/0/6/0. So 27 of the 60 kills landed inside a file transfer
# and 4 more between files. The test fails unless some kills of each side land after the first byte moved.
@pytest.mark.slow  # ~50 `doit` runs in fresh interpreters per scheme
def test_kill_9_during_push_or_pull_never_leaves_an_entry_served_as_complete_that_is_not(
        big_built, scheme, request, tmp_path, monkeypatch):
    a = big_built
    monkeypatch.setenv("INGOT_REMOTE_JOBS", "1")  # one file in flight at a time
    keys = [keys_of(a)[t] for t in KILL_TASKS]
    big = store.read_entry(a.root, keys[2]).outputs["model.safetensors"].size
    rng = random.Random(f"remote-kills-{scheme}")

    def fresh() -> Where:
        where = make_where(scheme, request, tmp_path)
        monkeypatch.setenv("INGOT_REMOTE", where.url)
        return where

    # ---- push: `doit push` into an empty remote, killed up to ROUND times in a row, then finished
    where = fresh()
    started = time.monotonic()
    assert a.doit("push").stdout.splitlines()[-1] == "push: 4 pushed, 0 remote, 0 not built"
    wall_push = time.monotonic() - started
    assert assert_remote_sound(where, a, keys, tmp_path, "the uninterrupted push") == len(keys)

    pushes = dict.fromkeys(("start-up", "between files", "inside a file", "exited"), 0)
    where, in_round = fresh(), 0
    plan = triggers(rng, wall_push, big, by_bytes=scheme != "s3")
    for i, trigger in enumerate(plan):
        landed = kill_once(a, ["push"], trigger, where.inflight, where.names)
        pushes[landed] += 1
        in_round += 1
        when = f"{scheme} push: kill #{i + 1} at {trigger[0]} {trigger[1]:.3g} (landed {landed})"
        complete = assert_remote_sound(where, a, keys, tmp_path, when)
        if complete == len(keys) or in_round == ROUND or i == len(plan) - 1:
            last = a.doit("push").stdout.splitlines()[-1]
            sent = int(last.split()[1])
            assert last == f"push: {sent} pushed, {len(keys) - sent} remote, 0 not built", when
            assert assert_remote_sound(where, a, keys, tmp_path, f"{when}, then a push") == len(keys)
            if i < len(plan) - 1:
                where, in_round = fresh(), 0
    assert pushes["between files"] + pushes["inside a file"] > 0, pushes

    # ---- pull: `doit pull` (odd rounds) or a read-through `doit` (even ones) into a fresh clone's
    # empty store, from the remote the last round completed, killed up to ROUND times, then finished
    b = clone(a, tmp_path / "b")
    started = time.monotonic()
    assert b.doit("pull").stdout.splitlines()[-1] == "pull: 4 pulled, 0 local, 0 missing, 0 pending"
    wall_pull = time.monotonic() - started
    assert assert_local_sound(b, keys, "the uninterrupted pull") == len(keys)
    shutil.rmtree(b.root / "build")

    pulls = dict.fromkeys(("start-up", "between files", "inside a file", "exited"), 0)
    in_round = 0
    plan = triggers(rng, wall_pull, big, by_bytes=True)
    for i, trigger in enumerate(plan):
        read_through = (i // ROUND) % 2 == 1
        landed = kill_once(b, [] if read_through else ["pull"], trigger, lambda: partial_pulls(b),
                           lambda: store_files(b))
        pulls[landed] += 1
        in_round += 1
        when = f"{scheme} {'doit' if read_through else 'pull'}: kill #{i + 1} at {trigger[0]} {trigger[1]:.3g} " \
               f"(landed {landed})"
        here = assert_local_sound(b, keys, when)
        if here == len(keys) or in_round == ROUND or i == len(plan) - 1:
            if read_through:
                assert ran(b.doit()) == [], when  # everything pulled, nothing built
            else:
                last = b.doit("pull").stdout.splitlines()[-1]
                got = int(last.split()[1])
                assert last == f"pull: {got} pulled, {len(keys) - got} local, 0 missing, 0 pending", when
            assert assert_local_sound(b, keys, f"{when}, then an uninterrupted run") == len(keys)
            shutil.rmtree(b.root / "build")
            in_round = 0
    assert pulls["between files"] + pulls["inside a file"] > 0, pulls
    print(f"\n{scheme}: uninterrupted push {wall_push:.2f} s, pull {wall_pull:.2f} s; "
          f"kills of push: {tally(pushes)}; of pull: {tally(pulls)}")


# ---------------------------------------------------------------- 5. errors

def test_an_unreachable_remote_is_one_line_per_step_and_the_build_goes_on(built, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/cache"  # nothing listens there
    monkeypatch.setenv("INGOT_REMOTE", url)
    monkeypatch.setenv("INGOT_REMOTE_PUSH", "1")
    b = clone(built, tmp_path / "b")
    result = b.doit("main.tok")
    assert ran(result) == ["dataset.docs", "main.tok"]
    keys = keys_of(b)
    refused = "[Errno 111] Connection refused"
    assert warnings(result) == [  # asked once: each step would wait on it in turn otherwise
        f"ingot: dataset.docs: remote {url}: GET {keys['dataset.docs']}/manifest.json: {refused}; building it "
        "here; the remote is not asked again in this run: later steps build here, and are not pushed (`doit push` "
        "uploads them)"]
    assert all(store.verify(b.root, keys[t]) == [] for t in ("dataset.docs", "main.tok"))
    result = b.doit("push", "main.tok", check=False)
    assert result.returncode == 1
    assert f"push: remote {url}: HEAD {keys['dataset.docs']}/manifest.json: {refused}" in result.stdout.splitlines()


def test_a_remote_that_refuses_pushes_still_serves_reads_and_is_pushed_to_once(built, nginx, tmp_path,
                                                                              monkeypatch):
    """Read-only credentials, as CI gives pull requests: the entries there are pulled, the first
    push that fails says so once, and the rest of the run neither pushes nor stops reading."""
    keys = push_entries(FolderWhere(nginx.url("ro/cache"), nginx.data / "ro" / "cache"), built,
                        ["dataset.docs", "main.tok"])
    url = nginx.url("readonly/ro/cache")  # the same files, GET and HEAD only
    monkeypatch.setenv("INGOT_REMOTE", url)
    monkeypatch.setenv("INGOT_REMOTE_PUSH", "1")
    b = clone(built, tmp_path / "b")
    result = b.doit()
    assert ran(result) == ["main.tok@docs", "main.student", "main.report"]
    assert [line for line in result.stdout.splitlines() if "pulled entry" in line] == [
        f"  [{t}] pulled entry {keys[t][:12]} from {url}" for t in ("dataset.docs", "main.tok")]
    tokens = keys_of(b)["main.tok@docs"]
    first = sorted(store.read_entry(b.root, tokens).outputs)[0]
    assert warnings(result) == [f"ingot: main.tok@docs: remote {url}: PUT {tokens}/{first}: HTTP 405 Not Allowed; "
                                "not pushed; nothing more is pushed in this run (`doit push` uploads what was built)"]


@pytest.mark.parametrize("damage", ["file deleted", "file cut short", "manifest not JSON"])
def test_a_push_replaces_a_damaged_remote_entry(remote_url, built, damage, tmp_path, monkeypatch):
    keys = push_entries(remote_url, built, ["dataset.docs", "main.tok"])
    key, name = keys["main.tok"], "tokenizer.json"
    data, manifest = remote_url.get(f"{key}/{name}"), remote_url.get(f"{key}/{MANIFEST}")
    if damage == "file deleted":
        remote_url.delete(f"{key}/{name}")
        why = f"{name}: gone"
    elif damage == "file cut short":
        remote_url.put(f"{key}/{name}", data[:1000])
        why = f"{name}: 1,000 bytes, the manifest says {len(data):,}"
    else:
        remote_url.put(f"{key}/{MANIFEST}", manifest[:len(manifest) // 2])
        why = "its manifest.json does not read (1 validation error for EntryManifest)"
    monkeypatch.setenv("INGOT_REMOTE", remote_url.url)
    result = built.doit("push", "main.tok")
    assert result.stdout.splitlines()[-1] == "push: 1 pushed, 1 remote, 0 not built"
    assert warnings(result) == [f"ingot: main.tok: the remote's entry {key[:12]} is damaged ({why}); pushing it again"]
    assert remote_url.get(f"{key}/{name}") == data and remote_url.get(f"{key}/{MANIFEST}") == manifest
    assert built.doit("push", "main.tok").stdout.splitlines()[-1] == "push: 0 pushed, 2 remote, 0 not built"
    b = clone(built, tmp_path / "b")
    assert b.doit("pull", "main.tok").stdout.splitlines()[-1] == "pull: 2 pulled, 0 local, 0 missing, 0 pending"
    assert entry_bytes(b, key) == entry_bytes(built, key)


def test_a_directory_remote_that_cannot_be_written_is_a_remote_error_naming_the_file(built, tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the remote's folder should be\n")
    monkeypatch.setenv("INGOT_REMOTE", str(blocker))
    result = built.doit("push", "dataset.docs", check=False)
    assert result.returncode == 1
    key = keys_of(built)["dataset.docs"]
    assert f"push: remote {blocker}: stat {key}/manifest.json: Not a directory" in result.stdout.splitlines()


@pytest.mark.parametrize("url, why", [
    ("ftp://files.example/cache", "unknown scheme 'ftp'; use a directory (/path or file:///path), "
                                  "http(s)://host/prefix or s3://bucket/prefix"),
    ("file://cache", "a file URL names an absolute path, file:///path (three slashes)"),
], ids=["unknown scheme", "file URL with a host"])
def test_a_remote_that_cannot_be_used_stops_doit_before_build_is_touched(built, url, why, monkeypatch):
    monkeypatch.setenv("INGOT_REMOTE", url)
    before = built.build_files()
    result = built.doit(check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"ingot: remote {url}: {why}; nothing was built"]
    assert result.stdout == ""
    assert built.build_files() == before


def test_pull_push_and_status_remote_without_a_remote_say_how_to_set_one(built, tmp_path):
    b = clone(built, tmp_path / "b")
    for command in ("pull", "push", "status"):
        result = b.doit(command, *(["--remote"] if command == "status" else []), check=False)
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            f".  {command}", f"TaskFailed - taskid:{command}",
            f"{command}: no remote cache is configured: set INGOT_REMOTE (a directory, http(s)://... or "
            "s3://bucket/prefix), or `remote` under `[tool.ingot]` in pyproject.toml", ""]
    result = b.doit("pull", "main.nosuch", check=False)
    assert result.returncode == 1
    assert "pull: unknown step(s) main.nosuch; `doit list` shows them all" in result.stdout.splitlines()


def test_an_s3_bucket_that_does_not_exist_fails_the_push(built, s3_server, monkeypatch):
    url = "s3://no-such-bucket/cache"
    monkeypatch.setenv("INGOT_REMOTE", url)
    result = built.doit("push", "dataset.docs", check=False)
    assert result.returncode == 1
    key = keys_of(built)["dataset.docs"]
    first = sorted(store.read_entry(built.root, key).outputs)[0]  # the first upload fails the push
    assert f"push: remote {url}: PUT {key}/{first}: FileNotFoundError: The specified bucket does not exist" \
        in result.stdout.splitlines()


def test_the_bearer_token_opens_the_http_remote(built, nginx, tmp_path, monkeypatch):
    url = nginx.url("auth/cache")
    keys = keys_of(built)
    monkeypatch.setenv("INGOT_REMOTE", url)
    for token in (None, "not-the-token"):
        if token:
            monkeypatch.setenv("INGOT_REMOTE_TOKEN", token)
        result = built.doit("push", "main.tok", check=False)
        assert result.returncode == 1
        assert f"push: remote {url}: HEAD {keys['dataset.docs']}/manifest.json: HTTP 401 Unauthorized" \
            in result.stdout.splitlines()
    assert not (nginx.data / "auth" / "cache").exists()

    monkeypatch.setenv("INGOT_REMOTE_TOKEN", TOKEN)
    assert built.doit("push", "main.tok").stdout.splitlines()[-1] == "push: 2 pushed, 0 remote, 0 not built"
    b = clone(built, tmp_path / "b")
    assert b.doit("pull", "main.tok").stdout.splitlines()[-1] == "pull: 2 pulled, 0 local, 0 missing, 0 pending"
    assert store.verify(b.root, keys["main.tok"]) == []

    monkeypatch.delenv("INGOT_REMOTE_TOKEN")  # read-through without it: refused, so built here
    c = clone(built, tmp_path / "c")
    result = c.doit("dataset.docs")
    assert ran(result) == ["dataset.docs"]
    assert warnings(result) == [f"ingot: dataset.docs: remote {url}: GET {keys['dataset.docs']}/manifest.json: "
                                "HTTP 401 Unauthorized; building it here; the remote is not asked again in this "
                                "run: later steps build here"]


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_a_remote_that_stops_answering_fails_a_request_in_bounded_time(scheme, monkeypatch):
    """A server that takes the connection and never answers (a hung one, a half-open proxy): the
    request fails after TIMEOUT seconds, at most twice over, with the reason, instead of waiting on
    (s3fs and botocore's own retries made that ~45 timeouts of a minute per request)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes the handshake; nothing ever reads or answers
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        monkeypatch.setattr(remote, "TIMEOUT", 1)
        if scheme == "s3":
            for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
                monkeypatch.setenv(name, value)
            monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
            url, why = "s3://cache/ingot", ("ReadTimeoutError: Read timeout on endpoint URL: "
                                            f'"{endpoint}/cache/ingot/k/manifest.json"')
        else:
            url, why = f"{endpoint}/cache", "timed out"
        cache = remote.open_remote(url)
        started = time.monotonic()
        with pytest.raises(remote.RemoteError) as failed:
            cache.read("k/manifest.json")
        assert time.monotonic() - started < 8
    assert str(failed.value) == f"remote {url}: GET k/manifest.json: {why}"


def test_a_remote_manifest_naming_files_outside_its_entry_is_refused(built, tmp_path, capsys):
    """A manifest is the remote's word, not the store's: an output named `../…` would be written
    outside the entry's folder, so the entry is damaged and nothing is fetched."""
    key = keys_of(built)["main.tok"]
    remote_root = tmp_path / "cache"
    cache = remote.open_remote(str(remote_root))
    assert remote.push(cache, built.root, key, "main.tok")
    data = json.loads((remote_root / key / "manifest.json").read_text())
    name = sorted(data["outputs"])[0]
    data["outputs"]["../../evil"] = data["outputs"].pop(name)
    (remote_root / key / "manifest.json").write_text(json.dumps(data))
    b = clone(built, tmp_path / "b")
    assert not remote.pull(cache, b.root, key, "main.tok")
    assert capsys.readouterr().err.splitlines() == [
        f"ingot: main.tok: the remote's entry {key[:12]} is damaged (its manifest.json names files outside the "
        "entry: ../../evil); treated as missing"]
    assert not (b.root / "build").exists() and not (tmp_path / "evil").exists()


# ---------------------------------------------------------------- 6. the README's CI recipes

def readme_block(language: str) -> str:
    """The first ```LANGUAGE block of the README's "In CI" paragraph."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**In CI.**"):text.index("\n## ", text.index("**In CI.**"))]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start:section.index("```", start)]


@pytest.mark.slow  # the default project's cold `ci` build (~30 s), then two clones that build nothing or the report
def test_the_readmes_ci_recipes_run_as_written(tmp_path):
    """The shell recipe, run by bash in clone A with the venv of this test run as its .venv
    (its one placeholder, the remote's folder /cache/ingot, pointed at a folder here), builds the
    `ci` profile and pushes it; the GitHub Actions workflow's `run:` steps, run in order by bash
    in clone B with the workflow's `env:` (the remote pointed at the same folder, secrets left
    out), build nothing and keep A's report as the artifact; after a template edit, only the
    report. Not exercised here: the `uses:` actions (checkout, setup-python, upload-artifact)
    and the pip install step, which the test environment stands for."""
    import yaml

    activate = Path(sys.prefix) / "bin" / "activate"
    assert activate.exists(), f"the tests run from a virtual environment (the README's), not {sys.prefix}"
    cache = tmp_path / "cache" / "ingot"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGOT_", "PYTHONPATH"))}

    def fresh(name: str) -> Project:
        p = code_project(tmp_path / name)
        copy_project_files(p.root)
        (p.root / ".venv").symlink_to(sys.prefix)
        return p

    def bash(p: Project, script: str, extra: dict) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=p.root, env={**env, **extra},
                              capture_output=True, text=True, timeout=900, check=True)

    a = fresh("a")
    script = readme_block("sh")
    assert "/cache/ingot" in script
    result = bash(a, script.replace("/cache/ingot", str(cache)), {})
    built = ran(result)
    assert "gladius.report" in built and warnings(result) == []
    assert len([line for line in result.stdout.splitlines() if " pushed entry " in line]) == len(built)
    report = a.read("build/@ci/gladius/report/report.md")
    assert (a.root / "artifacts" / "report.md").read_text() == report

    workflow = yaml.safe_load(readme_block("yaml"))
    job = workflow["jobs"]["build"]
    job_env = {k: str(v) for k, v in job["env"].items() if "${{" not in str(v)}  # secrets: none here
    assert job_env["INGOT_REMOTE_PUSH"] == "1" and "INGOT_REMOTE" in job_env
    runs = [s["run"] for s in job["steps"] if "run" in s and not s["run"].startswith("pip install")]
    assert runs[0] == "doit profile=ci" and len(runs) == 2
    script = "\n".join([". .venv/bin/activate", *runs])
    b = fresh("b")
    result = bash(b, script, {**job_env, "INGOT_REMOTE": str(cache)})
    assert ran(result) == [] and warnings(result) == []
    assert sorted(line.split("]")[0][3:] for line in result.stdout.splitlines() if " pulled entry " in line) == \
        sorted(built)
    assert (b.root / "report" / "report.md").read_text() == report
    template = b.root / TEMPLATE
    template.write_text(template.read_text() + "\nA line a pull request adds.\n")
    result = bash(b, script, {**job_env, "INGOT_REMOTE": str(cache)})
    assert ran(result) == ["gladius.report"]
    assert (b.root / "report" / "report.md").read_text().endswith("\n\nA line a pull request adds.\n")
