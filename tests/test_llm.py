"""The LLM client (targets/llm.py) against a scripted OpenAI-compatible server on loopback
(tests/servers.py `ChatStub`): answers and what is sent, the cache on disk (its key, its files,
resuming a killed run), concurrency, retries with backoff, and each failure's whole message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from servers import ChatStub, completion
from targets import BuildError
from targets.llm import Cache, Client, Endpoint, Request, project_cache


def echo(n: int, body: dict):
    return 200, {}, completion(f"echo: {body['messages'][-1]['content']}")


@pytest.fixture
def stub():
    servers = []

    def start(reply=echo) -> ChatStub:
        servers.append(ChatStub(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def ask(text: str, **params) -> Request:
    return Request([{"role": "user", "content": text}], params)


def client(server: ChatStub, root, **fields) -> Client:
    return Client(Endpoint(server.url, fields.pop("model", "m"), **fields), project_cache(root), what="judge")


def test_answers_in_order_and_what_is_sent(stub, tmp_path):
    server = stub()
    c = client(server, tmp_path, max_tokens=7)
    answers = c.complete([ask("one"), ask("two", top_p=0.5)])
    assert [a.content for a in answers] == ["echo: one", "echo: two"]
    assert [a.cached for a in answers] == [False, False] and answers[0].finish_reason == "stop"
    assert sorted((r["path"], json.dumps(r["body"], sort_keys=True)) for r in server.requests) == sorted(
        ("/v1/chat/completions", json.dumps(body, sort_keys=True)) for body in (
            {"model": "m", "messages": [{"role": "user", "content": "one"}], "temperature": 0, "max_tokens": 7},
            {"model": "m", "messages": [{"role": "user", "content": "two"}], "temperature": 0, "max_tokens": 7,
             "top_p": 0.5}))
    assert "authorization" not in {h.lower() for h in server.requests[0]["headers"]}  # no key_env, no key
    assert (c.hits, c.misses, c.retried) == (0, 2, 0)


def test_the_cache_answers_a_second_time_and_keys_what_decides_the_answer(stub, tmp_path):
    server = stub()
    first = client(server, tmp_path)
    first.complete([ask("one"), ask("two")])
    # a new client (a later run): the same requests are cache hits, and nothing is sent
    again = client(server, tmp_path)
    assert [a.content for a in again.complete([ask("two"), ask("one")])] == ["echo: two", "echo: one"]
    assert (again.hits, again.misses, len(server.requests)) == (2, 0, 2)
    # another server with the same model: the URL is not in the key
    elsewhere = stub()
    moved = client(elsewhere, tmp_path)
    assert moved.complete([ask("one")])[0].cached and elsewhere.requests == []
    # the model, a parameter, the template's digest: each is another request
    for changed in (client(server, tmp_path, model="m2").complete([ask("one")]),
                    client(server, tmp_path, max_tokens=9).complete([ask("one")]),
                    client(server, tmp_path).complete([ask("one", temperature=0.5)]),
                    client(server, tmp_path).complete([Request([{"role": "user", "content": "one"}], {}, "abc")])):
        assert not changed[0].cached
    assert len(server.requests) == 6
    # one file per answer, under build/cache/llm/<2 hex>/<key>.json, holding request and answer
    files = sorted((tmp_path / "build/cache/llm").rglob("*.json"))
    assert len(files) == 6 and all(f.parent.name == f.stem[:2] and len(f.stem) == 32 for f in files)
    assert not list((tmp_path / "build/cache/llm").rglob("*.tmp"))
    request = {"model": "m", "messages": [{"role": "user", "content": "one"}],
               "params": {"temperature": 0, "max_tokens": 512}, "template": None}
    record = json.loads(Cache(tmp_path / "build/cache/llm").path(Cache.key(request)).read_text())
    assert record == {"request": request, "answer": {"content": "echo: one", "finish_reason": "stop",
                                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                               "total_tokens": 2}}}


def test_a_damaged_cache_file_is_asked_again_and_replaced(stub, tmp_path):
    server = stub()
    client(server, tmp_path).complete([ask("one")])
    (path,) = (tmp_path / "build/cache/llm").rglob("*.json")
    path.write_text('{"request": {"model": "m"')
    c = client(server, tmp_path)
    assert c.complete([ask("one")])[0].content == "echo: one" and (c.hits, c.misses) == (0, 1)
    assert json.loads(path.read_text())["answer"]["content"] == "echo: one"


def test_the_same_request_twice_in_a_batch_is_sent_once(stub, tmp_path):
    server = stub()
    c = client(server, tmp_path)
    assert [a.content for a in c.complete([ask("x"), ask("y"), ask("x")])] == ["echo: x", "echo: y", "echo: x"]
    assert len(server.requests) == 2 and c.misses == 2


def test_requests_run_concurrently_up_to_the_limit(stub, tmp_path):
    def slow(n, body):
        time.sleep(0.2)
        return echo(n, body)

    server = stub(slow)
    c = client(server, tmp_path, concurrency=3)
    assert len(c.complete([ask(str(i)) for i in range(9)])) == 9
    assert server.in_flight_peak == 3  # each request waits 0.2 s: the others of its round arrive meanwhile


def test_429_twice_then_an_answer_with_exponential_backoff(stub, tmp_path):
    server = stub(lambda n, body: (429, {}, {"error": {"message": "slow down"}}) if n < 2 else echo(n, body))
    c = client(server, tmp_path, retries=3, backoff=0.2)
    assert c.complete([ask("one")])[0].content == "echo: one"
    assert (len(server.requests), c.retried, c.misses) == (3, 2, 1)
    gaps = [b["at"] - a["at"] for a, b in zip(server.requests, server.requests[1:])]
    # 0.2 s then 0.4 s, each up to 25% less (jitter); the upper bounds leave room for a busy machine
    assert 0.15 <= gaps[0] < 2 and 0.3 <= gaps[1] < 2 and gaps[1] > gaps[0]


def test_retry_after_is_honoured(stub, tmp_path):
    server = stub(lambda n, body: (503, {"Retry-After": "0.5"}, "busy") if n == 0 else echo(n, body))
    assert client(server, tmp_path, backoff=0.01).complete([ask("one")])[0].content == "echo: one"
    assert server.requests[1]["at"] - server.requests[0]["at"] >= 0.5


def test_500_forever_fails_after_the_retries_naming_url_and_status(stub, tmp_path):
    server = stub(lambda n, body: (500, {}, {"error": {"message": "the model crashed"}}))
    with pytest.raises(BuildError) as info:
        client(server, tmp_path, retries=2, backoff=0.01).complete([ask("one")])
    assert str(info.value) == (f"http://127.0.0.1:{server.port}/v1/chat/completions: HTTP 500 after 3 tries (model "
                               "'m'): the model crashed; the server keeps failing: check it, or raise `retries` of "
                               "the judge")
    assert len(server.requests) == 3
    assert not (tmp_path / "build/cache/llm").exists() or not list((tmp_path / "build/cache/llm").rglob("*.json"))


def test_a_refusal_is_not_retried(stub, tmp_path):
    server = stub(lambda n, body: (401, {}, {"error": {"message": "Incorrect API key provided"}}))
    with pytest.raises(BuildError) as info:
        client(server, tmp_path, retries=3).complete([ask("one")])
    assert str(info.value) == (f"http://127.0.0.1:{server.port}/v1/chat/completions: HTTP 401 (model 'm'): Incorrect "
                               "API key provided; set `key_env` to the environment variable holding the API key")
    assert len(server.requests) == 1
    server = stub(lambda n, body: (404, {}, "<html>Not Found</html>"))
    with pytest.raises(BuildError) as info:
        client(server, tmp_path).complete([ask("one")])
    assert str(info.value) == (f"http://127.0.0.1:{server.port}/v1/chat/completions: HTTP 404 (model 'm'): "
                               "<html>Not Found</html>; check `url` (the API's base, ending before "
                               "/chat/completions, e.g. .../v1) and `model`")


def test_no_server_fails_after_the_retries(tmp_path):
    from servers import free_port

    port = free_port()
    c = Client(Endpoint(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01), project_cache(tmp_path),
               what="reference")
    with pytest.raises(BuildError) as info:
        c.complete([ask("one")])
    assert str(info.value) == (f"http://127.0.0.1:{port}/v1/chat/completions: no answer after 2 tries (ConnectError: "
                               "[Errno 111] Connection refused); check that the server runs and that `url` of the "
                               "reference is right")


def test_a_slow_answer_times_out_and_is_retried(stub, tmp_path):
    server = stub(lambda n, body: (time.sleep(0.6), echo(n, body))[1] if n == 0 else echo(n, body))
    c = client(server, tmp_path, timeout=0.3, backoff=0.01)
    assert c.complete([ask("one")])[0].content == "echo: one" and c.retried == 1


def test_a_body_that_is_no_chat_completion_is_an_error(stub, tmp_path):
    server = stub(lambda n, body: (200, {}, {"data": []}))
    with pytest.raises(BuildError) as info:
        client(server, tmp_path).complete([ask("one")])
    assert str(info.value) == (f"http://127.0.0.1:{server.port}/v1/chat/completions: HTTP 200, but not a chat "
                               'completion (no choices[0].message): {"data": []}; check that `url` of the judge is '
                               "the base of an OpenAI-compatible API (ending before /chat/completions)")


def test_the_key_comes_from_the_variable_named_and_is_never_cached(stub, tmp_path, monkeypatch):
    server = stub()
    monkeypatch.setenv("INGOT_TEST_KEY", "sk-secret-123")
    client(server, tmp_path, key_env="INGOT_TEST_KEY").complete([ask("one")])
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert all("sk-secret" not in f.read_text() for f in (tmp_path / "build/cache/llm").rglob("*.json"))
    monkeypatch.delenv("INGOT_TEST_KEY")
    with pytest.raises(BuildError) as info:
        client(server, tmp_path, key_env="INGOT_TEST_KEY")
    assert str(info.value) == ("the environment variable INGOT_TEST_KEY (`key_env` of the judge) is not set; export it "
                               f"with the API key of {server.url}, or remove `key_env` for a server that needs no key")


KILLED_RUN = """
    import sys
    from targets.llm import Client, Endpoint, Request, project_cache

    c = Client(Endpoint(sys.argv[1], "m", concurrency=1), project_cache(sys.argv[2]))
    c.complete([Request([{"role": "user", "content": str(i)}]) for i in range(8)])
"""


def test_a_killed_run_resumes_from_the_cache(stub, tmp_path):
    """A run killed (SIGKILL) after some answers arrived: those are on disk, whole, and the next
    run asks only for the others."""
    def slow(n, body):
        time.sleep(0.25)
        return echo(n, body)

    server = stub(slow)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_RUN), server.url, str(tmp_path)],
                            env=env, start_new_session=True)
    cache = tmp_path / "build/cache/llm"
    deadline = time.monotonic() + 60
    while len(list(cache.rglob("*.json"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before three answers"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(list(cache.rglob("*.json")))
    assert 3 <= kept < 8
    asked = len(server.requests)
    c = client(server, tmp_path, model="m")
    answers = c.complete([ask(str(i)) for i in range(8)])
    assert [a.content for a in answers] == [f"echo: {i}" for i in range(8)]
    assert (c.hits, c.misses) == (kept, 8 - kept) and len(server.requests) == asked + 8 - kept
    assert sum(a.cached for a in answers) == kept
