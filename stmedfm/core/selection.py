"""Learning rates chosen on validation only (issue 28): the rule, written once, and the ``lr_selection`` table.

A study with ``lr_grid`` trains each strategy x task at every learning rate of its grid, on the
``lr_selection_seeds`` (disjoint from the study's seeds), in the store's ``lr_selection`` experiment. For each
strategy x task, the selected learning rate is the one with the highest mean *validation* macro AUROC
(:data:`METRIC`, ``val_macro_auroc``) over those seeds; its transfer runs then train at it with the study's own
seeds. Decisions:

* Only :data:`METRIC` is read: :func:`table` drops every other row before anything else, so no test metric can
  enter the choice (``tests/test_selection.py`` perturbs the test metrics and the validation ones to show it).
* A strategy x task is decided only when every point of its grid has every selection seed (``complete``): a
  partial store selects nothing, so a resumed study never trains at a choice that more runs could change.
* A choice at the smallest or largest rate of a grid of 3 or more is marked ``at_edge``: the best rate may lie
  beyond the grid, so that arm may be under-tuned (the comparison is then conservative for it). It is flagged in
  the table and the figure, not extended silently: widening a grid is a decision written in the parameter file.
* A run that diverged (NaN AUROC) counts as the worst value; ties go to the smaller learning rate (the more
  conservative step), so the choice is a pure function of the validation numbers.

Hand-written because it is one argmax over means; the mean is the selection criterion, not an estimate to test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = ["METRIC", "EXPERIMENT", "COLUMNS", "table", "chosen"]

METRIC = "val_macro_auroc"  #: the only number selection reads
EXPERIMENT = "lr_selection"  #: the store's experiment of the selection runs
COLUMNS = ("task", "strategy", "lr", "n", "val_auroc_mean", "val_auroc_sd", "complete", "selected", "at_edge")


def table(metrics: pd.DataFrame, grid: Mapping[str, Iterable[float]], tasks: Iterable[str],
          seeds: Iterable[int]) -> pd.DataFrame:
    """One row per task x strategy x learning rate of ``grid`` (strategy -> learning rates): how many of the
    ``seeds`` have a run (``n``), the mean and sd of their :data:`METRIC`, whether the task x strategy is
    ``complete`` and which learning rate is ``selected`` (True on one row of each complete task x strategy).

    ``metrics`` is tidy (columns task, strategy, lr, seed, metric, value; e.g. the rows of ``metrics.csv`` of
    the ``lr_selection`` experiment); rows of any other metric are ignored."""
    seeds = set(seeds)
    rows = metrics[metrics["metric"] == METRIC] if len(metrics) else metrics
    rows = rows[rows["seed"].isin(seeds)] if len(rows) else rows
    out = []
    for task in tasks:
        for strategy, lrs in grid.items():
            group = []
            for lr in lrs:
                sel = rows[(rows["task"] == task) & (rows["strategy"] == strategy) & np.isclose(rows["lr"], lr)] \
                    if len(rows) else rows
                values = sel.drop_duplicates("seed")["value"].to_numpy(dtype=float) if len(sel) else np.array([])
                group.append({"task": task, "strategy": strategy, "lr": float(lr), "n": int(len(values)),
                              "val_auroc_mean": float(np.mean(values)) if len(values) else float("nan"),
                              "val_auroc_sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")})
            complete = all(g["n"] == len(seeds) for g in group)
            best = None
            if complete:
                scores = [(-np.inf if np.isnan(g["val_auroc_mean"]) else g["val_auroc_mean"], -g["lr"])
                          for g in group]
                best = max(range(len(group)), key=lambda i: scores[i])
            edge = best is not None and len(group) >= 3 and group[best]["lr"] in (min(lrs), max(lrs))
            out += [{**g, "complete": complete, "selected": i == best, "at_edge": edge and i == best}
                    for i, g in enumerate(group)]
    return pd.DataFrame(out, columns=list(COLUMNS))


def chosen(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(strategy, task) -> the selected learning rate, from a :func:`table` (complete groups only)."""
    if frame.empty:
        return {}
    picked = frame[frame["selected"].astype(bool)]
    return {(r.strategy, r.task): float(r.lr) for r in picked.itertuples()}


def selected_markdown(results) -> str:
    """The generated block ``<!-- stmedfm:lrs STORE -->``: the selected learning rate per strategy x task of a
    store's committed ``lr_selection.csv`` (a star marks a choice at its grid's edge)."""
    from pathlib import Path

    from stmedfm.core.seal import read_csv

    frame = read_csv(Path(results), "lr_selection.csv")
    picked = frame[frame["selected"].astype(bool)]
    edge = picked["at_edge"].astype(bool) if "at_edge" in picked else pd.Series(False, index=picked.index)
    cells = picked.assign(cell=[f"{lr:g}{' *' if e else ''}" for lr, e in zip(picked["lr"], edge)])
    wide = cells.pivot(index="strategy", columns="task", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(picked["strategy"])), columns=list(dict.fromkeys(picked["task"])))
    lines = ["| strategy | " + " | ".join(wide.columns) + " |", "|---" * (len(wide.columns) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(str(v) for v in row) + " |" for s, row in wide.iterrows()]
    note = "\n\n\\* at the edge of its grid." if edge.any() else ""
    return "\n".join(lines) + note + "\n"
