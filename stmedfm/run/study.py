"""A study: execute every planned run that its result store lacks, then rebuild the store's tidy tables.

What runs is decided by :mod:`stmedfm.run.planning` (the plan and every run's identity), where results are kept by
:mod:`stmedfm.run.store`; this module only executes. Runs fan out over worker processes (``workers``, default = CPU
cores), each with one torch thread; a single worker runs in-process, also with one thread, so the same seed gives
the same numbers whatever the count (or on a Dask cluster: :mod:`stmedfm.run.executors`).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from stmedfm import data as D
from stmedfm.core import paths, provenance, registry, selection
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.run.executors import InlineExecutor, Task, executor_for, run_tasks
from stmedfm.core.io import atomic_write_bytes, atomic_write_text
from stmedfm.run.planning import StudyData, job_id, preflight, unique_runs
from stmedfm.core.records import PlannedRun, PretrainJob, RunResult, RunSpec, plan, pretrain_jobs
from stmedfm.model.precision import identity_name, resolve
from stmedfm.core.results import MARKER
from stmedfm.run.store import ResultStore
from stmedfm.run.train import pretrain, run_downstream


# --- worker side --------------------------------------------------------------------------------------------------
# Tasks are pure functions of picklable arguments and return everything the client stores: workers never touch
# the result store, so they may run in this process, in a local pool or on the machines of a Dask cluster.
# Checkpoints travel as bytes (the serialised state dict): returned by the pretraining task, written to
# checkpoints/ by the client, and handed to the runs that need them through Executor.share.
def _worker_data(cfg: StudyConfig, tasks, expected: Mapping[str, str]) -> str:
    """Check that this worker reads the very files the client planned with (a Dask worker finds its own copies);
    return them as provenance text."""
    found = {t: D.identify(t, cfg.image_size, cfg.data_dir) for t in tasks}
    other = [t for t, i in found.items() if i.digest != expected[t]]
    if other:
        raise StmedfmError(
            f"A worker reads other files than the client planned with: {', '.join(str(found[t]) for t in other)} "
            f"(expected {', '.join(f'{t}={expected[t]}' for t in other)}). Give every worker the same files.")
    return "; ".join(str(i) for i in found.values())


def _pretrain_job(cfg_dict: dict, job: PretrainJob, jid: str, expected: dict[str, str]) -> tuple[bytes, str, float]:
    """Pretrain; return (checkpoint as torch.save bytes, loss table as CSV text, seconds). The checkpoint names its
    job and where and how fast it was made: {'job_id', 'state_dict', 'provenance'}."""
    t0 = time.perf_counter()
    cfg = StudyConfig.from_dict(cfg_dict)
    files = _worker_data(cfg, job.tasks, expected)
    state, losses = pretrain(cfg, list(job.tasks), job.seed)
    buf = io.BytesIO()
    made = {"machine": provenance.machine(next(iter(state.values())).device), "torch": str(torch.__version__),
            "data": files, "seed": job.seed, "pretrain": "+".join(job.tasks),
            "seconds": round(time.perf_counter() - t0, 3)}  # what stmedfm.run.scaling projects wall times from
    torch.save({"job_id": jid, "state_dict": state, "provenance": made}, buf)
    return buf.getvalue(), losses.to_csv(index=False), time.perf_counter() - t0


@lru_cache(maxsize=4)
def _load_checkpoint(blob: bytes) -> tuple[dict, dict]:
    """A checkpoint's (state dict, provenance), deserialised once per worker process and reused by its runs."""
    obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"], obj.get("provenance") or {}
    return obj, {}


def _run_job(cfg_dict: dict, rid: str, spec: RunSpec, ckpt: bytes | None,
             expected: dict[str, str]) -> tuple[str, RunResult]:
    cfg = StudyConfig.from_dict(cfg_dict)
    files = _worker_data(cfg, [spec.task], expected)
    state, made = _load_checkpoint(ckpt) if ckpt else (None, {})
    result = run_downstream(cfg, spec, state)
    result.provenance = {"machine": provenance.machine(next(iter(state.values())).device if state else None),
                         "pretrain_machine": made.get("machine", ""), "torch": str(torch.__version__), "data": files}
    return rid, result


def _shipped_data_dir(cfg: StudyConfig) -> str | None:
    """The data folder the workers search first: the client's (``data_dir``, else ``$STMEDFM_DATA``) as an absolute
    path, so a Dask worker started elsewhere, on a shared filesystem, reads the very files; a worker without that
    folder falls back to its own ``$STMEDFM_DATA`` and ``~/.medmnist``, and every worker checks the files' digests."""
    folder = cfg.data_dir or os.environ.get(paths.ENV_DATA)
    return str(Path(folder).expanduser().resolve()) if folder else None


def estimated_cost(cfg: StudyConfig, spec: RunSpec) -> float:
    """Relative cost of a run (images through the network; a 3D volume counts as 28 images), for scheduling."""
    info = registry.get(spec.task)
    unit = 28.0 if info.dim == 3 else 1.0
    n_eval = sum(info.n_samples[s] for s in (("val", "test") if cfg.temperature_scaling else ("test",)))
    if cfg.eval_max_samples:
        n_eval = min(n_eval, 2 * cfg.eval_max_samples)
    return unit * (3 * spec.steps * cfg.batch_size(spec.task) + n_eval)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


#: Pretraining jobs start before any run: each one unblocks many runs.
PRETRAIN_PRIORITY = 10**12


def run_study(cfg: StudyConfig, out: str | os.PathLike | None = None, progress: bool = True,
              workers: int | None = None, scheduler=None, reuse=()) -> ResultStore:
    """Run (or resume) every planned run of ``cfg``; returns the store with its tidy tables rebuilt.

    Runs execute on a local process pool of ``workers`` processes (default: ``cfg.workers``, else CPU cores;
    one worker = in this process), or on a Dask cluster when ``scheduler`` (an address such as
    ``tcp://host:8786``, a ``distributed.Client`` or an open :class:`~stmedfm.run.executors.Executor`, which is used and
    left open), ``cfg.scheduler`` or ``$DASK_SCHEDULER_ADDRESS`` is given; ``'local'`` forces the pool. Scratch
    runs start at once, next to pretraining; the runs of a checkpoint start as soon as it is written. The numbers
    do not depend on any of this. ``reuse``: stores whose runs and checkpoints of the same id are taken instead of
    computed (:func:`reuse_runs`).
    """
    store = ResultStore(out or paths.results_dir(cfg.study))
    sources = reuse_sources(reuse, store.root)  # before the store is opened: a bad --reuse writes nothing
    store.check_claim(cfg, None)  # a folder that is not this study's is refused before anything is downloaded
    preflight(cfg)  # files present (downloaded when cfg.download), K within every class: running needs them
    data = store.open(cfg)
    with store.locked():
        store.remove_partial_writes()
        # with lr_grid: the selection runs (and every run that waits for no selection) first, then the runs at the
        # learning rates their validation AUROC selected (stmedfm.core.selection); without it there is one pass
        for _ in range(2 if cfg.lr_grid else 1):
            chosen = selection.chosen(store.lr_selection(cfg, data)) if cfg.lr_grid else None
            planned = plan(cfg, chosen)  # once per pass: what is reused and what is computed are the same plan
            if reuse:
                runs, jobs = reuse_runs(cfg, store, sources, data, planned)
                if progress:
                    print(f"reused {runs} runs and {jobs} checkpoints of {', '.join(map(str, reuse))}", flush=True)
            _execute(cfg, store, data, progress, workers or cfg.workers or default_workers(),
                     cfg.scheduler if scheduler is None else scheduler, planned)
        store.consolidate(cfg, data)
        store.write_config(cfg)  # last: config.yaml always describes the tables beside it
    return store


def _execute(cfg: StudyConfig, store: ResultStore, data: StudyData, progress: bool, workers: int, scheduler,
             planned: list[PlannedRun]) -> None:
    """Compute every run and checkpoint of ``planned`` (:func:`stmedfm.core.records.plan` at the learning rates selected
    so far) that the store lacks (damaged ones are quarantined first)."""
    cfg_dict = cfg.to_dict()  # what the workers get: where they run is not theirs to know
    cfg_dict.update(data_dir=_shipped_data_dir(cfg), scheduler=None)
    expected = {t: i.digest for t, i in data.items()}
    made_with = provenance.software()
    if cfg.precision != "fp32":  # workers compute what the run ids say: 'auto' as resolved here
        cfg_dict["precision"] = identity_name(cfg.precision)
        if progress:
            print(f"precision: {resolve(cfg.precision).describe()}", flush=True)

    todo = [(rid, p) for rid, p in unique_runs(cfg, planned, data).items() if store.load_run_on(rid, data) is None]
    # every checkpoint is checked (its loss table feeds pretrain_loss.csv); each job's id is computed once, here
    job_ids = {j: job_id(cfg, j, data) for j in pretrain_jobs(planned)}
    todo_jobs = {jid: j for j, jid in job_ids.items() if not store.checkpoint_ok(jid, cfg, j.tasks)}
    if not todo and not todo_jobs:
        return

    users: dict[str, int] = defaultdict(int)  # job id -> runs still to start from its checkpoint
    for _, p in todo:
        if p.pretrain_job:
            users[job_ids[p.pretrain_job]] += 1
    tasks = [Task(jid, _pretrain_job, (cfg_dict, job, jid, expected), PRETRAIN_PRIORITY - i, payload=job)
             for i, (jid, job) in enumerate(todo_jobs.items())]
    with executor_for(workers, scheduler, n_tasks=len(todo) + len(todo_jobs)) as executor:
        if not isinstance(executor, InlineExecutor):
            D.release_cache()  # the workers load the data; the client only needed it for preflight
        shared: dict[str, object] = {}  # job id -> checkpoint handle (Executor.share of its bytes)

        def checkpoint(jid: str):
            if jid not in shared:  # from an earlier (resumed) study: read once from the store
                shared[jid] = executor.share(store.checkpoint_path(jid).read_bytes())
            return shared[jid]

        def run_args(rid: str, jid: str | None, p: PlannedRun):
            return lambda: (cfg_dict, rid, p.spec, checkpoint(jid) if jid else None, expected)

        for rid, p in todo:
            jid = job_ids[p.pretrain_job] if p.pretrain_job else None
            tasks.append(Task(rid, _run_job, run_args(rid, jid, p), estimated_cost(cfg, p.spec),
                              after=(jid,) if jid in todo_jobs else (), payload=p))  # longest first
        # the bar counts runs, as every summary does; pretraining jobs are its postfix. progress=False (-q): silent
        bar = tqdm(total=len(todo), desc=f"study {cfg.study}", unit="run", disable=not progress)
        pretrained = 0
        if progress:
            bar.write(f"{len(todo_jobs)} pretraining jobs and {len(todo)} runs on {executor.describe()}")
            if todo_jobs:
                bar.set_postfix_str(f"checkpoints 0/{len(todo_jobs)}")

        def on_result(task: Task, result) -> None:
            nonlocal pretrained
            if isinstance(task.payload, PretrainJob):
                blob, loss_csv, secs = result
                atomic_write_bytes(store.checkpoint_path(task.key), blob)
                atomic_write_text(store.loss_path(task.key), loss_csv)
                if users[task.key]:
                    shared[task.key] = executor.share(blob)
                job = task.payload
                pretrained += 1
                if progress:
                    bar.set_postfix_str(f"checkpoints {pretrained}/{len(todo_jobs)}")
                    bar.write(f"pretrained seed={job.seed} on {'+'.join(job.tasks)} in {secs:.1f} s")
                return
            bar.update()
            rid, res = result
            store.write_run(rid, res, cfg, made_with)
            p = task.payload
            if p.pretrain_job:
                jid = job_ids[p.pretrain_job]
                users[jid] -= 1
                if not users[jid] and jid in shared:
                    executor.release(shared.pop(jid))
            s, m = res.spec, res.metrics
            if progress:
                bar.write(f"{p.experiment:13s} {s.task} {s.strategy} seed={s.seed}"
                          f"{f' K={s.k} split={s.fewshot_split}' if s.k else ''}: acc {m['accuracy']:.3f} "
                          f"AUROC {m['macro_auroc']:.3f} ECE {m['ece']:.3f} ({res.seconds:.1f} s)")

        try:
            run_tasks(executor, tasks, on_result)
        finally:
            bar.close()


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (files of a store are replaced atomically, never edited in place, so a link is safe), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.reuse.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _link_predictions(others, store: ResultStore, rid: str) -> None:
    """Link the run's ``predictions/<rid>.npy`` from the first store of ``others`` that has it (its sha256 is in the
    run record, so :meth:`~stmedfm.core.results.StoredResults.load_predictions` checks the link like any other file)."""
    other = next((o for o in others if o.predictions_path(rid).is_file()), None)
    if other is not None:
        _link_or_copy(other.predictions_path(rid), store.predictions_path(rid))


def reuse_sources(sources, root: str | os.PathLike) -> list[Path]:
    """The stores named by --reuse, checked (each must be a result store), without the store at ``root`` itself;
    the command line calls it before it claims a folder, so a bad --reuse leaves no trace."""
    out = []
    for src in map(Path, sources):
        if not (src / MARKER).is_file() and not (src / "config.yaml").is_file():
            raise StmedfmError(f"'{src}' is not a result store (no {MARKER}): --reuse takes a study's results folder, "
                               f"e.g. results/offline.")
        if src.resolve() != Path(root).resolve():
            out.append(src)
    return out


def reuse_runs(cfg: StudyConfig, store: ResultStore, sources, data: StudyData,
               planned: list[PlannedRun]) -> tuple[int, int]:
    """Link into ``store`` every run and pretraining checkpoint of ``planned`` (``cfg``'s plan) that it lacks and a store of
    ``sources`` holds; returns (runs, checkpoints) taken. Why this is sound: an id covers everything that defines
    what is computed (spec, training fields, data identities, checkpoint), so a run of another study with the same
    id is the same computation (e.g. params/peft_methods.yaml shares 420 runs and its checkpoints with
    params/offline.yaml). Only the planned ids are taken, so the store holds nothing else; a damaged source file is
    quarantined and recomputed like any other; where each run was computed stays in its provenance."""
    others = [ResultStore(src) for src in reuse_sources(sources, store.root)]
    runs = jobs = 0
    for rid in unique_runs(cfg, planned, data):
        if store.has_run(rid):
            if not store.predictions_path(rid).is_file():  # a run taken before its predictions were linked too
                _link_predictions(others, store, rid)
            continue
        other = next((o for o in others if o.has_run(rid)), None)
        if other is not None:
            _link_or_copy(other.run_path(rid), store.run_path(rid))
            _link_predictions([other], store, rid)  # the per-image probabilities the claims' bootstrap resamples
            runs += store.load_run_on(rid, data) is not None  # taken by its id *and* its data, else quarantined
    for job in pretrain_jobs(planned):
        jid = job_id(cfg, job, data)
        if store.has_checkpoint(jid):
            continue
        other = next((o for o in others if o.has_checkpoint(jid)), None)
        if other is not None:
            _link_or_copy(other.loss_path(jid), store.loss_path(jid))
            _link_or_copy(other.checkpoint_path(jid), store.checkpoint_path(jid))
            jobs += 1
    return runs, jobs
