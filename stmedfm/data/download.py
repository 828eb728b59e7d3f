"""Fetch official MedMNIST files, safely: nothing half-written ever sits where a data file is expected.

A download streams into a hidden ``.{file}.part`` beside the target, is checked against the official MD5 (or an
explicit ``md5``), and only then is renamed into place atomically. Connection errors, 5xx answers and cut bodies
are retried with exponential backoff; 4xx answers and checksum mismatches are not (retrying cannot fix them).
Nothing here runs on import: files are fetched only when :func:`download` is called.

* One deadline (``--timeout``) bounds a download from connect to last byte, headers included: a watchdog shuts the
  connection's socket when it passes, so a server that sends its headers (or its body) a byte at a time is cut.
* The ``.part`` file has a fixed name and is held with an advisory lock (``fcntl``, POSIX) while a download writes
  it, so a second download of the same file waits instead of racing. A ``.part`` left by a killed download (SIGKILL
  frees its lock) is resumed by the next call with an HTTP ``Range`` request, and the MD5 over the whole file is
  checked at the end as always; a server that ignores ranges simply sends the whole file again.
* Files get the permissions of an ordinary ``open()`` (the user's umask, 0644 typically), not ``mkstemp``'s 0600.

Hand-written on ``urllib`` (no requests/httpx dependency) because the deadline needs the connection's socket, which
urllib's handler classes expose by subclassing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from stmedfm import __version__, data
from stmedfm.core import paths, registry
from stmedfm.core.errors import StmedfmError

CHUNK = 1 << 20  # 1 MiB
TIMEOUT = 60.0  # seconds without data before a connection counts as failed
#: Overall seconds one file may take, retries included. Decision: 1 hour covers the largest MedMNIST+ file (about
#: 12 GB at 224 px) at 4 MB/s, and stops a server that trickles a byte now and then (which no per-read timeout does).
DEADLINE = 3600.0

__all__ = ["download", "download_many", "source_url"]


class _Failure(Exception):
    """One failed attempt: ``what`` is said to the user, ``retry`` says whether trying again can help."""

    def __init__(self, what: str, retry: bool):
        super().__init__(what)
        self.what = what
        self.retry = retry


def check_mirror(mirror: str) -> str:
    """A mirror is an http(s) or file URL of a folder; anything else is a clear error, before any request."""
    try:
        parsed = urllib.parse.urlsplit(mirror)
        parsed.port  # noqa: B018  (raises ValueError for a malformed port)
    except ValueError:
        parsed = None
    if (parsed is None or parsed.scheme not in ("http", "https", "file") or parsed.query or parsed.fragment
            or (parsed.scheme != "file" and not parsed.netloc)):
        raise StmedfmError(f"Mirror '{mirror}' is not a URL: give the address of a folder holding the files, e.g. "
                           f"https://example.org/medmnist (from --mirror or ${paths.ENV_MIRROR}).")
    return mirror


def source_url(flag: str, size: int = 28, mirror: str | None = None) -> str:
    """The official URL, or ``{mirror}/{filename}`` when a mirror (argument, else ``$STMEDFM_MIRROR``) is set."""
    info = registry.get(flag)
    mirror = mirror or os.environ.get(paths.ENV_MIRROR) or None
    if mirror:
        return f"{check_mirror(mirror).rstrip('/')}/{info.filename(size)}"
    if size not in info.url:
        raise StmedfmError(f"No official URL is known for {info.flag} at {size} px; pass --mirror URL.")
    return info.url[size]


class _Watchdog:
    """Shuts every socket a request opens when the deadline (a ``time.monotonic()`` instant) passes, so no phase of
    a download — connect, headers, body — outlives it."""

    def __init__(self, deadline: float):
        self.expired = False
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(max(0.0, min(deadline - time.monotonic(), 1e6)), self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def connection(self, base: type) -> type:
        watchdog = self

        class Watched(base):
            def connect(self):
                super().connect()
                watchdog._socks.append(self.sock)
                if watchdog.expired:
                    watchdog._expire()

        return Watched

    def opener(self) -> urllib.request.OpenerDirector:
        watchdog = self

        class HTTP(urllib.request.HTTPHandler):
            def do_open(self, http_class, req, **kw):
                return super().do_open(watchdog.connection(http_class), req, **kw)

        class HTTPS(urllib.request.HTTPSHandler):
            def do_open(self, http_class, req, **kw):
                return super().do_open(watchdog.connection(http_class), req, **kw)

        return urllib.request.build_opener(HTTP, HTTPS)


def _fetch(url: str, part: Path, expected_md5: str, timeout: float, progress: bool, label: str,
           deadline: float = float("inf")) -> None:
    """One attempt: stream ``url`` into ``part`` (resuming what it holds with a ``Range`` request) and check length
    and MD5 of the whole file; raises :class:`_Failure`. ``deadline`` is a ``time.monotonic()`` instant enforced by
    a :class:`_Watchdog` from connect to last byte."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"stmedfm/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    received, total = 0, None
    md5 = hashlib.md5()
    watchdog = _Watchdog(deadline)
    try:
        left = deadline - time.monotonic()
        with watchdog, watchdog.opener().open(request, timeout=max(0.1, min(timeout, left))) as resp:
            resumed = bool(have) and getattr(resp, "status", None) == 206
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if resumed:  # the MD5 covers the whole file: what the part holds, then the rest
                with open(part, "rb") as old:
                    for chunk in iter(lambda: old.read(CHUNK), b""):
                        md5.update(chunk)
                received, total = have, None if total is None else have + total
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, initial=received, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                         disable=not progress, leave=False) as bar:
                while True:
                    if time.monotonic() > deadline:
                        raise _Failure(_late(received), retry=False)
                    try:
                        chunk = resp.read1(CHUNK)
                    except http.client.IncompleteRead as exc:
                        chunk = exc.partial
                        if chunk:
                            out.write(chunk)
                            md5.update(chunk)
                            received += len(chunk)
                        raise _Failure(_cut(received, total), retry=True) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except _Failure as exc:
        if watchdog.expired:
            raise _Failure(_late(received), retry=False) from exc
        raise
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError holds the open response
        if exc.code == 416:  # the range asked for does not exist: start again from the first byte
            part.unlink(missing_ok=True)
            raise _Failure("HTTP 416 for the rest of a partial file", retry=True) from exc
        raise _Failure(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500) from exc
    except urllib.error.URLError as exc:
        if watchdog.expired:
            raise _Failure(_late(0), retry=False) from exc
        # A host name that does not resolve means no network (or a wrong mirror): retrying cannot help.
        offline = isinstance(exc.reason, socket.gaierror)
        what = "no network: the host name does not resolve" if offline else "cannot connect"
        raise _Failure(f"{what} ({exc.reason})", retry=not offline) from exc
    except (http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
        if watchdog.expired:
            raise _Failure(_late(received), retry=False) from exc
        if not isinstance(exc, (http.client.HTTPException, ConnectionError, TimeoutError)):
            raise _Failure(f"cannot write {part} ({exc.strerror or exc})", retry=False) from exc  # local
        if received or total:
            raise _Failure(_cut(received, total) + f" ({type(exc).__name__})", retry=True) from exc
        raise _Failure(f"cannot connect ({type(exc).__name__}: {exc})", retry=True) from exc
    if watchdog.expired:
        raise _Failure(_late(received), retry=False)
    if total is not None and received < total:
        raise _Failure(_cut(received, total), retry=True)
    got = md5.hexdigest()
    if got != expected_md5:
        part.unlink(missing_ok=True)  # resuming bad bytes cannot help
        raise _Failure(f"checksum mismatch: expected md5 {expected_md5}, got {got} ({received} bytes)", retry=False)


@contextlib.contextmanager
def _held(part: Path, until: float):
    """Hold ``part`` for this download (an advisory lock, released by the OS when the process dies, so a killed
    download's part is free to resume); wait for a concurrent download of the same file until ``until``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    while True:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            if time.monotonic() > until:
                raise _Failure(f"another download of {part.name[1:-5]} is still running", retry=False) from None
            time.sleep(0.2)
            continue
        try:
            if os.path.exists(part) and os.stat(part).st_ino == os.fstat(fd).st_ino:
                break  # the lock is on the part file, not on one just renamed into place by the other download
        except OSError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _late(received: int) -> str:
    return ("the overall time limit (--timeout) ran out " +
            (f"after {received} bytes" if received else "before the server sent any data (headers included)"))


def _cut(received: int, total: int | None) -> str:
    return f"connection cut after {received} of {total if total is not None else 'an unknown number of'} bytes"


def _present(target: Path, flag: str, size: int, md5: str | None) -> bool:
    """Whether ``target`` already holds a good file (official/manifest checksum, or the explicit ``md5``)."""
    if not target.is_file():
        return False
    try:
        if md5 is None:
            data.verify(target, flag, size)
            return True
        return data.file_digests(target, ("md5",))["md5"] == md5
    except (StmedfmError, OSError):
        return False


def download(
    flag: str,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
    md5: str | None = None,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
) -> Path:
    """Download one flag's file into :func:`stmedfm.core.paths.download_dir` and return its path.

    Returns at once when a verified file is already there. ``deadline`` bounds the whole download (attempts and
    waits) in seconds; ``timeout`` bounds one wait for data. ``.part`` files of this flag left by a killed
    download are removed first. ``retries`` is the number of *further* attempts after
    the first (so at most ``1 + retries`` requests), waiting ``backoff * 2**i`` seconds before retry ``i``. ``md5``
    overrides the official checksum (for mirrors serving other content, and tests). A pre-existing file that fails
    verification is replaced only by a good download; on any failure no new file is left behind.
    """
    info = registry.get(flag)
    name = info.filename(size)
    if not deadline > 0 or not timeout > 0:
        raise StmedfmError(f"The download time limits must be positive numbers of seconds, got --timeout {deadline:g}"
                           f" and a read timeout of {timeout:g}.")
    url = source_url(info.flag, size, mirror)
    expected = md5 or info.md5.get(size)
    if not expected:
        raise StmedfmError(f"No official MD5 is known for {name}; pass md5=... to check the download.")
    target_dir = paths.download_dir(data_dir)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StmedfmError(
            f"Cannot create the download directory {target_dir} ({exc.strerror or exc}). Pass a writable directory "
            f"(--data-dir) or set ${paths.ENV_DATA}."
        ) from exc
    target = target_dir / name
    if _present(target, info.flag, size, md5):
        return target
    part = target_dir / f".{name}.part"
    now = time.time()
    for stale in target_dir.glob(f".{name}*.part"):  # parts of earlier versions (random names): a live one writes
        try:                                           # at least every TIMEOUT seconds, so an older file is no one's
            if stale != part and now - stale.stat().st_mtime > max(TIMEOUT, timeout):
                stale.unlink()
        except FileNotFoundError:
            pass

    attempts = 1 + max(0, int(retries))
    failure: _Failure | None = None
    until = time.monotonic() + deadline
    attempt = 0
    try:
        with _held(part, until):
            if _present(target, info.flag, size, md5):  # a concurrent download of the same file finished it
                part.unlink(missing_ok=True)
                return target
            for attempt in range(attempts):
                if attempt and backoff > 0:
                    time.sleep(min(backoff * 2 ** (attempt - 1), max(0.0, until - time.monotonic())))
                if time.monotonic() > until:
                    failure = _Failure(f"the overall time limit of {deadline:g} s ran out", retry=False)
                    break
                try:
                    _fetch(url, part, expected, timeout, progress, name, until)  # resumes what the part holds
                    os.replace(part, target)
                    return target
                except _Failure as exc:
                    failure = exc
                    if not exc.retry:
                        break
                except OSError as exc:
                    failure = _Failure(f"cannot write into {target_dir} ({exc.strerror or exc})", retry=False)
                    break
            part.unlink(missing_ok=True)  # a failure the caller is told of leaves nothing behind
    except _Failure as exc:  # waiting for a concurrent download of the same file ran out of time
        failure = exc
    except OSError as exc:
        failure = _Failure(f"cannot write into {target_dir} ({exc.strerror or exc})", retry=False)
    assert failure is not None
    tried = f" after {attempt + 1} attempt{'s' if attempt else ''}"
    raise StmedfmError(
        f"Could not download {info.flag} ({name}) from {url}: {failure.what}{tried}. Nothing was written to "
        f"{target}. Try again later, pass --mirror URL (or set ${paths.ENV_MIRROR}) to a server holding {name}, or, "
        f"on a machine without internet, copy the official file into {target_dir} (or point ${paths.ENV_DATA} at a "
        f"directory holding it)."
    )


def download_many(flags, size: int = 28, **kwargs) -> dict[str, Path]:
    """Download several flags (same options as :func:`download`); tries all, then reports every failure at once."""
    out: dict[str, Path] = {}
    errors: list[str] = []
    for flag in flags:
        try:
            out[registry.get(flag).flag] = download(flag, size=size, **kwargs)
        except StmedfmError as exc:
            errors.append(str(exc))
    if errors:
        raise StmedfmError(
            f"{len(errors)} of {len(errors) + len(out)} downloads failed"
            f"{' (the others succeeded: ' + ', '.join(out) + ')' if out else ''}. " + " ".join(errors)
        )
    return out


def load_or_download(flag: str, size: int = 28, data_dir: str | os.PathLike | None = None, **kwargs) -> data.TaskData:
    """:func:`stmedfm.data.load_task`, downloading the file first (options of :func:`download`) when no data
    directory holds it. Here, not in :mod:`stmedfm.data`: loading sits below downloading, which verifies with it."""
    try:
        data.locate(flag, size, data_dir)
    except StmedfmError:
        download(flag, size=size, data_dir=data_dir, **kwargs)
    return data.load_task(flag, size, data_dir)
