"""The paper's Figures 1-7, drawn from a study's tidy results (and Figure 1 from the model object itself).

Every ``fig*`` function takes tidy frames (the CSV tables of :class:`~stmedfm.study.ResultStore`) or a model
and returns a :class:`matplotlib.figure.Figure`; none of them reads a file. The figures are built with
``Figure()`` rather than ``pyplot``, so they are never registered with a GUI backend (no double display in a
notebook, nothing to close). :func:`write_figures` reads one result store and writes each figure as PNG
(150 dpi) and SVG, atomically.

=======  ====================================  ================================================================
paper    function                              data
=======  ====================================  ================================================================
Fig. 1   :func:`fig1_architecture`             an :class:`~stmedfm.model.STMedFM` (default: one head, LoRA and
                                               adapters inserted), layers and parameter counts read from it
Fig. 2   :func:`fig2_pretraining_loss`         ``pretrain_loss.csv`` (the full pretraining set by default)
Fig. 3   :func:`fig3_train_size_auroc`         ``metrics.csv``, experiment ``transfer``, ``macro_auroc``
Fig. 4-5 :func:`fig_fewshot`                   ``metrics.csv``, experiment ``fewshot``, one task
Fig. 6   :func:`fig6_reliability`              ``reliability.csv`` (15 bins), pooled over seeds
Fig. 7   :func:`fig7_confusion`                ``confusion.csv``, summed over seeds, row-normalised
=======  ====================================  ================================================================
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
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation

from stmedfm import paths, registry, strategies
from stmedfm.errors import StmedfmError
from stmedfm.io import atomic_path

__all__ = [
    "STRATEGY_COLORS",
    "STRATEGY_LABELS",
    "style",
    "fig1_architecture",
    "fig2_pretraining_loss",
    "fig3_train_size_auroc",
    "fig_fewshot",
    "fig6_reliability",
    "fig7_confusion",
    "write_figures",
    "fig_budget_auroc",
    "fig_data_efficiency",
    "fig_contrasts",
]

#: Legend names, colours and markers of the adaptation strategies: from their registry (stmedfm.strategies).
STRATEGY_ORDER = strategies.names()
STRATEGY_LABELS = {s.name: s.label for s in strategies.REGISTRY.values()}
_CB = strategies.PALETTE
STRATEGY_COLORS = {s.name: s.color for s in strategies.REGISTRY.values()}
STRATEGY_MARKERS = {s.name: s.marker for s in strategies.REGISTRY.values()}
#: Colours of tasks (Figure 2's points), distinct from the strategy colours where possible.
TASK_COLORS = [_CB[0], _CB[3], _CB[2], _CB[4], _CB[1], _CB[9], _CB[5], _CB[6], _CB[8], _CB[7]]


def style() -> dict:
    """The one style of every figure: seaborn ``whitegrid``, colour-blind palette, readable fonts.

    Returns an rc dictionary; the figure functions apply it with :func:`matplotlib.rc_context`, so importing or
    calling them never changes global state. Apply it globally with ``matplotlib.rcParams.update(style())``.
    """
    import seaborn as sns
    from cycler import cycler

    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.85))
    rc.update({
        "axes.prop_cycle": cycler(color=_CB),
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans", "Arial", "Liberation Sans", "sans-serif"],
        "axes.titlesize": 11.5,
        "axes.labelsize": 10.5,
        "legend.fontsize": 9,
        "legend.title_fontsize": 9,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.frameon": True,
        "legend.framealpha": 0.9,
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.1,
        "svg.hashsalt": "stmedfm",  # deterministic SVG ids
        "svg.fonttype": "none",  # text stays text in the SVG
        "image.cmap": "Blues",
    })
    return rc


def _label(strategy: str) -> str:
    return strategies.label(strategy)


def _color(strategy: str) -> str:
    return strategies.color(strategy)


def _strategies(values) -> list[str]:
    """The strategies present, in the registry's order (unknown names last, alphabetically)."""
    return sorted({str(v) for v in values}, key=lambda s: (strategies.order(s), s))


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if frame is None or not isinstance(frame, pd.DataFrame):
        raise StmedfmError(f"{what} needs a pandas DataFrame (a tidy table of the result store).")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StmedfmError(f"{what} needs columns {', '.join(missing)}; got {', '.join(map(str, frame.columns))}.")


def _empty(what: str, detail: str) -> StmedfmError:
    return StmedfmError(f"No data for {what}: {detail}")


def _seeds_text(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _n_range(values) -> str:
    values = sorted({int(v) for v in values})
    if not values:
        return "0"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def short_label(name: str, width: int = 22) -> str:
    """A class name short enough for a tick label: parenthetical detail dropped, then cut at a word with '…'."""
    text = str(name)
    if len(text) > width and "(" in text:
        text = text.split("(")[0].strip() or text
    if len(text) > width:
        cut = text[: width - 1]
        if " " in cut[width // 2:]:
            cut = cut[: cut.rfind(" ")]
        text = cut.rstrip(" ,;-") + "…"
    return text


# =============================================================================================================
# Figure 1: the architecture, drawn from the model
# =============================================================================================================
def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fmt(n: int) -> str:
    return f"{int(n):,}"


def _describe(module) -> str:
    """One short line for a layer, read from the module: e.g. 'Conv2d 3→32 3×3 s1', 'Linear 64→128'."""
    from torch import nn

    base = getattr(module, "base", None)
    if isinstance(base, nn.Linear):  # LoRA-wrapped Linear
        module = base
    name = type(module).__name__
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = "×".join(str(v) for v in module.kernel_size)
        s = module.stride[0] if len(set(module.stride)) == 1 else "×".join(map(str, module.stride))
        return f"{name} {module.in_channels}→{module.out_channels} {k} s{s}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, nn.LayerNorm):
        return f"LayerNorm({', '.join(map(str, module.normalized_shape))})"
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return "global avg pool"
    return name


def _stem_lines(stem) -> list[str]:
    """Layers of a stem as text lines: parametric layers start a line (with their parameter count), activations
    join the line before them, and the parameter-free tail (pooling, flatten) forms the last line."""
    from torch import nn

    lines: list[str] = []
    tail: list[str] = []
    for m in stem.children():
        n = _numel(m)
        if n:
            lines.append(f"{_describe(m)} ({_fmt(n)})")
        elif isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)) and lines and not tail:
            head, _, count = lines[-1].rpartition(" (")
            lines[-1] = f"{head} + {type(m).__name__} ({count}"
        else:
            tail.append(_describe(m))
    if tail:
        lines.append(" → ".join(tail))
    return lines


def _default_model():
    from stmedfm.model import STMedFM
    from stmedfm.peft import add_adapters, add_lora

    model = STMedFM(["pathmnist"])
    add_lora(model)
    add_adapters(model)
    return model


def _box(ax, x, y, w, h, text=None, *, fc="white", ec="#333333", ls="-", lw=1.2, fontsize=9, weight="normal",
         color="#111111", radius=0.08, zorder=2, ha="center"):
    patch = FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={radius}", fc=fc, ec=ec, ls=ls,
                           lw=lw, zorder=zorder)
    ax.add_patch(patch)
    if text is not None:
        tx = x + w / 2 if ha == "center" else x + 0.1
        ax.text(tx, y + h / 2, text, ha=ha, va="center", fontsize=fontsize, weight=weight, color=color,
                zorder=zorder + 1)
    return patch


def _arrow(ax, start, end, color="#333333", lw=1.3, style="-|>", ls="-", connection="arc3", zorder=1.5):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color, lw=lw, ls=ls,
                                 connectionstyle=connection, zorder=zorder, shrinkA=0, shrinkB=0))


def fig1_architecture(model=None) -> Figure:
    """Figure 1: stems, shared encoder blocks, adapters, final LayerNorm, task heads and LoRA points of ``model``.

    Everything written in the boxes is read from the modules (layer types and shapes, parameter counts), so the
    drawing follows the model: a different width, block count or set of heads gives a different figure. When the
    model has no LoRA layers or adapters, their insertion points are still marked (dashed, "insertion point").
    """
    from torch import nn

    from stmedfm.model import STMedFM
    from stmedfm.peft import LoRALinear

    if model is None:
        model = _default_model()
    if not isinstance(model, STMedFM):
        raise StmedfmError(f"fig1_architecture draws an stmedfm.model.STMedFM, got {type(model).__name__}.")

    enc = model.encoder
    blocks = list(enc.blocks)
    adapters = list(enc.adapters)
    lora_layers = [m for m in enc.modules() if isinstance(m, LoRALinear)]

    def base_numel(m) -> int:
        return _numel(m.base) if isinstance(m, LoRALinear) else _numel(m)

    block_params = [base_numel(b.norm) + base_numel(b.fc1) + base_numel(b.fc2) for b in blocks]
    encoder_params = sum(block_params) + _numel(enc.norm)
    lora_params = sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_layers)
    adapter_params = sum(_numel(a) for a in adapters)
    n2d, n3d = _numel(model.stem2d), _numel(model.stem3d)
    head_params = _numel(model.heads)
    plain_total = n2d + n3d + encoder_params + head_params

    C_STEM2, C_STEM3 = "#e8f1fa", "#e6f5ef"
    C_ENC, C_LORA, C_ADAPT, C_HEAD = "#f4f4f4", STRATEGY_COLORS["lora"], STRATEGY_COLORS["adapter"], "#fbeee6"

    with rc_context(style()):
        W, H = 16.0, 8.2
        fig = Figure(figsize=(W, H))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, W)
        ax.set_ylim(0, H)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.text(W / 2, H - 0.3, "Figure 1 · STMedFM architecture and PEFT insertion points", ha="center", va="center",
                fontsize=14, weight="bold")
        heads_text = ", ".join(f"{t} ({model.task_dims[t]}D)" for t in model.heads) or "none"
        ax.text(W / 2, H - 0.7, f"drawn from the model object: width {model.width}, hidden {model.hidden}, "
                f"{len(blocks)} residual MLP blocks, heads: {heads_text}", ha="center", va="center", fontsize=10,
                color="#444444")

        # ---- inputs and stems ------------------------------------------------------------------------------
        stems = [("2D stem", model.stem2d, n2d, C_STEM2, "2D image\n(B, 3, H, W)\n1-channel repeated ×3", 5.15),
                 ("3D stem", model.stem3d, n3d, C_STEM3, "3D volume\n(B, 1, D, H, W)", 1.75)]
        stem_right = []
        for title, stem, n, fc, input_text, y_mid in stems:
            lines = _stem_lines(stem)
            h = 0.42 * (len(lines) + 1) + 0.25
            y0 = y_mid - h / 2
            _box(ax, 0.2, y_mid - 0.55, 1.75, 1.1, input_text, fc="white", fontsize=9)
            _arrow(ax, (1.95, y_mid), (2.35, y_mid))
            _box(ax, 2.35, y0, 3.55, h, fc=fc)
            ax.text(2.35 + 3.55 / 2, y0 + h - 0.3, f"{title} · {_fmt(n)} params", ha="center", va="center",
                    fontsize=10, weight="bold", zorder=4)
            for i, line in enumerate(lines):
                ax.text(2.5, y0 + h - 0.72 - 0.42 * i, line, ha="left", va="center", fontsize=8.6, zorder=4)
            stem_right.append((5.9, y_mid))
        ax.text(3.05 + 1.5, 0.35, f"both stems output a {model.width}-d vector (global average pooling)",
                ha="center", va="center", fontsize=8.6, color="#444444", style="italic")

        # ---- encoder ----------------------------------------------------------------------------------------
        ex0, ex1, ey0, ey1 = 6.5, 12.75, 0.75, H - 1.05
        _box(ax, ex0, ey0, ex1 - ex0, ey1 - ey0, fc=C_ENC, ec="#555555", ls="--", lw=1.2, radius=0.15, zorder=0.5)
        ax.text((ex0 + ex1) / 2, ey1 - 0.28, f"Shared encoder · {_fmt(encoder_params)} params", ha="center",
                va="center", fontsize=10.5, weight="bold")
        rows: list[tuple[str, int | None]] = []
        for i in range(len(blocks)):
            rows += [("block", i), ("adapter", i)]
        rows.append(("norm", None))
        heights = {"block": 1.45, "adapter": 0.5, "norm": 0.45}
        gap = 0.3
        avail = (ey1 - 0.6) - (ey0 + 0.15)
        need = sum(heights[k] for k, _ in rows) + gap * (len(rows) - 1)
        scale = min(1.0, avail / need)
        x_bus = ex0 + 0.16  # where the input of a block comes down (left edge of the encoder)
        layer_x0 = ex0 + 0.6
        x_junction = layer_x0 - 0.22  # the residual branch leaves here
        widths = (0.95, 1.25, 0.62, 1.25)
        r = 0.17
        x_add = layer_x0 + sum(widths) + 0.22 * len(widths) + r  # centre of the (+) of every block
        x_right = x_add + 0.4  # right edge of adapters and final norm, which sit under the (+)
        y = ey1 - 0.6
        prev_out = None  # (x, y) of the previous row's output on its left edge, or bottom centre
        stem_entry = None
        for kind, i in rows:
            h = heights[kind] * scale
            top, bottom = y, y - h
            if kind == "block":
                block = blocks[i]
                bh = 0.48 * scale
                by = bottom + 0.4 * scale  # layer boxes sit above the LoRA badges
                ym = by + bh / 2
                ax.text(ex0 + 0.12, top + 0.02, f"block {i + 1} · {_fmt(block_params[i])} params", ha="left",
                        va="top", fontsize=8.6, weight="bold", color="#333333")
                x = layer_x0
                for j, (attr, w) in enumerate(zip(("norm", "fc1", "act", "fc2"), widths)):
                    module = getattr(block, attr)
                    n = base_numel(module)
                    text = f"{_describe(module)}\n({_fmt(n)})" if n else _describe(module)
                    _box(ax, x, by, w, bh, text, fc="white", fontsize=7.8 if n else 8.4)
                    if attr in ("fc1", "fc2"):
                        is_lora = isinstance(module, LoRALinear)
                        badge = (f"LoRA r={module.r} +{_fmt(module.lora_A.numel() + module.lora_B.numel())}"
                                 if is_lora else "LoRA point")
                        _box(ax, x + 0.05, by - 0.34 * scale, w - 0.1, 0.27 * scale, badge,
                             fc=C_LORA if is_lora else "white", ec=C_LORA, ls="-" if is_lora else "--",
                             fontsize=7.2, color="white" if is_lora else C_LORA, weight="bold", radius=0.05)
                    end = x + w + 0.22 if j < len(widths) - 1 else x_add - r
                    _arrow(ax, (x + w, ym), (end, ym), lw=1.0)
                    x += w + 0.22
                ax.add_patch(Circle((x_add, ym), r, fc="white", ec="#333333", lw=1.2, zorder=3))
                ax.text(x_add, ym, "+", ha="center", va="center", fontsize=11, weight="bold", zorder=4)
                # input: from the stems (first block) or down the left bus from the previous row
                if prev_out is None:
                    stem_entry = (x_bus, ym)
                else:
                    ax.plot([prev_out[0], x_bus, x_bus], [prev_out[1], prev_out[1], ym], color="#333333", lw=1.1,
                            zorder=1.5, solid_joinstyle="miter")
                ax.plot([x_bus, x_junction], [ym, ym], color="#333333", lw=1.1, zorder=1.5)
                _arrow(ax, (x_junction, ym), (layer_x0, ym), lw=1.1)
                # residual branch: junction -> up -> across -> down into (+)
                y_res = by + bh + 0.17 * scale
                ax.add_patch(Circle((x_junction, ym), 0.035, fc="#555555", ec="none", zorder=3))
                ax.plot([x_junction, x_junction, x_add], [ym, y_res, y_res], color="#777777", lw=1.0, zorder=1.5)
                _arrow(ax, (x_add, y_res), (x_add, ym + r), color="#777777", lw=1.0)
                ax.text((x_junction + x_add) / 2, y_res + 0.02, "residual", ha="center", va="bottom",
                        fontsize=7.5, color="#777777", style="italic")
                prev_out = ("below", x_add, ym - r)
            else:
                w = 4.3 if kind == "adapter" else 2.3
                x0 = x_right - w
                if prev_out is not None and prev_out[0] == "below":
                    _arrow(ax, (prev_out[1], prev_out[2]), (x_add, top), lw=1.1)
                if kind == "adapter" and adapters:
                    a = adapters[i]
                    down, up = getattr(a, "down", None), getattr(a, "up", None)
                    shape = (f" {down.in_features}→{down.out_features}→{up.out_features}"
                             if isinstance(down, nn.Linear) and isinstance(up, nn.Linear) else "")
                    _box(ax, x0, bottom, w, h, f"Adapter{shape} (bottleneck + residual) · +{_fmt(_numel(a))}",
                         fc=C_ADAPT, ec=C_ADAPT, fontsize=8.4, color="white", weight="bold")
                elif kind == "adapter":
                    _box(ax, x0, bottom, w, h, "adapter insertion point (after the block)", fc="white", ec=C_ADAPT,
                         ls="--", fontsize=8.4, color=C_ADAPT, weight="bold")
                else:
                    _box(ax, x0, bottom, w, h, f"final {_describe(enc.norm)} · {_fmt(_numel(enc.norm))}",
                         fc="white", fontsize=8.6)
                    final_y = bottom + h / 2
                if kind == "adapter" and i + 1 < len(blocks):
                    prev_out = (x0, bottom + h / 2)  # left edge: to the bus, down into the next block
                else:
                    prev_out = ("below", x_add, bottom)
            y = bottom - gap * scale
        if not blocks:  # an encoder without blocks: stems go straight to the final norm
            stem_entry = (x_right - 2.3, final_y)
        # stems -> the first block's input
        for sx, sy in stem_right:
            ax.plot([sx, stem_entry[0]], [sy, stem_entry[1]], color="#333333", lw=1.3, zorder=1.5)
        ax.text((5.9 + stem_entry[0]) / 2, (stem_right[0][1] + stem_entry[1]) / 2 + 0.18, f"{model.width}-d",
                fontsize=8.4, color="#444444", ha="center", va="bottom")

        # ---- heads -------------------------------------------------------------------------------------------
        hx0, hw = 13.05, 2.85
        head_lines = [f"{t}: {_describe(h)} · {_fmt(_numel(h))}" for t, h in model.heads.items()]
        if not head_lines:
            head_lines = ["(no head: add_head(task))"]
        hh = 0.42 * (len(head_lines) + 1) + 0.2
        hy0 = max(1.2, final_y - hh / 2)
        _box(ax, hx0, hy0, hw, hh, fc=C_HEAD)
        ax.text(hx0 + hw / 2, hy0 + hh - 0.3, f"Task head(s) · {_fmt(head_params)} params", ha="center",
                va="center", fontsize=10, weight="bold")
        for i, line in enumerate(head_lines):
            ax.text(hx0 + 0.12, hy0 + hh - 0.72 - 0.42 * i, line, ha="left", va="center", fontsize=8.4)
        _arrow(ax, (x_right, final_y), (hx0, final_y), lw=1.3)
        _box(ax, hx0 + 0.6, hy0 - 0.9, hw - 1.2, 0.5, "logits (B, C)", fc="white", fontsize=9)
        _arrow(ax, (hx0 + hw / 2, hy0), (hx0 + hw / 2, hy0 - 0.4), lw=1.2)

        # ---- totals and legend --------------------------------------------------------------------------------
        summary = [f"plain model: {_fmt(plain_total)} params",
                   f"(2D stem {_fmt(n2d)} + 3D stem {_fmt(n3d)} +",
                   f" encoder {_fmt(encoder_params)} + heads {_fmt(head_params)})"]
        if lora_layers:
            summary.append(f"+ LoRA on {len(lora_layers)} Linears: {_fmt(lora_params)}")
        if adapters:
            summary.append(f"+ {len(adapters)} adapters: {_fmt(adapter_params)}")
        summary.append(f"as drawn: {_fmt(_numel(model))} params")
        ax.text(hx0, H - 1.15, "\n".join(summary), ha="left", va="top", fontsize=8.6, linespacing=1.45,
                bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="#bbbbbb"))
        handles = [
            Patch(fc=C_LORA, ec=C_LORA, label="LoRA: rank-r update of a Linear"),
            Patch(fc=C_ADAPT, ec=C_ADAPT, label="Adapter: bottleneck after a block"),
            Patch(fc="white", ec="#555555", ls="--", label="dashed: insertion point / shared"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=((hx0 - 0.1) / W, (H - 2.95) / H),
                  fontsize=8.4, frameon=True)
    fig.stmedfm_counts = {  # for tests and notebooks: the numbers written in the figure
        "stem2d": n2d, "stem3d": n3d, "encoder": encoder_params, "heads": head_params, "lora": lora_params,
        "adapters": adapter_params, "total": _numel(model),
    }
    return fig


# =============================================================================================================
# Figure 2: pretraining loss
# =============================================================================================================
def _n_tasks(pretrain: str) -> int:
    return len([t for t in str(pretrain).split("+") if t])


def fig2_pretraining_loss(loss: pd.DataFrame, pretrain: str | None = None, window: int | None = None,
                          ylabel: str = "training loss (cross-entropy, nats)") -> Figure:
    """Figure 2: loss per pretraining step (points coloured by the task of the step), a rolling mean and, with
    several seeds, the mean over seeds of the per-seed rolling means with a min–max band.

    Only the rows of one pretraining set are drawn: ``pretrain`` if given, else the set with the most tasks
    (the full pretraining set; the leave-one-out checkpoints have fewer). ``window`` defaults to a tenth of the
    steps.
    """
    _require(loss, ("seed", "pretrain", "step", "task", "loss"), "fig2_pretraining_loss")
    frame = loss.dropna(subset=["loss"])
    if frame.empty:
        raise _empty("Figure 2", "the pretraining loss table is empty (no pretrained checkpoint).")
    sets = frame["pretrain"].astype(str)
    if pretrain is None:
        counts = sets.value_counts()
        pretrain = max(counts.index, key=lambda p: (_n_tasks(p), counts[p]))
    elif pretrain not in set(sets):
        raise _empty("Figure 2", f"pretraining set '{pretrain}' is not in the table "
                     f"(sets: {', '.join(sorted(set(sets)))}).")
    frame = frame[sets == pretrain].sort_values(["seed", "step"])
    seeds = sorted(frame["seed"].unique())
    steps = np.sort(frame["step"].unique())
    window = max(1, int(round(len(steps) / 10))) if window is None else int(window)
    if window < 1:
        raise StmedfmError(f"window must be a positive number of steps, got {window}.")

    curves = {}
    for seed, g in frame.groupby("seed"):
        per_step = g.groupby("step")["loss"].mean().sort_index()
        curves[seed] = per_step.rolling(window, min_periods=1).mean()
    table = pd.DataFrame(curves).sort_index()

    tasks = list(dict.fromkeys(frame["task"]))
    with rc_context(style()):
        fig = Figure(figsize=(11, 5))
        ax = fig.add_subplot()
        alpha = 0.8 if len(seeds) == 1 else 0.6
        for i, task in enumerate(tasks):
            g = frame[frame["task"] == task]
            ax.scatter(g["step"], g["loss"], s=18, alpha=alpha, color=TASK_COLORS[i % len(TASK_COLORS)],
                       edgecolors="none", label=f"{task} batch", zorder=2)
        mean = table.mean(axis=1)
        if len(seeds) > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color="#222222", alpha=0.18,
                            lw=0, label=f"min–max over {len(seeds)} seeds", zorder=3)
            line_label = f"rolling mean ({window} steps), mean of {len(seeds)} seeds"
        else:
            line_label = f"rolling mean ({window} steps)"
        ax.plot(mean.index, mean.to_numpy(), color="#111111", lw=2.0, label=line_label, zorder=4)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(ylabel)
        per_step = frame.groupby(["seed", "step"]).size().max()
        sampling = "one sampled task per step" if per_step == 1 else "every task at every step"
        ax.set_title(f"Multi-task pretraining loss · pretrain on {pretrain.replace('+', ' + ')}\n"
                     f"({len(tasks)} tasks, {_seeds_text(len(seeds))}, {sampling}; points: loss of one batch)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(steps.min() - 0.5, steps.max() + 0.5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=1.5, borderaxespad=0)
        fig.tight_layout()
    return fig


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
    one line per strategy: mean over seeds with 95 % t-interval bars (:func:`stmedfm.tables.ci95`).
    """
    from stmedfm.tables import summarise

    _require(metrics, ("experiment", "task", "strategy", "seed", "metric", "value"), "fig3_train_size_auroc")
    sub = metrics[(metrics["experiment"] == "transfer") & (metrics["metric"] == metric)]
    if sub.empty:
        raise _empty("Figure 3", f"no '{metric}' rows of the 'transfer' experiment in the metrics table.")
    summary = summarise(sub, ["task", "strategy"])
    tasks = list(dict.fromkeys(summary["task"]))
    size_of = {t: int(sizes[t]) if sizes is not None and t in sizes else registry.get(t).n_samples["train"]
               for t in tasks}
    summary["size"] = summary["task"].map(size_of)
    n_values = summary["n"].tolist()

    with rc_context(style()):
        fig = Figure(figsize=(10.5, 5.6))
        ax = fig.add_subplot()
        strategies = _strategies(summary["strategy"])
        for strategy, dx in zip(strategies, _dodge(len(strategies))):
            g = summary[summary["strategy"] == strategy].sort_values("size")
            _errorbar(ax, g["size"], g["mean"], g["ci95"], dx, color=_color(strategy),
                      marker=STRATEGY_MARKERS.get(strategy, "o"), ms=6, lw=1.6, capsize=4, capthick=1.3,
                      label=_label(strategy), zorder=3)
        ax.set_xscale("log")
        xs = np.array(sorted(size_of.values()), dtype=float)
        lo, hi = xs.min() / 1.8, xs.max() * 1.8
        ax.set_xlim(lo, hi)
        ax.set_xlabel("official training-set size of the downstream task (samples, log scale)")
        ax.set_ylabel("test macro AUROC")
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
                   f"mean ± 95 % CI over seeds (t, n = {_n_range(n_values)})")
        ax.legend(title=ci_text.replace(" over", "\nover"), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0)
        ax.set_title(f"Training-set size vs test {metric.replace('_', ' ').replace('auroc', 'AUROC')} "
                     f"(transfer, {len(tasks)} tasks)", pad=48)
        fig.tight_layout()
    return fig


# =============================================================================================================
# Figures 4-5: few-shot
# =============================================================================================================
def fig_fewshot(metrics: pd.DataFrame, task: str, metric: str = "macro_auroc") -> Figure:
    """Figures 4-5: macro AUROC vs K for one task (experiment ``fewshot``), one line per strategy; error bars are
    the standard deviation over every (split, seed) evaluation of that K."""
    _require(metrics, ("experiment", "task", "strategy", "seed", "k", "fewshot_split", "metric", "value"),
             "fig_fewshot")
    sub = metrics[(metrics["experiment"] == "fewshot") & (metrics["task"] == task) & (metrics["metric"] == metric)]
    if sub.empty:
        raise _empty(f"the few-shot figure of '{task}'", f"no '{metric}' rows of the 'fewshot' experiment for it.")
    stats = sub.groupby(["strategy", "k"])["value"].agg(mean="mean", std="std", n="count").reset_index()
    n_splits = sub["fewshot_split"].nunique()
    n_seeds = sub["seed"].nunique()
    ks = sorted(int(k) for k in stats["k"].unique())
    strategies = _strategies(stats["strategy"])

    with rc_context(style()):
        fig = Figure(figsize=(9, 5))
        ax = fig.add_subplot()
        for strategy, dx in zip(strategies, _dodge(len(strategies))):
            g = stats[stats["strategy"] == strategy].sort_values("k")
            _errorbar(ax, g["k"], g["mean"], g["std"], dx, color=_color(strategy),
                      marker=STRATEGY_MARKERS.get(strategy, "o"), ms=6, lw=1.6, capsize=4, capthick=1.3,
                      label=_label(strategy), zorder=3)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        pad = max(0.5, 0.08 * (ks[-1] - ks[0]))
        ax.set_xlim(ks[0] - pad, ks[-1] + pad)
        ax.set_xlabel("K (labelled training samples per class)")
        ax.set_ylabel("test macro AUROC (mean ± std)")
        ax.axhline(0.5, color="#999999", lw=0.9, ls="--", zorder=1)
        ax.text(ks[-1] + pad * 0.95, 0.5, "chance", ha="right", va="bottom", fontsize=8.4, color="#777777")
        ax.legend(title=f"mean ± std over\n{n_splits} split{'s' if n_splits != 1 else ''} × "
                        f"{_seeds_text(n_seeds)}", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_title(f"Few-shot {metric.replace('_', ' ').replace('auroc', 'AUROC')} vs K on {task} "
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
    ``sum(|acc_sum - conf_sum|) / N``, exactly :func:`stmedfm.metrics.ece` on the concatenated predictions."""
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
    _require(reliability, ("task", "strategy", "seed", "bin", "lower", "upper", "count", "confidence", "accuracy"),
             "fig6_reliability")
    sub = _detail_rows(reliability, task, strategy)
    if sub.empty or sub["count"].sum() == 0:
        raise _empty("Figure 6", f"no reliability bins for '{task}' under '{strategy}' (only the calibration task's "
                     "standard transfer run stores them).")
    pooled = pool_reliability(sub)
    n_total = int(pooled["count"].sum())
    ece = float(np.abs(pooled["acc_sum"] - pooled["conf_sum"]).sum() / n_total)
    n_seeds = sub["seed"].nunique()
    full = pooled[pooled["count"] > 0]
    width = (full["upper"] - full["lower"]).to_numpy()
    colour = _color(strategy)

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
        ax.set_title(f"Reliability diagram: {task} under {_label(strategy)}\n{n_bins} bins, "
                     f"{_seeds_text(n_seeds)} pooled (N = {n_total:,}) · ECE = {ece:.3f}")
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
    _require(confusion, ("task", "strategy", "seed", "true", "pred", "count"), "fig7_confusion")
    sub = _detail_rows(confusion, task, strategy)
    if sub.empty:
        raise _empty("Figure 7", f"no confusion counts for '{task}' under '{strategy}' (only the calibration task's "
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
        ax.set_title(f"Confusion matrix: {task} under {_label(strategy)}\n"
                     f"{_seeds_text(n_seeds)}, counts summed, rows normalised")
        fig.tight_layout()
    fig.stmedfm_matrix = norm
    return fig


# =============================================================================================================
# writing
# =============================================================================================================
def save_figure_file(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` (format from the suffix) atomically, in the project's style, without timestamps
    (so an unchanged figure gives an unchanged file)."""
    fmt = path.suffix.lstrip(".")
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with atomic_path(path, suffix=f".tmp.{fmt}") as tmp, rc_context(style()):
        fig.savefig(tmp, format=fmt, dpi=150, metadata=metadata)


def write_figure(fig: Figure, out: Path, name: str, notices: list[str] = ()) -> list[Path]:
    """Save ``fig`` as ``out/name.png`` and ``.svg`` (the notices of its store written across its top); returns
    the paths. The figure is freed afterwards."""
    written = []
    if notices:  # synthetic data, smoke budgets, several machines: on the figure itself, where no one can miss it
        fig.text(0.5, 0.998, " · ".join(notices), ha="center", va="top", fontsize=8, color="#b00020",
                 fontweight="bold", wrap=True)
    try:
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            save_figure_file(fig, path)
            written.append(path)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)  # a no-op for Figure() objects, but frees any pyplot-managed figure
        fig.clear()
    return written


def write_figures(results: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Write Figures 1-7 of the result store ``results`` as PNG (150 dpi) and SVG into ``out``
    (default ``figures/<study>/``); a figure whose data the store lacks is skipped. Returns the written paths."""
    from stmedfm.model import STMedFM
    from stmedfm.peft import add_adapters, add_lora
    from stmedfm.study import ResultStore

    store = ResultStore(results)
    cfg = store.config()
    out_dir = Path(out) if out is not None else paths.figures_dir(cfg.study)
    if out_dir.exists() and not out_dir.is_dir():
        raise StmedfmError(f"The figure folder '{out_dir}' is a file; pass a folder as --out.")
    notices = store.notices()
    _write = functools.partial(write_figure, notices=notices)

    def table(name: str) -> pd.DataFrame | None:
        path = store.root / f"{name}.csv"
        if not path.is_file() or path.stat().st_size == 0:
            return None
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return None
        return None if frame.empty else frame

    written: list[Path] = []

    # Figure 1: the model the study adapts (one head), with LoRA and adapters at the study's settings
    head = cfg.calibration_task or (cfg.downstream_tasks[0] if cfg.downstream_tasks else "pathmnist")
    model = STMedFM([head], width=cfg.width, ln_affine=cfg.ln_affine)
    add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    add_adapters(model, bottleneck=cfg.adapter_bottleneck)
    written += _write(fig1_architecture(model), out_dir, "fig1_architecture")

    loss = table("pretrain_loss")
    if loss is not None:
        full = "+".join(cfg.pretrain_tasks)
        chosen = full if full in set(loss["pretrain"].astype(str)) else None
        ylabel = ("training loss (cross-entropy / log C)" if cfg.loss_log_normalise
                  else "training loss (cross-entropy, nats)")
        written += _write(fig2_pretraining_loss(loss, pretrain=chosen, ylabel=ylabel), out_dir, "fig2_pretraining_loss")

    metrics = table("metrics")
    if metrics is not None:
        transfer = metrics[(metrics["experiment"] == "transfer") & (metrics["metric"] == "macro_auroc")]
        if not transfer.empty:
            written += _write(fig3_train_size_auroc(metrics), out_dir, "fig3_train_size_auroc")
        fewshot = metrics[(metrics["experiment"] == "fewshot") & (metrics["metric"] == "macro_auroc")]
        for number, task in zip((4, 5), list(cfg.fewshot_tasks)[:2]):
            if (fewshot["task"] == task).any():
                written += _write(fig_fewshot(metrics, task), out_dir, f"fig{number}_fewshot_{task}")

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


# =============================================================================================================
# Beyond the paper (stmedfm.beyond): AUROC vs budget per sampling variant, data efficiency, hypothesis contrasts
# =============================================================================================================
#: Colours of the beyond variants, in the order they first appear (the baseline first, in near-black).
VARIANT_COLORS = ["#222222", _CB[0], _CB[1], _CB[2], _CB[3], _CB[4], _CB[9], _CB[5], _CB[6], _CB[8]]


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


def fig_budget_auroc(metrics: pd.DataFrame, task: str, variants=None, metric: str = "macro_auroc") -> Figure:
    """AUROC vs downstream step budget on one task, one panel per pretrained strategy, one line per pretraining
    variant (sampler, width, ...), each with its 95 % t-CI band over seeds; Scratch (which does not depend on
    the pretraining variant) is the grey dashed line, once per distinct set of Scratch runs.

    ``metrics``: the tidy metrics of :func:`stmedfm.beyond.aggregate` (columns variant, experiment ``budget``,
    task, strategy, steps, seed, metric, value, run_id).
    """
    from stmedfm.tables import summarise

    _require(metrics, ("variant", "experiment", "task", "strategy", "steps", "seed", "metric", "value", "run_id"),
             "fig_budget_auroc")
    sub = metrics[(metrics["experiment"] == "budget") & (metrics["task"] == task) & (metrics["metric"] == metric)]
    if variants is not None:
        sub = sub[sub["variant"].isin(list(variants))]
    if sub.empty:
        raise _empty(f"the budget figure of '{task}'", f"no '{metric}' rows of the 'budget' experiment for it.")
    order = list(dict.fromkeys(sub["variant"])) if variants is None else [v for v in variants if v in set(sub["variant"])]
    colors = {v: VARIANT_COLORS[i % len(VARIANT_COLORS)] for i, v in enumerate(order)}
    summary = summarise(sub, ["variant", "strategy", "steps"])
    scratch_sets: dict[frozenset, str] = {}
    for v in order:  # Scratch runs shared by variants are drawn once, named after the first variant holding them
        ids = frozenset(sub[(sub["variant"] == v) & (sub["strategy"] == "scratch")]["run_id"])
        if ids and ids not in scratch_sets:
            scratch_sets[ids] = v
    strategies = [s for s in _strategies(summary["strategy"]) if s != "scratch"]
    n_seeds = summary["n"].tolist()
    with rc_context(style()):
        fig = Figure(figsize=(4.3 * max(1, len(strategies)) + 1.9, 4.6))
        axes = fig.subplots(1, max(1, len(strategies)), sharey=True, squeeze=False)[0]
        for ax, strategy in zip(axes, strategies or ["scratch"]):
            for j, v in enumerate(scratch_sets.values()):
                g = summary[(summary["variant"] == v) & (summary["strategy"] == "scratch")].sort_values("steps")
                label = "Scratch" if j == 0 else f"Scratch ({v})"
                _band(ax, g["steps"], g["mean"], g["ci95"], _color("scratch"), label, ls="--" if j == 0 else ":",
                      marker="s", alpha=0.12)
            for v in order:
                g = summary[(summary["variant"] == v) & (summary["strategy"] == strategy)].sort_values("steps")
                if not g.empty:
                    _band(ax, g["steps"], g["mean"], g["ci95"], colors[v], v)
            _log_ticks(ax, summary["steps"], "{:.0f}")
            ax.set_title(_label(strategy))
            ax.set_xlabel("downstream training steps (log scale)")
        axes[0].set_ylabel(f"test {metric.replace('_', ' ').replace('auroc', 'AUROC')}")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[-1].legend(handles, labels, title=f"pretraining variant\nmean ± 95 % CI\n({_n_range(n_seeds)} seeds)",
                        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle(f"{task}: AUROC vs budget per pretraining variant", fontsize=12)
        fig.tight_layout()
    return fig


DATA_EFFICIENCY_LABELS = {"scratch": "Scratch", "linear_probe": "Pretrained, frozen (linear probe)",
                          "full": "Pretrained, fine-tuned (full)", "lora": "Pretrained + LoRA",
                          "adapter": "Pretrained + Adapter"}


def fig_data_efficiency(metrics: pd.DataFrame, tasks=None, metric: str = "macro_auroc") -> Figure:
    """UMedPT-style data-efficiency plot: x = % of the task's training data (log scale), y = test AUROC, one line
    per strategy (frozen pretrained encoder, fine-tuned, Scratch) with its 95 % t-CI band over seeds x repeats;
    one panel per (task, variant) of the ``data_efficiency`` experiment."""
    from stmedfm.tables import summarise

    _require(metrics, ("variant", "experiment", "task", "strategy", "fraction", "seed", "metric", "value"),
             "fig_data_efficiency")
    sub = metrics[(metrics["experiment"] == "data_efficiency") & (metrics["metric"] == metric)]
    if tasks is not None:
        sub = sub[sub["task"].isin(list(tasks))]
    if sub.empty:
        raise _empty("the data-efficiency figure", f"no '{metric}' rows of the 'data_efficiency' experiment.")
    sub = sub.assign(percent=100 * sub["fraction"].astype(float))
    summary = summarise(sub, ["task", "variant", "strategy", "percent"])
    panels = list(dict.fromkeys(zip(summary["task"], summary["variant"])))
    multi_variant = summary["variant"].nunique() > 1
    with rc_context(style()):
        fig = Figure(figsize=(4.4 * len(panels) + 2.4, 4.4))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (task, variant) in zip(axes, panels):
            g0 = summary[(summary["task"] == task) & (summary["variant"] == variant)]
            for strategy in _strategies(g0["strategy"]):
                g = g0[g0["strategy"] == strategy].sort_values("percent")
                _band(ax, g["percent"], g["mean"], g["ci95"], _color(strategy),
                      DATA_EFFICIENCY_LABELS.get(strategy, _label(strategy)),
                      ls="--" if strategy == "scratch" else "-", marker=STRATEGY_MARKERS.get(strategy, "o"))
            _log_ticks(ax, g0["percent"], "{:g}")
            n = g0["n"]
            ax.set_title(f"{task}" + (f" ({variant})" if multi_variant else "") + f"\nn = {_n_range(n)} per point",
                         fontsize=10.5)
            ax.set_xlabel("% of the training split (stratified, log scale)")
        axes[0].set_ylabel(f"test {metric.replace('_', ' ').replace('auroc', 'AUROC')}")
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
    _require(comparisons, ("family", "hypothesis", "a", "b", "strategy", "mean_diff", "ci_low", "ci_high", "n_pos",
                           "n"), "fig_contrasts")
    sub = comparisons[comparisons["family"] == f"hypotheses:{task}"]
    if sub.empty:
        raise _empty(f"the contrast figure of '{task}'", "no rows of its 'hypotheses' family.")
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
                        if np.isfinite(r.ci_low) else None, fmt=STRATEGY_MARKERS.get(r.strategy, "o"), color=c,
                        ms=5, capsize=3, lw=1.3)
            ax.annotate(f"{r.n_pos}/{r.n}", xy=(1.0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8, color="#555555")
        ax.axvline(0, color="#777777", lw=1, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r.a} − {r.b} · {r.strategy}" for r in sub.itertuples()], fontsize=8.2)
        ax.set_xlabel("change of the transfer gap (Δ macro AUROC, mean ± 95 % CI over seeds)")
        handles = [Patch(color=hcolor[h], label=h) for h in hyps]
        ax.legend(handles=handles, title="hypothesis (predicts > 0)", loc="upper left", bbox_to_anchor=(1.08, 1.0),
                  borderaxespad=0)
        ax.set_title(f"{task}: does the transfer gap change as each hypothesis predicts? (right: seeds > 0)")
        fig.tight_layout()
    return fig
