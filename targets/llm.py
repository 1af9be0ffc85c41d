"""One client for OpenAI-compatible chat APIs, and the cache on disk that answers for it.

Reads: the API key from the environment variable an endpoint names (`key_env`), nothing else.
Writes: one JSON file per answer under `build/cache/llm/` of the project,
`<first 2 hex digits>/<xxh3-128 of the request>.json` holding the request and the answer. Each is
written to a temporary file beside it, fsynced and renamed into place as soon as its answer
arrives, so a killed run keeps every answer it got and the next run asks only for the rest.

A request's cache key is what decides its answer: the messages, the model's name, the
parameters sent (temperature, max_tokens, response_format, ...) and the digest of the template
that wrote the messages (None when none did). Not the URL, nor the API key: the same model
served elsewhere answers the same, so an evaluate step of a new model finds every reference
answer an earlier step got (same prompts, same reference model) and asks only its judge.
Identical requests in one batch are sent once.

Requests run `concurrency` at a time. A request answered 408, 409, 429 or 5xx, or whose
connection failed or timed out, is tried again after 0.5 s, 1 s, 2 s, ... (at most 8 s, or the
`Retry-After` the server sends, and 25% less at random so that clients do not retry in step),
`retries` times; then, or at once for any other status, a BuildError names the URL, the status
and what the server said. Used by the evaluate builder (reference answers, judge verdicts) and
meant for every builder that asks a model over HTTP.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import xxhash

from targets import BuildError

CACHE = Path("build") / "cache" / "llm"  # under the project root
RETRY_STATUS = {408, 409, 429}  # and every 5xx
MAX_DELAY = 8.0                 # seconds between two tries, at most (unless Retry-After says more)
MAX_RETRY_AFTER = 60.0          # a longer Retry-After is not waited for: the try counts as failed


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat API: `url` is its base (`.../v1`), `model` the name sent."""

    url: str
    model: str
    key_env: str | None = None
    max_tokens: int = 512
    concurrency: int = 4
    retries: int = 4
    timeout: float = 120.0
    backoff: float = 0.5  # the first retry's delay; each next one doubles it

    @classmethod
    def of(cls, spec) -> "Endpoint":
        """From a step's endpoint spec (any object with these attributes)."""
        return cls(spec.url, spec.model, spec.key_env, spec.max_tokens, spec.concurrency, spec.retries,
                   float(spec.timeout))

    @property
    def chat_url(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


@dataclass
class Request:
    """One chat completion: the messages, the parameters sent beside them (max_tokens defaults
    to the endpoint's), and the digest of the template that wrote the messages."""

    messages: list[dict]
    params: dict = field(default_factory=dict)
    template: str | None = None


@dataclass(frozen=True)
class Answer:
    content: str
    finish_reason: str | None
    cached: bool


class Cache:
    """Answers on disk by the digest of their request, one file each, shared by every step and run."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @staticmethod
    def key(request: dict) -> str:
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str, request: dict) -> dict | None:
        """The answer stored for `request`, or None (also for a file that does not read back as
        this request's: it is asked again and replaced)."""
        try:
            record = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        answer = record.get("answer") if isinstance(record, dict) else None
        if record.get("request") != request or not isinstance(answer, dict) or not isinstance(answer.get("content"), str):
            return None
        return answer

    def put(self, key: str, request: dict, answer: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"request": request, "answer": answer}, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def project_cache(root: Path) -> Cache:
    return Cache(Path(root) / CACHE)


class Client:
    """Chat completions of one endpoint through a cache. Counts its cache hits (requests answered
    from the cache), misses (distinct requests sent, each once however many tries it took) and
    retries."""

    def __init__(self, endpoint: Endpoint, cache: Cache, log: Callable[[str], None] | None = None,
                 what: str = "model"):
        self.endpoint, self.cache, self.what = endpoint, cache, what
        self.log = log or (lambda message: None)
        self.hits = self.misses = self.retried = 0
        self._lock = threading.Lock()
        self._headers = {"Content-Type": "application/json", **self._auth()}

    def _auth(self) -> dict:
        name = self.endpoint.key_env
        if name is None:
            return {}
        key = os.environ.get(name)
        if not key:
            raise BuildError(f"the environment variable {name} (`key_env` of the {self.what}) is not set; "
                             f"export it with the API key of {self.endpoint.url}, or remove `key_env` for a server "
                             "that needs no key")
        return {"Authorization": f"Bearer {key}"}

    def request_of(self, request: Request) -> dict:
        """The request as the cache keys it: the model's name, the messages, the parameters sent
        (temperature 0 and the endpoint's max_tokens unless the request sets them) and the
        digest of the template that wrote the messages."""
        params = {"temperature": 0, "max_tokens": self.endpoint.max_tokens, **request.params}
        return {"model": self.endpoint.model, "messages": request.messages, "params": params,
                "template": request.template}

    def complete(self, requests: list[Request]) -> list[Answer]:
        """The answer to each request, in order: from the cache, or asked (each distinct request
        once, `concurrency` at a time) and cached as it arrives."""
        keyed = [self.request_of(r) for r in requests]
        keys = [Cache.key(k) for k in keyed]
        found: dict[str, dict] = {}
        for key, request in zip(keys, keyed):
            if key not in found and (answer := self.cache.get(key, request)) is not None:
                found[key] = answer
        cached = set(found)
        todo = {key: request for key, request in zip(keys, keyed) if key not in found}
        hits = sum(key in cached for key in keys)
        self.hits += hits
        self.misses += len(todo)
        if todo:
            self.log(f"{self.what}: {hits:,} of {len(requests):,} answers cached, asking {self.endpoint.model} at "
                     f"{self.endpoint.url} for {len(todo):,}")
            found.update(self._ask_all(todo))
        return [Answer(found[k]["content"], found[k].get("finish_reason"), k in cached) for k in keys]

    def _ask_all(self, todo: dict[str, dict]) -> dict[str, dict]:
        import httpx2

        out: dict[str, dict] = {}
        with httpx2.Client(timeout=self.endpoint.timeout) as http, \
                ThreadPoolExecutor(self.endpoint.concurrency, thread_name_prefix="llm") as pool:
            futures = {pool.submit(self._ask, http, request): key for key, request in todo.items()}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
            for future, key in futures.items():
                out[key] = future.result()
        return out

    def _ask(self, http, request: dict) -> dict:
        """One request, tried until answered or out of retries; its answer cached now."""
        answer = self._send(http, request)
        self.cache.put(Cache.key(request), request, answer)
        return answer

    def _send(self, http, request: dict) -> dict:
        import httpx2

        url, tries = self.endpoint.chat_url, self.endpoint.retries + 1
        body = {"model": request["model"], "messages": request["messages"], **request["params"]}
        for attempt in range(tries):
            try:
                response = http.post(url, json=body, headers=self._headers)
            except httpx2.TransportError as exc:  # refused, reset, timed out
                if attempt + 1 == tries:
                    raise BuildError(f"{url}: no answer after {tries} {_tries(tries)} ({type(exc).__name__}: "
                                     f"{exc or 'no detail'}); check that the server runs and that `url` of the "
                                     f"{self.what} is right") from None
                self._wait(attempt, None)
                continue
            status = response.status_code
            if status < 400:
                return self._answer(url, response)
            retry = status in RETRY_STATUS or status >= 500
            if not retry or attempt + 1 == tries:
                raise BuildError(self._refusal(url, status, response, attempt + 1, retry))
            self._wait(attempt, response.headers.get("retry-after"))
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        with self._lock:
            self.retried += 1
        delay = min(self.endpoint.backoff * 2 ** attempt, MAX_DELAY) * (1 - 0.25 * random.random())
        try:
            asked = float(retry_after) if retry_after is not None else None
        except ValueError:  # an HTTP date: the exponential delay stands
            asked = None
        if asked is not None and 0 <= asked <= MAX_RETRY_AFTER:
            delay = asked
        time.sleep(delay)

    def _answer(self, url: str, response) -> dict:
        try:
            data = response.json()
            choice = data["choices"][0]
            content = choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BuildError(f"{url}: HTTP {response.status_code}, but not a chat completion (no "
                             f"choices[0].message): {_excerpt(response.text)}; check that `url` of the {self.what} "
                             "is the base of an OpenAI-compatible API (ending before /chat/completions)") from None
        return {"content": content if isinstance(content, str) else "", "finish_reason": choice.get("finish_reason"),
                "usage": data.get("usage") if isinstance(data.get("usage"), dict) else None}

    def _refusal(self, url: str, status: int, response, tries: int, retried: bool) -> str:
        said = _message(response)
        if retried:
            return (f"{url}: HTTP {status} after {tries} {_tries(tries)} (model '{self.endpoint.model}'): {said}; the "
                    f"server keeps failing: check it, or raise `retries` of the {self.what}")
        if status in (401, 403):
            fix = (f"check the API key in ${self.endpoint.key_env}" if self.endpoint.key_env else
                   "set `key_env` to the environment variable holding the API key")
        elif status == 404:
            fix = "check `url` (the API's base, ending before /chat/completions, e.g. .../v1) and `model`"
        else:
            fix = f"the server refused the request: check `model` and the other fields of the {self.what}"
        return f"{url}: HTTP {status} (model '{self.endpoint.model}'): {said}; {fix}"


def _message(response) -> str:
    """What the server said about an error: OpenAI's `error.message`, else the body's start."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _excerpt(error["message"])
        if isinstance(error, str):
            return _excerpt(error)
    except (ValueError, AttributeError):
        pass
    return _excerpt(response.text) or "(empty body)"


def _excerpt(text: str, most: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[:most] + "..."


def _tries(n: int) -> str:
    return "try" if n == 1 else "tries"
