"""stmedfm.data.download against a local HTTP server (127.0.0.1 only): success, 404, 5xx, cut bodies, bad bytes."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from stmedfm import data
from stmedfm.core import paths, registry
from stmedfm.data.download import download, download_many, load_or_download, source_url
from stmedfm.core.errors import StmedfmError


class Server:
    """A mirror serving ``files`` under ``/mirror/``; ``mode`` selects how it misbehaves; ``requests`` logs paths."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.mode = "ok"
        self.requests: list[str] = []
        self.ranges: list[str | None] = []  #: the Range header of each request
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                server.requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                body = server.files.get(name) if self.path.startswith("/mirror/") else None
                if server.mode == "404" or body is None:
                    self.send_error(404, "Not Found")
                    return
                if server.mode == "500":
                    self.send_error(500, "Internal Server Error")
                    return
                if server.mode == "wrong":
                    body = body[::-1]
                if server.mode == "slow_headers":  # a header line a byte at a time, for ever (issue 29)
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        for _ in range(300):
                            self.wfile.write(b"X")
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:  # the client gave up: expected
                        pass
                    return
                ranged = self.headers.get("Range")
                server.ranges.append(ranged)
                start = int(ranged.split("=")[1].split("-")[0]) if ranged and server.mode == "ok" else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                body = body[start:]
                if server.mode == "hang":  # half the body, then nothing (the client is killed meanwhile)
                    try:
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        time.sleep(30)
                    except OSError:
                        pass
                    return
                if server.mode == "trickle":  # one byte every 0.2 s, for ever (bounded by the test's deadline)
                    try:
                        for i in range(200):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:  # the client gave up: expected
                        pass
                    return
                if server.mode == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def blood_bytes(synthetic_dir) -> bytes:
    return (synthetic_dir / "bloodmnist.npz").read_bytes()


@pytest.fixture
def server(blood_bytes, no_default_data):
    srv = Server({"bloodmnist.npz": blood_bytes})
    yield srv
    srv.close()


def _fast(**kw):
    return dict(backoff=0, progress=False, timeout=10, **kw)


def _assert_empty(directory: Path):
    left = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    assert left == [], f"nothing may be left behind, found {left}"


def test_success_writes_identical_verified_bytes(server, blood_bytes, synthetic_dir, tmp_path):
    md5 = hashlib.md5(blood_bytes).hexdigest()
    path = download("bloodmnist", data_dir=tmp_path, mirror=server.base + "/", **_fast(md5=md5))
    assert path == tmp_path / "bloodmnist.npz"
    assert path.read_bytes() == blood_bytes
    assert server.requests == ["/mirror/bloodmnist.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bloodmnist.npz"], "no .part file may remain"
    # with the synthetic manifest beside it, the downloaded file verifies like the original
    shutil.copy(synthetic_dir / paths.MANIFEST_NAME, tmp_path / paths.MANIFEST_NAME)
    assert data.verify(path, "bloodmnist") == "manifest"
    # present and good: no second request
    assert download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(md5=md5)) == path
    assert download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast()) == path
    assert len(server.requests) == 1


def test_http_404_is_not_retried(server, tmp_path):
    server.mode = "404"
    target = tmp_path / "data"
    with pytest.raises(StmedfmError) as err:
        download("bloodmnist", data_dir=target, mirror=server.base, **_fast(retries=3))
    msg = str(err.value)
    assert "HTTP 404" in msg and f"{server.base}/bloodmnist.npz" in msg
    assert "--mirror" in msg and "copy the official file into" in msg and str(target) in msg
    assert len(server.requests) == 1
    _assert_empty(target)


def test_http_500_is_retried(server, tmp_path):
    server.mode = "500"
    with pytest.raises(StmedfmError, match=r"HTTP 500 .*after 3 attempts"):
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(retries=2))
    assert len(server.requests) == 3
    _assert_empty(tmp_path)


def test_cut_body_is_retried_then_reported(server, blood_bytes, tmp_path):
    server.mode = "cut"
    with pytest.raises(StmedfmError) as err:
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(retries=2))
    total = len(blood_bytes)
    assert f"connection cut after {total // 2} of {total} bytes" in str(err.value)
    assert len(server.requests) == 3, "1 attempt + retries=2"
    _assert_empty(tmp_path)


def test_wrong_content_is_a_checksum_mismatch(server, blood_bytes, tmp_path):
    server.mode = "wrong"
    expected = registry.get("bloodmnist").md5[28]
    with pytest.raises(StmedfmError) as err:
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(retries=3))
    msg = str(err.value)
    assert f"checksum mismatch: expected md5 {expected}, got {hashlib.md5(blood_bytes[::-1]).hexdigest()}" in msg
    assert len(server.requests) == 1, "a checksum mismatch is not retried"
    _assert_empty(tmp_path)


def test_good_bytes_with_official_md5_are_rejected(server, tmp_path):
    """Synthetic bytes are not the official file: without an md5 override the download must fail."""
    with pytest.raises(StmedfmError, match="checksum mismatch"):
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast())
    _assert_empty(tmp_path)


def test_mirror_from_environment(server, blood_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_MIRROR, server.base)
    assert source_url("bloodmnist", 64) == f"{server.base}/bloodmnist_64.npz"
    md5 = hashlib.md5(blood_bytes).hexdigest()
    path = download("bloodmnist", data_dir=tmp_path, **_fast(md5=md5))
    assert path.read_bytes() == blood_bytes
    assert server.requests == ["/mirror/bloodmnist.npz"]


def test_official_url_without_mirror(no_default_data):
    assert source_url("pathmnist") == registry.get("pathmnist").url[28]
    assert source_url("pathmnist", 224).startswith("https://zenodo.org/") and "pathmnist_224.npz" in source_url(
        "pathmnist", 224
    )


def test_download_dir_defaults_to_env_data(server, blood_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_DATA, str(tmp_path / "env"))
    md5 = hashlib.md5(blood_bytes).hexdigest()
    assert download("bloodmnist", mirror=server.base, **_fast(md5=md5)) == tmp_path / "env" / "bloodmnist.npz"


def test_cannot_connect(tmp_path, no_default_data):
    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StmedfmError, match=r"cannot connect .*after 2 attempts.*--mirror"):
        download("bloodmnist", data_dir=tmp_path, mirror=f"http://127.0.0.1:{port}", **_fast(retries=1))
    _assert_empty(tmp_path)


def test_load_task_download_end_to_end(server, blood_bytes, tmp_path, monkeypatch):
    """load_or_download fetches a missing file and verifies it (registry md5 made to match the mirror)."""
    monkeypatch.setenv(paths.ENV_MIRROR, server.base)
    monkeypatch.setitem(registry.get("bloodmnist").md5, 28, hashlib.md5(blood_bytes).hexdigest())
    task = load_or_download("bloodmnist", data_dir=tmp_path)
    assert len(task["train"]) == 48
    assert data.verify(tmp_path / "bloodmnist.npz", "bloodmnist") == "md5"


def test_download_many_reports_every_failure(server, blood_bytes, tmp_path):
    md5 = hashlib.md5(blood_bytes).hexdigest()
    with pytest.raises(StmedfmError) as err:
        download_many(["bloodmnist", "pathmnist"], data_dir=tmp_path, mirror=server.base, **_fast(md5=md5))
    msg = str(err.value)
    assert msg.startswith("1 of 2 downloads failed (the others succeeded: bloodmnist)")
    assert "pathmnist.npz" in msg and "HTTP 404" in msg
    assert download_many(["bloodmnist"], data_dir=tmp_path, mirror=server.base, **_fast(md5=md5)) == {
        "bloodmnist": tmp_path / "bloodmnist.npz"
    }


def test_unresolvable_host_is_not_retried(tmp_path, monkeypatch, no_default_data):
    """No network at all (DNS fails): one attempt, a clear message, nothing left behind."""
    import urllib.error
    import urllib.request

    calls = []

    def no_dns(*args, **kwargs):
        calls.append(1)
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_dns)  # what urlopen and the download's opener call
    with pytest.raises(StmedfmError) as err:
        download("bloodmnist", data_dir=tmp_path, retries=3, backoff=0, progress=False)
    assert len(calls) == 1
    assert "no network: the host name does not resolve" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_trickling_server_is_stopped_by_the_overall_deadline(server, blood_bytes, tmp_path):
    """Issue 18: one byte every 20 s kept a download alive for ever (each read is within the stall timeout)."""
    server.mode = "trickle"
    md5 = hashlib.md5(blood_bytes).hexdigest()
    t0 = time.monotonic()
    with pytest.raises(StmedfmError) as err:
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, deadline=1.5, **_fast(md5=md5))
    assert time.monotonic() - t0 < 6
    assert "the overall time limit (--timeout) ran out after" in str(err.value)
    _assert_empty(tmp_path)


def test_stale_part_files_of_the_flag_are_removed_at_the_next_download(server, blood_bytes, tmp_path):
    """Issue 18: a .part file of a killed download survived for good."""
    import os

    stale = tmp_path / ".bloodmnist.npzab12cd.part"
    live = tmp_path / ".bloodmnist.npzef34gh.part"  # a concurrent download, still writing
    other = tmp_path / ".pathmnist.npzab12cd.part"
    tmp_path.mkdir(exist_ok=True)
    for p in (stale, live, other):
        p.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    md5 = hashlib.md5(blood_bytes).hexdigest()
    download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(md5=md5))
    assert not stale.exists() and other.exists()  # only the flag being downloaded
    assert live.exists(), "a .part file written in the last minute may belong to a running download"


@pytest.mark.parametrize("mirror", ["notaurl", "ftp://host/x", "http://", "/local/dir", "http://[::1",
                                    "http://host:port/x", "http://host/x?a=b", "http://host/x#frag"])
def test_a_malformed_mirror_is_a_clear_error_before_any_request(mirror, tmp_path, no_default_data, capsys):
    from stmedfm.cli import main

    assert main(["download", "bloodmnist", "--data-dir", str(tmp_path), "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stmedfm: error: Mirror '{mirror}' is not a URL") and "Traceback" not in err


def test_a_non_positive_timeout_is_refused(tmp_path, no_default_data, capsys):
    from stmedfm.cli import main

    assert main(["download", "bloodmnist", "--data-dir", str(tmp_path), "--timeout", "-1"]) == 2
    assert "must be positive numbers of seconds" in capsys.readouterr().err


# --- issue 29: one deadline from connect to last byte, resumable parts, the user's umask ------------------------
def test_a_server_sending_its_headers_slowly_is_cut_at_the_deadline(server, blood_bytes, tmp_path, capsys):
    """The issue's reproduction: still running at 60 s with `--timeout 8 --retries 0` (each header byte arrives
    within the read timeout, and the overall deadline was checked only between body reads)."""
    from stmedfm.cli import main

    server.mode = "slow_headers"
    t0 = time.monotonic()
    assert main(["download", "bloodmnist", "--data-dir", str(tmp_path), "--mirror", server.base, "--timeout", "1.5",
                 "--retries", "0"]) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "the overall time limit (--timeout) ran out before the server sent any data" in err, err
    _assert_empty(tmp_path)


@pytest.mark.slow
def test_a_part_left_by_sigkill_is_resumed_with_a_range_and_gets_the_umask(server, blood_bytes, tmp_path):
    """The issue's reproduction: SIGKILL left `.{flag}.npz….part`, neither resumed nor removed for 60 s; the
    downloaded file was mode 0600."""
    import os
    import signal
    import subprocess
    import sys

    md5 = hashlib.md5(blood_bytes).hexdigest()
    server.mode = "hang"
    code = (f"from stmedfm.data.download import download; download('bloodmnist', data_dir={str(tmp_path)!r}, "
            f"mirror={server.base!r}, md5={md5!r}, progress=False, backoff=0, retries=0)")
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(root)})
    part = tmp_path / ".bloodmnist.npz.part"
    t0 = time.monotonic()
    while not (part.exists() and part.stat().st_size >= len(blood_bytes) // 2):
        assert time.monotonic() - t0 < 60 and child.poll() is None, "the child never wrote half the file"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert part.stat().st_size == len(blood_bytes) // 2
    server.mode = "ok"
    old = os.umask(0o022)
    try:
        path = download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(md5=md5))
    finally:
        os.umask(old)
    assert server.ranges[-1] == f"bytes={len(blood_bytes) // 2}-", "the rest was asked for, not the whole file"
    assert path.read_bytes() == blood_bytes and not part.exists()
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_part_is_restarted_when_the_server_ignores_ranges_and_bad_bytes_are_never_kept(server, blood_bytes,
                                                                                       tmp_path):
    md5 = hashlib.md5(blood_bytes).hexdigest()
    part = tmp_path / ".bloodmnist.npz.part"
    part.write_bytes(b"not the start of the file")
    server.mode = "wrong"  # answers 200 with the whole (wrong) body: the part is rewritten, then refused
    with pytest.raises(StmedfmError, match="checksum mismatch"):
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(md5=md5))
    _assert_empty(tmp_path)
    part.write_bytes(blood_bytes[:100][::-1])  # wrong bytes resumed: the MD5 over the whole file refuses them
    server.mode = "ok"
    with pytest.raises(StmedfmError, match="checksum mismatch"):
        download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(md5=md5, retries=0))
    _assert_empty(tmp_path)
    assert download("bloodmnist", data_dir=tmp_path, mirror=server.base, **_fast(md5=md5)).read_bytes() == blood_bytes
