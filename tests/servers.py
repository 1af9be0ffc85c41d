"""Real servers on loopback for the remote cache (tests/test_remote.py, bench/remote.py):
Debian's nginx with its WebDAV module, serving a folder over GET/PUT/HEAD, and moto's
standalone S3-compatible server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NGINX = "/usr/sbin/nginx"
NGINX_INSTALL = "apt-get install -y nginx libnginx-mod-http-dav-ext"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it listened on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def nginx_conf(prefix: Path, root: Path, port: int, token: str | None = None) -> str:
    """A WebDAV server of `root` on 127.0.0.1:`port`; under /auth/, only with `Bearer <token>`."""
    auth = f"""
        location /auth/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            alias {root}/;
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
        }}""" if token else ""
    user = "user root;" if os.geteuid() == 0 else ""  # workers write the folder as the test does
    return f"""
        {user}
        daemon off;
        worker_processes 2;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log;
        events {{ worker_connections 256; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/body;
            client_max_body_size 0;
            server {{
                listen 127.0.0.1:{port};
                location / {{
                    root {root};
                    dav_methods PUT DELETE MKCOL;
                    create_full_put_path on;
                    dav_access user:rw group:rw all:r;
                }}{auth}
            }}
        }}
    """


class Nginx:
    """nginx serving `root` over WebDAV on a free loopback port, until `stop()`."""

    def __init__(self, prefix: Path, root: Path, token: str | None = None):
        prefix.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        (prefix / "body").mkdir(exist_ok=True)
        self.root, self.port = root, free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, root, self.port, token))
        self.proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_for_port(self.port, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; {(prefix / 'error.log').read_text() if (prefix / 'error.log').exists() else ''}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def nginx_available() -> bool:
    return Path(NGINX).exists() and shutil.which("nginx") is not None


class MotoS3:
    """moto's S3-compatible server on a free loopback port; `env` are the variables that point
    boto/s3fs at it."""

    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        wait_for_port(self.port)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}

    def bucket(self, name: str) -> str:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.server.stop()
