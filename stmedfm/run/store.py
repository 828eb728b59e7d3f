"""A study's result store: the files of one study under ``results/<study>/``, and the only code that writes them.

* One JSON file per finished run under ``runs/`` (written atomically by the client process, the only writer) and
  pretrained checkpoints under ``checkpoints/``. Rerunning skips finished runs, so an interrupted study resumes
  without duplicates.
* The tidy tables (``metrics.csv``: one row per run x metric; ``runs.csv``, ``pretrain_loss.csv``,
  ``per_class.csv``, ``confusion.csv``, ``reliability.csv``) are rebuilt from those files after every study, for
  the runs of the current plan on the current data only.
* ``store.json`` marks a folder as the store of one study and one kind of data (real or synthetic), so results
  of two studies, or of synthetic and real files, can never mix.

Kept apart from :mod:`stmedfm.run.study` (which executes runs) so that inference and export open a store without the
execution machinery; what only *reads* a store (tables, figures, the report) uses its torch-free base
:class:`stmedfm.core.results.StoredResults`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from stmedfm import __version__
from stmedfm.core import seal, selection
from stmedfm import data as D
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_write_bytes, atomic_write_text
from stmedfm.run.planning import StudyData, data_kind, job_id, run_id, study_data
from stmedfm.core.records import RunResult, plan, pretrain_jobs
from stmedfm.core.results import MARKER, StoredResults
from stmedfm.run.train import build_model, eval_subset

#: The per-image predictions of runs whose test split has at most this many images go into the store's one
#: committed file ``predictions.npz`` (retinamnist's 400 and adrenalmnist3d's 298 test images: about 3 MB for the
#: 20-seed reference); larger test splits (bloodmnist 3,421, organamnist 17,778 images: 0.05-0.4 MB per run) stay in
#: ``predictions/<rid>.npy`` beside the run records, and their claims' bootstrap replicates are committed instead
#: (``replicates.npz``, :mod:`stmedfm.analysis.claims`).
BUNDLE_MAX_IMAGES = 1000
BUNDLE = "predictions.npz"

#: Columns of runs.csv that say where and with what a run was computed (see stmedfm.core.provenance).
PROVENANCE = ("data", "machine", "pretrain_machine", "stmedfm", "git_commit", "torch")


class ResultStore(StoredResults):
    """The files of one study under ``results/<study>/`` (see the module docstring).

    A store is marked by ``store.json`` (its study name and data kind). Files that fail to load or whose content
    does not match their name are moved to ``quarantine/`` (never deleted), named in a :class:`StoreWarning`, and
    recomputed. ``config.yaml`` is written only after the tidy tables, so the two always describe the same study.
    """

    # claiming a folder ----------------------------------------------------------------------------------------
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
            doc = {"study": cfg.study, "data": kind, "created_by": f"stmedfm {__version__}"}
            try:
                atomic_write_text(self.root / MARKER, json.dumps(doc, indent=1) + "\n")
            except OSError as exc:
                raise StmedfmError(f"Cannot create the result folder '{self.root}' ({exc.strerror or exc}); pass a "
                                   f"writable --out.") from None

    def open(self, cfg: StudyConfig) -> StudyData:
        """The one way into a store before computing: refuse a folder that is not this study's (before anything is
        written), then claim it for the kind of data the study reads. Returns the study's data identities. Opening
        never downloads: fetching missing files is :func:`stmedfm.run.planning.preflight`'s, which running a study
        (:func:`stmedfm.run.study.run_study`) calls first; here a missing file is one line (:func:`study_data`)."""
        self.check_claim(cfg, None)
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
        stale = [p for d in ("runs", "checkpoints", "predictions") for p in (self.root / d).glob(".*.tmp")]
        stale += list(self.root.glob(".*.tmp"))
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    # runs -----------------------------------------------------------------------------------------------------
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
        if result.predictions is not None:  # written first: a record never names a file that is not there
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(result.predictions, dtype=np.float16), allow_pickle=False)
            blob = buf.getvalue()
            atomic_write_bytes(self.predictions_path(rid), blob)
            record["predictions"] = {"shape": list(result.predictions.shape), "dtype": "float16",
                                     "sha256": hashlib.sha256(blob).hexdigest()}
        atomic_write_text(self.run_path(rid), json.dumps(record, default=float))

    # checkpoints ------------------------------------------------------------------------------------------------
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
            state = checkpoint_state(obj, job_id)
            if state is None:
                problem = "not a checkpoint of this job"
            elif cfg is not None:
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
        seal.write_bytes(self.root, "config.yaml", cfg.to_yaml().encode())

    # tidy tables
    def consolidate(self, cfg: StudyConfig, data: StudyData) -> dict[str, pd.DataFrame]:
        """Rebuild the tidy CSV tables from the finished runs of the current plan on the current data; returns
        them. Runs of other parameters or other data stay in runs/ but never enter the tables."""
        chosen = self.lr_selection(cfg, data) if cfg.lr_grid else None
        planned = self.planned(cfg, data, chosen)
        run_rows, metric_rows = [], []
        extras: dict[str, list[pd.DataFrame]] = defaultdict(list)
        cache: dict[str, dict | None] = {}
        for p in planned:
            rid = run_id(cfg, p.spec, data)
            if rid not in cache:
                cache[rid] = self.load_run_on(rid, data)
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
        if chosen is not None:
            tables["lr_selection"] = chosen
        tables.update({name: pd.concat(frames, ignore_index=True) for name, frames in extras.items()})
        losses = []
        for job in pretrain_jobs(planned):
            jid = job_id(cfg, job, data)
            if self.has_checkpoint(jid):
                frame = pd.read_csv(self.loss_path(jid))
                frame.insert(0, "pretrain", "+".join(job.tasks))
                frame.insert(0, "seed", job.seed)
                losses.append(frame)
        if losses:
            tables["pretrain_loss"] = pd.concat(losses, ignore_index=True)
        self.write_tables(tables)
        self.write_bundle(cfg, tables["runs"])
        return tables

    def write_bundle(self, cfg: StudyConfig, runs: pd.DataFrame) -> None:
        """``predictions.npz``: the test labels of every task of the study (``labels/<task>``, in the rows the runs
        were evaluated on) and the per-image probabilities of every run with a small test split
        (``probs/<rid>``, :data:`BUNDLE_MAX_IMAGES`): what the hierarchical bootstrap needs from a committed store."""
        arrays: dict[str, np.ndarray] = {}
        if runs.empty:
            return
        for task in sorted(set(runs["task"])):
            split = D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)["test"]
            sub = eval_subset(len(split), cfg, task, "test")
            labels = split.labels.numpy()
            arrays[f"labels/{task}"] = (labels if sub is None else labels[sub.numpy()]).astype(np.uint8)
        for rid, task in zip(runs["run_id"], runs["task"]):
            if len(arrays[f"labels/{task}"]) <= BUNDLE_MAX_IMAGES and f"probs/{rid}" not in arrays:
                probs = self.load_predictions(rid)
                if probs is not None:
                    arrays[f"probs/{rid}"] = probs
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        seal.write_bytes(self.root, BUNDLE, buf.getvalue())  # with its sha256, like the tables

    def planned(self, cfg: StudyConfig, data: StudyData, lr_selection: pd.DataFrame | None = None) -> list:
        """The plan of ``cfg`` as far as this store decides it: with ``lr_grid``, the runs at the learning rates its
        selection runs chose (:func:`stmedfm.core.records.plan`)."""
        if not cfg.lr_grid:
            return plan(cfg)
        table = self.lr_selection(cfg, data) if lr_selection is None else lr_selection
        return plan(cfg, selection.chosen(table))

    def lr_selection(self, cfg: StudyConfig, data: StudyData) -> pd.DataFrame:
        """The ``lr_selection`` table (:func:`stmedfm.core.selection.table`) of the selection runs this store holds:
        only their validation AUROC is read. ``selection.chosen`` of it is what the study plans with."""
        rows = []
        for p in plan(cfg):
            if p.experiment != selection.EXPERIMENT:
                continue
            rec = self.load_run(run_id(cfg, p.spec, data))
            if rec is not None and selection.METRIC in rec["metrics"]:
                rows.append({"task": p.spec.task, "strategy": p.spec.strategy, "lr": p.spec.lr, "seed": p.spec.seed,
                             "metric": selection.METRIC, "value": rec["metrics"][selection.METRIC]})
        frame = pd.DataFrame(rows, columns=["task", "strategy", "lr", "seed", "metric", "value"])
        return selection.table(frame, cfg.lr_grid, cfg.downstream_tasks, cfg.lr_selection_seeds)

    # a run against the study's data (issue 29) -------------------------------------------------------------------
    def load_run_on(self, rid: str, data: StudyData) -> dict | None:
        """:meth:`load_run`, and the record's data (its provenance names the files it was computed on) checked against
        the files this study reads: a record computed on other bytes (a synthetic run under a real run's id, edited
        or reused from another store) is quarantined and recomputed, never taken by its id alone."""
        rec = self.load_run(rid)
        if rec is not None:
            problem = data_mismatch(rec, data)
            if problem:
                self.quarantine(self.run_path(rid), problem)
                return None
        return rec

    # digests (stmedfm.core.seal) -------------------------------------------------------------------------------------
    def write_tables(self, tables: dict[str, pd.DataFrame]) -> None:
        """Write the tidy tables and record their digests with those of the run records they were built from (the
        runs listed in ``runs.csv``), so every later read can prove the tables are the ones written here."""
        seal.write_csvs(self.root, {f"{name}.csv": frame for name, frame in tables.items()})
        rids = tables["runs"]["run_id"] if "run_id" in tables["runs"] else ()
        seal.record(self.root, runs={rid: seal.sha256_file(self.run_path(rid)) for rid in dict.fromkeys(rids)
                                     if self.run_path(rid).is_file()})




def _kind_hint(kind: str) -> str:
    return "listed as synthetic in a MANIFEST.json" if kind == "synthetic" else "none of them synthetic"


def _study_in(config_yaml: Path) -> str | None:
    try:
        doc = yaml.safe_load(config_yaml.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return doc.get("study") if isinstance(doc, dict) and isinstance(doc.get("study"), str) else None


def data_mismatch(rec: dict, data: StudyData) -> str | None:
    """Why a run record was not computed on the study's files (None: it was, or the record is older than data
    provenance and says nothing). The record's ``provenance.data`` is 'flag=kind:digest; …'
    (:class:`~stmedfm.data.FileIdentity` as text), written by the worker that computed it."""
    text = (rec.get("provenance") or {}).get("data")
    if not text:
        return None
    found = dict(part.strip().split("=", 1) for part in str(text).split(";") if "=" in part)
    task = rec.get("task")
    if task in data and task not in found:
        return f"it was computed on {text}, not on {task}"
    for flag, identity in found.items():
        if flag in data and str(data[flag]) != f"{flag}={identity}":
            return f"it was computed on {flag}={identity}, and this study reads {data[flag]}"
    return None


def checkpoint_state(obj, job_id: str) -> dict | None:
    """The state dict of a stored checkpoint ({'job_id', 'state_dict', ...}), or None when it is not one of
    ``job_id``. Decision: a bare state dict (written before checkpoints named their job) names no job, so it is
    quarantined and recomputed rather than trusted. Public because inference loads checkpoints with the same
    rule: a model is never rebuilt from another job's weights."""
    if isinstance(obj, dict) and obj.get("job_id") == job_id and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    return None


