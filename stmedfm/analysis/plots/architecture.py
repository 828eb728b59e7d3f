"""The architecture read from the model object: Table 2, Figure 1 and the forward shapes (notebook 02).

Figure 1 is built in two steps so that neither is long. :func:`describe` turns a model into *data* — columns of
boxes (inputs, stems, the shared encoder's blocks / adapters / final LayerNorm, heads) with their layer texts and
parameter counts, and the arrows between them; :func:`draw` is a small generic renderer that knows nothing about
STMedFM. A different width, block count, set of heads, or a model with or without LoRA and adapters therefore
gives a different figure without any drawing code changing. Table 2 (:func:`architecture_table`) reads the same
layer texts and counts (:func:`layer_text`, :func:`parameter_counts`), so table and figure cannot disagree.

:func:`study_model` is the one definition of "the model the study adapts" (Figure 1's model, notebook 02's model):
it needs the config and peft, so it lives here, above both in the layer order, rather than in :mod:`stmedfm.model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from torch import nn

from stmedfm.core.config import StudyConfig
from stmedfm.data import to_float
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM
from stmedfm.model.peft import Adapter, LoRALinear, add_adapters, add_lora
from stmedfm.analysis.plots.paper import figure_target
from stmedfm.analysis.plots.style import STRATEGY_COLORS, style

__all__ = ["study_model", "describe", "draw", "fig1_architecture", "architecture_table", "forward_shapes",
           "parameter_counts", "layer_text", "Box", "Line", "Column", "Arrow", "Diagram", "write_figure1"]


def study_model(cfg: StudyConfig, task: str | None = None) -> STMedFM:
    """The model the study adapts, with LoRA and adapters inserted at the study's settings: one head, for
    ``task`` (default: the calibration task, else the first downstream task). Figure 1 (:func:`write_figures`),
    notebook 02 and Table 2 all show this model, so it is defined once."""
    task = task or cfg.calibration_task or (cfg.downstream_tasks[0] if cfg.downstream_tasks else "pathmnist")
    model = STMedFM([task], width=cfg.width, ln_affine=cfg.ln_affine)
    add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    add_adapters(model, bottleneck=cfg.adapter_bottleneck)
    return model


# =============================================================================================================
# reading the model: layer texts and parameter counts (shared by Table 2 and Figure 1)
# =============================================================================================================
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fmt(n: int) -> str:
    return f"{int(n):,}"


def layer_text(module: nn.Module) -> str:
    """One short text for a layer, read from the module: 'Conv2d 3→32 (3×3, s1)', 'Linear 64→128',
    'LayerNorm(64)', 'GlobalAvgPool' (a LoRA-wrapped Linear is described by the Linear it wraps)."""
    if isinstance(module, LoRALinear):
        module = module.base
    name = type(module).__name__
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = "×".join(str(v) for v in module.kernel_size)
        s = module.stride[0] if len(set(module.stride)) == 1 else "×".join(map(str, module.stride))
        return f"{name} {module.in_channels}→{module.out_channels} ({k}, s{s})"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, nn.LayerNorm):
        return f"LayerNorm({', '.join(map(str, module.normalized_shape))})"
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return "GlobalAvgPool"
    return name


def stem_layers(stem: nn.Sequential) -> list[tuple[str, int]]:
    """The layers of a stem as ``(text, parameters)``: an activation joins the layer before it ('... + ReLU'),
    Flatten (a reshape) is left out."""
    layers: list[tuple[str, int]] = []
    for m in stem.children():
        if isinstance(m, _ACTIVATIONS) and layers:
            text, n = layers[-1]
            layers[-1] = (f"{text} + {type(m).__name__}", n)
        elif not isinstance(m, nn.Flatten):
            layers.append((layer_text(m), _numel(m)))
    return layers


def parameter_counts(model: STMedFM) -> dict[str, int]:
    """Parameters per component, as Table 4 counts them: the encoder without the LoRA / adapter parameters
    inserted into it (those are counted apart), heads summed, ``total`` = everything in the model."""
    enc = model.encoder
    lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in enc.modules() if isinstance(m, LoRALinear))
    adapters = sum(_numel(a) for a in enc.adapters)
    return {"stem2d": _numel(model.stem2d), "stem3d": _numel(model.stem3d), "encoder": _numel(enc) - lora - adapters,
            "heads": _numel(model.heads), "lora": lora, "adapters": adapters, "total": _numel(model)}


# =============================================================================================================
# Table 2 and the forward shapes
# =============================================================================================================
def architecture_table(model: STMedFM) -> pd.DataFrame:
    """Table 2 read from ``model`` (an :class:`~stmedfm.model.STMedFM`, with or without LoRA / adapters):
    component, layers, output and parameter count. LoRA and adapter rows appear when they are inserted."""
    enc, w, h = model.encoder, model.width, model.hidden
    counts = parameter_counts(model)
    loras = [m for m in enc.modules() if isinstance(m, LoRALinear)]
    rows = [
        ("2D stem", "; ".join(t for t, _ in stem_layers(model.stem2d)), f"{w}-dim vector", counts["stem2d"]),
        ("3D stem", "; ".join(t for t, _ in stem_layers(model.stem3d)), f"{w}-dim vector", counts["stem3d"]),
        ("shared encoder", f"{len(enc.blocks)} × [LayerNorm({w}) → Linear({w}→{h}) → GELU → Linear({h}→{w}) → "
                           f"residual]; LayerNorm({w})", f"{w}-dim vector", counts["encoder"]),
    ]
    if loras:
        rows.append(("LoRA", f"r={loras[0].r} (alpha={loras[0].alpha:g}) on {len(loras)} encoder Linear layers",
                     "residual update", counts["lora"]))
    if len(enc.adapters):
        b = enc.adapters[0].down.out_features
        rows.append(("adapters", f"{len(enc.adapters)} × [Linear({w}→{b}) → GELU → Linear({b}→{w}) → residual], "
                                 "after each encoder block", "residual update", counts["adapters"]))
    for task, head in model.heads.items():
        rows.append((f"task head ({task})", f"Linear({w}→{head.out_features})", "logits", _numel(head)))
    return pd.DataFrame(rows, columns=["component", "layers", "output", "parameters"])


def forward_shapes(cfg: StudyConfig, batch: int = 2) -> pd.DataFrame:
    """Shapes through the model for a 2D RGB, a grayscale 2D (as loaded: channel repeated; and raw, 1 channel) and
    a 3D batch: input, stem output, encoder output, logits. Random inputs; nothing is read from disk."""
    s = cfg.image_size
    v = 28 if s == 28 else 64  # MedMNIST+ provides 3D volumes at 28 and 64 voxels only
    cases = [("2D RGB", "bloodmnist", (batch, 3, s, s)),
             ("2D grayscale, as loaded (channel repeated)", "organamnist", (batch, 3, s, s)),
             ("2D grayscale, one channel (model repeats it)", "organamnist", (batch, 1, s, s)),
             ("3D volume", "organmnist3d", (batch, 1, v, v, v))]
    model = STMedFM([c[1] for c in cases], width=cfg.width, ln_affine=cfg.ln_affine).eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for name, task, shape in cases:
            x = to_float(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8))
            stem_in = x.expand(-1, 3, -1, -1) if x.ndim == 4 and x.shape[1] == 1 else x
            z = (model.stem2d if x.ndim == 4 else model.stem3d)(stem_in)
            rows.append({"input": name, "flag": task, "batch": tuple(x.shape), "stem": tuple(z.shape),
                         "encoder": tuple(model.features(x).shape), "logits": tuple(model(x, task).shape)})
    return pd.DataFrame(rows)


# =============================================================================================================
# Figure 1, step 1: the model as data
# =============================================================================================================
@dataclass(frozen=True)
class Line:
    """A line of text in a box; ``tone`` picks its look ('' plain, 'muted', 'lora', 'lora-point')."""

    text: str
    tone: str = ""


@dataclass(frozen=True)
class Box:
    """A box: bold ``title``, then ``lines``. ``kind`` picks its colours (see ``_KINDS``); ``dashed`` marks an
    insertion point where nothing is inserted yet."""

    key: str
    title: str
    lines: tuple[Line, ...] = ()
    kind: str = "layer"
    dashed: bool = False


@dataclass(frozen=True)
class Column:
    """Boxes stacked top to bottom. ``align``: 'center', 'bottom', or 'spread' (centres evenly over the height,
    so two columns of two boxes line up); ``frame``: the title of a frame drawn around the column."""

    boxes: tuple[Box, ...]
    width: float
    align: str = "center"
    frame: str | None = None


@dataclass(frozen=True)
class Arrow:
    """Data flow from box ``src`` to box ``dst`` (keys), optionally labelled (e.g. the width of the vector)."""

    src: str
    dst: str
    label: str = ""


@dataclass(frozen=True)
class Diagram:
    """Everything Figure 1 shows, as data: tests and notebooks can inspect it without reading pixels."""

    title: str
    subtitle: str
    columns: tuple[Column, ...]
    arrows: tuple[Arrow, ...]
    legend: tuple[tuple[str, str, bool], ...] = ()  #: (label, box kind, dashed)
    counts: dict = field(default_factory=dict)


def _stem_box(key: str, title: str, stem: nn.Sequential, kind: str) -> Box:
    lines = [Line(f"{text} · {_fmt(n)}" if n else text) for text, n in stem_layers(stem)]
    return Box(key, f"{title} · {_fmt(_numel(stem))} params", tuple(lines), kind)


def _lora_line(module: nn.Module) -> Line:
    if isinstance(module, LoRALinear):
        return Line(f"LoRA r={module.r} +{_fmt(module.lora_A.numel() + module.lora_B.numel())}", "lora")
    return Line("LoRA point", "lora-point")


def _block_box(i: int, block: nn.Module) -> Box:
    """A residual MLP block: its layers in order, LoRA (or its insertion point) under each Linear."""
    base = [block.norm, block.fc1, block.fc2]
    n = sum(_numel(m.base if isinstance(m, LoRALinear) else m) for m in base)
    lines = [Line(f"{layer_text(block.norm)} · {_fmt(_numel(block.norm))}")]
    for attr, act in (("fc1", True), ("fc2", False)):
        fc = getattr(block, attr)
        lines += [Line(f"{layer_text(fc)} · {_fmt(_numel(fc.base if isinstance(fc, LoRALinear) else fc))}"),
                  _lora_line(fc)]
        if act:
            lines.append(Line(layer_text(block.act)))
    lines.append(Line("out = x + fc2(GELU(fc1(LN(x))))", "muted"))
    return Box(f"block{i}", f"block {i + 1} · {_fmt(n)} params", tuple(lines), "block")


def _adapter_box(i: int, adapters: nn.ModuleList) -> Box:
    if i >= len(adapters):
        return Box(f"adapter{i}", "adapter insertion point (after the block)", kind="adapter", dashed=True)
    a = adapters[i]
    shape = (f" {a.down.in_features}→{a.down.out_features}→{a.up.out_features}" if isinstance(a, Adapter) else "")
    return Box(f"adapter{i}", f"Adapter{shape} · +{_fmt(_numel(a))}", (Line("bottleneck + residual"),), "adapter")


def _summary(model: STMedFM, counts: dict[str, int], n_lora: int) -> Box:
    plain = counts["stem2d"] + counts["stem3d"] + counts["encoder"] + counts["heads"]
    lines = [f"2D stem {_fmt(counts['stem2d'])} + 3D stem {_fmt(counts['stem3d'])}",
             f"+ encoder {_fmt(counts['encoder'])} + heads {_fmt(counts['heads'])}"]
    if n_lora:
        lines.append(f"+ LoRA on {n_lora} Linears: {_fmt(counts['lora'])}")
    if len(model.encoder.adapters):
        lines.append(f"+ {len(model.encoder.adapters)} adapters: {_fmt(counts['adapters'])}")
    lines.append(f"as drawn: {_fmt(counts['total'])} params")
    return Box("summary", f"plain model: {_fmt(plain)} params", tuple(Line(t) for t in lines), "note")


def describe(model: STMedFM) -> Diagram:
    """Figure 1 as data: inputs → stems → shared encoder (blocks, adapters, final LayerNorm) → heads → logits,
    every text and count read from ``model``."""
    if not isinstance(model, STMedFM):
        raise StmedfmError(f"fig1_architecture draws an stmedfm.model.STMedFM, got {type(model).__name__}.")
    enc = model.encoder
    counts = parameter_counts(model)
    n_lora = sum(isinstance(m, LoRALinear) for m in enc.modules())
    encoder = []
    for i, block in enumerate(enc.blocks):
        encoder += [_block_box(i, block), _adapter_box(i, enc.adapters)]
    encoder.append(Box("norm", f"final {layer_text(enc.norm)} · {_fmt(_numel(enc.norm))}", kind="norm"))
    heads = [Box(f"head:{t}", f"head · {model.task_dims[t]}D task",
                 (Line(f"{t}: {layer_text(h)} · {_fmt(_numel(h))}"),), "head") for t, h in model.heads.items()]
    heads = heads or [Box("head:", "no head", (Line("add_head(task)", "muted"),), "head", dashed=True)]
    columns = (
        Column((Box("in2d", "2D image", (Line("(B, 3, H, W)"), Line("grayscale: ×3 channels", "muted")), "input"),
                Box("in3d", "3D volume", (Line("(B, 1, D, H, W)"),), "input")), 1.9, "spread"),
        Column((_stem_box("stem2d", "2D stem", model.stem2d, "stem2d"),
                _stem_box("stem3d", "3D stem", model.stem3d, "stem3d")), 3.5, "spread"),
        Column(tuple(encoder), 3.4, frame=f"Shared encoder · {_fmt(counts['encoder'])} params"),
        Column((_summary(model, counts, n_lora), *heads), 3.0, "bottom"),
        Column((Box("logits", "logits", (Line("(B, C)"),), "input"),), 1.2, "bottom"),
    )
    arrows = [Arrow("in2d", "stem2d"), Arrow("in3d", "stem3d"),
              *(Arrow(s, encoder[0].key, f"{model.width}-d") for s in ("stem2d", "stem3d")),
              *(Arrow(a.key, b.key) for a, b in zip(encoder, encoder[1:])),
              *(Arrow("norm", h.key) for h in heads), *(Arrow(h.key, "logits") for h in heads)]
    heads_text = ", ".join(f"{t} ({model.task_dims[t]}D)" for t in model.heads) or "none"
    return Diagram(
        title="Figure 1 · STMedFM architecture and PEFT insertion points",
        subtitle=(f"drawn from the model object: width {model.width}, hidden {model.hidden}, {len(enc.blocks)} "
                  f"residual MLP blocks, heads: {heads_text}; both stems end in global average pooling"),
        columns=columns, arrows=tuple(arrows), counts=counts,
        legend=(("LoRA: rank-r update of a Linear", "lora", False), ("Adapter: bottleneck after a block", "adapter",
                False), ("dashed: insertion point (nothing inserted)", "layer", True)))


# =============================================================================================================
# Figure 1, step 2: a small generic renderer of boxes, columns and arrows (units: inches)
# =============================================================================================================
_LORA, _ADAPTER = STRATEGY_COLORS["lora"], STRATEGY_COLORS["adapter"]
#: Face, edge and text colour of each box kind.
_KINDS = {"layer": ("white", "#333333", "#111111"), "input": ("white", "#333333", "#111111"),
          "stem2d": ("#e8f1fa", "#333333", "#111111"), "stem3d": ("#e6f5ef", "#333333", "#111111"),
          "block": ("white", "#333333", "#111111"), "norm": ("white", "#333333", "#111111"),
          "adapter": (_ADAPTER, _ADAPTER, "white"), "head": ("#fbeee6", "#333333", "#111111"),
          "note": ("white", "#bbbbbb", "#111111"), "lora": (_LORA, _LORA, "white")}
#: Text style of each line tone.
_TONES = {"": dict(color="#111111"), "muted": dict(color="#555555", style="italic"),
          "lora": dict(color="white", weight="bold", bbox=dict(boxstyle="round,pad=0.18", fc=_LORA, ec=_LORA)),
          "lora-point": dict(color=_LORA, weight="bold",
                             bbox=dict(boxstyle="round,pad=0.18", fc="white", ec=_LORA, ls="--"))}
LINE, TITLE, PAD, GAP, COL_GAP, FRAME_PAD, FRAME_TITLE = 0.25, 0.32, 0.14, 0.3, 0.75, 0.18, 0.42
MARGIN, TOP, BOTTOM = 0.3, 1.0, 0.75


@dataclass
class _Rect:
    x: float
    y: float
    w: float
    h: float


def _height(box: Box) -> float:
    return 2 * PAD + TITLE + LINE * len(box.lines)


def _place_column(col: Column, x: float, body: float) -> tuple[dict[str, _Rect], _Rect | None]:
    """Rectangles of one column's boxes inside the body band [BOTTOM, BOTTOM + body], and of its frame."""
    heights = [_height(b) for b in col.boxes]
    inner = FRAME_PAD if col.frame else 0.0
    w = col.width - 2 * inner
    rects: dict[str, _Rect] = {}
    if col.align == "spread":
        for i, (b, h) in enumerate(zip(col.boxes, heights)):
            cy = BOTTOM + body * (len(heights) - i - 0.5) / len(heights)
            rects[b.key] = _Rect(x + inner, cy - h / 2, w, h)
        return rects, None
    stack = sum(heights) + GAP * (len(heights) - 1)
    if col.frame:  # the frame fills the body: boxes start under its title
        top = BOTTOM + body - FRAME_TITLE - inner
    else:
        top = BOTTOM + (stack if col.align == "bottom" else (body + stack) / 2)
    for b, h in zip(col.boxes, heights):
        rects[b.key] = _Rect(x + inner, top - h, w, h)
        top -= h + GAP
    frame = _Rect(x, BOTTOM, col.width, body) if col.frame else None
    return rects, frame


def _layout(d: Diagram) -> tuple[dict[str, _Rect], list[tuple[_Rect, str]], float, float]:
    """Place every box: columns left to right, the body as tall as the tallest column (a frame adds its title)."""
    def need(col: Column) -> float:
        stack = sum(_height(b) for b in col.boxes) + GAP * (len(col.boxes) - 1)
        return stack + (FRAME_TITLE + 2 * FRAME_PAD if col.frame else 0.0)

    body = max(need(c) for c in d.columns)
    rects: dict[str, _Rect] = {}
    frames: list[tuple[_Rect, str]] = []
    x = MARGIN
    for col in d.columns:
        placed, frame = _place_column(col, x, body)
        rects.update(placed)
        if frame is not None:
            frames.append((frame, col.frame))
        x += col.width + COL_GAP
    return rects, frames, x - COL_GAP + MARGIN, BOTTOM + body + TOP


def _draw_box(ax, box: Box, r: _Rect) -> None:
    fc, ec, tc = _KINDS.get(box.kind, _KINDS["layer"])
    if box.dashed:
        fc, tc = "white", ec if ec != "#333333" else "#555555"
    ax.add_patch(FancyBboxPatch((r.x, r.y), r.w, r.h, boxstyle="round,pad=0,rounding_size=0.08", fc=fc, ec=ec,
                                lw=1.2, ls="--" if box.dashed else "-", zorder=2))
    y = r.y + r.h - PAD - TITLE / 2
    ax.text(r.x + r.w / 2, y, box.title, ha="center", va="center", fontsize=9.2, weight="bold", color=tc, zorder=4)
    y -= TITLE / 2 + LINE / 2
    for line in box.lines:
        tone = dict(_TONES.get(line.tone, _TONES[""]))
        if box.kind == "adapter" and not line.tone:
            tone["color"] = tc
        indent = 0.35 if line.tone.startswith("lora") else 0.12
        ax.text(r.x + indent, y, line.text, ha="left", va="center", fontsize=8.4, zorder=4, **tone)
        y -= LINE


def _draw_arrow(ax, a: Arrow, src: _Rect, dst: _Rect) -> None:
    """Down the column when both boxes share one, else from the right edge of one to the left edge of the other."""
    if abs(src.x - dst.x) < 1e-6:
        start, end = (src.x + src.w / 2, src.y), (dst.x + dst.w / 2, dst.y + dst.h)
    else:
        start, end = (src.x + src.w, src.y + src.h / 2), (dst.x, dst.y + dst.h / 2)
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color="#333333", lw=1.2,
                                 shrinkA=0, shrinkB=0, zorder=3))
    if a.label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.06, a.label, ha="center", va="bottom",
                fontsize=8.2, color="#444444", zorder=4)


def draw(d: Diagram) -> Figure:
    """Render a :class:`Diagram`: one axes in inches, boxes, frames, arrows, title and legend."""
    rects, frames, width, height = _layout(d)
    with rc_context(style()):
        fig = Figure(figsize=(width, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        ax.axis("off")
        ax.text(width / 2, height - 0.35, d.title, ha="center", va="center", fontsize=14, weight="bold")
        ax.text(width / 2, height - 0.72, d.subtitle, ha="center", va="center", fontsize=9.6, color="#444444")
        for r, title in frames:
            ax.add_patch(FancyBboxPatch((r.x, r.y), r.w, r.h, boxstyle="round,pad=0,rounding_size=0.15",
                                        fc="#f4f4f4", ec="#555555", ls="--", lw=1.2, zorder=0.5))
            ax.text(r.x + r.w / 2, r.y + r.h - FRAME_TITLE / 2 - 0.04, title, ha="center", va="center",
                    fontsize=10.5, weight="bold")
        for col in d.columns:
            for box in col.boxes:
                _draw_box(ax, box, rects[box.key])
        for a in d.arrows:
            _draw_arrow(ax, a, rects[a.src], rects[a.dst])
        handles = [Patch(fc="white" if dashed else _KINDS[kind][0], ec=_KINDS[kind][1] if not dashed else "#555555",
                         ls="--" if dashed else "-", label=label) for label, kind, dashed in d.legend]
        if handles:
            ax.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8.6, frameon=False,
                      bbox_to_anchor=(0.5, 0.0))
    return fig


def fig1_architecture(model: STMedFM | None = None) -> Figure:
    """Figure 1: stems, shared encoder blocks, adapters, final LayerNorm, task heads and LoRA points of ``model``
    (default: :func:`study_model` of the default config — one head, LoRA and adapters inserted).

    Everything written in the boxes is read from the modules (:func:`describe`), so the drawing follows the model.
    When the model has no LoRA layers or adapters, their insertion points are still marked (dashed).
    ``fig.stmedfm_counts`` holds the parameter counts written in it, for tests and notebooks.
    """
    diagram = describe(study_model(StudyConfig()) if model is None else model)
    fig = draw(diagram)
    fig.stmedfm_counts = diagram.counts
    return fig


def write_figure1(results, out=None) -> list:
    """Figure 1 of the result store ``results``: the model its study adapts (one head), with LoRA and adapters at
    the study's settings, written like the other figures (:func:`stmedfm.analysis.plots.paper.figure_target`)."""
    _, cfg, out_dir, write = figure_target(results, out)
    return write(fig1_architecture(study_model(cfg)), out_dir, "fig1_architecture")
