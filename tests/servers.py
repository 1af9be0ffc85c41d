"""Debian's nginx with its WebDAV module on loopback, for the remote cache's tests
(tests/test_remote.py) and bench/remote.py: started by them, stopped by them."""

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
