"""Run a model's Python answer and a record's unit tests in a confined child process.

Reads and writes only a fresh temporary directory: `solution.py` (the answer's code),
`tests.py` (the tests) and `output.txt` (what the child prints, at most FILE_BYTES), removed
afterwards. `run()` is the parent's side; this same file is the child's program, started as
`python -I sandbox.py ...` (isolated: no PYTHON* variables, no user site, not the script's
folder on sys.path) with that directory as its working directory and an environment of PATH
alone, in a session of its own. Before the answer is compiled, the child confines itself:

* resource limits (`resource.setrlimit`): CPU seconds, address space, size of a file written,
  no core files. The child sets them on itself as its first act rather than the parent in a
  `preexec_fn`, which is unsafe in a process that runs threads (torch's, the LLM client's);
* Landlock (Linux 5.13+, no privileges needed), where the kernel has it: files may be read
  only under Python's own folders and the system's libraries (/usr, /lib, /lib64), written only
  in its directory; TCP connect and bind refused (ABI 4+); signals to, and abstract UNIX
  sockets of, processes outside it refused (ABI 6+);
* an audit hook (`sys.addaudithook`), on every kernel: no new process (fork, exec, spawn,
  subprocess), no socket, no ctypes, no writing, removing or renaming outside its directory,
  nothing opened under /proc, no signal, no change of directory. Audit hooks guard against
  what an answer does by mistake or by habit, not against code written to get around them;
  Landlock and the limits are the boundary.

The child reports through a pipe it shares with the parent: a secret nonce (sent on stdin,
read without buffering, stdin then closed) followed by the outcome, so an answer that prints,
exits early (`sys.exit()`, `os._exit(0)`) or writes to the pipe without the nonce does not pass.
The tests run one top-level statement at a time, so a failure names the statement
(`assert f(2) == 4`) without a traceback. The parent kills the whole process group at the
wall-clock timeout.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

FILE_BYTES = 16 << 20        # largest file the child may write (its output included)
REPORT_BYTES = 1 << 16       # most of the report read back
DETAIL_CHARS = 500           # of a failure's detail kept
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str        # passed, assertion, error, syntax error, timeout, exited
    detail: str | None
    confinement: str   # e.g. "landlock ABI 7, audit hook"; "audit hook" where the kernel has no Landlock


def run(code: str, tests: str, timeout: float, memory_mb: int) -> Outcome:
    """`code`, then `tests`, in a confined child given `timeout` wall seconds (and as many CPU
    seconds, plus one) and `memory_mb` MiB of address space."""
    with tempfile.TemporaryDirectory(prefix="ingot-sandbox-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        (folder / "solution.py").write_text(code, encoding="utf-8")
        (folder / "tests.py").write_text(tests, encoding="utf-8")
        nonce = secrets.token_hex(16)
        report, child_end = os.pipe()
        cpu = math.ceil(timeout) + 1
        argv = [sys.executable, "-I", str(Path(__file__).resolve()), str(child_end), str(cpu),
                str(memory_mb << 20), str(FILE_BYTES), json.dumps(readable())]
        try:
            with open(folder / "output.txt", "wb") as out:
                proc = subprocess.Popen(argv, cwd=folder, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                        stdin=subprocess.PIPE, stdout=out, stderr=out, pass_fds=(child_end,),
                                        start_new_session=True)
        finally:
            os.close(child_end)
        try:
            return _outcome(proc, nonce, report, timeout, cpu)
        finally:
            os.close(report)


def readable() -> list[str]:
    """What the child may read under Landlock: Python's folders (the interpreter, the standard
    library, the virtual environment's packages), the system's libraries, a few devices."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *sysconfig.get_paths().values(), *SYSTEM_READ, *DEVICES}
    return sorted(p for p in paths if os.path.exists(p))


def _outcome(proc: subprocess.Popen, nonce: str, report: int, timeout: float, cpu: int) -> Outcome:
    try:
        proc.stdin.write(nonce.encode())
        proc.stdin.close()
    except BrokenPipeError:  # it died at once; what it left says why
        pass
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(proc.pid)  # whatever it started goes with it
    proc.wait()
    data = _read_all(report)
    if timed_out:
        return Outcome(False, "timeout", f"timeout: still running after {timeout:g} s, killed", "")
    prefix = nonce.encode()
    if data.startswith(prefix):
        result = json.loads(data[len(prefix):].decode("utf-8", "replace"))
        return Outcome(result["reason"] == "passed", result["reason"], result["detail"], result["confinement"])
    code = proc.returncode
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return Outcome(False, "timeout", f"timeout: used its {cpu} s of CPU time, killed", "")
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return Outcome(False, "exited", f"exited before the tests finished ({how})", "")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_all(fd: int) -> bytes:
    """What the pipe holds, without waiting on a writer that escaped (none should)."""
    out = b""
    while len(out) < REPORT_BYTES and select.select([fd], [], [], 0.1)[0]:
        chunk = os.read(fd, REPORT_BYTES)
        if not chunk:
            break
        out += chunk
    return out


# ---------------------------------------------------------------- the child


def child() -> None:
    report, cpu, memory, file_bytes = (int(a) for a in sys.argv[1:5])
    readable_paths = json.loads(sys.argv[5])
    nonce = os.read(0, 64)  # unbuffered: no copy left in a reader the answer could reach
    os.close(0)
    root = os.getcwd()
    code = Path("solution.py").read_text(encoding="utf-8")
    tests = Path("tests.py").read_text(encoding="utf-8")
    _limits(cpu, memory, file_bytes)
    abi = _landlock(root, readable_paths)
    confinement = f"landlock ABI {abi}, audit hook" if abi else "audit hook"
    sys.dont_write_bytecode = True
    write, dumps, exit_now = os.write, json.dumps, os._exit  # the answer may replace the modules' functions
    _audit_hook(root)
    reason, detail = _run_tests(code, tests)
    write(report, nonce + dumps({"reason": reason, "detail": detail, "confinement": confinement}).encode())
    exit_now(0)  # now: threads the answer started end here


def _limits(cpu: int, memory: int, file_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_tests(code: str, tests: str) -> tuple[str, str | None]:
    import ast

    try:
        solution = compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        return "syntax error", _clip(f"syntax error in the answer: {_syntax(exc)}")
    try:
        suite = ast.parse(tests, "tests.py")
    except (SyntaxError, ValueError) as exc:
        return "syntax error", _clip(f"syntax error in the record's tests: {_syntax(exc)}")
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(solution, namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the answer's, not ours
        return "error", _clip(f"error in the answer: {_exception(exc)}")
    for statement in suite.body:
        text = ast.get_source_segment(tests, statement) or ast.unparse(statement)
        try:
            exec(compile(ast.Module([statement], []), "tests.py", "exec"), namespace)
        except AssertionError as exc:
            said = f" ({exc})" if str(exc) else ""
            return "assertion", _clip(f"assertion failed: {text}{said}")
        except BaseException as exc:
            return "error", _clip(f"error: {_exception(exc)} (in: {text})")
    return "passed", None


def _syntax(exc: Exception) -> str:
    if isinstance(exc, SyntaxError):
        return f"line {exc.lineno}: {exc.msg}"
    return str(exc)


def _exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _clip(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "..."


# Landlock: linux/landlock.h
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # what a rule on a file may grant
_PR_SET_NO_NEW_PRIVS = 38


def _landlock(root: str, readable_paths: list[str]) -> int:
    """Confine this process (and what it would start) with Landlock; its ABI version, or 0 where
    the kernel or the machine has none."""
    import ctypes
    import platform

    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return 0
    create, add_rule, restrict = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(create), None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # ..._VERSION
    if abi < 1:
        return 0
    fs = _FS_BY_ABI.get(abi, (1 << 16) - 1)
    attr = (ctypes.c_uint64 * 3)(fs, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(ctypes.c_long(create), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    for path, rights in [(p, _READ) for p in readable_paths] + [(root, fs)]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        allowed = rights & fs if os.path.isdir(path) else rights & fs & _FILE_RIGHTS
        rule = PathBeneath(allowed, fd)
        libc.syscall(ctypes.c_long(add_rule), ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                     ctypes.c_uint32(0))
        os.close(fd)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.syscall(ctypes.c_long(restrict), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
        raise SystemExit(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    os.close(ruleset)
    return abi


_BLOCKED = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
            "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.chdir", "os.fchdir", "socket.__new__",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"}
_ONE_PATH = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
             "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "os.mkfifo", "os.mknod"}
_TWO_PATHS = {"os.rename", "os.link", "os.symlink"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit_hook(root: str) -> None:
    """Refuse, from now on, what the answer must not do (see the module's docstring)."""
    realpath, sep = os.path.realpath, os.sep
    inside_root = root.rstrip(sep) + sep

    def inside(path) -> bool:
        if isinstance(path, int):  # a descriptor it already holds
            return True
        resolved = realpath(os.fsdecode(path))
        return resolved == root or resolved.startswith(inside_root)

    def refuse(event: str, what: str = "") -> None:
        raise PermissionError(f"sandbox: {event}{what} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event in _BLOCKED:
            refuse(event)
        elif event == "import" and args[0] in ("ctypes", "_ctypes"):
            refuse("importing ctypes")
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes)) and realpath(os.fsdecode(path)).startswith("/proc"):
                refuse(event, f" of {os.fsdecode(path)}")
            writes = any(c in (mode or "") for c in "wax+") or (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and not inside(path):
                refuse("writing", f" to {os.fsdecode(path)}")
        elif event in _ONE_PATH and args and not inside(args[0]):
            refuse(event, f" of {os.fsdecode(args[0])}")
        elif event in _TWO_PATHS and not (inside(args[0]) and inside(args[1])):
            refuse(event, f" of {os.fsdecode(args[0])}")

    sys.addaudithook(hook)


if __name__ == "__main__":
    child()
