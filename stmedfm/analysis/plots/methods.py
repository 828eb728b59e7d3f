"""Figures of the study of every adaptation strategy (:mod:`stmedfm.analysis.methods`, notebook 10): AUROC vs trainable
parameters with the Pareto front, and few-shot AUROC vs K per method.

They read the tidy frames :func:`stmedfm.analysis.methods.analyse` computes (``methods_pareto``, ``methods_fewshot``) and,
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

from stmedfm.core import measures, strategies
from stmedfm.analysis.plots.style import (
    metric_label,
    no_data,
    present_strategies,
    require_columns,
    strategy_color,
    strategy_marker,
    style,
)

__all__ = ["fig_pareto", "fig_fewshot_methods"]


#: Larger type than the other figures: 14 strategies in three panels must read at the size of a page.
_PARETO_RC = {"axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11, "ytick.labelsize": 11,
              "legend.fontsize": 10.5, "legend.title_fontsize": 10.5}


def _short(name: str) -> str:
    return strategies.label(name).removeprefix("Pretrain+")


def fig_pareto(pareto_frame: pd.DataFrame, metric: str = "macro_auroc") -> Figure:
    """AUROC vs trainable parameters (log x), one panel per task: each strategy with its 95 % CI bar, the Pareto
    front as a step line through its members, which are labelled on the plot.

    Legible at 14 strategies (issue 31): colours come from the registry, where a family shares a hue
    (:data:`stmedfm.core.strategies.FAMILIES`); the legend beside the panels lists the strategies by family; strategies
    with the same count sit side by side; type is larger than in the other figures."""
    require_columns(pareto_frame, ("task", "strategy", "trainable_params", "mean", "ci_low", "ci_high", "front"),
                    "fig_pareto (the methods_pareto table)")
    if pareto_frame.empty:
        raise no_data("the Pareto figure", "the methods_pareto table has no rows.")
    tasks = list(dict.fromkeys(pareto_frame["task"]))
    with rc_context({**style(), **_PARETO_RC}):
        fig = Figure(figsize=(5.4 * len(tasks) + 3.4, 6.0))
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        fronts = []
        for ax, task in zip(axes, tasks):
            g = pareto_frame[pareto_frame["task"] == task]
            g = g.assign(_o=g["strategy"].map(strategies.order)).sort_values(["trainable_params", "_o"])
            # strategies with the same count (Scratch and Full; VeRA and LoKr) side by side, a few points apart
            slot = g.groupby("trainable_params").cumcount().to_numpy()
            size = g.groupby("trainable_params")["strategy"].transform("size").to_numpy()
            for r, i, k in zip(g.itertuples(), slot, size):
                shift = ax.transData + ScaledTranslation((i - (k - 1) / 2) * 0.09, 0, fig.dpi_scale_trans)
                lo, hi = max(r.ci_low, 0.0), min(r.ci_high, 1.0)  # an AUROC lives in [0, 1]
                err = [[r.mean - lo], [hi - r.mean]] if np.isfinite(r.ci_low) else None
                color = strategy_color(r.strategy)
                ax.errorbar(r.trainable_params, r.mean, yerr=err, fmt=strategy_marker(r.strategy), color=color,
                            ms=11 if r.front else 8.5, capsize=3, lw=1.1, elinewidth=1.1, alpha=1.0 if r.front else 0.9,
                            mec="black" if r.front else color, mew=1.2,
                            label=strategies.label(r.strategy), zorder=4 if r.front else 3, transform=shift)
                # shifted artists do not autoscale: the bar's extent enters the data limits here
                ax.update_datalim([(r.trainable_params, lo if np.isfinite(lo) else r.mean),
                                   (r.trainable_params, hi if np.isfinite(hi) else r.mean)])
            front = g[g["front"].astype(bool)]
            if len(front):
                ax.step(front["trainable_params"], front["mean"], where="post", color="#444444", lw=1.1, ls="--",
                        zorder=2, label="Pareto front")
                fronts.append((ax, front))
            ax.set_xscale("log")
            ax.autoscale_view()
            ax.margins(x=0.08, y=0.08)
            ax.set_xlabel("trainable parameters (log scale)")
            n = int(g["n"].max()) if "n" in g and g["n"].notna().any() else 0
            ax.set_title(f"{task} (n = {n} seeds)")
        axes[0].set_ylabel(f"test {metric_label(metric)} (mean ± 95 % CI)")
        _family_legend(fig, axes)
        fig.suptitle(f"{measures.label(metric)} vs trainable parameters per task: the Pareto front (labelled, black edge)",
                     fontsize=14)
        fig.tight_layout()
        for ax, front in fronts:  # after the layout: labels are placed in display space
            _label_front(ax, front)
    return fig


def _label_front(ax, front: pd.DataFrame, size: float = 10.5) -> None:
    """Name the front's members on the plot without overlap: each label starts above its point and is pushed up
    past any label already placed that it would cover (a greedy pass in display space, left to right), with a
    leader line when it moved. Hand-written because matplotlib has no label placement and one figure does not
    justify a dependency (adjustText)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    fig = ax.figure
    px = fig.dpi / 72  # pixels per point
    font = FontProperties(size=size, weight="bold")
    placed: list[tuple[float, float, float, float]] = []
    for r in front.sort_values("trainable_params").itertuples():
        text = _short(r.strategy)
        x, y = ax.transData.transform((r.trainable_params, r.mean))
        width, height, _ = text_to_path.get_text_width_height_descent(text, font, ismath=False)
        w, h = (width + 2 * 0.12 * size + 4) * px, (height + 2 * 0.12 * size + 4) * px  # text, its box, a gap
        ty = y + 12 * px
        moved = True
        while moved:
            moved = False
            for (x0, x1, y0, y1) in placed:
                if x - w / 2 < x1 and x + w / 2 > x0 and ty < y1 and ty + h > y0:
                    ty, moved = y1 + 1, True
        placed.append((x - w / 2, x + w / 2, ty, ty + h))
        dy = (ty - y) / px
        ax.annotate(text, (r.trainable_params, r.mean), xytext=(0, dy), textcoords="offset points", ha="center",
                    va="bottom", fontsize=size, fontweight="bold", color="#222222", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85),
                    arrowprops=dict(arrowstyle="-", color="#666666", lw=0.7) if dy > 14 else None)


def _family_legend(fig: Figure, axes) -> None:
    """One legend beside the panels: the Pareto front, then the strategies drawn, under a heading per family."""
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    drawn = [n for n in strategies.names() if strategies.label(n) in handles]
    entries, labels, headings = [], [], []
    if "Pareto front" in handles:
        entries.append(handles["Pareto front"])
        labels.append("Pareto front")
    for family in strategies.FAMILIES:
        members = [n for n in drawn if strategies.get(n).family == family]
        if not members:
            continue
        headings.append(len(labels))
        entries.append(Line2D([], [], ls="none"))
        labels.append(family)
        for n in members:
            entries.append(handles[strategies.label(n)])
            labels.append(_short(n) if n != "scratch" else strategies.label(n))
    legend = axes[-1].legend(entries, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0,
                             handletextpad=0.5, labelspacing=0.35, title="strategies by family")
    for i in headings:
        text = legend.get_texts()[i]
        text.set_fontweight("bold")
        text.set_position((-28, 0))  # headings start where the markers do


def fig_fewshot_methods(fewshot_frame: pd.DataFrame, task: str, references=(strategies.LORA, strategies.FULL)) -> Figure:
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
            color = strategy_color(strategy)
            ax.plot(g["k"], g["mean"], marker=strategy_marker(strategy), color=color, lw=1.8, ms=5)
            ok = g["ci_low"].notna().to_numpy()
            if ok.any():  # an AUROC lives in [0, 1]
                ax.fill_between(g["k"][ok], g["ci_low"][ok].clip(lower=0), g["ci_high"][ok].clip(upper=1),
                                color=color, alpha=0.18, lw=0)
            ax.set_title(strategies.label(strategy), fontsize=10)
            ax.set_xticks(ks)
            if i % cols == 0:
                ax.set_ylabel(f"test {metric_label('macro_auroc')}")
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
