"""Assemble and run one study: the one code path of ``stmedfm study`` (:mod:`stmedfm.cli`) and of a notebook's
``setup`` (:mod:`stmedfm.notebook`), so both check, claim and execute a study the same way.

The order is what keeps a failure cheap and traceless: the ``--reuse`` stores are checked, the executor is
connected (a scheduler that cannot be reached stops here), and only then is the result folder claimed for the
parameter file (:func:`stmedfm.run.studyname.claim`: refused when it holds another study or another file's results;
the data files fetched when ``download`` is on) and the study run (:func:`stmedfm.run.study.run_study`).
"""

from __future__ import annotations

import os

from stmedfm.core.config import StudyConfig
from stmedfm.run.executors import connect
from stmedfm.run.store import ResultStore
from stmedfm.run.study import reuse_sources, run_study
from stmedfm.run.studyname import claim

__all__ = ["run"]


def run(cfg: StudyConfig, params: str | os.PathLike | None, out: str | os.PathLike | None = None,
        reuse=(), progress: bool = True) -> ResultStore:
    """Run (or resume) the study ``cfg`` of the parameter file ``params`` into ``out`` (default
    ``results/<study>/``), taking runs of the same id from the stores ``reuse``; returns its store."""
    reuse_sources(reuse, out or "")  # a bad --reuse: one line, nothing claimed or written
    with connect(cfg.scheduler) as executor:  # connected before a folder is claimed
        root = claim(cfg, params, out=out)
        return run_study(cfg, out=root, progress=progress, scheduler=executor, reuse=reuse)
