"""How long a second checkout takes to get the default project from a remote cache, against
building it, and how fast a pull moves bytes against `cp` and `curl` of the same files.

Writes, under a temporary folder: clone A (this checkout's code and specs/), built cold with
`doit` (timed: the rebuild), pushed with `doit push` to a directory remote and to Debian's nginx
with its WebDAV module on loopback (tests/servers.py). Then, for each remote, a fresh clone B at
another path with an empty build/ runs `doit` with INGOT_REMOTE set (timed: pulling instead of
building; it must run no step, and its report.md must be A's byte for byte). Throughput, in the
same run and in turns: `doit pull` into a fresh clone (the command's own start included) against
`cp -r` of the directory remote's entry folders, and against one `curl` process fetching every
file of the entries from nginx (`--parallel`, as many at once as Ingot's 8). Run:
`python bench/remote.py [--repeat 3] [--keep]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import CODE, REPO, copy_code, scratch

sys.path.insert(0, str(REPO / "tests"))

from servers import NGINX_INSTALL, Nginx, nginx_binary  # noqa: E402


def clone(dest: Path) -> Path:
    """A checkout of the default project: this one's code and specs/, no build/."""
    return copy_code(dest, CODE + ("specs", "models", "data"))


def doit(root: Path, *args: str, remote: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGOT_REMOTE") and k != "PYTHONPATH"}
    if remote:
        env["INGOT_REMOTE"] = remote
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if result.returncode:
        sys.exit(f"doit {' '.join(args)} in {root} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return seconds, result


def ran(result: subprocess.CompletedProcess) -> list[str]:
    return [line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")]


def remote_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="turns of each throughput measurement")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if nginx_binary() is None:
        sys.exit(f"bench/remote.py needs nginx with its WebDAV module: {NGINX_INSTALL}")
    with scratch("ingot-remote-", args.keep) as tmp:
        nginx = Nginx(tmp / "nginx", token="unused")
        try:
            measure(tmp, nginx, args.repeat)
        finally:
            nginx.stop()


def measure(tmp: Path, nginx: Nginx, repeat: int) -> None:
    a = clone(tmp / "a")
    build_s, _ = doit(a)
    store = a / "build" / "store"
    entries = [p for p in store.iterdir() if not p.name.startswith(".")]
    size = sum(f.stat().st_size for e in entries for f in e.rglob("*") if f.is_file())
    print(f"clone A: cold `doit` of the default project {build_s:.1f} s; {len(entries)} entries, "
          f"{size / 1e6:.1f} MB")
    remotes = {"dir": str(tmp / "dir"), "http": nginx.url("ingot")}
    for name, url in remotes.items():
        seconds, _ = doit(a, "push", remote=url)
        print(f"push to {name}: {seconds:.2f} s")
    report = (a / "build/gladius/report/report.md").read_bytes()
    fetch = {}
    for name, url in remotes.items():
        b = clone(tmp / f"b-{name}")
        seconds, result = doit(b, remote=url)
        assert ran(result) == [], f"clone B ran {ran(result)}"
        assert (b / "build/gladius/report/report.md").read_bytes() == report
        fetch[name] = seconds
        print(f"clone B from {name}: `doit` {seconds:.2f} s, no step run, report.md identical "
              f"({build_s / seconds:.1f}x faster than building)")
    # throughput, in turns: doit pull against cp / curl of the same files
    files = remote_files(tmp / "dir")
    names = [str(f.relative_to(tmp / "dir")) for f in files]
    moved = sum(f.stat().st_size for f in files)
    times: dict[str, list[float]] = {k: [] for k in ("pull dir", "cp -r", "pull http", "curl", "pull, none")}
    for turn in range(repeat):
        c = clone(tmp / f"c-dir-{turn}")
        times["pull dir"].append(doit(c, "pull", remote=remotes["dir"])[0])
        times["pull, none"].append(doit(c, "pull", remote=remotes["dir"])[0])  # all local: the command's own cost
        t = time.perf_counter()
        subprocess.run(["cp", "-r", str(tmp / "dir"), str(tmp / f"cp-{turn}")], check=True)
        times["cp -r"].append(time.perf_counter() - t)
        c = clone(tmp / f"c-http-{turn}")
        times["pull http"].append(doit(c, "pull", remote=remotes["http"])[0])
        out = tmp / f"curl-{turn}"
        command = ["curl", "-s", "-S", "--no-progress-meter", "-f", "--parallel", "--parallel-max", "8", "--create-dirs"]
        for rel in names:
            command += ["-o", str(out / rel), f"{remotes['http']}/{rel}"]
        t = time.perf_counter()
        subprocess.run(command, check=True)
        times["curl"].append(time.perf_counter() - t)
    print(f"\nthroughput over {len(files)} files, {moved / 1e6:.1f} MB (median of {repeat}):")
    median = {k: statistics.median(v) for k, v in times.items()}
    for k, v in median.items():
        rate = f"{moved / 1e6 / v:7.1f} MB/s" if k != "pull, none" else "(nothing to fetch: compile, start, a stat per file)"
        print(f"  {k:10s} {v:6.2f} s  {rate}")
    fixed = median["pull, none"]
    for k in ("pull dir", "pull http"):
        print(f"  {k} less the command's own cost: {median[k] - fixed:.2f} s, "
              f"{moved / 1e6 / max(median[k] - fixed, 1e-9):.1f} MB/s (checked by xxh3, fsynced, committed)")
    print(f"\ndoit pull / cp -r (directory): {median['pull dir'] / median['cp -r']:.1f}x the time; "
          f"doit pull / curl (http): {median['pull http'] / median['curl']:.1f}x the time")
    print(f"second clone, `doit` from the remote vs building: dir {fetch['dir']:.2f} s, http {fetch['http']:.2f} s, "
          f"build {build_s:.1f} s")


if __name__ == "__main__":
    main()
