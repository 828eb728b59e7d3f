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
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from stmedfm import data as D
from stmedfm.io import atomic_write_bytes, atomic_write_csv, atomic_write_text
from stmedfm import paths, provenance, registry, strategies
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


#: Fields added after the first reference results: part of an identity only when not at their default, so
#: adding them did not change the identity of any finished run. LATER_RUN_FIELDS change evaluation only.
#: ``precision`` enters as what it resolves to on this machine (``auto`` without native bf16 *is* fp32).
LATER_FIELDS = {"flip_policy": "all", "precision": "fp32"}
LATER_RUN_FIELDS = {"eval_batch_size_2d": 256, "eval_batch_size_3d": 32}

#: The identity of every data file a study reads, flag -> :class:`stmedfm.data.FileIdentity` (see :func:`study_data`).
StudyData = Mapping[str, D.FileIdentity]


def _later(cfg: StudyConfig, name: str):
    if name == "precision":
        from stmedfm.precision import identity_name

        return identity_name(cfg.precision)
    return getattr(cfg, name)


def _fields(cfg: StudyConfig, names, later=LATER_FIELDS) -> dict:
    fields = {f: getattr(cfg, f) for f in names}
    fields.update({f: _later(cfg, f) for f, default in later.items() if _later(cfg, f) != default})
    return fields


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_data(cfg: StudyConfig) -> dict[str, D.FileIdentity]:
    """Locate and verify every file of the study; their identities (what run identities are built from)."""
    return {t: D.identify(t, cfg.image_size, cfg.data_dir) for t in cfg.all_tasks()}


def official_data(cfg: StudyConfig) -> dict[str, D.FileIdentity]:
    """The identities the study's files have when they are the official ones (no file is read): for planning and
    tests on machines without the data."""
    return {t: D.FileIdentity(t, cfg.image_size, "official", f"md5:{registry.get(t).md5.get(cfg.image_size)}")
            for t in cfg.all_tasks()}


def _data_fields(data: StudyData, tasks) -> dict[str, str]:
    """The digests of the files among ``tasks`` that are not the official ones. Decision: an official file is
    already named by (flag, image size), which every identity holds, so only other bytes (derived, subset or
    synthetic files) enter an identity; runs on the official files keep the ids they had before data entered
    identities, and any other bytes can never reuse them."""
    missing = [t for t in tasks if t not in data]
    if missing:
        raise KeyError(f"no data identity for {missing}")
    return {t: data[t].digest for t in tasks if not data[t].official}


@dataclass(frozen=True)
class PretrainJob:
    seed: int
    tasks: tuple[str, ...]

    def id(self, cfg: StudyConfig, data: StudyData) -> str:
        fields = _fields(cfg, PRETRAIN_FIELDS)
        if cfg.task_sampling != "temperature":
            fields.pop("sampling_alpha")
        files = _data_fields(data, self.tasks)
        if files:
            fields["data"] = files
        return "pretrain-" + _digest({"seed": self.seed, "tasks": self.tasks, **fields})


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    variant: str  #: the ablation setting this run stands for (e.g. 'weights off', '2D-only', 'extended')
    spec: RunSpec

    @property
    def pretrain_job(self) -> PretrainJob | None:
        return PretrainJob(self.spec.seed, self.spec.pretrain) if self.spec.pretrain else None


def run_id(cfg: StudyConfig, spec: RunSpec, data: StudyData) -> str:
    """Identity of a run: its spec, the training fields of the config, its data and its checkpoint's identity."""
    fields = _fields(cfg, TRAINING_FIELDS, {**LATER_FIELDS, **LATER_RUN_FIELDS})
    files = _data_fields(data, [spec.task])
    if files:
        fields["data"] = files
    ckpt = PretrainJob(spec.seed, spec.pretrain).id(cfg, data) if spec.pretrain else None
    return "run-" + _digest({**spec.key(), "detail": spec.detail, "cfg": fields, "ckpt": ckpt})


def plan(cfg: StudyConfig) -> list[PlannedRun]:
    """Every (experiment, run) the parameters ask for, in a stable order; the same spec may appear twice."""
    full_pretrain = tuple(cfg.pretrain_tasks)
    out: list[PlannedRun] = []

    def spec(task, strategy, seed, steps=None, class_weights=None, pretrain=None, k=0, split=-1, fraction=1.0):
        steps = cfg.steps(task, strategy) if steps is None else steps
        class_weights = cfg.class_weights if class_weights is None else class_weights
        fresh = not strategies.get(strategy).pretrained
        pretrain = () if fresh else (full_pretrain if pretrain is None else pretrain)
        # the per-class / reliability / confusion outputs belong to the calibration task's standard run
        detail = (task == cfg.calibration_task and strategy == cfg.calibration_strategy and k == 0
                  and steps == cfg.steps(task, strategy) and class_weights == cfg.class_weights
                  and pretrain == (() if fresh else full_pretrain)
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


def unique_runs(cfg: StudyConfig, planned: list[PlannedRun], data: StudyData) -> dict[str, PlannedRun]:
    """Run id -> the first planned run with that id: what actually executes (a run shared by experiments, once)."""
    unique: dict[str, PlannedRun] = {}
    for p in planned:
        unique.setdefault(run_id(cfg, p.spec, data), p)
    return unique


def pretrain_jobs(planned: list[PlannedRun]) -> list[PretrainJob]:
    """The pretraining jobs the planned runs start from, each once, by seed then tasks."""
    return sorted({p.pretrain_job for p in planned if p.pretrain_job}, key=lambda j: (j.seed, j.tasks))


# ---------------------------------------------------------------------------------------------------------------
#: The marker of a result store: which study it holds and whether its data is real or synthetic.
MARKER = "store.json"
#: Columns of runs.csv that say where and with what a run was computed (see stmedfm.provenance).
PROVENANCE = ("data", "machine", "pretrain_machine", "stmedfm", "git_commit", "torch")


#: Columns a tidy table of the store must have to be read at all.
TABLE_COLUMNS = {"metrics": ("run_id", "experiment", "variant", "task", "strategy", "seed", "metric", "value"),
                 "runs": ("run_id", "experiment", "variant", "task", "strategy", "seed")}


class StoreWarning(UserWarning):
    """A damaged file of a result store was set aside (moved to quarantine/) and will be recomputed."""


class ResultStore:
    """The files of one study under ``results/<study>/`` (see the module docstring).

    A store is marked by ``store.json`` (its study name and data kind). Files that fail to load or whose content
    does not match their name are moved to ``quarantine/`` (never deleted), named in a :class:`StoreWarning`, and
    recomputed. ``config.yaml`` is written only after the tidy tables, so the two always describe the same study.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # locations
    def run_path(self, rid: str) -> Path:
        return self.root / "runs" / f"{rid}.json"

    def checkpoint_path(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.pt"

    def loss_path(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.loss.csv"

    # claiming a folder ----------------------------------------------------------------------------------------
    def marker(self) -> dict | None:
        path = self.root / MARKER
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StmedfmError(f"'{path}' is damaged ({type(exc).__name__}); it marks a result store. Restore it, "
                               f"or pass a new folder as --out.") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("study"), str):
            raise StmedfmError(f"'{path}' is not a result-store marker; pass a new folder as --out.")
        return doc

    def check_claim(self, cfg: StudyConfig, kind: str | None) -> None:
        """Refuse, before anything is written, any folder that is not new, empty, or a store of this study with
        data of the same kind ('real' or 'synthetic'; None: not known yet, not checked)."""
        root = self.root
        if root.exists() and not root.is_dir() or root.is_symlink() and not root.exists():
            raise StmedfmError(f"The result folder '{root}' is a file (or a broken link). Pass a new or empty folder, "
                               f"or a store of study '{cfg.study}', as --out.")
        for name in ("runs", "checkpoints", "quarantine", MARKER):
            part = root / name
            if part.exists() and (part.is_dir() != (name != MARKER)):
                raise StmedfmError(f"'{part}' should be a {'file' if name == MARKER else 'folder'} of the result "
                                   f"store; move it away or pass another --out.")
        doc = self.marker()
        if doc is None:
            legacy = _study_in(root / "config.yaml")  # a store written before markers existed: taken as real data
            if root.is_dir() and any(root.iterdir()) and (legacy != cfg.study or kind == "synthetic"):
                what = (f"a store of study '{legacy}'" if legacy and legacy != cfg.study else
                        "an unmarked store, taken to hold real data" if legacy else
                        "not a result store (no store.json)")
                raise StmedfmError(f"The result folder '{root}' is not empty and is {what}. Results of study "
                                   f"'{cfg.study}' go into a new or empty folder or a store of the same study: pass "
                                   f"another --out.")
            return
        if doc["study"] != cfg.study:
            raise StmedfmError(f"The result folder '{root}' holds study '{doc['study']}', not '{cfg.study}'. Pass "
                               f"another --out (or -p study={doc['study']}).")
        if kind is not None and doc.get("data", kind) != kind:
            raise StmedfmError(
                f"The result folder '{root}' holds results on {doc['data']} data, and this study reads {kind} files "
                f"({_kind_hint(kind)}). Runs on synthetic and real data never share a store: pass another --out.")

    def claim(self, cfg: StudyConfig, kind: str) -> None:
        """:meth:`check_claim`, then mark the folder as this study's store."""
        self.check_claim(cfg, kind)
        if self.marker() is None:
            from stmedfm import __version__

            doc = {"study": cfg.study, "data": kind, "created_by": f"stmedfm {__version__}"}
            try:
                atomic_write_text(self.root / MARKER, json.dumps(doc, indent=1) + "\n")
            except OSError as exc:
                raise StmedfmError(f"Cannot create the result folder '{self.root}' ({exc.strerror or exc}); pass a "
                                   f"writable --out.") from None

    def open(self, cfg: StudyConfig) -> dict[str, D.FileIdentity]:
        """The one way into a store before computing: refuse a folder that is not this study's (before anything is
        downloaded or written), :func:`preflight` (files present, downloaded when ``cfg.download``), then claim it
        for the kind of data the study reads. Returns the study's data identities."""
        self.check_claim(cfg, None)
        preflight(cfg)
        data = study_data(cfg)
        self.claim(cfg, data_kind(data))
        return data

    @contextlib.contextmanager
    def locked(self):
        """Hold the store for one study at a time (an advisory lock on its marker; a no-op without fcntl)."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        with open(self.root / MARKER, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StmedfmError(f"Another study is running in '{self.root}' right now; wait for it to finish "
                                   f"(a rerun then resumes), or pass another --out.") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of writes a killed client never finished (only the client writes, under the
        lock, so none is in use)."""
        stale = [p for d in ("runs", "checkpoints") for p in (self.root / d).glob(".*.tmp")]
        stale += list(self.root.glob(".*.tmp"))
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    # damaged files ---------------------------------------------------------------------------------------------
    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a damaged file to ``quarantine/`` (never delete it), name it in a warning, return where it went."""
        dest = self.root / "quarantine" / f"{time.strftime('%Y%m%dT%H%M%S')}-{path.parent.name}-{path.name}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        except OSError as exc:
            raise StmedfmError(f"{path} is damaged ({reason}) and cannot be moved to {dest.parent} "
                               f"({exc.strerror or exc}); move or delete it, then rerun.") from None
        warnings.warn(StoreWarning(f"{path} is damaged ({reason}); moved to {dest} and recomputed."), stacklevel=2)
        return dest

    # runs -----------------------------------------------------------------------------------------------------
    def has_run(self, rid: str) -> bool:
        return self.run_path(rid).is_file()

    def write_run(self, rid: str, result: RunResult, cfg: StudyConfig | None = None,
                  provenance: dict | None = None) -> None:
        record = {
            "run_id": rid, **result.spec.key(), "detail": result.spec.detail,
            "total_params": result.total_params, "trainable_params": result.trainable_params,
            "seconds": round(result.seconds, 3), "metrics": result.metrics,
            "extras": {k: v.to_dict(orient="records") for k, v in result.extras.items()},
            "provenance": {**(provenance or {}), **result.provenance},
            "config": cfg.to_dict() if cfg is not None else None,
        }
        atomic_write_text(self.run_path(rid), json.dumps(record, default=float))

    def read_run(self, rid: str) -> dict:
        return json.loads(self.run_path(rid).read_text())

    def load_run(self, rid: str) -> dict | None:
        """The run's record, or None (and the file quarantined) when it is unreadable or belongs to another run."""
        path = self.run_path(rid)
        try:
            rec = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # truncated, garbage, not UTF-8
            self.quarantine(path, f"unreadable: {type(exc).__name__}")
            return None
        problem = _run_problem(rec, rid)
        if problem:
            self.quarantine(path, problem)
            return None
        return rec

    # checkpoints ------------------------------------------------------------------------------------------------
    def has_checkpoint(self, job_id: str) -> bool:
        return self.checkpoint_path(job_id).is_file() and self.loss_path(job_id).is_file()

    def checkpoint_ok(self, job_id: str, cfg: StudyConfig | None = None, tasks=()) -> bool:
        """Whether the checkpoint and its loss table load and belong to ``job_id`` (and, given ``cfg`` and the job's
        ``tasks``, load into its model); damaged ones are quarantined. A checkpoint without its loss table, or the
        reverse, is set aside too."""
        ckpt, loss = self.checkpoint_path(job_id), self.loss_path(job_id)
        if not ckpt.is_file() and not loss.is_file():
            return False
        problem = None
        try:
            obj = torch.load(io.BytesIO(ckpt.read_bytes()), map_location="cpu", weights_only=True)
            state = _state_dict(obj, job_id)
            if state is None:
                problem = "not a checkpoint of this job"
            elif cfg is not None:
                from stmedfm.train import build_model

                build_model(cfg, list(tasks), 0).load_state_dict(state)
        except Exception as exc:  # torch raises many types for a damaged or foreign file
            problem = f"unreadable: {type(exc).__name__}"
        if problem is None:
            try:
                frame = pd.read_csv(loss)
                if not {"step", "loss"} <= set(frame.columns) or frame.empty:
                    problem = "loss table without its columns"
            except Exception as exc:  # pandas: ParserError, UnicodeDecodeError, EmptyDataError, ...
                problem = f"loss table unreadable: {type(exc).__name__}"
        if problem:
            for path in (ckpt, loss):
                if path.is_file():
                    self.quarantine(path, problem)
            return False
        return True

    # config ---------------------------------------------------------------------------------------------------
    def write_config(self, cfg: StudyConfig) -> None:
        atomic_write_text(self.root / "config.yaml", cfg.to_yaml())

    def config(self) -> StudyConfig:
        path = self.root / "config.yaml"
        if not path.is_file():
            raise StmedfmError(f"'{self.root}' holds no study (no config.yaml). Run `stmedfm study PARAMS --out {self.root}` first.")
        return StudyConfig.load(path)

    # tidy tables
    def consolidate(self, cfg: StudyConfig, data: StudyData) -> dict[str, pd.DataFrame]:
        """Rebuild the tidy CSV tables from the finished runs of the current plan on the current data; returns
        them. Runs of other parameters or other data stay in runs/ but never enter the tables."""
        planned = plan(cfg)
        run_rows, metric_rows = [], []
        extras: dict[str, list[pd.DataFrame]] = defaultdict(list)
        cache: dict[str, dict | None] = {}
        for p in planned:
            rid = run_id(cfg, p.spec, data)
            if rid not in cache:
                cache[rid] = self.load_run(rid)
            rec = cache[rid]
            if rec is None:
                continue
            key = {"run_id": rid, "experiment": p.experiment, "variant": p.variant, **p.spec.key()}
            prov = rec.get("provenance") or {}
            run_rows.append({**key, "total_params": rec["total_params"], "trainable_params": rec["trainable_params"],
                             "seconds": rec["seconds"], **{c: prov.get(c, "") for c in PROVENANCE}})
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
            jid = job.id(cfg, data)
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
        try:
            frame = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
            frame, problem = None, type(exc).__name__
        else:
            missing = [c for c in TABLE_COLUMNS.get(name, ()) if c not in frame.columns]
            problem = f"no column {missing[0]!r}" if missing else None
        if problem:
            raise StmedfmError(f"'{path}' is damaged ({problem}); the tables are rebuilt from the runs by "
                               f"`stmedfm study PARAMS --out {self.root}`.")
        return frame

    def notices(self) -> list[str]:
        """What a reader must know before reading this store's numbers: synthetic data, smoke budgets, runs from
        several machines. Tables, figures and the report print these."""
        out = []
        doc = self.marker() or {}
        if doc.get("data") == "synthetic":
            out.append(SYNTHETIC_NOTICE)
        try:
            if self.config().is_smoke():
                out.append(SMOKE_NOTICE)
        except StmedfmError:
            pass
        runs_csv = self.root / "runs.csv"
        if runs_csv.is_file():
            try:
                runs = pd.read_csv(runs_csv, dtype=str, keep_default_na=False)
            except (ValueError, UnicodeDecodeError):  # damaged: table() names it where it is needed
                return out
            machines = sorted({m for col in ("machine", "pretrain_machine") if col in runs for m in runs[col] if m})
            if len(machines) > 1:
                out.append(f"runs computed on {len(machines)} machines ({' | '.join(machines)}): the same seed gives "
                           f"bit-identical numbers only on the same hardware; see README, Reproducibility")
        return out


SYNTHETIC_NOTICE = "synthetic data — not results"
SMOKE_NOTICE = "smoke budgets — not results"


def not_results(notices: list[str]) -> bool:
    """Whether the notices mark a store whose numbers are not results (no paper deltas are shown for it)."""
    return SYNTHETIC_NOTICE in notices or SMOKE_NOTICE in notices


def data_kind(data: StudyData) -> str:
    """'synthetic' when any file of the study is synthetic, else 'real'."""
    return "synthetic" if any(i.kind == "synthetic" for i in data.values()) else "real"


def _kind_hint(kind: str) -> str:
    return "listed as synthetic in a MANIFEST.json" if kind == "synthetic" else "none of them synthetic"


def _study_in(config_yaml: Path) -> str | None:
    try:
        doc = yaml.safe_load(config_yaml.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return doc.get("study") if isinstance(doc, dict) and isinstance(doc.get("study"), str) else None


_RUN_KEYS = ("run_id", "metrics", "total_params", "trainable_params", "seconds", "extras")


#: Metrics every run reports; a record without them (or with a non-number among its metrics) is damaged.
_CORE_METRICS = ("accuracy", "macro_f1", "macro_auroc", "ece", "brier")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _run_problem(rec, rid: str) -> str | None:
    if not isinstance(rec, dict) or any(k not in rec for k in _RUN_KEYS):
        return "not a run record"
    if rec["run_id"] != rid:
        return f"it holds run {rec['run_id']}"
    metrics, extras = rec["metrics"], rec["extras"]
    if (not isinstance(metrics, dict) or any(m not in metrics for m in _CORE_METRICS)
            or not all(_number(v) for v in metrics.values())):
        return "its metrics are missing or not numbers"
    if not all(_number(rec[k]) for k in ("total_params", "trainable_params", "seconds")):
        return "its counts are not numbers"
    if not isinstance(extras, dict) or not all(
            isinstance(v, list) and all(isinstance(r, dict) for r in v) for v in extras.values()):
        return "its per-class tables are damaged"
    return None


def _state_dict(obj, job_id: str) -> dict | None:
    """The state dict of a stored checkpoint ({'job_id', 'state_dict', ...}), or None when it is not one of
    ``job_id``. Decision: a bare state dict (written before checkpoints named their job) names no job, so it is
    quarantined and recomputed rather than trusted."""
    if isinstance(obj, dict) and obj.get("job_id") == job_id and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    return None


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
        fetch = ("" if cfg.download else  # never advise the download that just failed
                 f"Fetch them with `stmedfm download {' '.join(missing)}{size}` (or pass download=True / "
                 f"-p download=true), or, on a machine without internet, ")
        raise StmedfmError(
            f"Study '{cfg.study}' needs {len(missing)} MedMNIST file(s) that are not here: "
            f"{', '.join(registry.get(t).filename(cfg.image_size) for t in missing)} (searched: {dirs}). "
            f"{fetch}{'c' if fetch else 'C'}opy the official files into one of those directories (or point "
            f"${paths.ENV_DATA} at a directory holding them).{_offline_advice(cfg)}{reason}")
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


def _offline_advice(cfg: StudyConfig) -> str:
    """Advice to run the offline protocol instead, only when its files are all here and it is another study
    (advice never names the study that just failed)."""
    offline = paths.params_dir() / "offline.yaml"
    try:
        other = StudyConfig.load(offline)
        if other.all_tasks() == cfg.all_tasks() or other.study == cfg.study:
            return ""
        for task in other.all_tasks():
            D.locate(task, size=other.image_size, data_dir=cfg.data_dir)
    except StmedfmError:
        return ""
    return (" The files of the offline protocol are here: `make quick` runs it at one seed in minutes, "
            "`make study PARAMS=params/offline.yaml` in full.")


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
    job and where it was made: {'job_id', 'state_dict', 'provenance'}."""
    t0 = time.perf_counter()
    cfg = StudyConfig.from_dict(cfg_dict)
    files = _worker_data(cfg, job.tasks, expected)
    state, losses = pretrain(cfg, list(job.tasks), job.seed)
    buf = io.BytesIO()
    made = {"machine": provenance.machine(next(iter(state.values())).device), "torch": str(torch.__version__),
            "data": files}
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
    store = ResultStore(out or paths.results_dir(cfg.study))
    data = store.open(cfg)
    with store.locked():
        store.remove_partial_writes()
        _execute(cfg, store, data, progress, workers or cfg.workers or default_workers(), scheduler)
        store.consolidate(cfg, data)
        store.write_config(cfg)  # last: config.yaml always describes the tables beside it
    return store


def _execute(cfg: StudyConfig, store: ResultStore, data: StudyData, progress: bool, workers: int, scheduler) -> None:
    """Compute every run and checkpoint of the plan that the store lacks (damaged ones are quarantined first)."""
    from stmedfm.executors import InlineExecutor, Task, executor_for, run_tasks

    planned = plan(cfg)
    cfg_dict = cfg.to_dict()
    expected = {t: i.digest for t, i in data.items()}
    made_with = provenance.software()
    from stmedfm.precision import identity_name, resolve

    if cfg.precision != "fp32":  # workers compute what the run ids say: 'auto' as resolved here
        cfg_dict["precision"] = identity_name(cfg.precision)
        if progress:
            print(f"precision: {resolve(cfg.precision).describe()}", flush=True)

    todo = [(rid, p) for rid, p in unique_runs(cfg, planned, data).items() if store.load_run(rid) is None]
    jobs = pretrain_jobs(planned)  # every checkpoint is checked: its loss table feeds pretrain_loss.csv
    todo_jobs = {j.id(cfg, data): j for j in jobs if not store.checkpoint_ok(j.id(cfg, data), cfg, j.tasks)}
    if not todo and not todo_jobs:
        return

    users: dict[str, int] = defaultdict(int)  # job id -> runs still to start from its checkpoint
    for _, p in todo:
        if p.pretrain_job:
            users[p.pretrain_job.id(cfg, data)] += 1
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

        def run_args(rid: str, p: PlannedRun):
            jid = p.pretrain_job.id(cfg, data) if p.pretrain_job else None
            return lambda: (cfg_dict, rid, p.spec, checkpoint(jid) if jid else None, expected)

        for rid, p in todo:
            jid = p.pretrain_job.id(cfg, data) if p.pretrain_job else None
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
            store.write_run(rid, res, cfg, made_with)
            p = task.payload
            if p.pretrain_job:
                jid = p.pretrain_job.id(cfg, data)
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
