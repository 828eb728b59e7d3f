"""Figures of the variant studies (:mod:`stmedfm.analysis.variants`): AUROC vs budget per pretraining variant, UMedPT-style
data efficiency, and the forest plot of the hypothesis contrasts.

They read the tidy frames the variant studies aggregate (a ``variant`` column beside the usual keys) and, like the
paper's figures, return a :class:`~matplotlib.figure.Figure` without reading or writing files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stmedfm.core import strategies
from stmedfm.analysis.plots.style import (
    VARIANT_COLORS,
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

__all__ = ["fig_budget_auroc", "fig_data_efficiency", "fig_contrasts", "DATA_EFFICIENCY_LABELS"]


def _band(ax, x, mean, ci, color, label, ls="-", marker="o", alpha=0.16, clip=(0.0, 1.0)):
    """A mean line with markers and a shaded 95 % CI band (clipped to the metric's range ``clip``; no band where
    the CI is undefined)."""
    x, mean, ci = (np.asarray(v, dtype=float) for v in (x, mean, ci))
    ax.plot(x, mean, ls=ls, marker=marker, ms=4.5, lw=1.6, color=color, label=label, zorder=3)
    ok = np.isfinite(ci)
    if ok.any():
        lo, hi = np.clip(mean - ci, *clip), np.clip(mean + ci, *clip)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=alpha, lw=0, zorder=2)


def _log_ticks(ax, values, fmt="{:g}") -> None:
    values = sorted({float(v) for v in values})
    ax.set_xscale("log")
    ax.set_xticks(values)
    ax.set_xticklabels([fmt.format(v) for v in values])
    ax.minorticks_off()


def _scratch_sets(sub: pd.DataFrame, order: list[str]) -> dict[frozenset, str]:
    """Scratch does not depend on the pretraining variant: runs shared by variants are drawn once, named after
    the first variant holding them."""
    sets: dict[frozenset, str] = {}
    for v in order:
        ids = frozenset(sub[(sub["variant"] == v) & (sub["strategy"] == "scratch")]["run_id"])
        if ids and ids not in sets:
            sets[ids] = v
    return sets


def fig_budget_auroc(metrics: pd.DataFrame, task: str, variants=None, metric: str = "macro_auroc") -> Figure:
    """AUROC vs downstream step budget on one task, one panel per pretrained strategy, one line per pretraining
    variant (sampler, width, ...), each with its 95 % t-CI band over seeds; Scratch (which does not depend on
    the pretraining variant) is the grey dashed line, once per distinct set of Scratch runs.

    ``metrics``: the tidy metrics of :func:`stmedfm.run.runvariants.aggregate` (columns variant, experiment ``budget``,
    task, strategy, steps, seed, metric, value, run_id).
    """
    require_columns(metrics, ("variant", "experiment", "task", "strategy", "steps", "seed", "metric", "value",
                              "run_id"), "fig_budget_auroc")
    sub = metrics[(metrics["experiment"] == "budget") & (metrics["task"] == task) & (metrics["metric"] == metric)]
    if variants is not None:
        sub = sub[sub["variant"].isin(list(variants))]
    if sub.empty:
        raise no_data(f"the budget figure of '{task}'", f"no '{metric}' rows of the 'budget' experiment for it.")
    order = list(dict.fromkeys(sub["variant"])) if variants is None else [v for v in variants if v in set(sub["variant"])]
    colors = {v: VARIANT_COLORS[i % len(VARIANT_COLORS)] for i, v in enumerate(order)}
    summary = summarise(sub, ["variant", "strategy", "steps"])
    scratch_sets = _scratch_sets(sub, order)
    panels = [s for s in present_strategies(summary["strategy"]) if s != "scratch"]
    with rc_context(style()):
        fig = Figure(figsize=(4.3 * max(1, len(panels)) + 1.9, 4.6))
        axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
        for ax, strategy in zip(axes, panels or ["scratch"]):
            for j, v in enumerate(scratch_sets.values()):
                g = summary[(summary["variant"] == v) & (summary["strategy"] == "scratch")].sort_values("steps")
                label = "Scratch" if j == 0 else f"Scratch ({v})"
                _band(ax, g["steps"], g["mean"], g["ci95"], strategy_color("scratch"), label,
                      ls="--" if j == 0 else ":", marker="s", alpha=0.12)
            for v in order:
                g = summary[(summary["variant"] == v) & (summary["strategy"] == strategy)].sort_values("steps")
                if not g.empty:
                    _band(ax, g["steps"], g["mean"], g["ci95"], colors[v], v)
            _log_ticks(ax, summary["steps"], "{:.0f}")
            ax.set_title(strategies.label(strategy))
            ax.set_xlabel("downstream training steps (log scale)")
        axes[0].set_ylabel(f"test {metric_label(metric)}")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[-1].legend(handles, labels,
                        title=f"pretraining variant\nmean ± 95 % CI\n({n_range(summary['n'])} seeds)",
                        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle(f"{task}: AUROC vs budget per pretraining variant", fontsize=12)
        fig.tight_layout()
    return fig


#: Legend names of the data-efficiency figure, which says what each strategy does to the pretrained encoder.
DATA_EFFICIENCY_LABELS = {"scratch": "Scratch", "linear_probe": "Pretrained, frozen (linear probe)",
                          "full": "Pretrained, fine-tuned (full)", "lora": "Pretrained + LoRA",
                          "adapter": "Pretrained + Adapter"}


def fig_data_efficiency(metrics: pd.DataFrame, tasks=None, metric: str = "macro_auroc") -> Figure:
    """UMedPT-style data-efficiency plot: x = % of the task's training data (log scale), y = test AUROC, one line
    per strategy (frozen pretrained encoder, fine-tuned, Scratch) with its 95 % t-CI band over seeds x repeats;
    one panel per (task, variant) of the ``data_efficiency`` experiment."""
    require_columns(metrics, ("variant", "experiment", "task", "strategy", "fraction", "seed", "metric", "value"),
                    "fig_data_efficiency")
    sub = metrics[(metrics["experiment"] == "data_efficiency") & (metrics["metric"] == metric)]
    if tasks is not None:
        sub = sub[sub["task"].isin(list(tasks))]
    if sub.empty:
        raise no_data("the data-efficiency figure", f"no '{metric}' rows of the 'data_efficiency' experiment.")
    sub = sub.assign(percent=100 * sub["fraction"].astype(float))
    summary = summarise(sub, ["task", "variant", "strategy", "percent"])
    panels = list(dict.fromkeys(zip(summary["task"], summary["variant"])))
    multi_variant = summary["variant"].nunique() > 1
    with rc_context(style()):
        fig = Figure(figsize=(4.4 * len(panels) + 2.4, 4.4))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (task, variant) in zip(axes, panels):
            g0 = summary[(summary["task"] == task) & (summary["variant"] == variant)]
            for strategy in present_strategies(g0["strategy"]):
                g = g0[g0["strategy"] == strategy].sort_values("percent")
                _band(ax, g["percent"], g["mean"], g["ci95"], strategy_color(strategy),
                      DATA_EFFICIENCY_LABELS.get(strategy, strategies.label(strategy)),
                      ls="--" if strategy == "scratch" else "-", marker=strategy_marker(strategy))
            _log_ticks(ax, g0["percent"], "{:g}")
            ax.set_title(f"{task}" + (f" ({variant})" if multi_variant else "") + f"\nn = {n_range(g0['n'])} per point",
                         fontsize=10.5)
            ax.set_xlabel("% of the training split (stratified, log scale)")
        axes[0].set_ylabel(f"test {metric_label(metric)}")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[-1].legend(handles, labels, title="mean ± 95 % CI over\nseeds × repeats", loc="upper left",
                        bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle("Data efficiency: pretrained encoder vs Scratch", fontsize=12)
        fig.tight_layout()
    return fig


def fig_contrasts(comparisons: pd.DataFrame, task: str) -> Figure:
    """Forest plot of the hypothesis contrasts on one task: change of the transfer gap (variant a - variant b;
    each contrast is written so its hypothesis predicts > 0) per strategy, mean with 95 % t-CI over seeds, the
    sign count (seeds with a positive difference / pairs) beside each row."""
    require_columns(comparisons, ("family", "hypothesis", "a", "b", "strategy", "mean_diff", "ci_low", "ci_high",
                                  "n_pos", "n"), "fig_contrasts")
    sub = comparisons[comparisons["family"] == f"hypotheses:{task}"]
    if sub.empty:
        raise no_data(f"the contrast figure of '{task}'", "no rows of its 'hypotheses' family.")
    sub = sub.reset_index(drop=True)
    hyps = list(dict.fromkeys(sub["hypothesis"]))
    hcolor = {h: VARIANT_COLORS[1 + i % (len(VARIANT_COLORS) - 1)] for i, h in enumerate(hyps)}
    with rc_context(style()):
        fig = Figure(figsize=(9.5, 0.32 * len(sub) + 1.6))
        ax = fig.add_subplot()
        y = np.arange(len(sub))[::-1]
        for yi, r in zip(y, sub.itertuples()):
            c = hcolor[r.hypothesis]
            ax.errorbar(r.mean_diff, yi, xerr=[[r.mean_diff - r.ci_low], [r.ci_high - r.mean_diff]]
                        if np.isfinite(r.ci_low) else None, fmt=strategy_marker(r.strategy), color=c,
                        ms=5, capsize=3, lw=1.3)
            ax.annotate(f"{r.n_pos}/{r.n}", xy=(1.0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8, color="#555555")
        ax.axvline(0, color="#777777", lw=1, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r.a} − {r.b} · {r.strategy}" for r in sub.itertuples()], fontsize=8.2)
        ax.set_xlabel(f"change of the transfer gap (Δ {metric_label('macro_auroc')}, mean ± 95 % CI over seeds)")
        handles = [Patch(color=hcolor[h], label=h) for h in hyps]
        ax.legend(handles=handles, title="hypothesis (predicts > 0)", loc="upper left", bbox_to_anchor=(1.08, 1.0),
                  borderaxespad=0)
        ax.set_title(f"{task}: does the transfer gap change as each hypothesis predicts? (right: seeds > 0)")
        fig.tight_layout()
    return fig
