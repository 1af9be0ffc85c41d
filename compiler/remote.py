"""A remote cache of store entries, shared by machines: a directory, an HTTP(S) server that
takes plain GET/PUT/HEAD (nginx's WebDAV module, bazel-remote), or an S3 bucket.

Where: `INGOT_REMOTE` in the environment, else `remote` under `[tool.ingot]` in the project's
pyproject.toml; a URL: `/mnt/cache` or `file:///mnt/cache`, `http(s)://host/prefix`, or
`s3://bucket/prefix`. HTTP sends `Authorization: Bearer $INGOT_REMOTE_TOKEN` when that variable
is set; S3 goes through fsspec/s3fs, which take the endpoint and credentials from the usual AWS
variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).

An entry on the remote is `<prefix>/<key>/` with the files of the local entry, `manifest.json`
written last: a reader that finds the manifest finds every file it lists, unless a push was cut
off or the remote damaged since, which the pull's check finds (each file's size and xxh3 against
the manifest; a bad entry is treated as missing, with one warning line). A pull downloads into
the store's work folder of the key (a cut-off pull resumes there where the scheme allows it),
checks every file, and commits the entry as a build does: staged, fsynced, renamed into place.
A push uploads each file whole (a directory remote renames a finished temporary file into place;
an HTTP or S3 PUT is stored whole or not at all), the manifest last.

One small interface (`Remote`), one class per scheme; transfers of an entry's files run in
parallel (`INGOT_REMOTE_JOBS`, default 8) behind one progress bar of bytes and bytes/s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import tomllib
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import entries as manifests
from . import store
from .entries import MANIFEST, EntryError, EntryManifest
from .keys import file_digest

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before an HTTP transfer fails


class RemoteError(Exception):
    """A remote that cannot be reached or refuses a request: the message says which and why."""


# ---------------------------------------------------------------- where the remote is

def configured(root: Path | str) -> Remote | None:
    """The project's remote (`INGOT_REMOTE`, else pyproject.toml's `[tool.ingot] remote`), or None."""
    url = os.environ.get("INGOT_REMOTE") or _from_pyproject(Path(root))
    return open_remote(url) if url else None


def _from_pyproject(root: Path) -> str | None:
    path = root / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RemoteError(f"{path}: cannot be read for `[tool.ingot] remote` ({exc})") from None
    url = data.get("tool", {}).get("ingot", {}).get("remote")
    if url is not None and not isinstance(url, str):
        raise RemoteError(f"{path}: `[tool.ingot] remote` must be a URL string, found {url!r}")
    if url and "://" not in url and not Path(url).is_absolute():  # a folder beside the project, wherever doit runs
        url = str(root.resolve() / url)
    return url


def open_remote(url: str) -> Remote:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):  # file://cache would be the cwd
        raise RemoteError(f"remote {url}: a file URL names an absolute path, file:///path (three slashes)")
    if parsed.scheme in ("", "file"):
        return DirRemote(url, Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url))
    if parsed.scheme in ("http", "https"):
        return HttpRemote(url)
    if parsed.scheme == "s3":
        return S3Remote(url)
    raise RemoteError(f"remote {url}: unknown scheme '{parsed.scheme}'; use a directory (/path or file:///path), "
                      "http(s)://host/prefix or s3://bucket/prefix")


def push_wanted() -> bool:
    """`INGOT_REMOTE_PUSH=1`: every entry a `doit` builds is pushed once committed."""
    return os.environ.get("INGOT_REMOTE_PUSH", "") not in ("", "0", "false", "no")


def jobs() -> int:
    try:
        return max(1, int(os.environ.get("INGOT_REMOTE_JOBS", "8")))
    except ValueError:
        return 8


# ---------------------------------------------------------------- the interface, per scheme

class Remote:
    """Files under one URL prefix, named by relative paths (`KEY/NAME`)."""

    resumable = False  # a download can go on from a byte offset

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.down: str | None = None  # why `doit` stopped reading from it, in this process
        self.no_push: str | None = None  # why `doit` stopped pushing to it, in this process

    def size(self, rel: str) -> int | None:
        """Bytes of the file, or None when there is none."""
        raise NotImplementedError

    def read(self, rel: str) -> bytes | None:
        """The whole (small) file, or None when there is none."""
        raise NotImplementedError

    def download(self, rel: str, dest: Path, offset: int, progress: Progress) -> None:
        """Append the file's bytes from `offset` on to `dest` (which holds the first `offset`)."""
        raise NotImplementedError

    def upload(self, src: Path, rel: str, progress: Progress) -> None:
        """Store `src` as the file, whole or not at all."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.url


class DirRemote(Remote):
    """A directory: a shared disk, or a folder a CI cache saves and restores."""

    resumable = True

    def __init__(self, url: str, path: Path):
        super().__init__(url)
        self.path = path

    @contextlib.contextmanager
    def _os(self, what: str, rel: str):
        """An OS error (permissions, a full or read-only disk, an unmounted share) as a RemoteError
        that says which file and why, as the other schemes say theirs."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise RemoteError(f"remote {self.url}: {what} {rel}: {exc.strerror or exc}") from None

    def size(self, rel: str) -> int | None:
        with self._os("stat", rel):
            try:
                return os.stat(self.path / rel).st_size
            except FileNotFoundError:
                return None

    def read(self, rel: str) -> bytes | None:
        with self._os("read", rel):
            try:
                return (self.path / rel).read_bytes()
            except FileNotFoundError:
                return None

    def download(self, rel: str, dest: Path, offset: int, progress: Progress) -> None:
        with self._os("read", rel):
            try:
                src = open(self.path / rel, "rb")
            except FileNotFoundError:  # as the other schemes say it: the pull calls the entry damaged
                raise RemoteError(f"remote {self.url}: {rel} is gone") from None
            with src, open(dest, "ab") as out:
                src.seek(offset)
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    progress.add(len(chunk))

    def upload(self, src: Path, rel: str, progress: Progress) -> None:
        final = self.path / rel
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with self._os("write", rel):
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                with open(src, "rb") as f, open(tmp, "wb") as out:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        progress.add(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, final)  # whole or not at all
            except FileNotFoundError as exc:  # the remote's folder vanished under the write
                raise RemoteError(f"remote {self.url}: write {rel}: {exc.strerror}") from None
            finally:
                tmp.unlink(missing_ok=True)


class HttpRemote(Remote):
    """Plain GET, PUT and HEAD under a URL prefix (nginx's WebDAV module with
    `create_full_put_path on`, bazel-remote); Range requests resume a download."""

    resumable = True

    def __init__(self, url: str):
        super().__init__(url)
        token = os.environ.get("INGOT_REMOTE_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _request(self, method: str, rel: str, data=None, headers: dict | None = None):
        import urllib.error
        import urllib.request  # here: it imports http.client and ssl, which `doit list` never needs

        request = urllib.request.Request(f"{self.url}/{urllib.parse.quote(rel)}", data=data, method=method,
                                         headers={**self.headers, **(headers or {})})
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RemoteError(f"remote {self.url}: {method} {rel}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"remote {self.url}: {method} {rel}: {reason}") from None

    def size(self, rel: str) -> int | None:
        response = self._request("HEAD", rel)
        if response is None:
            return None
        with response:
            length = response.headers.get("Content-Length")
        return int(length) if length is not None else None

    def read(self, rel: str) -> bytes | None:
        response = self._request("GET", rel)
        if response is None:
            return None
        with response:
            return response.read()

    def download(self, rel: str, dest: Path, offset: int, progress: Progress) -> None:
        response = self._request("GET", rel, headers={"Range": f"bytes={offset}-"} if offset else None)
        if response is None:
            raise RemoteError(f"remote {self.url}: {rel} is gone")
        with response, open(dest, "ab") as out:
            if offset and response.status != 206:  # the server sends it whole: start again
                out.truncate(0)
                progress.add(-offset)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                progress.add(len(chunk))

    def upload(self, src: Path, rel: str, progress: Progress) -> None:
        size = src.stat().st_size
        with open(src, "rb") as f:
            response = self._request("PUT", rel, data=_Reading(f, progress),
                                     headers={"Content-Length": str(size),
                                              "Content-Type": "application/octet-stream"})
        if response is None:
            raise RemoteError(f"remote {self.url}: PUT {rel}: HTTP 404 (does the server take PUT, and create "
                              "folders? nginx: `dav_methods PUT; create_full_put_path on;`)")
        response.close()


class _Reading:
    """A file as a request body that counts what is sent."""

    def __init__(self, f, progress: Progress):
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.progress.add(len(chunk))
        return chunk


class S3Remote(Remote):
    """`s3://bucket/prefix` through fsspec's s3fs."""

    resumable = True

    def __init__(self, url: str):
        super().__init__(url)
        self.base = url[len("s3://"):].rstrip("/")
        self._fs = None
        self._lock = threading.Lock()

    @property
    def fs(self):
        """The s3fs file system, made on first use (importing it takes a moment; `doit list` does not)."""
        with self._lock:
            if self._fs is None:
                try:
                    import s3fs
                except ImportError:
                    raise RemoteError(f"remote {self.url}: s3:// needs s3fs: pip install -r requirements.txt") from None
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                # an endpoint that stops answering fails a request after TIMEOUT s, twice at most, as
                # HTTP's does (botocore's defaults and s3fs's own retries make that ~45 timeouts)
                self._fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {},
                                             skip_instance_cache=True,
                                             config_kwargs={"connect_timeout": TIMEOUT, "read_timeout": TIMEOUT,
                                                            "retries": {"total_max_attempts": 2, "mode": "standard"}})
                self._fs.retries = 1  # s3fs's retry loop around botocore's
            return self._fs

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def _call(self, what: str, rel: str, fn, missing_ok: bool = True):
        try:
            return fn()
        except FileNotFoundError as exc:
            if missing_ok:
                return None
            raise RemoteError(f"remote {self.url}: {what} {rel}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # botocore's and aiohttp's errors: say which request and why
            raise RemoteError(f"remote {self.url}: {what} {rel}: {type(exc).__name__}: {exc}") from None

    def size(self, rel: str) -> int | None:
        return self._call("HEAD", rel, lambda: self.fs.info(self._path(rel), refresh=True)["size"])

    def read(self, rel: str) -> bytes | None:
        return self._call("GET", rel, lambda: self.fs.cat_file(self._path(rel)))

    def download(self, rel: str, dest: Path, offset: int, progress: Progress) -> None:
        def get():
            with self.fs.open(self._path(rel), "rb") as src, open(dest, "ab") as out:
                src.seek(offset)
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    progress.add(len(chunk))
            return True

        if self._call("GET", rel, get) is None:
            raise RemoteError(f"remote {self.url}: {rel} is gone")

    def upload(self, src: Path, rel: str, progress: Progress) -> None:
        def put():  # one PUT, or a multipart upload completed only at the end: whole or not at all
            with open(src, "rb") as f, self.fs.open(self._path(rel), "wb") as out:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
                    progress.add(len(chunk))
            return True

        self._call("PUT", rel, put, missing_ok=False)  # not found on a PUT: no such bucket


# ---------------------------------------------------------------- progress

class Progress:
    """One line of bytes done and bytes/s for a transfer of several files (tqdm, on a terminal),
    shared by the threads that move them."""

    def __init__(self, what: str, total: int):
        from tqdm import tqdm

        self.lock = threading.Lock()
        # on a terminal only: a CI log gets the one line per step that `doit` prints instead
        self.bar = tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                        leave=False, mininterval=0.5, disable=total < CHUNK or not sys.stderr.isatty())

    def add(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- entries

class Damaged(Exception):
    """A remote entry whose manifest does not hold: the message says how."""


def manifest_of(remote: Remote, key: str) -> EntryManifest | None:
    """The remote's manifest for `key`, or None when it has none. One that does not read, is of
    another key, or names files outside the entry's folder (the remote's word does not choose
    paths in the store) is Damaged."""
    data = remote.read(f"{key}/{MANIFEST}")
    if data is None:
        return None
    try:
        manifest = EntryManifest.model_validate_json(data)
    except ValueError as exc:
        raise Damaged(f"its manifest.json does not read ({str(exc).splitlines()[0]})") from None
    if manifest.key != key:
        raise Damaged(f"its manifest.json is of key {manifest.key[:12]}")
    outside = [n for n in manifest.outputs if Path(n).is_absolute() or ".." in Path(n).parts]
    if outside:
        raise Damaged(f"its manifest.json names files outside the entry: {', '.join(outside)}")
    return manifest


def has(remote: Remote, key: str) -> bool:
    """The remote holds a manifest for `key` (its files are checked when pulled)."""
    return remote.size(f"{key}/{MANIFEST}") is not None


def damage(remote: Remote, key: str) -> str | None:
    """What is wrong with the remote's entry for `key` that can be seen without downloading it (a
    manifest that does not hold, a file missing or of another size), or None when nothing is. A
    file of the right size but other bytes is found only by a pull's digest check."""
    try:
        manifest = manifest_of(remote, key)
    except Damaged as exc:
        return str(exc)
    if manifest is None:
        return "its manifest.json is gone"
    names = sorted(manifest.outputs)
    with ThreadPoolExecutor(jobs()) as pool:
        sizes = list(pool.map(lambda n: remote.size(f"{key}/{n}"), names))
    wrong = [f"{n}: {'gone' if got is None else f'{got:,} bytes, the manifest says {manifest.outputs[n].size:,}'}"
             for n, got in zip(names, sizes) if got != manifest.outputs[n].size]
    return "; ".join(wrong) or None


def pull(remote: Remote, root: Path | str, key: str, task: str) -> bool:
    """Fetch the entry for `key` into the store: True when it is complete there afterwards.
    A remote without it gives False; a damaged one (a file missing, short, or of another digest;
    a manifest that does not read) gives False and one warning line. Holds the key's lock, as a
    build does: a build or pull of the same key elsewhere waits, then finds it complete."""
    root = Path(root)
    try:
        manifest = manifest_of(remote, key)
    except Damaged as exc:
        return _bad(remote, key, task, str(exc))
    if manifest is None:
        return False
    with store.lock(root, key, task):
        if store.is_complete(root, key):
            return True
        work = store.work_dir(root, key)
        part = work / "pull"  # survives a cut-off pull: the next one resumes
        part.mkdir(exist_ok=True)
        names = sorted(manifest.outputs)
        progress = Progress(f"pull {task}", sum(o.size for o in manifest.outputs.values()))
        try:
            with ThreadPoolExecutor(jobs()) as pool:
                problems = [p for p in pool.map(lambda n: _fetch(remote, key, n, manifest, part, progress), names) if p]
        finally:
            progress.close()
        if problems:
            return _bad(remote, key, task, "; ".join(problems))
        tmp = store.staging(root, key)
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(part / name, tmp / name)
        store.commit(root, key, tmp, manifest)
        shutil.rmtree(work, ignore_errors=True)
    return True


def _fetch(remote: Remote, key: str, name: str, manifest: EntryManifest, part: Path, progress: Progress) -> str | None:
    """Download one output into `part`, resuming what an earlier pull left; what is wrong, or None."""
    want = manifest.outputs[name]
    dest = part / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    if have > want.size or (have and not remote.resumable):
        dest.unlink()
        have = 0
    progress.add(have)
    try:
        if have < want.size or not dest.exists():
            remote.download(f"{key}/{name}", dest, have, progress)
    except RemoteError as exc:
        return f"{name}: {exc}"
    size = dest.stat().st_size
    if size != want.size:
        dest.unlink()
        return f"{name}: {size:,} bytes, the manifest says {want.size:,}"
    if (found := file_digest(dest)) != want.xxh3_128:
        dest.unlink()  # resumed onto bytes that were not these, or damaged there: start over next time
        return f"{name}: xxh3 {found[:12]}, the manifest says {want.xxh3_128[:12]}"
    return None


def _bad(remote: Remote, key: str, task: str, why: str) -> bool:
    print(f"ingot: {task}: the remote's entry {key[:12]} is damaged ({why}); treated as missing", file=sys.stderr)
    return False


def push(remote: Remote, root: Path | str, key: str, task: str) -> bool:
    """Upload the local entry for `key` unless the remote has it: its files, then its manifest,
    so that no reader sees a manifest before the files it lists. An entry there whose manifest
    does not hold or whose files are missing or of other sizes (`damage`) is uploaded again, with
    one warning line. True when it was uploaded."""
    if has(remote, key):
        if (why := damage(remote, key)) is None:
            return False
        print(f"ingot: {task}: the remote's entry {key[:12]} is damaged ({why}); pushing it again", file=sys.stderr)
    folder = store.entry(root, key)
    try:
        manifest = manifests.load(folder)
    except EntryError as exc:
        raise RemoteError(f"{task}: the local entry {key[:12]} cannot be pushed: {exc}") from None
    names = sorted(manifest.outputs)
    progress = Progress(f"push {task}", sum(o.size for o in manifest.outputs.values()))
    try:
        with ThreadPoolExecutor(jobs()) as pool:
            list(pool.map(lambda n: remote.upload(folder / n, f"{key}/{n}", progress), names))
        remote.upload(manifests.path(folder), f"{key}/{MANIFEST}", progress)
    finally:
        progress.close()
    return True
