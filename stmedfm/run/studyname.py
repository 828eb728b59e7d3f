"""One study, one name: the ``study:`` key of its parameter file.

``results/<study>/``, ``runs/<study>/`` and ``figures/<study>/`` are named by the ``study`` parameter (the YAML key,
or ``-p study=NAME``; the file's name only when the file has no such key), everywhere: the command line, the
notebooks and the Makefile (which asks ``stmedfm config PARAMS --get study``).

A result store belongs to the parameter file that created it. :func:`claim` marks the store
(:meth:`stmedfm.run.store.ResultStore.claim`: ``store.json``, its study and data kind) and records that file in
``results/<study>/source.yaml``; :func:`check` (and so :func:`claim`) refuses, before any work, a *different* file
naming the same study: a copy ``params/mine.yaml`` of ``smoke.yaml`` (still saying ``study: smoke``) stops with one
line asking for its own name instead of rewriting ``results/smoke/``. Overrides (``-p seeds=5``) of the same file
extend its own store.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from stmedfm.core import paths
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_write_text
from stmedfm.run.planning import preflight
from stmedfm.run.store import ResultStore

SOURCE_FILE = "source.yaml"
DEFAULTS = "(StudyConfig defaults)"


def source_name(params: str | os.PathLike | None) -> str:
    """How a parameter file is recorded: relative to the project root when inside it (so a clone elsewhere, or
    a notebook running in ``notebooks/``, names it the same way), else its absolute path."""
    if params is None:
        return DEFAULTS
    path = Path(params)
    if not path.is_absolute() and not path.is_file():
        path = paths.project_root() / path
    path = path.resolve()
    try:
        return path.relative_to(paths.project_root()).as_posix()
    except ValueError:
        return str(path)


def owner(root: str | os.PathLike) -> str | None:
    """The parameter file recorded as the owner of the store at ``root`` (None: no record)."""
    try:
        doc = yaml.safe_load((Path(root) / SOURCE_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return doc.get("params") if isinstance(doc, dict) else None


def check(cfg: StudyConfig, params: str | os.PathLike | None, out: str | os.PathLike | None = None) -> Path:
    """The store of ``cfg`` (``out``, else ``results/<cfg.study>``) if ``params`` may use it; writes nothing.

    Raises :class:`StmedfmError` when the folder is not a store of this study
    (:meth:`~stmedfm.run.store.ResultStore.check_claim`) or was created from another parameter file.
    """
    store = ResultStore(out if out is not None else paths.results_dir(cfg.study))
    store.check_claim(cfg, None)
    mine, theirs = source_name(params), owner(store.root)
    if theirs is not None and theirs != mine:
        raise StmedfmError(
            f"{mine} names study '{cfg.study}', but {_shown(store.root)} holds the results of {theirs}; nothing was "
            f"run. Give this study its own name: set `study: {Path(mine).stem}` in {mine} (or pass -p study=NAME).")
    return store.root


def claim(cfg: StudyConfig, params: str | os.PathLike | None, out: str | os.PathLike | None = None) -> Path:
    """:func:`check`, then, for a store without a record, mark it (after :func:`stmedfm.run.planning.preflight`: its
    files are present, downloaded when ``cfg.download``) and record ``params`` as its owner. A store without a
    record (the committed reference results, older stores) is adopted by the first file that runs into it."""
    root = check(cfg, params, out)
    if owner(root) is None:
        preflight(cfg)  # claiming is for running: the files are fetched first, so the store records their kind
        ResultStore(root).open(cfg)
        atomic_write_text(root / SOURCE_FILE, yaml.safe_dump({"study": cfg.study, "params": source_name(params)},
                                                             sort_keys=False))
    return root


def _shown(root: Path) -> str:
    try:
        return str(root.resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(root)
