"""How a study's wall time scales with workers: measured per-task seconds, projected by replaying the scheduler.

A study is a graph of tasks (:mod:`stmedfm.run.executors`): pretraining jobs, and runs of which most wait for one
checkpoint. Its wall time on N single-thread workers is at least the total work over N and at least its critical
path (a pretraining job, then the longest run of its checkpoint), plus what the client does alone (start-up,
checks, the tables at the end). :func:`simulate` replays :func:`stmedfm.run.executors.run_tasks`'s policy (pretraining
first, then the longest ready task, each worker taking the next task as it frees up) on the seconds a store
measured: every run's ``seconds`` in ``runs.csv`` and every pretraining job's in its checkpoint. With the client's
serial seconds fitted on a one-worker measure (:func:`serial_seconds`), :func:`projection` gives the wall time at
any N, and :func:`saturation` the N past which more workers stop paying.

:func:`measure` times a study on a Dask ``LocalCluster`` of 1 and 2 workers, :func:`warm_vs_cold` the variants of
a variant study on one warm local pool against a pool per variant (``stmedfm bench --scaling`` runs both);
``stmedfm bench --project STORE`` prints the projection of any finished study.

Hand-written (an event loop over a heap) because it must follow this package's own scheduling policy, which no
scheduling library models; it ignores data transfer (a checkpoint is 0.6 MB) and per-task round trips beyond what
the fitted serial seconds absorb.
"""

from __future__ import annotations

import heapq
import io
import itertools
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from stmedfm.core.errors import StmedfmError
from stmedfm.run.executors import reusable
from stmedfm.run.study import PRETRAIN_PRIORITY, run_study

#: Worker counts of a projection table.
WORKERS = (1, 2, 4, 8, 16, 32, 64, 128)


def study_tasks(store: str | os.PathLike, pretrain_seconds: float | None = None) -> list[tuple]:
    """The tasks of a finished study as (key, seconds, priority, after): each unique run of ``runs.csv`` with its
    measured seconds, after its pretraining job (seed x pretraining tasks), whose seconds its checkpoint records;
    ``pretrain_seconds`` stands in for jobs whose checkpoint is absent or older than that record."""
    root = Path(store)
    try:
        runs = pd.read_csv(root / "runs.csv").drop_duplicates("run_id")
    except (OSError, ValueError) as exc:
        raise StmedfmError(f"'{root}' has no readable runs.csv ({type(exc).__name__}); run the study first.") from None
    recorded: dict[str, float] = {}
    for path in sorted((root / "checkpoints").glob("*.pt")):
        made = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True).get("provenance") or {}
        if "seconds" in made:
            recorded[f"{made['seed']}/{made['pretrain']}"] = float(made["seconds"])
    runs["pretrain"] = runs["pretrain"].fillna("").astype(str)
    needed = dict.fromkeys(f"{r.seed}/{r.pretrain}" for r in runs.itertuples() if r.pretrain)
    missing = [job for job in needed if job not in recorded]
    if missing and pretrain_seconds is None:
        raise StmedfmError(f"'{root}' has no pretraining seconds for {len(missing)} job(s), e.g. {missing[0]} (their "
                           f"checkpoints are absent or older than that record): give an estimate (--pretrain-seconds).")
    tasks = [(job, recorded.get(job, pretrain_seconds), PRETRAIN_PRIORITY - i, ()) for i, job in enumerate(needed)]
    for r in runs.itertuples():
        # priority: the measured seconds, standing in for estimated_cost (both start the longest run first)
        tasks.append((r.run_id, float(r.seconds), float(r.seconds), (f"{r.seed}/{r.pretrain}",) if r.pretrain else ()))
    return tasks


def simulate(tasks, workers: int) -> float:
    """Seconds until every task is done on ``workers`` workers under run_tasks's policy: a task is ready when
    everything in its ``after`` is done; a free worker takes the ready task of highest priority."""
    seconds = {k: s for k, s, _, _ in tasks}
    priority = {k: p for k, _, p, _ in tasks}
    waiting = {k: set(after) for k, _, _, after in tasks}
    dependents: dict[str, list[str]] = {}
    for key, _, _, after in tasks:
        for dep in after:
            dependents.setdefault(dep, []).append(key)
    order = itertools.count()
    ready = [(-priority[k], next(order), k) for k, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, max(1, int(workers))
    while ready or running:
        while free and ready:
            key = heapq.heappop(ready)[2]
            heapq.heappush(running, (now + seconds[key], key))
            free -= 1
        now, key = heapq.heappop(running)
        free += 1
        for dep in dependents.get(key, ()):
            waiting[dep].discard(key)
            if not waiting[dep]:
                heapq.heappush(ready, (-priority[dep], next(order), dep))
    return now


def serial_seconds(store: str | os.PathLike, wall_one_worker: float,
                   pretrain_seconds: float | None = None) -> float:
    """The client's seconds outside any task (start-up, checks, round trips, tables): a one-worker wall time less
    the work of its tasks. Taken as serial, which makes projections at many workers pessimistic, not optimistic."""
    return max(0.0, wall_one_worker - sum(s for _, s, _, _ in study_tasks(store, pretrain_seconds)))


def projection(store: str | os.PathLike, serial: float = 0.0, workers=WORKERS,
               pretrain_seconds: float | None = None) -> pd.DataFrame:
    """Projected wall time of the study of ``store`` at each worker count: serial seconds plus the replayed
    schedule; with the speed-up over one worker, the efficiency (speed-up / N) and the two bounds (work / N and
    the critical path)."""
    tasks = study_tasks(store, pretrain_seconds)
    work = sum(s for _, s, _, _ in tasks)
    path = simulate(tasks, len(tasks))  # as many workers as tasks: only the dependencies wait
    one = serial + simulate(tasks, 1)
    rows = []
    for n in workers:
        wall = serial + simulate(tasks, n)
        rows.append({"workers": n, "projected_s": wall, "speedup": one / wall, "efficiency": one / wall / n,
                     "work_bound_s": serial + work / n, "critical_path_s": serial + path})
    return pd.DataFrame(rows)


def saturation(store: str | os.PathLike, serial: float = 0.0, within: float = 0.05,
               pretrain_seconds: float | None = None) -> int:
    """The smallest worker count whose projected wall time is within ``within`` (5 %) of the critical-path limit:
    past it, more workers stop paying."""
    tasks = study_tasks(store, pretrain_seconds)
    target = (1 + within) * (serial + simulate(tasks, len(tasks)))
    n = 1
    while serial + simulate(tasks, n) > target:
        n += 1
    return n


def _warm() -> None:
    """On each worker before the clock starts: torch and the package imported (unpickling this function did)."""


def measure(cfg, workers=(1, 2), rounds: int = 1, folder: str | os.PathLike = ".", log=print) -> dict[int, list]:
    """Wall seconds of ``cfg``'s study on a Dask ``LocalCluster`` (127.0.0.1, one thread per worker, workers warm)
    at each worker count, interleaved (1, 2, then 2, 1, ...) so drifting load hits each count alike; returns
    {workers: [(seconds, store folder), ...]}. Each measure computes the whole study into a new folder."""
    import distributed  # optional (stmedfm[dask])

    got: dict[int, list] = {n: [] for n in workers}
    for r in range(rounds):
        for n in workers if r % 2 == 0 else tuple(reversed(workers)):
            with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                          dashboard_address=None) as cluster, \
                    distributed.Client(cluster, set_as_default=False) as client:
                client.run(_warm)
                out = Path(folder) / f"workers{n}-round{r}"
                t0 = time.perf_counter()
                run_study(cfg, out=out, progress=False, scheduler=client)
                got[n].append((time.perf_counter() - t0, out))
            log(f"  {n} Dask worker{'s' if n > 1 else ''}, round {r + 1}: {got[n][-1][0]:.1f} s")
    return got


def warm_vs_cold(study, workers: int = 2, rounds: int = 2, log=print) -> dict[str, list[float]]:
    """Wall seconds of computing every variant of a variant study (:mod:`stmedfm.analysis.variants`), each time into a new
    folder, on ``workers`` local processes: ``warm``, one pool kept across the variants (what ``runvariants.run``
    does), or ``cold``, a pool spawned per variant (each worker starting Python, importing torch and loading its
    files again); interleaved (warm, cold, then cold, warm, ...) so drifting load hits both alike."""

    got: dict[str, list[float]] = {"warm": [], "cold": []}
    for r in range(rounds):
        for kind in ("warm", "cold") if r % 2 == 0 else ("cold", "warm"):
            with tempfile.TemporaryDirectory(prefix="stmedfm-bench-") as folder:
                t0 = time.perf_counter()
                with reusable(workers if kind == "warm" else 1) as shared:
                    for variant, cfg in study.configs.items():
                        run_study(cfg, out=Path(folder) / variant, progress=False, workers=workers, scheduler=shared)
                got[kind].append(time.perf_counter() - t0)
            log(f"  {study.name}, {kind} pool, round {r + 1}: {got[kind][-1]:.1f} s")
    return got
