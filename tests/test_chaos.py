"""Issue 18: a client killed mid-study (SIGINT, SIGTERM, SIGKILL) leaves no worker and no temporary file behind,
and the resumed store gives byte-identical tables to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from stmedfm.analysis.tables import write_tables

CLIENT = "import sys; from stmedfm.cli import main; sys.exit(main(sys.argv[1:]))"
TABLES = ("metrics.csv", "per_class.csv", "confusion.csv", "reliability.csv", "pretrain_loss.csv")


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.fixture(scope="module")
def params(make_config, tmp_path_factory) -> Path:
    cfg = make_config(study="chaos", seeds=[0, 1, 2], workers=2, pretrain_tasks=["bloodmnist", "dermamnist"],
                      pretrain_steps=10, downstream_tasks=["bloodmnist", "dermamnist"],
                      strategies=["scratch", "full", "lora", "adapter"], scratch_steps_2d=25, finetune_steps_2d=25,
                      calibration_task="bloodmnist")
    path = tmp_path_factory.mktemp("chaos") / "chaos.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _as_from_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a shell's background job (nohup, some CI runners) starts its children with
    SIGINT ignored, which Python then keeps, and the client would not see the signal this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def study(params: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CLIENT, "study", str(params), "--out", str(out), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_as_from_a_terminal)


def finished(proc: subprocess.Popen) -> None:
    err = proc.communicate(timeout=600)[1].decode()
    assert proc.returncode == 0, err


@pytest.fixture(scope="module")
def reference(params, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "store"
    finished(study(params, out))
    write_tables(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_client_leaves_nothing_and_resumes_to_identical_tables(sig, params, reference, tmp_path):
    out = tmp_path / "store"
    proc = study(params, out)
    deadline = time.monotonic() + 300
    while len(list((out / "runs").glob("*.json"))) < 3:  # mid-study: some runs written, most to come
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) >= 2  # the pool (and spawn's resource tracker)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    t0 = time.monotonic()
    while any(alive(w) for w in workers) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)], f"workers outlived the client by 10 s after {sig.name}"
    if sig != signal.SIGKILL:  # a graceful stop finishes or removes every write it started
        assert proc.returncode == 130
        assert not list(out.rglob(".*.tmp"))
    done = len(list((out / "runs").glob("*.json")))
    assert 3 <= done < 24

    finished(study(params, out))  # resume
    assert not list(out.rglob(".*.tmp")), "no temporary file may remain"
    assert len(list((out / "runs").glob("*.json"))) == 24
    write_tables(out)
    for name in TABLES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    for table in sorted((reference / "tables").iterdir()):
        assert (out / "tables" / table.name).read_bytes() == table.read_bytes(), table.name
    # wall time differs by nature; the commit only if someone commits while the test runs
    runs, ref_runs = (pd.read_csv(d / "runs.csv").drop(columns=["seconds", "git_commit"]) for d in (out, reference))
    pd.testing.assert_frame_equal(runs, ref_runs)
