"""The paper's Figures 1-7, the variant studies' figures and the data views, drawn from tidy results or a model.

Every ``fig*`` function takes tidy frames (the CSV tables of :class:`~stmedfm.core.results.StoredResults`) or a model
and returns a :class:`matplotlib.figure.Figure`; none of them reads a result file. The figures are built with
``Figure()`` rather than ``pyplot``, so they are never registered with a GUI backend (no double display in a
notebook, nothing to close). :func:`write_figures` reads one result store and writes each figure as PNG
(150 dpi) and SVG, atomically.

The subpackage is split by what is drawn; this module re-exports the public names, so ``from stmedfm.analysis.plots
import X`` does not depend on where X lives:

* :mod:`~stmedfm.analysis.plots.style` — rcParams, strategy colours and markers (its :data:`~stmedfm.analysis.plots.style.STYLES`, a generated style for a strategy without an entry), labels (from :mod:`stmedfm.core.strategies`),
  the figure writer;
* :mod:`~stmedfm.analysis.plots.architecture` — the study's model (:func:`study_model`), Table 2, Figure 1 (from a data
  description of the model, :func:`describe`, and a generic renderer, :func:`draw`), forward shapes;
* :mod:`~stmedfm.analysis.plots.paper` — Figures 2-7 and :func:`write_result_figures` (no torch);
* :mod:`~stmedfm.analysis.plots.variants` — the variant studies' figures (:mod:`stmedfm.analysis.variants`);
* :mod:`~stmedfm.analysis.plots.methods` — the figures of the study of every strategy (:mod:`stmedfm.analysis.methods`);
* :mod:`~stmedfm.analysis.plots.fair` — the learning-rate selection on validation and AUROC vs budget (issue 28);
* :mod:`~stmedfm.analysis.plots.dataset` — sample images and class distributions (notebook 01).

The figures of results need no torch (``tests/test_architecture.py``); the model and data views do, so their names
are imported on first use (PEP 562 ``__getattr__``): ``import stmedfm.analysis.plots`` and every figure of a store work on
a machine without torch.

=======  ====================================  ================================================================
paper    function                              data
=======  ====================================  ================================================================
Fig. 1   :func:`fig1_architecture`             an :class:`~stmedfm.model.STMedFM` (default: :func:`study_model`
                                               of the default config), layers and parameter counts read from it
Fig. 2   :func:`fig2_pretraining_loss`         ``pretrain_loss.csv`` (the full pretraining set by default)
Fig. 3   :func:`fig3_train_size_auroc`         ``metrics.csv``, experiment ``transfer``, ``macro_auroc``
Fig. 4-5 :func:`fig_fewshot`                   ``metrics.csv``, experiment ``fewshot``, one task
Fig. 6   :func:`fig6_reliability`              ``reliability.csv`` (15 bins), pooled over seeds
Fig. 7   :func:`fig7_confusion`                ``confusion.csv``, summed over seeds, row-normalised
=======  ====================================  ================================================================
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from stmedfm.analysis.plots.fair import fig_budget_curves, fig_lr_selection
from stmedfm.analysis.plots.methods import fig_fewshot_methods, fig_pareto
from stmedfm.analysis.plots.paper import (
    fig2_pretraining_loss,
    fig3_train_size_auroc,
    fig6_reliability,
    fig7_confusion,
    fig_fewshot,
    pool_reliability,
    write_result_figures,
)
from stmedfm.analysis.plots.style import (
    STRATEGY_COLORS,
    STRATEGY_LABELS,
    STRATEGY_MARKERS,
    STYLES,
    TASK_COLORS,
    VARIANT_COLORS,
    save_figure_file,
    set_style,
    strategy_style,
    short_label,
    style,
    write_figure,
)
from stmedfm.analysis.plots.variants import DATA_EFFICIENCY_LABELS, fig_budget_auroc, fig_contrasts, fig_data_efficiency

__all__ = [
    "fig_lr_selection",
    "fig_budget_curves",
    "fig_pareto",
    "fig_fewshot_methods",
    "STRATEGY_COLORS",
    "STRATEGY_LABELS",
    "STRATEGY_MARKERS",
    "STYLES",
    "set_style",
    "strategy_style",
    "TASK_COLORS",
    "VARIANT_COLORS",
    "DATA_EFFICIENCY_LABELS",
    "style",
    "short_label",
    "save_figure_file",
    "write_figure",
    "study_model",
    "architecture_table",
    "forward_shapes",
    "parameter_counts",
    "describe",
    "draw",
    "fig1_architecture",
    "fig2_pretraining_loss",
    "fig3_train_size_auroc",
    "fig_fewshot",
    "fig6_reliability",
    "fig7_confusion",
    "pool_reliability",
    "write_figures",
    "write_result_figures",
    "fig_budget_auroc",
    "fig_data_efficiency",
    "fig_contrasts",
    "fig_samples",
    "fig_class_distribution",
]

#: Names of the views drawn from a model or the data files (torch), imported on first use.
_LAZY = {**dict.fromkeys(("architecture_table", "describe", "draw", "fig1_architecture", "forward_shapes",
                          "parameter_counts", "study_model"), "stmedfm.analysis.plots.architecture"),
         **dict.fromkeys(("fig_class_distribution", "fig_samples"), "stmedfm.analysis.plots.dataset")}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stmedfm.analysis.plots' has no attribute {name!r}")


def write_figures(results: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Figures 1-7 of the result store ``results`` (PNG and SVG into ``out``, default ``figures/<study>/``):
    Figure 1 from the study's model (:func:`stmedfm.analysis.plots.architecture.write_figure1`, needs torch), the others
    from the store (:func:`write_result_figures`). Returns the written paths."""
    figure1 = importlib.import_module("stmedfm.analysis.plots.architecture").write_figure1
    return [*figure1(results, out), *write_result_figures(results, out)]
