"""Issue 30: ``stmedfm study --scheduler ADDRESS`` as a user runs it, against a real ``dask scheduler`` and ``dask
worker`` processes started here on 127.0.0.1: the same numbers as the local run, a lost worker costing only its
tasks, and bad addresses failing fast with one line and no folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest

from stmedfm.data import synthetic
from stmedfm.run.executors import ENV_SCHEDULER, check_scheduler

distributed = pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
BIN = Path(sys.executable).parent
KEYS = ["run_id", "experiment", "variant", "metric"]


def env() -> dict:
    """The package under test for every process (client, scheduler, workers), and no scheduler from outside."""
    out = {k: v for k, v in os.environ.items() if k != ENV_SCHEDULER}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return out


def stmedfm(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stmedfm", *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=timeout)


def metrics(store: Path) -> pd.DataFrame:
    return pd.read_csv(store / "metrics.csv").sort_values(KEYS).reset_index(drop=True)


class Cluster:
    """``dask scheduler`` and ``dask worker --nthreads 1`` processes on 127.0.0.1 (random ports, no dashboard, no
    nanny: a killed worker stays dead)."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder, self.procs, self.workers = folder, [], []
        file = folder / "scheduler.json"
        self.procs.append(self._start("scheduler", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--no-dashboard", "--scheduler-file", file))
        deadline = time.monotonic() + 60
        while not file.is_file() or not file.read_text().strip():
            assert time.monotonic() < deadline and self.procs[0].poll() is None, self.log("scheduler")
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        for i in range(workers):
            self.add_worker()

    def _start(self, name: str, *cmd) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:
            return subprocess.Popen([str(BIN / cmd[0]), *map(str, cmd[1:])], env=env(), stdout=log,
                                    stderr=subprocess.STDOUT)

    def add_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        proc = self._start(f"worker{n}", "dask", "worker", self.address, "--nthreads", "1", "--no-nanny",
                           "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{n}")
        self.workers.append(proc)
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while len(check_scheduler(self.address)["workers"]) < sum(w.poll() is None for w in self.workers):
            assert time.monotonic() < deadline and proc.poll() is None, self.log(f"worker{n}")
            time.sleep(0.2)
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()[-3000:]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic files of the flags params/smoke.yaml reads."""
    d = tmp_path_factory.mktemp("smoke_data")
    synthetic.write_synthetic(d, ["organamnist", "bloodmnist", "retinamnist"],
                              n={"train": 48, "val": 16, "test": 32}, seed=0)
    return d


@pytest.fixture(scope="module")
def local(data, tmp_path_factory) -> Path:
    """The reference: params/smoke.yaml, two seeds, on the local process pool."""
    out = tmp_path_factory.mktemp("local") / "store"
    done = stmedfm("study", SMOKE, "--seeds", 2, "--data-dir", data, "--out", out, "--workers", 2, "-q")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), workers=2)
    yield c
    c.stop()


@pytest.mark.slow
def test_command_line_on_a_cluster_gives_the_local_numbers(cluster, local, data, tmp_path):
    out = tmp_path / "dask"
    done = stmedfm("study", SMOKE, "--seeds", 2, "--data-dir", data, "--out", out, "--scheduler", cluster.address)
    assert done.returncode == 0, done.stderr
    assert f"on Dask cluster at {cluster.address} (2 workers, 2 threads)" in done.stdout + done.stderr
    pd.testing.assert_frame_equal(metrics(out), metrics(local), check_exact=True)
    assert len(metrics(out)) > 300

    # the same through a parameter file's scheduler: key (one seed: its rows are the local run's seed-0 rows)
    params = tmp_path / "smoke_on_dask.yaml"
    params.write_text(SMOKE.read_text() + f"scheduler: {cluster.address}\n")
    keyed = tmp_path / "keyed"
    done = stmedfm("study", params, "--data-dir", data, "--out", keyed)
    assert done.returncode == 0, done.stderr
    assert "Dask cluster" in done.stdout + done.stderr
    ref = metrics(local)
    ref = ref[ref["run_id"].isin(set(pd.read_csv(keyed / "runs.csv")["run_id"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(metrics(keyed), ref, check_exact=True)
    assert (pd.read_csv(keyed / "runs.csv")["seed"] == 0).all()


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_tasks(local, data, tmp_path):
    """SIGKILL the worker that holds a scattered checkpoint, mid-study: the study completes with the numbers of an
    undisturbed run (the task it ran is rerun elsewhere, the checkpoint scattered again from the client)."""
    c = Cluster(tmp_path, workers=2)
    try:
        out = tmp_path / "store"
        proc = subprocess.Popen([sys.executable, "-m", "stmedfm", "study", str(SMOKE), "--seeds", "2", "--data-dir",
                                 str(data), "--out", str(out), "--scheduler", c.address, "-q"], env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        total = pd.read_csv(local / "runs.csv")["run_id"].nunique()
        with distributed.Client(c.address, set_as_default=False) as client:
            pids = client.run(os.getpid)
            deadline = time.monotonic() + 300
            victim = None
            while victim is None:  # early in the study, a worker holding a checkpoint (scattered bytes) runs need
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                holders = [w for w, keys in client.has_what().items() if any(k.startswith("bytes-") for k in keys)]
                done = len(list((out / "runs").glob("*.json")))
                victim = holders[0] if holders and 0 < done < total // 2 else None
                time.sleep(0.02)
        os.kill(pids[victim], signal.SIGKILL)
        err = proc.communicate(timeout=600)[1]
        assert proc.returncode == 0, err  # before the fix: FuturesCancelledError, the study aborted
    finally:
        c.stop()
    # Whether the client must scatter the checkpoint again depends on what the killed worker was doing at that
    # instant (a CI rehearsal caught the race), so the warning is not asserted; completion and the numbers are.
    assert len(list((out / "runs").glob("*.json"))) == total
    pd.testing.assert_frame_equal(metrics(out), metrics(local), check_exact=True)


# --- bad addresses: one line, fast, nothing written -------------------------------------------------------------
class _Http(BaseHTTPRequestHandler):
    def do_GET(self):  # pragma: no cover - Dask never sends a request line
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _garbage_server():
    """A TCP listener on 127.0.0.1 that answers every connection with bytes that are no Dask message."""
    sock = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.sendall(b"\xff" * 64 + b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1], sock.close


def _http_server():
    server = HTTPServer(("127.0.0.1", 0), _Http)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1], lambda: (server.shutdown(), server.server_close())


@pytest.mark.slow
@pytest.mark.parametrize("kind, expected", [
    ("unreachable", "Cannot reach the Dask scheduler at 'tcp://127.0.0.1:1' (Connection refused)"),
    ("malformed", "'notaurl' is not a Dask scheduler address (missing port number"),
    ("garbage", "is not a Dask scheduler ("),
    ("http", "is not a Dask scheduler (did not answer in time)"),
])
def test_a_bad_scheduler_address_is_one_line_within_15_s_and_writes_nothing(kind, expected, data, tmp_path):
    stop = None
    if kind == "unreachable":
        address = "tcp://127.0.0.1:1"
    elif kind == "malformed":
        address = "notaurl"
    else:
        _, port, stop = _garbage_server() if kind == "garbage" else _http_server()
        address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "store"
    try:
        t0 = time.monotonic()
        done = stmedfm("study", SMOKE, "--data-dir", data, "--out", out, "--scheduler", address, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if stop:
            stop()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stmedfm: error: ") and expected in lines[0], done.stderr
    assert elapsed < 15, elapsed
    assert not out.exists()
