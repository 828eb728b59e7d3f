"""Figures of the study of every adaptation strategy (:mod:`stmedfm.methods`, notebook 10): AUROC vs trainable
parameters with the Pareto front, and few-shot AUROC vs K per method.

They read the tidy frames :func:`stmedfm.methods.analyse` computes (``methods_pareto``, ``methods_fewshot``) and,
like the paper's figures, return a :class:`~matplotlib.figure.Figure` without reading or writing files.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation

from stmedfm import strategies
from stmedfm.plots.style import no_data, present_strategies, require_columns, style

__all__ = ["fig_pareto", "fig_fewshot_methods"]


def fig_pareto(pareto_frame: pd.DataFrame, metric_name: str = "AUROC") -> Figure:
    """AUROC vs trainable parameters (log x), one panel per task: each strategy with its 95 % CI bar (registry
    colour and marker) and the Pareto front as a step line through its members."""
    require_columns(pareto_frame, ("task", "strategy", "trainable_params", "mean", "ci_low", "ci_high", "front"),
                    "fig_pareto (the methods_pareto table)")
    if pareto_frame.empty:
        raise no_data("the Pareto figure", "the methods_pareto table has no rows.")
    tasks = list(dict.fromkeys(pareto_frame["task"]))
    with rc_context(style()):
        fig = Figure(figsize=(4.6 * len(tasks) + 2.6, 4.8))
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            g = pareto_frame[pareto_frame["task"] == task]
            g = g.assign(_o=g["strategy"].map(strategies.order)).sort_values(["trainable_params", "_o"])
            # strategies with the same count (Scratch and Full; VeRA and LoKr) side by side, a few points apart
            slot = g.groupby("trainable_params").cumcount().to_numpy()
            size = g.groupby("trainable_params")["strategy"].transform("size").to_numpy()
            for r, i, k in zip(g.itertuples(), slot, size):
                shift = ax.transData + ScaledTranslation((i - (k - 1) / 2) * 0.08, 0, fig.dpi_scale_trans)
                lo, hi = max(r.ci_low, 0.0), min(r.ci_high, 1.0)  # an AUROC lives in [0, 1]
                err = [[r.mean - lo], [hi - r.mean]] if np.isfinite(r.ci_low) else None
                ax.errorbar(r.trainable_params, r.mean, yerr=err, fmt=strategies.marker(r.strategy),
                            color=strategies.color(r.strategy), ms=8 if r.front else 6, capsize=3, lw=1.2,
                            mec="black" if r.front else strategies.color(r.strategy), mew=1.0,
                            label=strategies.label(r.strategy), zorder=3, transform=shift)
                # shifted artists do not autoscale: the bar's extent enters the data limits here
                ax.update_datalim([(r.trainable_params, lo if np.isfinite(lo) else r.mean),
                                   (r.trainable_params, hi if np.isfinite(hi) else r.mean)])
            front = g[g["front"].astype(bool)]
            if len(front):
                ax.step(front["trainable_params"], front["mean"], where="post", color="#444444", lw=1.1, ls="--",
                        zorder=2, label="Pareto front")
            ax.set_xscale("log")
            ax.autoscale_view()
            ax.set_xlabel("trainable parameters (log scale)")
            n = int(g["n"].max()) if "n" in g and g["n"].notna().any() else 0
            ax.set_title(f"{task} (n = {n} seeds)")
        axes[0].set_ylabel(f"test macro {metric_name} (mean ± 95 % CI)")
        keep = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                keep.setdefault(label, h)
        order = sorted(keep, key=lambda lab: (lab != "Pareto front", [strategies.label(s) for s in
                                                                      strategies.names()].index(lab)
                                              if lab in [strategies.label(s) for s in strategies.names()] else 99))
        axes[-1].legend([keep[k] for k in order], order, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                        title="strategy (black edge:\non the Pareto front)")
        fig.suptitle(f"{metric_name} vs trainable parameters per task: the Pareto front", fontsize=12)
        fig.tight_layout()
    return fig


def fig_fewshot_methods(fewshot_frame: pd.DataFrame, task: str, references=("lora", "full")) -> Figure:
    """Few-shot AUROC vs K on ``task``, one small panel per pretrained method (mean ± 95 % CI over seeds, registry
    colour) with the ``references`` (the paper's LoRA, Full) as grey lines in every panel, so each method reads
    against the same yardstick without eleven overlapping lines."""
    require_columns(fewshot_frame, ("task", "strategy", "k", "mean", "ci_low", "ci_high", "n"),
                    "fig_fewshot_methods (the methods_fewshot table)")
    g0 = fewshot_frame[fewshot_frame["task"] == task]
    if g0.empty:
        raise no_data(f"the few-shot figure of '{task}'", "no rows of the methods_fewshot table for it.")
    methods = present_strategies(g0["strategy"])
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    ks = sorted(int(k) for k in g0["k"].unique())
    with rc_context(style()):
        fig = Figure(figsize=(3.3 * cols, 2.7 * rows + 0.8))
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
        for i, ax in enumerate(axes.ravel()):
            if i >= len(methods):
                ax.set_visible(False)
                continue
            strategy = methods[i]
            for ref, ls in zip(references, ("--", ":")):
                r = g0[g0["strategy"] == ref].sort_values("k")
                if not r.empty and ref != strategy:
                    ax.plot(r["k"], r["mean"], ls=ls, color="#888888", lw=1.2, label=strategies.label(ref))
            g = g0[g0["strategy"] == strategy].sort_values("k")
            color = strategies.color(strategy)
            ax.plot(g["k"], g["mean"], marker=strategies.marker(strategy), color=color, lw=1.8, ms=5)
            ok = g["ci_low"].notna().to_numpy()
            if ok.any():  # an AUROC lives in [0, 1]
                ax.fill_between(g["k"][ok], g["ci_low"][ok].clip(lower=0), g["ci_high"][ok].clip(upper=1),
                                color=color, alpha=0.18, lw=0)
            ax.set_title(strategies.label(strategy), fontsize=10)
            ax.set_xticks(ks)
            if i % cols == 0:
                ax.set_ylabel("test macro AUROC")
            if i // cols == rows - 1:
                ax.set_xlabel("K per class")
        present = [(ref, ls) for ref, ls in zip(references, ("--", ":")) if ref in set(g0["strategy"])]
        if present:
            fig.legend([Line2D([], [], color="#888888", ls=ls, lw=1.2) for _, ls in present],
                       [strategies.label(ref) for ref, _ in present], loc="upper right", ncol=len(present),
                       fontsize=8.5, title="grey: references")
        n = int(g0["n"].max())
        fig.suptitle(f"Few-shot AUROC vs K on {task} (mean ± 95 % CI over {n} seeds, splits averaged)", fontsize=12,
                     x=0.02, ha="left")
        fig.tight_layout()
    return fig
