"""A Ray cluster of two nodes on this machine, for tests/test_ray.py and bench/scale.py: a head
with no CPUs and a worker node with two, so that every task runs on the worker node.

Each node is started by the venv's `ray start` in a session of its own, with its own temporary
folder (a short one: Ray's unix sockets live there, and their paths must stay under 108 bytes),
and stopped by signalling those process groups: never `ray stop`, which stops every Ray cluster on
the machine. Ray names a node by the machine's address even when told 127.0.0.1, so both nodes
share one IP; the worker node is told apart by its ID. Token authentication is on, with a token of
the cluster's own (`RAY_AUTH_MODE=token`), so a token in ~/.ray does not decide the mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from servers import free_port

RAY = Path(sys.executable).parent / "ray"


class Cluster:
    """A head node without CPUs and one worker node with two, on this machine."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = secrets.token_hex(16)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))},
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        self.groups: list[int] = []  # the process group of each `ray start` (its daemons stay in it)

    def up(self) -> None:
        self.start("--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=0",
                   "--include-dashboard=false", f"--temp-dir={self.tmp / 'head'}")
        self.start(f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                   f"--temp-dir={self.tmp / 'worker'}")
        self.worker, self.ip = self.worker_node()

    def start(self, *args: str) -> None:
        proc = subprocess.Popen([str(RAY), "start", *args, "--disable-usage-stats"], env=self.env,
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.groups.append(proc.pid)
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}")

    def worker_node(self) -> tuple[str, str]:
        """The node ID of the worker node (the one with CPUs) and the IP Ray gives the nodes, as a
        driver of the cluster sees them."""
        code = ("import json, ray; ray.init(address='%s', logging_level='ERROR'); "
                "print(json.dumps([[n['NodeID'], n['NodeManagerAddress'], n['Resources'].get('CPU', 0)] "
                "for n in ray.nodes() if n['Alive']]))" % self.address)
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                 timeout=120)
            lines = out.stdout.strip().splitlines()
            nodes = json.loads(lines[-1]) if out.returncode == 0 and lines else []
            workers = [(node, ip) for node, ip, cpus in nodes if cpus == 2]
            if len(nodes) == 2 and len(workers) == 1:
                return workers[0]
            assert time.monotonic() < deadline, f"the cluster has not two nodes: {out.stdout}\n{out.stderr}"
            time.sleep(1)

    def doit_env(self, remote: Path) -> dict[str, str]:
        return {"INGOT_EXECUTOR": "ray", "RAY_ADDRESS": self.address, "INGOT_REMOTE": str(remote),
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.env["RAY_AUTH_TOKEN"]}

    def worker_stores(self) -> list[Path]:
        """The stores of the worker node: one per unpacked copy of a project (Ray's working_dir)."""
        sessions = [s for s in (self.tmp / "worker").glob("session_*") if not s.is_symlink()]  # not session_latest
        return sorted(p for s in sessions for p in s.glob("runtime_resources/working_dir_files/*/build/store"))

    def stop(self) -> None:
        for group in self.groups:
            with_signal(group, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(alive(g) for g in self.groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for group in self.groups:
            with_signal(group, signal.SIGKILL)


def with_signal(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running() -> Iterator[Cluster]:
    """A cluster started for the block and stopped after it, its temporary folder removed."""
    tmp = Path(tempfile.mkdtemp(prefix="ingot-ray-", dir="/tmp"))
    cluster = Cluster(tmp)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
