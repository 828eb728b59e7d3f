"""Running a variant study (:mod:`stmedfm.analysis.variants`): every variant through :func:`stmedfm.run.study.run_study` into
``results/<study>/<variant>/``, then the tidy tables of all variants aggregated into ``results/<study>/``. Kept apart
from :mod:`stmedfm.analysis.variants`, which reads and analyses those tables without torch (``tests/test_architecture.py``).
"""

from __future__ import annotations

import pandas as pd

from stmedfm.core import seal
from stmedfm.run.executors import reusable
from stmedfm.run.planning import study_data
from stmedfm.core.results import MARKER
from stmedfm.run.store import ResultStore
from stmedfm.run.study import default_workers, run_study
from stmedfm.analysis.variants import VariantStudy, comparisons, complete, read, summaries, variant_table, write_tables

__all__ = ["run", "results", "aggregate"]


def run(study: VariantStudy, workers: int | None = None, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Run (or resume) every variant, then aggregate; returns the aggregated tables. Each variant takes the runs and
    checkpoints of the same id that a sibling variant already has (``run_study``'s ``reuse``: an id covers
    parameters and data, so Scratch, which does not depend on the sampler, is computed once)."""
    first = next(iter(study.configs.values()))
    with reusable(workers or first.workers or default_workers(), first.scheduler) as executor:  # warm across variants
        for variant, cfg in study.configs.items():
            siblings = [study.root / v for v in study.configs if v != variant and (study.root / v / MARKER).is_file()]
            run_study(cfg, out=study.root / variant, progress=progress, workers=workers, scheduler=executor,
                      reuse=siblings)
    return aggregate(study)


def results(study: VariantStudy, workers: int | None = None, progress: bool = True) -> dict[str, pd.DataFrame]:
    """The study's tables: read from ``results/<study>/`` when they are complete (the committed full run),
    else computed (resuming whatever runs exist)."""
    if complete(study):
        return read(study)
    return run(study, workers=workers, progress=progress)


def aggregate(study: VariantStudy) -> dict[str, pd.DataFrame]:
    """Collect every variant's tidy tables into ``results/<study>/`` with a ``variant`` column; returns them."""
    metrics, runs, losses = [], [], []
    for v, cfg in study.configs.items():
        store = ResultStore(study.root / v)
        tables = store.consolidate(cfg, study_data(cfg))
        for frame, acc in ((tables.get("metrics"), metrics), (tables.get("runs"), runs),
                           (tables.get("pretrain_loss"), losses)):
            if frame is None or frame.empty:
                continue
            frame = frame.rename(columns={"variant": "setting"})
            frame.insert(0, "variant", v)
            acc.append(frame)
    out = {
        "metrics": _tidy(pd.concat(metrics, ignore_index=True)) if metrics else pd.DataFrame(),
        "runs": _tidy(pd.concat(runs, ignore_index=True)) if runs else pd.DataFrame(),
        "pretrain_loss": pd.concat(losses, ignore_index=True) if losses else pd.DataFrame(),
        "variants": variant_table(study),
    }
    out.update(summaries(out["metrics"]))
    out["comparisons"] = comparisons(study, out["metrics"])
    seal.write_csvs(study.root, {f"{name}.csv": frame for name, frame in out.items()})
    write_tables(study, out)
    return out


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    if "fraction" not in frame.columns:
        frame["fraction"] = 1.0
    frame["fraction"] = frame["fraction"].fillna(1.0)
    frame["setting"] = frame["setting"].fillna("")
    return frame
