"""A result store as its readers see it: the files of one study under ``results/<study>/``, read without torch.
Tables, figures, the report and the analyses open a store as :class:`StoredResults`; :class:`stmedfm.run.store.ResultStore`
(a subclass) adds everything that writes one: claiming a folder, run records, checkpoints, the tidy tables. Kept
apart so that reading results needs none of the training machinery (``tests/test_architecture.py``: the readers
import no torch).

A reader still sets damaged files aside (:meth:`StoredResults.quarantine`: moved to ``quarantine/``, never
deleted), so a damaged run record is recomputed by the next study instead of being read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from stmedfm.core import seal
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError

#: The marker of a result store: which study it holds and whether its data is real or synthetic.
MARKER = "store.json"
#: Columns a tidy table of the store must have to be read at all.
TABLE_COLUMNS = {"metrics": ("run_id", "experiment", "variant", "task", "strategy", "seed", "metric", "value"),
                 "runs": ("run_id", "experiment", "variant", "task", "strategy", "seed")}


class StoreWarning(UserWarning):
    """A damaged file of a result store was set aside (moved to quarantine/) and will be recomputed."""


class StoredResults:
    """The files of one study under ``results/<study>/``, read (see the module docstring and
    :class:`stmedfm.run.store.ResultStore`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # locations
    def run_path(self, rid: str) -> Path:
        return self.root / "runs" / f"{rid}.json"

    def predictions_path(self, rid: str) -> Path:
        return self.root / "predictions" / f"{rid}.npy"

    def checkpoint_path(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.pt"

    def loss_path(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.loss.csv"

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

    def load_predictions(self, rid: str, record: dict | None = None) -> np.ndarray | None:
        """The run's per-image test probabilities (float16, n_test x C), or None when the run stored none or the
        file does not match the digest its record holds (then the file is quarantined)."""
        rec = record if record is not None else self.load_run(rid)
        meta = (rec or {}).get("predictions")
        path = self.predictions_path(rid)
        if not meta or not path.is_file():
            return None
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            self.quarantine(path, "its digest differs from the run record's")
            return None
        return np.load(io.BytesIO(blob), allow_pickle=False)

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

    def config(self) -> StudyConfig:
        path = self.root / "config.yaml"
        if not path.is_file():
            raise StmedfmError(f"'{self.root}' holds no study (no config.yaml). Run `stmedfm study PARAMS --out {self.root}` first.")
        seal.check(self.root, "config.yaml")
        return StudyConfig.load(path)

    def table(self, name: str) -> pd.DataFrame:
        path = self.root / f"{name}.csv"
        if not path.is_file():
            raise StmedfmError(f"'{path}' does not exist: run the study first (`stmedfm study ... --out {self.root}`).")
        seal.check(self.root, f"{name}.csv")  # the bytes written, or one line naming the damaged file
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

    def parameter_counts(self) -> pd.DataFrame:
        """``task, strategy, total, trainable``: the parameter counts the store's runs recorded (``runs.csv``; every
        run of a task and strategy adapts the same model), in the order the runs appear. Read, not recomputed from
        a model: the counts of the model each run trained, and no torch to read them."""
        runs = self.table("runs")
        first = runs.drop_duplicates(["task", "strategy"])
        return pd.DataFrame({"task": first["task"], "strategy": first["strategy"],
                             "total": first["total_params"].astype(int),
                             "trainable": first["trainable_params"].astype(int)}).reset_index(drop=True)

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
    if isinstance(metrics, dict) and "macro_auroc" in metrics and not any(m.startswith("val_") for m in metrics):
        return "written before runs recorded validation metrics and per-image predictions"
    if (not isinstance(metrics, dict) or any(m not in metrics for m in _CORE_METRICS)
            or not all(_number(v) for v in metrics.values())):
        return "its metrics are missing or not numbers"
    if not all(_number(rec[k]) for k in ("total_params", "trainable_params", "seconds")):
        return "its counts are not numbers"
    if not isinstance(extras, dict) or not all(
            isinstance(v, list) and all(isinstance(r, dict) for r in v) for v in extras.values()):
        return "its per-class tables are damaged"
    return None
