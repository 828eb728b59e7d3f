"""Figures of the data itself (notebook 01): sample images per class and the class distribution of each training
split with the class weights it implies. They sit beside the paper's figures so they share one style; the tables
they go with (Table 1, split sizes, class distribution) are in :mod:`stmedfm.analysis.report`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from stmedfm.core.config import StudyConfig
from stmedfm.data import load_task
from stmedfm.analysis.plots.style import PALETTE, short_label, style

__all__ = ["fig_samples", "fig_class_distribution"]


def fig_class_distribution(dist: pd.DataFrame) -> Figure:
    """Share of the training split per class (bars) with the implied class weight written beside each bar.

    ``dist``: :func:`stmedfm.run.inputs.class_distribution`."""
    tasks = list(dict.fromkeys(dist["task"]))
    rows = max(dist.groupby("task").size())
    with rc_context(style()):
        fig = Figure(figsize=(4.6 * len(tasks) + 0.6, 0.34 * rows + 1.6))
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            d = dist[dist["task"] == task]
            y = np.arange(len(d))
            ax.barh(y, d["train share"], color=PALETTE[0], alpha=0.85)
            ax.set_yticks(y)
            ax.set_yticklabels([short_label(n, 24) for n in d["name"]])
            ax.invert_yaxis()
            top = float(d["train share"].max())
            ax.set_xlim(0, top * 1.45)
            for yi, share, w in zip(y, d["train share"], d["weight"]):
                ax.text(share + top * 0.02, yi, f"w={w:.2f}", va="center", fontsize=8)
            ax.set_xlabel("share of the training split")
            ax.set_title(f"{task} ({int(d['train'].sum()):,} train)")
        fig.suptitle("Class distribution of each training split and the class weight (w) it implies")
        fig.tight_layout()
    return fig


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _grid_2d(fig: Figure, split, info, picks, per_class: int) -> None:
    """``per_class`` images per class, one class per row (RGB as is, grayscale in gray)."""
    axes = fig.subplots(info.n_classes, per_class, squeeze=False)
    rgb = info.n_channels == 3
    for c, idx in enumerate(picks):
        for j in range(per_class):
            ax = axes[c, j]
            _bare(ax)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(idx):
                img = split.images[idx[j]].permute(1, 2, 0).numpy()
                ax.imshow(img if rgb else img[..., 0], cmap=None if rgb else "gray", vmin=0, vmax=255,
                          interpolation="nearest")
        axes[c, 0].set_ylabel(short_label(info.labels[c], 18), rotation=0, ha="right", va="center", fontsize=8.5)


def _slices_3d(fig: Figure, split, info, picks) -> None:
    """The three orthogonal mid-slices of one volume per class, one class per row."""
    planes = ("axial (mid z)", "coronal (mid y)", "sagittal (mid x)")
    axes = fig.subplots(info.n_classes, 3, squeeze=False)
    for c, idx in enumerate(picks):
        vol = split.images[idx[0], 0].numpy() if len(idx) else None
        for j in range(3):
            ax = axes[c, j]
            _bare(ax)
            if vol is not None:
                mid = [s // 2 for s in vol.shape]
                sl = (vol[mid[0]], vol[:, mid[1]], vol[:, :, mid[2]])[j]
                ax.imshow(sl, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if c == 0:
                ax.set_title(planes[j], fontsize=9)
        axes[c, 0].set_ylabel(short_label(info.labels[c], 18), rotation=0, ha="right", va="center", fontsize=8.5)


def fig_samples(task: str, cfg: StudyConfig, per_class: int = 8, seed: int = 0) -> Figure:
    """Training samples of ``task``: for 2D flags a grid of ``per_class`` images per class (rows), for 3D flags the
    three orthogonal mid-slices (axial, coronal, sagittal) of one volume per class."""
    data = load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)
    info, split = data.info, data["train"]
    labels = split.labels.numpy()
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[: (per_class if info.dim == 2 else 1)]
             for c in range(info.n_classes)]
    with rc_context(style()):
        if info.dim == 2:
            fig = Figure(figsize=(0.85 * per_class + 2.2, 0.85 * info.n_classes + 0.8))
            _grid_2d(fig, split, info, picks, per_class)
            fig.suptitle(f"{task}: {per_class} random training images per class "
                         f"({cfg.image_size}×{cfg.image_size}, {'RGB' if info.n_channels == 3 else 'grayscale'})")
        else:
            fig = Figure(figsize=(6.4, 1.5 * info.n_classes + 0.8))
            _slices_3d(fig, split, info, picks)
            fig.suptitle(f"{task}: orthogonal mid-slices of one training volume per class "
                         f"({cfg.image_size}³ voxels)")
        fig.tight_layout()
    return fig
