"""A study: plan every run from the parameters, execute what is not done yet, store tidy results.

Design:

* :func:`plan` turns a :class:`~stmedfm.config.StudyConfig` into pretraining jobs (one per seed and set of
  pretraining tasks) and downstream runs, each tagged with the experiment(s) it belongs to. A run is identified
  by what defines it (task, strategy, steps, lr, class weights, starting checkpoint, K, split, seed, and the
  training fields of the config), not by the experiment that asked for it: Table 11's "weights on" rows *are*
  Table 5's runs, and run once.
* :class:`ResultStore` keeps one JSON file per finished run under ``results/<study>/runs/`` (written atomically
  by the client process, the only writer) and pretrained checkpoints under ``checkpoints/``. Rerunning skips
  finished runs, so an interrupted study resumes without duplicates. The tidy tables (``metrics.csv``: one row
  per run x metric; ``runs.csv``, ``pretrain_loss.csv``, ``per_class.csv``, ``confusion.csv``,
  ``reliability.csv``) are rebuilt from those files after every study.
* Runs fan out over worker processes (``workers``, default = CPU cores), each with one torch thread; a single
  worker runs in-process, also with one thread, so the same seed gives the same numbers whatever the count.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from stmedfm import data as D
from stmedfm.io import atomic_write_bytes, atomic_write_csv, atomic_write_text
from stmedfm import paths, registry
from stmedfm.config import StudyConfig
from stmedfm.errors import StmedfmError
from stmedfm.train import RunResult, RunSpec, pretrain, run_downstream

#: Config fields that change what a run computes (besides its RunSpec). Changing one gives new run ids.
TRAINING_FIELDS = (
    "image_size", "width", "ln_affine", "lora_r", "lora_alpha", "adapter_bottleneck", "batch_size_2d",
    "batch_size_3d", "weight_decay", "class_weight_clip", "augment", "temperature_scaling", "eval_max_samples",
)
PRETRAIN_FIELDS = (
    "image_size", "width", "ln_affine", "batch_size_2d", "batch_size_3d", "weight_decay", "class_weights",
    "class_weight_clip", "augment", "pretrain_steps", "pretrain_lr", "task_sampling", "sampling_alpha",
    "loss_log_normalise",
)
EXPERIMENTS = ("transfer", "fewshot", "class_weights", "leave_out", "extended", "budget", "data_efficiency")


#: Fields added after the first reference results: part of a run's identity only when not at their default,
#: so adding them did not change the identity of any finished run.
LATER_FIELDS = {"flip_policy": "all"}


def _fields(cfg: StudyConfig, names) -> dict:
    fields = {f: getattr(cfg, f) for f in names}
    fields.update({f: getattr(cfg, f) for f, default in LATER_FIELDS.items() if getattr(cfg, f) != default})
    return fields


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PretrainJob:
    seed: int
    tasks: tuple[str, ...]

    def id(self, cfg: StudyConfig) -> str:
        fields = _fields(cfg, PRETRAIN_FIELDS)
        if cfg.task_sampling != "temperature":
            fields.pop("sampling_alpha")
        return "pretrain-" + _digest({"seed": self.seed, "tasks": self.tasks, **fields})


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    variant: str  #: the ablation setting this run stands for (e.g. 'weights off', '2D-only', 'extended')
    spec: RunSpec

    @property
    def pretrain_job(self) -> PretrainJob | None:
        return PretrainJob(self.spec.seed, self.spec.pretrain) if self.spec.pretrain else None


def run_id(cfg: StudyConfig, spec: RunSpec) -> str:
    """Identity of a run: its spec, the training fields of the config and its checkpoint's identity."""
    fields = _fields(cfg, TRAINING_FIELDS)
    ckpt = PretrainJob(spec.seed, spec.pretrain).id(cfg) if spec.pretrain else None
    return "run-" + _digest({**spec.key(), "detail": spec.detail, "cfg": fields, "ckpt": ckpt})


def plan(cfg: StudyConfig) -> list[PlannedRun]:
    """Every (experiment, run) the parameters ask for, in a stable order; the same spec may appear twice."""
    full_pretrain = tuple(cfg.pretrain_tasks)
    out: list[PlannedRun] = []

    def spec(task, strategy, seed, steps=None, class_weights=None, pretrain=None, k=0, split=-1, fraction=1.0):
        steps = cfg.steps(task, strategy) if steps is None else steps
        class_weights = cfg.class_weights if class_weights is None else class_weights
        pretrain = () if strategy == "scratch" else (full_pretrain if pretrain is None else pretrain)
        # the per-class / reliability / confusion outputs belong to the calibration task's standard run
        detail = (task == cfg.calibration_task and strategy == cfg.calibration_strategy and k == 0
                  and steps == cfg.steps(task, strategy) and class_weights == cfg.class_weights
                  and pretrain == (() if strategy == "scratch" else full_pretrain)
                  and split == -1 and fraction == 1.0)
        return RunSpec(task=task, strategy=strategy, seed=seed, steps=steps, lr=cfg.lr(strategy),
                       class_weights=class_weights, pretrain=pretrain, k=k, fewshot_split=split, detail=detail,
                       fraction=float(fraction))

    for seed in cfg.seeds:
        for task in cfg.downstream_tasks:
            for strategy in cfg.strategies:
                out.append(PlannedRun("transfer", "", spec(task, strategy, seed)))
        for task, steps in cfg.fewshot_tasks.items():
            for k in cfg.fewshot_k:
                for split in range(cfg.fewshot_splits):
                    for strategy in cfg.fewshot_strategies:
                        out.append(PlannedRun("fewshot", f"K={k}", spec(task, strategy, seed, steps=steps, k=k, split=split)))
        for task in cfg.class_weight_ablation_tasks:
            for strategy in cfg.class_weight_ablation_strategies:
                for on in (True, False):
                    out.append(PlannedRun("class_weights", "weights on" if on else "weights off",
                                          spec(task, strategy, seed, class_weights=on)))
        for task in cfg.leave_out_tasks:
            without = tuple(t for t in full_pretrain if t != task)
            for strategy in cfg.leave_out_strategies:
                out.append(PlannedRun("leave_out", "all tasks", spec(task, strategy, seed)))
                out.append(PlannedRun("leave_out", f"without {task}", spec(task, strategy, seed, pretrain=without)))
        for task in cfg.extended_tasks:
            out.append(PlannedRun("extended", "extended", spec(task, "scratch", seed, steps=cfg.extended_scratch_steps)))
            out.append(PlannedRun("extended", "extended", spec(task, "full", seed, steps=cfg.extended_full_steps)))
        # beyond the paper: the same strategies at several step budgets (a budget equal to the standard one *is*
        # the transfer run), and stratified fractions of the train split with repeats (the repeat index is the
        # run's fewshot_split, which also seeds its head and batches)
        for task, budgets in cfg.budget_tasks.items():
            for steps in budgets:
                for strategy in cfg.budget_strategies:
                    out.append(PlannedRun("budget", f"{steps} steps", spec(task, strategy, seed, steps=steps)))
        for task in cfg.data_fraction_tasks:
            for fraction in cfg.data_fractions:
                for repeat in range(cfg.data_fraction_repeats):
                    for strategy in cfg.data_fraction_strategies:
                        out.append(PlannedRun("data_efficiency", f"{100 * fraction:g} %",
                                              spec(task, strategy, seed, split=repeat, fraction=fraction)))
    return out


def unique_runs(cfg: StudyConfig, planned: list[PlannedRun]) -> dict[str, PlannedRun]:
    """Run id -> the first planned run with that id: what actually executes (a run shared by experiments, once)."""
    unique: dict[str, PlannedRun] = {}
    for p in planned:
        unique.setdefault(run_id(cfg, p.spec), p)
    return unique


def pretrain_jobs(planned: list[PlannedRun]) -> list[PretrainJob]:
    """The pretraining jobs the planned runs start from, each once, by seed then tasks."""
    return sorted({p.pretrain_job for p in planned if p.pretrain_job}, key=lambda j: (j.seed, j.tasks))


# ---------------------------------------------------------------------------------------------------------------
class ResultStore:
    """The files of one study under ``results/<study>/`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # locations
    def run_path(self, rid: str) -> Path:
        return self.root / "runs" / f"{rid}.json"

    def checkpoint_path(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.pt"

    def loss_path(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.loss.csv"

    # state
    def has_run(self, rid: str) -> bool:
        return self.run_path(rid).is_file()

    def has_checkpoint(self, job_id: str) -> bool:
        return self.checkpoint_path(job_id).is_file() and self.loss_path(job_id).is_file()

    def write_run(self, rid: str, result: RunResult) -> None:
        record = {
            "run_id": rid, **result.spec.key(), "detail": result.spec.detail,
            "total_params": result.total_params, "trainable_params": result.trainable_params,
            "seconds": round(result.seconds, 3), "metrics": result.metrics,
            "extras": {k: v.to_dict(orient="records") for k, v in result.extras.items()},
        }
        atomic_write_text(self.run_path(rid), json.dumps(record, default=float))

    def read_run(self, rid: str) -> dict:
        return json.loads(self.run_path(rid).read_text())

    def write_config(self, cfg: StudyConfig) -> None:
        atomic_write_text(self.root / "config.yaml", cfg.to_yaml())

    def config(self) -> StudyConfig:
        path = self.root / "config.yaml"
        if not path.is_file():
            raise StmedfmError(f"'{self.root}' holds no study (no config.yaml). Run `stmedfm study PARAMS --out {self.root}` first.")
        return StudyConfig.load(path)

    # tidy tables
    def consolidate(self, cfg: StudyConfig) -> dict[str, pd.DataFrame]:
        """Rebuild the tidy CSV tables from the finished runs of the current plan; returns them."""
        planned = plan(cfg)
        run_rows, metric_rows = [], []
        extras: dict[str, list[pd.DataFrame]] = defaultdict(list)
        cache: dict[str, dict] = {}
        for p in planned:
            rid = run_id(cfg, p.spec)
            if not self.has_run(rid):
                continue
            rec = cache.get(rid) or cache.setdefault(rid, self.read_run(rid))
            key = {"run_id": rid, "experiment": p.experiment, "variant": p.variant, **p.spec.key()}
            run_rows.append({**key, "total_params": rec["total_params"], "trainable_params": rec["trainable_params"],
                             "seconds": rec["seconds"]})
            metric_rows += [{**key, "metric": m, "value": v} for m, v in rec["metrics"].items()]
            if p.experiment == "transfer":
                for name, records in rec["extras"].items():
                    frame = pd.DataFrame(records)
                    for col, val in reversed(list(key.items())):
                        frame.insert(0, col, val)
                    extras[name].append(frame)
        tables = {"runs": pd.DataFrame(run_rows), "metrics": pd.DataFrame(metric_rows)}
        tables.update({name: pd.concat(frames, ignore_index=True) for name, frames in extras.items()})
        losses = []
        for job in pretrain_jobs(planned):
            jid = job.id(cfg)
            if self.has_checkpoint(jid):
                frame = pd.read_csv(self.loss_path(jid))
                frame.insert(0, "pretrain", "+".join(job.tasks))
                frame.insert(0, "seed", job.seed)
                losses.append(frame)
        if losses:
            tables["pretrain_loss"] = pd.concat(losses, ignore_index=True)
        for name, frame in tables.items():
            atomic_write_csv(self.root / f"{name}.csv", frame)
        return tables

    def table(self, name: str) -> pd.DataFrame:
        path = self.root / f"{name}.csv"
        if not path.is_file():
            raise StmedfmError(f"'{path}' does not exist: run the study first (`stmedfm study ... --out {self.root}`).")
        return pd.read_csv(path)


# ---------------------------------------------------------------------------------------------------------------
def preflight(cfg: StudyConfig) -> None:
    """Everything that can fail before training: files present and verified, K not larger than any class."""
    missing, problems = [], []
    for task in cfg.all_tasks():
        try:
            D.locate(task, size=cfg.image_size, data_dir=cfg.data_dir)
        except StmedfmError:
            missing.append(task)
    if missing and cfg.download:
        from stmedfm.download import download

        reason = ""
        for task in list(missing):
            try:
                download(task, size=cfg.image_size, data_dir=cfg.data_dir)
            except StmedfmError as exc:  # stop at the first failure: the others would fail the same way
                reason = f" Downloading failed: {exc}"
                break
            missing.remove(task)
    else:
        reason = ""
    if missing:
        size = "" if cfg.image_size == 28 else f" --size {cfg.image_size}"
        dirs = ", ".join(str(d) for d in paths.data_dirs(cfg.data_dir))
        raise StmedfmError(
            f"Study '{cfg.study}' needs {len(missing)} MedMNIST file(s) that are not here: "
            f"{', '.join(registry.get(t).filename(cfg.image_size) for t in missing)} (searched: {dirs}). "
            f"Fetch them with `stmedfm download {' '.join(missing)}{size}` (or pass download=True / -p download=true), "
            f"or, on a machine without internet, copy the official files into one of those directories. "
            f"Without them, run the offline protocol: `make study PARAMS=params/offline.yaml`.{reason}")
    for task in cfg.all_tasks():
        D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)  # verifies checksum and layout
    if cfg.fewshot_tasks and cfg.fewshot_k:
        k = max(cfg.fewshot_k)
        for task in cfg.fewshot_tasks:
            labels = D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)["train"].labels
            counts = torch.bincount(labels, minlength=registry.get(task).n_classes)
            if int(counts.min()) < k:
                c = int(counts.argmin())
                problems.append(f"'{task}' class {c} has {int(counts[c])} training samples but fewshot_k asks for K={k}")
    if problems:
        raise StmedfmError("Few-shot parameters exceed the data: " + "; ".join(problems) +
                           ". Lower 'fewshot_k' or drop the task from 'fewshot_tasks'.")


# --- worker side --------------------------------------------------------------------------------------------------
# Tasks are pure functions of picklable arguments and return everything the client stores: workers never touch
# the result store, so they may run in this process, in a local pool or on the machines of a Dask cluster.
# Checkpoints travel as bytes (the serialised state dict): returned by the pretraining task, written to
# checkpoints/ by the client, and handed to the runs that need them through Executor.share.
def _pretrain_job(cfg_dict: dict, job: PretrainJob) -> tuple[bytes, str, float]:
    """Pretrain; return (checkpoint as torch.save bytes, loss table as CSV text, seconds)."""
    t0 = time.perf_counter()
    cfg = StudyConfig.from_dict(cfg_dict)
    state, losses = pretrain(cfg, list(job.tasks), job.seed)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), losses.to_csv(index=False), time.perf_counter() - t0


@lru_cache(maxsize=4)
def _load_checkpoint(blob: bytes) -> dict:
    """A checkpoint's state dict, deserialised once per worker process and reused by the runs that start from it."""
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _run_job(cfg_dict: dict, rid: str, spec: RunSpec, ckpt: bytes | None) -> tuple[str, RunResult]:
    cfg = StudyConfig.from_dict(cfg_dict)
    state = _load_checkpoint(ckpt) if ckpt else None
    return rid, run_downstream(cfg, spec, state)


@contextlib.contextmanager
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
              workers: int | None = None, scheduler=None) -> ResultStore:
    """Run (or resume) every planned run of ``cfg``; returns the store with its tidy tables rebuilt.

    Runs execute on a local process pool of ``workers`` processes (default: ``cfg.workers``, else CPU cores;
    one worker = in this process), or on a Dask cluster when ``scheduler`` (an address such as
    ``tcp://host:8786`` or a ``distributed.Client``) or ``$DASK_SCHEDULER_ADDRESS`` is given; ``'local'`` forces
    the pool. Scratch runs start at once, next to pretraining; the runs of a checkpoint start as soon as it is
    written. The numbers do not depend on any of this.
    """
    from stmedfm.executors import InlineExecutor, Task, executor_for, run_tasks

    preflight(cfg)
    store = ResultStore(out or paths.results_dir(cfg.study))
    store.write_config(cfg)
    workers = workers or cfg.workers or default_workers()
    planned = plan(cfg)
    cfg_dict = cfg.to_dict()

    todo = [(rid, p) for rid, p in unique_runs(cfg, planned).items() if not store.has_run(rid)]
    jobs = pretrain_jobs(planned)
    todo_jobs = {j.id(cfg): j for j in jobs if not store.has_checkpoint(j.id(cfg))}
    if not todo and not todo_jobs:
        store.consolidate(cfg)
        return store

    users: dict[str, int] = defaultdict(int)  # job id -> runs still to start from its checkpoint
    for _, p in todo:
        if p.pretrain_job:
            users[p.pretrain_job.id(cfg)] += 1
    tasks = [Task(jid, _pretrain_job, (cfg_dict, job), PRETRAIN_PRIORITY - i, payload=job)
             for i, (jid, job) in enumerate(todo_jobs.items())]
    with executor_for(workers, scheduler, n_tasks=len(todo) + len(todo_jobs)) as executor:
        if not isinstance(executor, InlineExecutor):
            D._load_cached.cache_clear()  # the workers load the data; the client only needed it for preflight
        shared: dict[str, object] = {}  # job id -> checkpoint handle (Executor.share of its bytes)

        def checkpoint(jid: str):
            if jid not in shared:  # from an earlier (resumed) study: read once from the store
                shared[jid] = executor.share(store.checkpoint_path(jid).read_bytes())
            return shared[jid]

        def run_args(rid: str, p: PlannedRun):
            return lambda: (cfg_dict, rid, p.spec, checkpoint(p.pretrain_job.id(cfg)) if p.pretrain_job else None)

        for rid, p in todo:
            jid = p.pretrain_job.id(cfg) if p.pretrain_job else None
            tasks.append(Task(rid, _run_job, run_args(rid, p), estimated_cost(cfg, p.spec),
                              after=(jid,) if jid in todo_jobs else (), payload=p))  # longest first
        bar = tqdm(total=len(tasks), desc=f"study {cfg.study}", disable=not progress)
        if progress:
            bar.write(f"{len(todo_jobs)} pretraining jobs and {len(todo)} runs on {executor.describe()}")

        def on_result(task: Task, result) -> None:
            bar.update()
            if isinstance(task.payload, PretrainJob):
                blob, loss_csv, secs = result
                atomic_write_bytes(store.checkpoint_path(task.key), blob)
                atomic_write_text(store.loss_path(task.key), loss_csv)
                if users[task.key]:
                    shared[task.key] = executor.share(blob)
                job = task.payload
                bar.write(f"pretrained seed={job.seed} on {'+'.join(job.tasks)} in {secs:.1f} s")
                return
            rid, res = result
            store.write_run(rid, res)
            p = task.payload
            if p.pretrain_job:
                jid = p.pretrain_job.id(cfg)
                users[jid] -= 1
                if not users[jid] and jid in shared:
                    executor.release(shared.pop(jid))
            s, m = res.spec, res.metrics
            bar.write(f"{p.experiment:13s} {s.task} {s.strategy} seed={s.seed}"
                      f"{f' K={s.k} split={s.fewshot_split}' if s.k else ''}: acc {m['accuracy']:.3f} "
                      f"AUROC {m['macro_auroc']:.3f} ECE {m['ece']:.3f} ({res.seconds:.1f} s)")

        try:
            run_tasks(executor, tasks, on_result)
        finally:
            bar.close()
    store.consolidate(cfg)
    return store
