"""Figures of the fair-comparison protocol (issue 28): the learning-rate selection on validation, and AUROC vs step
budget per strategy with matched-steps reading aids. Like every figure function, they take tidy frames and return a
:class:`~matplotlib.figure.Figure` without reading or writing files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from stmedfm.core import strategies
from stmedfm.analysis.plots.style import (
    metric_label,
    n_range,
    no_data,
    present_strategies,
    require_columns,
    strategy_color,
    strategy_marker,
    style,
)
from stmedfm.analysis.tables import summarise

__all__ = ["fig_lr_selection", "fig_budget_curves"]


def fig_lr_selection(table: pd.DataFrame) -> Figure:
    """Validation macro AUROC vs learning rate (log scale), one panel per task, one line per strategy (mean ± sd
    over the selection seeds), the selected rate of each strategy ringed (dashed when it is at the grid's edge:
    the best rate may lie beyond the grid). ``table``: ``lr_selection.csv``
    (:func:`stmedfm.core.selection.table`)."""
    require_columns(table, ("task", "strategy", "lr", "n", "val_auroc_mean", "val_auroc_sd", "selected"),
                    "fig_lr_selection (the lr_selection table)")
    if table.empty or not (table["n"] > 0).any():
        raise no_data("the learning-rate selection figure", "no selection run has finished.")
    tasks = list(dict.fromkeys(table["task"]))
    with rc_context(style()):
        fig = Figure(figsize=(4.4 * len(tasks) + 2.2, 4.2))
        axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            sub = table[(table["task"] == task) & (table["n"] > 0)]
            for strategy in present_strategies(sub["strategy"]):
                g = sub[sub["strategy"] == strategy].sort_values("lr")
                color = strategy_color(strategy)
                ax.errorbar(g["lr"], g["val_auroc_mean"], yerr=g["val_auroc_sd"].fillna(0), color=color,
                            marker=strategy_marker(strategy), ms=4.5, lw=1.4, capsize=2,
                            label=strategies.label(strategy))
                best = g[g["selected"].astype(bool)]
                edge = best["at_edge"].astype(bool).to_numpy() if "at_edge" in best else [False] * len(best)
                ax.scatter(best["lr"], best["val_auroc_mean"], s=140, facecolors="none", edgecolors=color, lw=1.8,
                           zorder=4, linestyles=["--" if e else "-" for e in edge])
            ax.set_xscale("log")
            ax.set_title(task)
            ax.set_xlabel("learning rate (log scale)")
        axes[0].set_ylabel(f"validation {metric_label('macro_auroc')}")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[-1].legend(handles, labels, title=f"mean ± sd ({n_range(table['n'])} seeds)\nring: selected"
                        + ("\ndashed ring: at the grid's edge" if "at_edge" in table and table["at_edge"].any() else ""),
                        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
        fig.suptitle("Learning rates selected on validation (test split never read)", fontsize=12)
        fig.tight_layout()
    return fig


def fig_budget_curves(metrics: pd.DataFrame, metric: str = "macro_auroc", pretrain_steps: dict | None = None) -> Figure:
    """Test AUROC vs downstream steps (log scale), one panel per task, one line per strategy with its 95 % t-CI
    band over seeds (the ``budget`` experiment of one study). ``pretrain_steps``: task -> the expected number of
    pretraining steps that drew the task (``pretrain_steps`` x its sampling probability); Full's curve is then
    drawn a second time, dotted, shifted right by it, to read Scratch against Full at equal *in-task* steps."""
    require_columns(metrics, ("experiment", "task", "strategy", "steps", "seed", "metric", "value"),
                    "fig_budget_curves")
    sub = metrics[(metrics["experiment"] == "budget") & (metrics["metric"] == metric)]
    if sub.empty:
        raise no_data("the budget curves", f"no '{metric}' rows of the 'budget' experiment.")
    tasks = list(dict.fromkeys(sub["task"]))
    summary = summarise(sub, ["task", "strategy", "steps"])
    with rc_context(style()):
        fig = Figure(figsize=(4.4 * len(tasks) + 2.2, 4.4))
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            s = summary[summary["task"] == task]
            for strategy in present_strategies(s["strategy"]):
                g = s[s["strategy"] == strategy].sort_values("steps")
                color = strategy_color(strategy)
                x, mean, ci = (g[c].to_numpy(dtype=float) for c in ("steps", "mean", "ci95"))
                ax.plot(x, mean, marker=strategy_marker(strategy), ms=4.5, lw=1.6, color=color,
                        label=strategies.label(strategy), zorder=3)
                ok = np.isfinite(ci)
                if ok.any():
                    ax.fill_between(x[ok], np.clip(mean - ci, 0, 1)[ok], np.clip(mean + ci, 0, 1)[ok], color=color,
                                    alpha=0.15, lw=0)
                shift = (pretrain_steps or {}).get(task)
                if strategy == "full" and shift:
                    ax.plot(x + shift, mean, ls=":", lw=1.4, color=color,
                            label=f"{strategies.label(strategy)} at its in-task steps (+ pretraining's)")
            shift = (pretrain_steps or {}).get(task)
            steps = sorted({float(v) for v in s["steps"]})
            ax.set_xscale("log")
            ax.set_xticks(steps)
            ax.set_xticklabels([f"{v:g}" for v in steps])
            ax.minorticks_off()
            ax.set_title(f"{task}" + (f" (pretraining: ≈{shift:.0f} in-task steps)" if shift else ""), fontsize=10)
            ax.set_xlabel("downstream training steps (log scale)")
            ax.set_ylabel(f"test {metric.replace('_', ' ').replace('auroc', 'AUROC')}")
        handles, labels = [], []
        for ax in axes:  # every strategy once, whichever panel has it
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        axes[-1].legend(handles, labels, title=f"mean ± 95 % CI ({n_range(summary['n'])} seeds)", loc="upper left",
                        bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
        fig.suptitle("AUROC vs downstream budget", fontsize=12)
        fig.tight_layout()
    return fig
