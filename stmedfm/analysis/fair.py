"""Fair comparisons (issue 28): the claims at every step budget, at matched steps, and on held-out tasks, each
decided with its paired test *and* the TOST of equivalence.

The study itself is an ordinary one (``stmedfm study params/fair.yaml``): its ``budget`` experiment
(``budget_tasks`` x ``budget_strategies``) and its ``leave_out`` experiment (``leave_out_tasks``: every downstream
task pretrained without itself). This module only reads the store's tidy tables and writes its own beside them
(``stmedfm fair RESULTS``):

=======================  =========================================================================================
``fair_budget``          test AUROC per task x strategy x steps: mean, 95 % t-CI over seeds, n
``fair_contrasts``       every contrast below, paired over seeds (``mean_diff`` = a - b, :func:`stmedfm.core.stats.compare`
                         with the study's ``equivalence_margin``: Wilcoxon + Holm, TOST + Holm), the ``claim`` it
                         tests and its ``verdict``
=======================  =========================================================================================

Contrasts (families: Holm runs within each ``family``):

* ``budget:<task>:<steps>``: at each budget, Full - Scratch, LoRA/Adapter - Scratch and LoRA/Adapter - Full — the
  paper's claims at every budget instead of one.
* ``in-task:<task>``: Full at ``s`` steps against Scratch at ``s + p`` steps, where ``p`` is the expected number of
  pretraining steps that drew the task (``pretrain_steps`` x its sampling probability,
  :func:`stmedfm.core.records.in_task_pretraining_steps`): equal *in-task* steps. Decision: Scratch's AUROC at ``s + p`` is
  interpolated per seed, linearly in log(steps) between the two nearest budgets of the grid (no extrapolation: a
  budget whose ``s + p`` lies beyond the grid is left out), so no extra run is needed; Scratch at equal *total*
  steps is the ``budget`` family's Full - Scratch.
* ``held-out:<task>``: each pretrained strategy started from the checkpoint pretrained *without* the task, against
  Scratch (transfer runs, same seeds) and against the same strategy from the full checkpoint.

Verdicts: a directional claim (pretraining helps: Full > Scratch on the dominant task; negative transfer: Scratch >
Full on the small task) uses :func:`stmedfm.core.stats.verdict`; "PEFT keeps the gain" (LoRA/Adapter vs Full) and
"held-out transfer matches" are *equivalence* claims (:func:`stmedfm.core.stats.equivalence_verdict`): supported only
when TOST shows the difference inside the margin, contradicted when it is significant and its interval lies wholly
outside the margin. Roles come from :func:`roles` (``claim_roles`` in the parameters, else :func:`stmedfm.analysis.report.claim_roles`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from stmedfm.core import paths, stats
from stmedfm.core.strategies import FULL, PAPER_PEFT, PAPER_PRETRAINED, SCRATCH
from stmedfm.core.config import StudyConfig
from stmedfm.core.io import atomic_write_csv
from stmedfm.analysis.plots import fig_budget_curves, fig_lr_selection, write_figure
from stmedfm.analysis.report import claim_roles
from stmedfm.core.results import StoredResults
from stmedfm.analysis.tables import summarise
from stmedfm.core.records import in_task_pretraining_steps

__all__ = ["METRIC", "BUDGET_CONTRASTS", "roles", "budget_summary", "budget_contrasts", "in_task_contrasts",
           "held_out_contrasts", "analyse", "write_tables", "write_figures"]

METRIC = "macro_auroc"
#: (a, b) of every budget contrast, a - b.
BUDGET_CONTRASTS = (*((s, SCRATCH) for s in PAPER_PRETRAINED), *((s, FULL) for s in PAPER_PEFT))


def roles(cfg: StudyConfig) -> dict[str, str | None]:
    """The claims' tasks: ``claim_roles`` of the parameters over :func:`stmedfm.analysis.report.claim_roles`."""
    return {**claim_roles(cfg), **cfg.claim_roles}


def _claim(a: str, b: str, task: str, role: dict) -> tuple[str, int]:
    """(claim, sign): the claim a contrast a - b tests on ``task`` and the sign of a - b the claim predicts
    (0: an equivalence claim)."""
    if (a, b) == (FULL, SCRATCH):
        if task == role.get("small"):
            return "negative transfer", -1
        return ("pretraining helps" if task == role.get("dominant") else "transfer helps"), +1
    if b == "full":
        return "PEFT keeps the gain", 0
    return "PEFT beats scratch", +1


def _verdict(row, sign: int) -> str:
    if sign == 0:
        return stats.equivalence_verdict(row["p_tost_holm"], row["p_holm"], row["ci_low"], row["ci_high"], row["margin"])
    return stats.verdict(sign * row["mean_diff"], row["p_holm"])


def _annotate(out: pd.DataFrame, claims: list[tuple[str, int]]) -> pd.DataFrame:
    out["claim"] = [c for c, _ in claims]
    out["verdict"] = [_verdict(r, s) for (_, r), (_, s) in zip(out.iterrows(), claims)]
    return out


def _rows(metrics: pd.DataFrame, experiment: str, metric: str = METRIC) -> pd.DataFrame:
    if metrics.empty:
        return metrics
    return metrics[(metrics["experiment"] == experiment) & (metrics["metric"] == metric)]


def budget_summary(metrics: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Mean and 95 % t-CI over seeds per task x strategy x steps of the ``budget`` experiment."""
    rows = _rows(metrics, "budget", metric)
    if rows.empty:
        return pd.DataFrame(columns=["task", "strategy", "steps", "mean", "ci95", "n"])
    return summarise(rows, ["task", "strategy", "steps"])


def budget_contrasts(metrics: pd.DataFrame, role: dict, margin: float, metric: str = METRIC) -> pd.DataFrame:
    """:data:`BUDGET_CONTRASTS` at every (task, steps) of the ``budget`` experiment, one Holm family each."""
    rows = _rows(metrics, "budget", metric)
    frames = []
    for (task, steps), g in rows.groupby(["task", "steps"], sort=False):
        present = set(g["strategy"])
        pairs = [(a, b) for a, b in BUDGET_CONTRASTS if a in present and b in present]
        if not pairs:
            continue
        out = stats.compare(g, [({"strategy": a}, {"strategy": b}) for a, b in pairs], pair_on=["seed"],
                            labels=[f"{a} - {b}" for a, b in pairs],
                            family=f"budget:{task}:{int(steps)}", margin=margin)
        out.insert(0, "steps", int(steps))
        out.insert(0, "task", task)
        frames.append(_annotate(out, [_claim(a, b, task, role) for a, b in pairs]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _interpolated(curve: pd.DataFrame, at: float) -> pd.Series:
    """Per seed, the value of a (steps x seed) table at ``at`` steps, linear in log(steps) between the two
    nearest budgets; NaN outside the grid."""
    x = np.log(curve.index.to_numpy(dtype=float))
    out = {}
    for seed in curve.columns:
        y = curve[seed].to_numpy(dtype=float)
        ok = ~np.isnan(y)
        inside = ok.sum() >= 2 and x[ok].min() <= np.log(at) <= x[ok].max()
        out[seed] = float(np.interp(np.log(at), x[ok], y[ok])) if inside else np.nan
    return pd.Series(out)


def in_task_contrasts(metrics: pd.DataFrame, in_task: dict[str, float], role: dict, margin: float,
                      metric: str = METRIC) -> pd.DataFrame:
    """Full at ``s`` steps - Scratch at ``s + in_task[task]`` steps (interpolated, module docstring), paired over
    seeds, for every budget ``s`` whose shifted budget lies inside the grid; one Holm family per task."""
    rows = _rows(metrics, "budget", metric)
    frames = []
    for task, g in rows.groupby("task", sort=False):
        shift = in_task.get(task, 0.0)
        if not shift or not {FULL, SCRATCH} <= set(g["strategy"]):
            continue
        scratch = g[g["strategy"] == "scratch"].pivot_table(index="steps", columns="seed", values="value")
        full = g[g["strategy"] == "full"].pivot_table(index="steps", columns="seed", values="value")
        tidy = []
        for steps in full.index:
            matched = _interpolated(scratch, steps + shift)
            if matched.isna().all():
                continue
            label = f"full@{int(steps)} - scratch@{steps + shift:.0f}"
            tidy += [{"label": label, "side": "a", "seed": s, "value": v} for s, v in full.loc[steps].items()]
            tidy += [{"label": label, "side": "b", "seed": s, "value": v} for s, v in matched.items()]
        if not tidy:
            continue
        frame = pd.DataFrame(tidy).dropna()
        labels = list(dict.fromkeys(frame["label"]))
        out = stats.compare(frame, [({"label": lab, "side": "a"}, {"label": lab, "side": "b"}) for lab in labels],
                            pair_on=["seed"], labels=labels, family=f"in-task:{task}", margin=margin)
        out.insert(0, "steps", [int(lab.split("@")[1].split()[0]) for lab in labels])
        out.insert(0, "task", task)
        frames.append(_annotate(out, [_claim("full", "scratch", task, role)] * len(labels)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def held_out_contrasts(metrics: pd.DataFrame, margin: float, metric: str = METRIC) -> pd.DataFrame:
    """For every task of the ``leave_out`` experiment: each strategy pretrained without the task - Scratch (the
    transfer runs of the task) and - the same strategy from the full checkpoint; one Holm family per task. The
    second contrast is an equivalence claim (does leaving the task out of pretraining change anything?)."""
    rows = _rows(metrics, "leave_out", metric)
    scratch = _rows(metrics, "transfer", metric)
    scratch = scratch[scratch["strategy"] == "scratch"]
    frames = []
    for task, g in rows.groupby("task", sort=False):
        without = g[g["variant"] == f"without {task}"].assign(arm="held out")
        full_ckpt = g[g["variant"] == "all tasks"].assign(arm="all tasks")
        base = scratch[scratch["task"] == task].assign(arm="scratch")
        frame = pd.concat([without, full_ckpt, base], ignore_index=True)
        pairs, labels, claims = [], [], []
        for s in dict.fromkeys(without["strategy"]):
            if not base.empty:
                pairs.append(({"arm": "held out", "strategy": s}, {"arm": "scratch", "strategy": "scratch"}))
                labels.append(f"{s} (held out) - scratch")
                claims.append(("held-out transfer helps", +1))
            if (full_ckpt["strategy"] == s).any():
                pairs.append(({"arm": "held out", "strategy": s}, {"arm": "all tasks", "strategy": s}))
                labels.append(f"{s} (held out) - {s} (all tasks)")
                claims.append(("held-out transfer matches", 0))
        if not pairs:
            continue
        out = stats.compare(frame, pairs, pair_on=["seed"], labels=labels, family=f"held-out:{task}", margin=margin)
        out.insert(0, "task", task)
        frames.append(_annotate(out, claims))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def analyse(store) -> dict[str, pd.DataFrame]:
    """``budget`` (:func:`budget_summary`) and ``contrasts`` (every family above, one table) of a store."""
    store = store if isinstance(store, StoredResults) else StoredResults(store)
    cfg = store.config()
    metrics = store.table("metrics")
    role, margin = roles(cfg), cfg.equivalence_margin
    parts = [budget_contrasts(metrics, role, margin), in_task_contrasts(metrics, in_task_pretraining_steps(cfg),
                                                                       role, margin),
             held_out_contrasts(metrics, margin)]
    parts = [p for p in parts if not p.empty]
    contrasts = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return {"budget": budget_summary(metrics), "contrasts": contrasts}


def write_tables(store, tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """Write ``fair_<name>.csv`` into the store; returns the paths."""
    store = store if isinstance(store, StoredResults) else StoredResults(store)
    tables = analyse(store) if tables is None else tables
    written = []
    for name, frame in tables.items():
        path = store.root / f"fair_{name}.csv"
        atomic_write_csv(path, frame)
        written.append(path)
    return written


def write_figures(store, out: str | os.PathLike | None = None) -> list[Path]:
    """``budget_curves`` (with Full shifted by its in-task pretraining steps) and ``lr_selection`` of a store, as
    far as it has them, into ``out`` (default ``figures/<study>/``)."""
    store = store if isinstance(store, StoredResults) else StoredResults(store)
    cfg = store.config()
    out_dir = Path(out) if out is not None else paths.figures_dir(cfg.study)
    notices = store.notices()
    written = []
    metrics = store.table("metrics")
    if not _rows(metrics, "budget").empty:
        fig = fig_budget_curves(metrics, pretrain_steps=in_task_pretraining_steps(cfg))
        written += write_figure(fig, out_dir, "budget_curves", notices)
    selection = store.root / "lr_selection.csv"
    if selection.is_file():
        table = pd.read_csv(selection)
        if not table.empty and (table["n"] > 0).any():
            written += write_figure(fig_lr_selection(table), out_dir, "lr_selection", notices)
    return written


def read_tables(results: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The committed ``fair_*.csv`` of a store (written by :func:`write_tables`), read through the seal."""
    store = StoredResults(results)
    return {"budget": store.table("fair_budget"), "contrasts": store.table("fair_contrasts")}


def verdicts_markdown(results: str | os.PathLike) -> str:
    """The generated block of docs/fair.md: per claim, how many of its contrasts are supported / contradicted /
    inconclusive at every budget, at equal in-task steps and on held-out tasks, then Full - Scratch per budget on
    each task (the claim that motivated the study), all from the committed ``fair_contrasts.csv``."""
    c = read_tables(results)["contrasts"]
    kind = c["family"].str.split(":").str[0]
    counts = (c.assign(kind=kind).groupby(["claim", "kind", "verdict"]).size().unstack(fill_value=0)
              .reindex(columns=["supported", "contradicted", "inconclusive"], fill_value=0))
    n = int(c["n"].max()) if len(c) else 0
    lines = [f"Every contrast paired over {n} seeds, AUROC, Holm within its family (one family per task x budget, "
             f"per task at equal in-task steps, per held-out task); margin ±{c['margin'].dropna().iloc[0]:g} for "
             "the claims of no difference.", "",
             "| claim | contrasts at | supported | contradicted | inconclusive |", "|---|---|---|---|---|"]
    for (claim, where), r in counts.iterrows():
        lines.append(f"| {claim} | {where} | {r['supported']} | {r['contradicted']} | {r['inconclusive']} |")
    lines += ["", "Full − Scratch (AUROC, mean [95 % CI], verdict of the claim it tests) at each budget:", ""]
    fs = c[(c["label"] == f"{FULL} - {SCRATCH}") & kind.eq("budget")]
    for task, g in fs.groupby("task", sort=False):
        cells = "; ".join(f"{int(r.steps)}: {r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] {r.verdict}"
                          for r in g.sort_values("steps").itertuples())
        lines.append(f"- {task} ({g['claim'].iloc[0]}): {cells}")
    return "\n".join(lines) + "\n"
