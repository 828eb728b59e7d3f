"""The paper's Figures 2-7, drawn from a study's tidy results, and :func:`write_result_figures` (those of a store).
No torch: Figure 1 is drawn from the model (:mod:`stmedfm.analysis.plots.architecture`).

Every ``fig*`` function takes tidy frames (the CSV tables of :class:`~stmedfm.core.results.StoredResults`) and returns a
:class:`matplotlib.figure.Figure`; none of them reads a file, so notebooks and tests can feed them any frame.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation

from stmedfm.core import paths, registry, seal, strategies
from stmedfm.core.errors import StmedfmError
from stmedfm.analysis.plots.fair import fig_budget_curves, fig_lr_selection
from stmedfm.analysis.plots.style import (
    TASK_COLORS,
    metric_label,
    n_range,
    no_data,
    present_strategies,
    require_columns,
    seeds_text,
    short_label,
    strategy_color,
    strategy_marker,
    style,
    write_figure,
)
from stmedfm.core.results import StoredResults
from stmedfm.analysis.tables import summarise
from stmedfm.core.records import in_task_pretraining_steps

__all__ = ["fig2_pretraining_loss", "fig3_train_size_auroc", "fig_fewshot", "fig6_reliability", "fig7_confusion",
           "pool_reliability", "figure_target", "write_result_figures"]


# =============================================================================================================
# Figure 2: pretraining loss
# =============================================================================================================
def _n_tasks(pretrain: str) -> int:
    return len([t for t in str(pretrain).split("+") if t])


def fig2_pretraining_loss(loss: pd.DataFrame, pretrain: str | None = None, window: int | None = None,
                          normalised: bool = False, ylabel: str | None = None) -> Figure:
    """Figure 2: the pretraining loss of each task, divided by log C (C = its classes), one line per task.

    Why normalised and per task: a task's cross-entropy starts near log C (uniform guessing; with class weights
    too), so tasks of 11, 8 and 5 classes start at different heights, and a mean over steps mixes tasks drawn with
    different probabilities. Divided by log C, 1 is chance for every task, and each task's line is a rolling mean
    over its own steps (``window`` of its batches; default a tenth of them), read at every step after its first;
    with several seeds, the mean of the per-seed lines with a min–max band. Points (one batch each) stay faint
    behind. ``normalised``: the losses already are (``loss_log_normalise``). Only the rows of one pretraining set
    are drawn: ``pretrain`` if given, else the set with the most tasks (the leave-one-out checkpoints have fewer).
    """
    require_columns(loss, ("seed", "pretrain", "step", "task", "loss"), "fig2_pretraining_loss")
    frame = loss.dropna(subset=["loss"])
    if frame.empty:
        raise no_data("Figure 2", "the pretraining loss table is empty (no pretrained checkpoint).")
    sets = frame["pretrain"].astype(str)
    if pretrain is None:
        counts = sets.value_counts()
        pretrain = max(counts.index, key=lambda p: (_n_tasks(p), counts[p]))
    elif pretrain not in set(sets):
        raise no_data("Figure 2", f"pretraining set '{pretrain}' is not in the table "
                     f"(sets: {', '.join(sorted(set(sets)))}).")
    if window is not None and int(window) < 1:
        raise StmedfmError(f"window must be a positive number of steps, got {window}.")
    frame = frame[sets == pretrain].sort_values(["seed", "step"]).copy()
    tasks = list(dict.fromkeys(frame["task"]))
    classes = {t: _classes(t) for t in tasks}
    frame["y"] = frame["loss"] if normalised else frame["loss"] / frame["task"].map(
        {t: math.log(max(c, 2)) for t, c in classes.items()})
    seeds = sorted(frame["seed"].unique())
    steps = np.sort(frame["step"].unique())

    with rc_context(style()):
        fig = Figure(figsize=(11, 5))
        ax = fig.add_subplot()
        for i, task in enumerate(tasks):
            color = TASK_COLORS[i % len(TASK_COLORS)]
            g = frame[frame["task"] == task]
            ax.scatter(g["step"], g["y"], s=7 if len(g) > 50 else 16, alpha=0.18 if len(g) > 200 else 0.45, color=color,
                       edgecolors="none", zorder=2, label="_nolegend_")
            curves = {}
            for seed, gs in g.groupby("seed"):
                per_step = gs.groupby("step")["y"].mean().sort_index()
                w = max(1, int(round(len(per_step) / 10))) if window is None else int(window)
                curves[seed] = per_step.rolling(w, min_periods=1).mean().reindex(steps).ffill()
            table = pd.DataFrame(curves)
            mean = table.mean(axis=1).where(table.notna().sum(axis=1) >= (len(table.columns) + 1) // 2)
            share = len(g) / len(frame)
            ax.plot(steps, mean.to_numpy(), color=color, lw=2.2, zorder=4, drawstyle="steps-post",
                    label=f"{task} ({classes[task]} classes, {share:.0%} of batches)")
            if len(seeds) > 1:
                ax.fill_between(steps, table.min(axis=1).where(mean.notna()), table.max(axis=1).where(mean.notna()),
                                color=color, alpha=0.15, lw=0, zorder=3)
        ax.axhline(1.0, color="#555555", lw=1, ls="--", zorder=1, label="chance: uniform prediction (log C)")
        ax.scatter([], [], s=7, color="#888888", label="one batch")
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(ylabel or "training loss / log C (1 = chance)")
        per_step = frame.groupby(["seed", "step"]).size().max()
        sampling = "one sampled task per step" if per_step == 1 else "every task at every step"
        band = f", band: min–max over seeds" if len(seeds) > 1 else ""
        ax.set_title(f"Pretraining loss per task · pretrain on {pretrain.replace('+', ' + ')}\n"
                     f"{seeds_text(len(seeds))}, {sampling}; line: rolling mean of the task's batches{band}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(steps.min() - 0.5, steps.max() + 0.5)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
    return fig


def _classes(task: str) -> int:
    try:
        return registry.get(task).n_classes
    except StmedfmError:
        raise no_data("Figure 2", f"task '{task}' is not a MedMNIST flag, so its class count (log C) is unknown."
                      ) from None


# =============================================================================================================
# Figure 3: training-set size vs AUROC
# =============================================================================================================
def _spread(positions: list[float], gap: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Move sorted positions apart so neighbours are at least ``gap`` apart, staying inside [lo, hi]."""
    q = list(positions)
    for i in range(1, len(q)):
        q[i] = max(q[i], q[i - 1] + gap)
    if q and q[-1] > hi:
        q[-1] = hi
        for i in range(len(q) - 2, -1, -1):
            q[i] = min(q[i], q[i + 1] - gap)
    if q and q[0] < lo:
        q = [v + (lo - q[0]) for v in q]
    return q


def _dodge(n: int, step: float = 0.07) -> list[float]:
    """Horizontal offsets in inches that keep the error bars of ``n`` lines at one x apart."""
    return [(i - (n - 1) / 2) * step for i in range(n)]


def _errorbar(ax, x, y, err, dx: float, **kwargs):
    """``ax.errorbar`` shifted ``dx`` inches sideways on screen (the data x stay exact); the shifted artists do not
    autoscale, so the data limits are updated here."""
    x, y, err = (np.asarray(v, dtype=float) for v in (x, y, err))
    err = np.nan_to_num(err)
    shift = ax.transData + ScaledTranslation(dx, 0, ax.figure.dpi_scale_trans)
    container = ax.errorbar(x, y, yerr=err, transform=shift, **kwargs)
    ok = np.isfinite(y)
    if ok.any():
        ax.update_datalim(np.column_stack([np.r_[x[ok], x[ok]], np.r_[y[ok] - err[ok], y[ok] + err[ok]]]))
        ax.autoscale_view()
    return container


def fig3_train_size_auroc(metrics: pd.DataFrame, sizes: Mapping[str, int] | None = None,
                          metric: str = "macro_auroc") -> Figure:
    """Figure 3: test macro AUROC of the transfer experiment vs the training-set size of each downstream task.

    x = official training-set size (``registry.get(task).n_samples['train']``, or ``sizes[task]``), log scale;
    one line per strategy: mean over seeds with 95 % t-interval bars (:func:`stmedfm.analysis.tables.ci95`).
    """
    require_columns(metrics, ("experiment", "task", "strategy", "seed", "metric", "value"), "fig3_train_size_auroc")
    sub = metrics[(metrics["experiment"] == "transfer") & (metrics["metric"] == metric)]
    if sub.empty:
        raise no_data("Figure 3", f"no '{metric}' rows of the 'transfer' experiment in the metrics table.")
    summary = summarise(sub, ["task", "strategy"])
    tasks = list(dict.fromkeys(summary["task"]))
    size_of = {t: int(sizes[t]) if sizes is not None and t in sizes else registry.get(t).n_samples["train"]
               for t in tasks}
    summary["size"] = summary["task"].map(size_of)
    n_values = summary["n"].tolist()

    with rc_context(style()):
        fig = Figure(figsize=(10.5, 5.6))
        ax = fig.add_subplot()
        shown = present_strategies(summary["strategy"])
        for strategy, dx in zip(shown, _dodge(len(shown))):
            g = summary[summary["strategy"] == strategy].sort_values("size")
            _errorbar(ax, g["size"], g["mean"], g["ci95"], dx, color=strategy_color(strategy),
                      marker=strategy_marker(strategy), ms=6, lw=1.6, capsize=4, capthick=1.3,
                      label=strategies.label(strategy), zorder=3)
        ax.set_xscale("log")
        xs = np.array(sorted(size_of.values()), dtype=float)
        lo, hi = xs.min() / 1.8, xs.max() * 1.8
        ax.set_xlim(lo, hi)
        ax.set_xlabel("official training-set size of the downstream task (samples, log scale)")
        ax.set_ylabel(f"test {metric_label('macro_auroc')}")
        for x in xs:
            ax.axvline(x, color="#999999", lw=0.8, ls=":", zorder=1)
        # flag names above the axes, spread apart when sizes are close, with leader lines to their x
        order = sorted(tasks, key=lambda t: size_of[t])
        frac = [(math.log(size_of[t]) - math.log(lo)) / (math.log(hi) - math.log(lo)) for t in order]
        placed = _spread(frac, gap=0.15, lo=0.06, hi=0.94)
        for t, f in zip(order, placed):
            ax.annotate(f"{t}\nn={size_of[t]:,}", xy=(size_of[t], 1.0), xycoords=("data", "axes fraction"),
                        xytext=(f, 1.035), textcoords="axes fraction", ha="center", va="bottom", fontsize=8.6,
                        arrowprops=dict(arrowstyle="-", color="#777777", lw=0.8, shrinkA=0, shrinkB=0))
        ci_text = ("single seed: no interval" if max(n_values) < 2 else
                   f"mean ± 95 % CI over seeds (t, n = {n_range(n_values)})")
        ax.legend(title=ci_text.replace(" over", "\nover"), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0)
        ax.set_title(f"Training-set size vs test {metric_label(metric)} "
                     f"(transfer, {len(tasks)} tasks)", pad=48)
        fig.tight_layout()
    return fig


# =============================================================================================================
# Figures 4-5: few-shot
# =============================================================================================================
def fig_fewshot(metrics: pd.DataFrame, task: str, metric: str = "macro_auroc") -> Figure:
    """Figures 4-5: macro AUROC vs K for one task (experiment ``fewshot``), one line per strategy; error bars are
    the standard deviation over every (split, seed) evaluation of that K."""
    require_columns(metrics, ("experiment", "task", "strategy", "seed", "k", "fewshot_split", "metric", "value"),
             "fig_fewshot")
    sub = metrics[(metrics["experiment"] == "fewshot") & (metrics["task"] == task) & (metrics["metric"] == metric)]
    if sub.empty:
        raise no_data(f"the few-shot figure of '{task}'", f"no '{metric}' rows of the 'fewshot' experiment for it.")
    stats = sub.groupby(["strategy", "k"])["value"].agg(mean="mean", std="std", n="count").reset_index()
    n_splits = sub["fewshot_split"].nunique()
    n_seeds = sub["seed"].nunique()
    ks = sorted(int(k) for k in stats["k"].unique())
    shown = present_strategies(stats["strategy"])

    with rc_context(style()):
        fig = Figure(figsize=(9, 5))
        ax = fig.add_subplot()
        for strategy, dx in zip(shown, _dodge(len(shown))):
            g = stats[stats["strategy"] == strategy].sort_values("k")
            _errorbar(ax, g["k"], g["mean"], g["std"], dx, color=strategy_color(strategy),
                      marker=strategy_marker(strategy), ms=6, lw=1.6, capsize=4, capthick=1.3,
                      label=strategies.label(strategy), zorder=3)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        pad = max(0.5, 0.08 * (ks[-1] - ks[0]))
        ax.set_xlim(ks[0] - pad, ks[-1] + pad)
        ax.set_xlabel("K (labelled training samples per class)")
        ax.set_ylabel(f"test {metric_label('macro_auroc')} (mean ± std)")
        ax.axhline(0.5, color="#999999", lw=0.9, ls="--", zorder=1)
        ax.text(ks[-1] + pad * 0.95, 0.5, "chance", ha="right", va="bottom", fontsize=8.4, color="#777777")
        ax.legend(title=f"mean ± std over\n{n_splits} split{'s' if n_splits != 1 else ''} × "
                        f"{seeds_text(n_seeds)}", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_title(f"Few-shot {metric_label(metric)} vs K on {task} "
                     f"({registry.get(task).modality})" if task in registry.flags() else
                     f"Few-shot {metric} vs K on {task}")
        fig.tight_layout()
    return fig


# =============================================================================================================
# Figure 6: reliability diagram
# =============================================================================================================
def _detail_rows(frame: pd.DataFrame, task: str, strategy: str) -> pd.DataFrame:
    sub = frame[(frame["task"] == task) & (frame["strategy"] == strategy)]
    if "experiment" in sub.columns:
        sub = sub[sub["experiment"] == "transfer"]
    return sub


def pool_reliability(reliability: pd.DataFrame) -> pd.DataFrame:
    """Per-bin count, accuracy and confidence pooled over runs (count-weighted); the pooled ECE is
    ``sum(|acc_sum - conf_sum|) / N``, exactly :func:`stmedfm.model.metrics.ece` on the concatenated predictions."""
    r = reliability.copy()
    r["acc_sum"] = r["accuracy"].fillna(0.0) * r["count"]
    r["conf_sum"] = r["confidence"].fillna(0.0) * r["count"]
    pooled = r.groupby("bin").agg(lower=("lower", "first"), upper=("upper", "first"), count=("count", "sum"),
                                  acc_sum=("acc_sum", "sum"), conf_sum=("conf_sum", "sum")).reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled["accuracy"] = np.where(pooled["count"] > 0, pooled["acc_sum"] / pooled["count"], np.nan)
        pooled["confidence"] = np.where(pooled["count"] > 0, pooled["conf_sum"] / pooled["count"], np.nan)
    return pooled


def fig6_reliability(reliability: pd.DataFrame, task: str, strategy: str = "full") -> Figure:
    """Figure 6: reliability diagram (accuracy per confidence bin), pooled over seeds weighted by bin counts,
    with the diagonal of perfect calibration, each bin's mean confidence (a line marks the gap), a histogram of the
    counts, and the pooled ECE in the title."""
    require_columns(reliability, ("task", "strategy", "seed", "bin", "lower", "upper", "count", "confidence", "accuracy"),
             "fig6_reliability")
    sub = _detail_rows(reliability, task, strategy)
    if sub.empty or sub["count"].sum() == 0:
        raise no_data("Figure 6", f"no reliability bins for '{task}' under '{strategy}' (only the calibration task's "
                     "standard transfer run stores them).")
    pooled = pool_reliability(sub)
    n_total = int(pooled["count"].sum())
    ece = float(np.abs(pooled["acc_sum"] - pooled["conf_sum"]).sum() / n_total)
    n_seeds = sub["seed"].nunique()
    full = pooled[pooled["count"] > 0]
    width = (full["upper"] - full["lower"]).to_numpy()
    colour = strategy_color(strategy)

    with rc_context(style()):
        fig = Figure(figsize=(9.6, 7.0))
        gs = fig.add_gridspec(2, 1, height_ratios=(3.2, 1), hspace=0.08)
        ax = fig.add_subplot(gs[0])
        hx = fig.add_subplot(gs[1], sharex=ax)
        ax.bar(full["lower"], full["accuracy"], width=width, align="edge", color=colour, alpha=0.85,
               edgecolor="white", lw=0.8, label="accuracy in bin (pooled)", zorder=2)
        centres = (full["lower"] + full["upper"]).to_numpy() / 2
        ax.vlines(centres, full["accuracy"], full["confidence"], color="#d55e00", lw=1.6, zorder=3)
        ax.plot(centres, full["confidence"], ls="none", marker="D", ms=4.5, color="#d55e00",
                label="mean confidence in bin (line: gap)", zorder=4)
        ax.plot([0, 1], [0, 1], ls="--", color="#333333", lw=1.2, label="perfect calibration", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy (fraction correct)")
        ax.tick_params(labelbottom=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        n_bins = len(pooled)
        ax.set_title(f"Reliability diagram: {task} under {strategies.label(strategy)}\n{n_bins} bins, "
                     f"{seeds_text(n_seeds)} pooled (N = {n_total:,}) · ECE = {ece:.3f}")
        hx.bar(pooled["lower"], pooled["count"], width=(pooled["upper"] - pooled["lower"]).to_numpy(),
               align="edge", color="#8c8c8c", edgecolor="white", lw=0.8)
        hx.set_xlabel("confidence (max softmax probability)")
        hx.set_ylabel("count (samples)")
        hx.set_xlim(0, 1)
        hx.set_xticks(np.linspace(0, 1, 6))
    fig.stmedfm_ece = ece
    return fig


# =============================================================================================================
# Figure 7: confusion matrix
# =============================================================================================================
def fig7_confusion(confusion: pd.DataFrame, task: str, strategy: str = "full", labels=None) -> Figure:
    """Figure 7: confusion matrix of ``task`` under ``strategy``, counts summed over seeds, rows normalised to 1
    (each row: where the test samples of one true class went), every cell annotated."""
    require_columns(confusion, ("task", "strategy", "seed", "true", "pred", "count"), "fig7_confusion")
    sub = _detail_rows(confusion, task, strategy)
    if sub.empty:
        raise no_data("Figure 7", f"no confusion counts for '{task}' under '{strategy}' (only the calibration task's "
                     "standard transfer run stores them).")
    if labels is None:
        try:
            labels = list(registry.get(task).labels)
        except StmedfmError:
            labels = []
    n = max(len(labels), int(sub["true"].max()) + 1, int(sub["pred"].max()) + 1)
    labels = [short_label(labels[i]) if i < len(labels) else str(i) for i in range(n)]
    counts = np.zeros((n, n), dtype=np.int64)
    summed = sub.groupby(["true", "pred"])["count"].sum()
    for (t, p), c in summed.items():
        counts[int(t), int(p)] += int(c)
    totals = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals[:, None] > 0, counts / np.maximum(totals[:, None], 1), 0.0)
    n_seeds = sub["seed"].nunique()

    with rc_context(style()):
        size = max(6.0, 0.62 * n + 3.8)
        fig = Figure(figsize=(size + 1.2, size))
        ax = fig.add_subplot()
        image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="equal")
        fontsize = 9 if n <= 8 else 8 if n <= 11 else 6.5
        for i in range(n):
            for j in range(n):
                v = norm[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if v > 0.55 else "#222222")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(labels, rotation=40, ha="right", rotation_mode="anchor")
        ax.set_yticklabels([f"{lab} (n={t:,})" for lab, t in zip(labels, totals)])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (n = test samples summed over seeds)")
        ax.grid(False)
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        cbar.set_label("fraction of the true class (row-normalised)")
        ax.set_title(f"Confusion matrix: {task} under {strategies.label(strategy)}\n"
                     f"{seeds_text(n_seeds)}, counts summed, rows normalised")
        fig.tight_layout()
    fig.stmedfm_matrix = norm
    return fig


def figure_target(results: str | os.PathLike, out: str | os.PathLike | None = None):
    """``(store, config, folder, write)`` for the figures of the result store ``results``: the folder is ``out``
    (default ``figures/<study>/``), ``write(fig, folder, name)`` writes PNG and SVG with the store's notices.
    Public because Figure 1 (:func:`stmedfm.analysis.plots.architecture.write_figure1`) is written the same way."""
    store = StoredResults(results)
    cfg = store.config()
    out_dir = Path(out) if out is not None else paths.figures_dir(cfg.study)
    if out_dir.exists() and not out_dir.is_dir():
        raise StmedfmError(f"The figure folder '{out_dir}' is a file; pass a folder as --out.")
    return store, cfg, out_dir, functools.partial(write_figure, notices=store.notices())


def write_result_figures(results: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Write Figures 2-7 (and the selection and budget figures) of the result store ``results`` as PNG (150 dpi)
    and SVG into ``out`` (default ``figures/<study>/``); a figure whose data the store lacks is skipped. Returns
    the written paths. Figure 1 is :func:`stmedfm.analysis.plots.write_figures`'s (it needs the model, hence torch)."""
    store, cfg, out_dir, _write = figure_target(results, out)

    def table(name: str) -> pd.DataFrame | None:
        path = store.root / f"{name}.csv"
        if not path.is_file() or path.stat().st_size == 0:
            return None
        seal.check(store.root, path.name)  # the bytes the study wrote, or one line naming the damaged file
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return None
        return None if frame.empty else frame

    written: list[Path] = []

    loss = table("pretrain_loss")
    if loss is not None:
        full = "+".join(cfg.pretrain_tasks)
        chosen = full if full in set(loss["pretrain"].astype(str)) else None
        written += _write(fig2_pretraining_loss(loss, pretrain=chosen, normalised=cfg.loss_log_normalise), out_dir,
                          "fig2_pretraining_loss")

    metrics = table("metrics")
    if metrics is not None:
        transfer = metrics[(metrics["experiment"] == "transfer") & (metrics["metric"] == "macro_auroc")]
        if not transfer.empty:
            written += _write(fig3_train_size_auroc(metrics), out_dir, "fig3_train_size_auroc")
        fewshot = metrics[(metrics["experiment"] == "fewshot") & (metrics["metric"] == "macro_auroc")]
        for number, task in zip((4, 5), list(cfg.fewshot_tasks)[:2]):
            if (fewshot["task"] == task).any():
                written += _write(fig_fewshot(metrics, task), out_dir, f"fig{number}_fewshot_{task}")

    selection = table("lr_selection")
    if selection is not None and (selection["n"] > 0).any():
        written += _write(fig_lr_selection(selection), out_dir, "lr_selection")
    if metrics is not None and (metrics["experiment"] == "budget").any():
        written += _write(fig_budget_curves(metrics, pretrain_steps=in_task_pretraining_steps(cfg)), out_dir,
                          "budget_curves")

    task, strategy = cfg.calibration_task, cfg.calibration_strategy
    if task:
        reliability = table("reliability")
        if reliability is not None:
            sub = _detail_rows(reliability, task, strategy)
            if not sub.empty and sub["count"].sum() > 0:
                written += _write(fig6_reliability(reliability, task, strategy), out_dir, f"fig6_reliability_{task}")
        confusion = table("confusion")
        if confusion is not None and not _detail_rows(confusion, task, strategy).empty:
            written += _write(fig7_confusion(confusion, task, strategy), out_dir, f"fig7_confusion_{task}")
    return written


