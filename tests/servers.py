"""Servers on loopback that tests start and stop themselves: Debian's nginx with its WebDAV
module, for the remote cache's tests (tests/test_remote.py) and bench/remote.py; a scripted
OpenAI-compatible chat API in a thread (`ChatStub`, tests/test_llm.py); and llama-cpp-python's
OpenAI-compatible server serving a GGUF file the project built (`LlamaServer`,
tests/test_evaluate.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NGINX_INSTALL = "apt-get install -y nginx libnginx-mod-http-dav-ext"

NGINX_CONF = """
daemon off;
{user}worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            root {base}/data;
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
        }}
        location /auth/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            root {base}/data;
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
        }}
        location /readonly/ {{
            alias {base}/data/;
        }}
        location /norange/ {{
            max_ranges 0;
            root {base}/data;
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class Nginx:
    """nginx serving `data/` over WebDAV PUT (creating folders) and GET/HEAD; `/auth/` the same
    folder's `auth/` for requests with `Authorization: Bearer TOKEN` only, 401 for the rest;
    `/norange/` without byte ranges (a GET with Range gets the whole file, 200); `/readonly/` the
    same files as `/`, GET and HEAD only (a PUT gets 405). Request bodies
    are spooled in `body/` until a PUT completes (an in-flight PUT is visible there)."""

    def __init__(self, base: Path, token: str, binary: str | None = None):
        """Start it in the empty folder `base`; a RuntimeError with its logs if it does not listen."""
        self.base, self.port = base, free_port()
        self.data, self.body = base / "data", base / "body"
        for folder in (self.data, self.body):
            folder.mkdir(parents=True)
        user = "user root;\n" if os.geteuid() == 0 else ""  # CI runs as root: workers must write data/ too
        conf = base / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, base=base, port=self.port, token=token))
        with open(base / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen([binary or nginx_binary() or "nginx", "-p", str(base), "-e",
                                          str(base / "error.log"), "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 15
        while not answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                log = "".join((base / n).read_text(errors="replace") for n in ("stderr.log", "error.log")
                              if (base / n).exists())
                raise RuntimeError(f"nginx did not start on 127.0.0.1:{self.port}:\n{log}")
            time.sleep(0.05)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ChatStub:
    """A scripted OpenAI-compatible chat API on loopback, in a thread of the test: each POST to
    `/v1/chat/completions` is recorded (its body, headers and arrival time) and answered by
    `reply(n, body)` -> (status, headers, body as JSON data or text), n counting from 0. Requests
    run concurrently (one thread each); `in_flight_peak` is the most answered at once."""

    def __init__(self, reply):
        import http.server
        import json
        import threading

        stub = self
        self.requests: list[dict] = []
        self.in_flight = self.in_flight_peak = 0
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(stub.requests)
                    stub.requests.append({"path": self.path, "body": body, "headers": dict(self.headers),
                                          "at": time.monotonic()})
                    stub.in_flight += 1
                    stub.in_flight_peak = max(stub.in_flight, stub.in_flight_peak)
                try:
                    status, headers, data = reply(n, body)
                finally:
                    with lock:
                        stub.in_flight -= 1
                raw = (data if isinstance(data, str) else json.dumps(data)).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str, finish_reason: str = "stop") -> dict:
    """A chat completion's body as OpenAI's API writes it."""
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, the `[server]`
    extra of requirements-llama.txt) on loopback, serving one GGUF file; its log (uvicorn's
    access lines included) in `base/server.log`."""

    def __init__(self, model: Path, base: Path, n_ctx: int = 2048):
        import sys

        self.port, self.log = free_port(), base / "server.log"
        base.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                          "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
                                          "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "false"],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not start on 127.0.0.1:{self.port}:\n"
                                   f"{self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> int:
        """Chat completions the server answered so far, by its access log."""
        return self.log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
