"""Folders of derived tables that prove themselves: a sha256 of every table, recorded when it is written, checked
when it is read.

A result store (or a variant study's folder) keeps ``digests.json`` beside its tables::

    {"format": 1, "algorithm": "sha256",
     "files": {"metrics.csv": "<hex>", "tables/table7_auroc.csv": "<hex>", "config.yaml": "<hex>", ...},
     "runs": {"run-…": "<hex of runs/run-….json>", ...}}

* Every writer of a derived table goes through :func:`write_csvs` (or :func:`record` right after its own atomic
  write), so the digest is that of the very bytes written.
* Every reader goes through :func:`check` (``ResultStore.table`` is the single point for the store's tables,
  :func:`read_csv` for the others): a table whose bytes differ from its digest is refused with one line naming the
  file. Nothing is silently shown from a truncated or hand-edited table.
* ``runs`` holds the digest of each run record a store's tables were built from (``stmedfm seal --check`` reports
  a record changed since); committed stores have no run files, their tables are checked alone.
* A folder without ``digests.json`` (a store written before digests existed), or a file its digests do not list
  (a store sealed partly, by the first command of this version that wrote into it), is read unchecked, with a
  warning naming it, so older stores keep working; ``stmedfm seal FOLDER`` (:func:`seal`) records the digests of the tables as they are now — the
  act of vouching for them, so it is never done implicitly.

What is covered: ``*.csv``, ``*.npz`` (per-image predictions, bootstrap replicates) and ``config.yaml`` at the
folder's top, ``tables/*.csv`` and the inference weights
``models/*.pt`` (:mod:`stmedfm.run.inference`). Markdown (``tables/*.md``)
is a rendering for people, rewritten from the CSV beside it, and is not covered.

Hand-written on ``hashlib`` and ``json`` (a few dozen lines) because no library does this job for a folder of CSV
files; it sits in the foundation so every writer and reader layer can use it. Concurrency: the digests file is
replaced atomically; two commands writing tables of one folder at the same moment (a study and ``stmedfm report``)
can lose one update, which later reads as "does not match" (never as a silent pass): rerun the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pandas as pd

from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_write_bytes

DIGESTS = "digests.json"
FORMAT = 1
#: What :func:`seal` covers, as globs relative to the folder.
COVERED = ("*.csv", "*.npz", "config.yaml", "tables/*.csv", "models/*.pt")
#: Covered files that are local caches, never committed (saved inference weights, re-materialised from their run
#: when absent): checked when present, but a clone without them is not missing anything.
LOCAL = ("models/",)


class UnsealedWarning(UserWarning):
    """A folder of tables has no digests.json: its tables are read unchecked."""


def sha256_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _path(root: Path) -> Path:
    return Path(root) / DIGESTS


def load(root: str | os.PathLike) -> dict | None:
    """The folder's digests, or None when it has none; a damaged digests file is one line."""
    path = _path(Path(root))
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StmedfmError(f"'{path}' is damaged ({type(exc).__name__}); it holds the digests of the tables beside "
                           f"it. Restore it (e.g. `git checkout {path}`), or rebuild the tables with `stmedfm study "
                           f"PARAMS --out {path.parent}`.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise StmedfmError(f"'{path}' is not a digests file; restore it or remove it and run `stmedfm seal "
                           f"{path.parent}` on tables you trust.")
    return doc


def record(root: str | os.PathLike, files: dict[str, str] | None = None, runs: dict[str, str] | None = None) -> None:
    """Merge ``files`` (name relative to ``root`` -> sha256 hex) and ``runs`` (run id -> sha256 hex of its record,
    replacing the previous set when given) into the folder's digests."""
    root = Path(root)
    doc = load(root) or {}
    doc = {"format": FORMAT, "algorithm": "sha256", "files": dict(doc.get("files") or {}),
           "runs": dict(doc.get("runs") or {})}
    doc["files"].update(files or {})
    doc["files"] = dict(sorted(doc["files"].items()))
    if runs is not None:
        doc["runs"] = dict(sorted(runs.items()))
    atomic_write_bytes(_path(root), (json.dumps(doc, indent=1) + "\n").encode())


def write_csvs(root: str | os.PathLike, frames: dict[str, object]) -> list[Path]:
    """Write each frame (name relative to ``root``, e.g. 'metrics.csv', 'tables/table7_auroc.csv') atomically as CSV
    and record the digest of the bytes written after each one (a write that fails midway leaves every table
    matching its digest); returns the paths."""
    return [write_bytes(root, name, frame.to_csv(index=False).encode()) for name, frame in frames.items()]


def write_bytes(root: str | os.PathLike, name: str, blob: bytes) -> Path:
    """Write one covered file (e.g. config.yaml) atomically and record its digest."""
    atomic_write_bytes(Path(root) / name, blob)
    record(root, {name: sha256_bytes(blob)})
    return Path(root) / name


_warned: set[str] = set()


def check(root: str | os.PathLike, name: str) -> None:
    """Refuse, in one line, a covered file whose bytes are not the ones recorded when it was written."""
    root = Path(root)
    doc = load(root)
    path = root / name
    if doc is None or name not in doc["files"]:
        key = str(root.resolve()) if doc is None else str(path.resolve())
        if key not in _warned and path.exists():
            _warned.add(key)
            what = f"'{root}' has no {DIGESTS}: its tables are" if doc is None else \
                f"'{path}' is not listed in {_path(root)} (written before it, by hand or by another tool): it is"
            warnings.warn(UnsealedWarning(f"{what} read unchecked (`stmedfm seal {root}` records the digests of "
                                          f"tables you trust)."), stacklevel=3)
        return
    expected = doc["files"][name]
    if not path.exists():
        return  # a missing table is its reader's message ("run the study first")
    try:
        found = sha256_file(path)
    except OSError as exc:
        raise StmedfmError(f"Cannot read '{path}' ({exc.strerror or exc}).") from None
    if found != expected:
        raise StmedfmError(f"'{path}' is damaged: its sha256 is not the one recorded in {_path(root)} when it was "
                           f"written (truncated or edited). Restore it (e.g. `git checkout {path}`) or rebuild it "
                           f"from the runs (`stmedfm study PARAMS --out {root}`, then `stmedfm tables {root}`).")


def read_csv(root: str | os.PathLike, name: str, **kwargs):
    """:func:`check`, then ``pandas.read_csv`` of ``root / name``."""
    check(root, name)
    return pd.read_csv(Path(root) / name, **kwargs)


def covered(root: str | os.PathLike) -> list[str]:
    """The covered files present in ``root``, as names relative to it."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for g in COVERED for p in root.glob(g) if p.is_file())


def seal(root: str | os.PathLike) -> dict[str, str]:
    """Record the digests of every covered file of ``root`` as it is now (the run digests are kept); returns them."""
    root = Path(root)
    if not root.is_dir():
        raise StmedfmError(f"'{root}' is not a folder; `stmedfm seal` takes a result store, e.g. results/offline.")
    files = {name: sha256_file(root / name) for name in covered(root)}
    if not files:
        raise StmedfmError(f"'{root}' holds no tables (*.csv, config.yaml, tables/*.csv) to seal.")
    doc = load(root) or {}
    atomic_write_bytes(_path(root), (json.dumps({"format": FORMAT, "algorithm": "sha256", "files": files,
                                                  "runs": doc.get("runs") or {}}, indent=1) + "\n").encode())
    return files


def problems(root: str | os.PathLike) -> list[str]:
    """Every disagreement between ``root`` and its digests, one line each (empty: the folder proves itself):
    covered files changed, missing from the digests, or listed but gone, and run records changed since the tables
    were built from them."""
    root = Path(root)
    doc = load(root)
    if doc is None:
        return [f"'{root}' has no {DIGESTS}"]
    out = []
    for name in covered(root):
        expected = doc["files"].get(name)
        if expected is None:
            out.append(f"'{root / name}' is not sealed")
        elif sha256_file(root / name) != expected:
            out.append(f"'{root / name}' does not match its digest")
    out += [f"'{root / name}' is sealed but missing" for name in doc["files"]
            if not (root / name).is_file() and not name.startswith(LOCAL)]
    for rid, expected in (doc.get("runs") or {}).items():
        path = root / "runs" / f"{rid}.json"
        if path.is_file() and sha256_file(path) != expected:
            out.append(f"'{path}' changed since the tables were built from it")
    return out
