"""The one look of every figure, and the one way a figure reaches disk.

Legend names of the adaptation strategies are read from their registry (:mod:`stmedfm.core.strategies`); their colours
and markers are this module's (:data:`STYLES`, keyed by strategy name), and a strategy without an entry gets a
generated style distinct from every other (:func:`strategy_style`), so a newly registered strategy is drawn without
touching this package. :func:`set_style` gives one a chosen style, refusing a taken colour or marker. The helpers
below are shared by the figure modules of :mod:`stmedfm.analysis.plots` (checks of the tidy frames, seed counts, tick
labels); they are public names because they are used across modules, but not part of ``stmedfm.analysis.plots``' API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from stmedfm.core import measures, strategies
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_path

# seaborn's "colorblind" palette (Okabe-Ito-like), fixed per strategy so every figure uses the same colour
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9"]
#: Markers matplotlib draws, for the refusal of a taken one and the generated styles.
MARKERS = ("o", "s", "^", "v", "<", ">", "D", "d", "P", "X", "p", "h", "H", "8", "*", "+", "x", "1", "2", "3", "4")
#: Colour and marker of each strategy of the package (decision: a family's members share a hue; figures tell the
#: kinds apart by hue and the members by marker and label). Every colour and every marker is distinct.
STYLES: dict[str, tuple[str, str]] = {
    "scratch": (PALETTE[7], "s"), "full": (PALETTE[0], "o"), "lora": (PALETTE[1], "^"), "adapter": (PALETTE[2], "D"),
    "linear_probe": (PALETTE[4], "v"), "bitfit": ("#67001f", "P"), "dora": (PALETTE[3], "<"),
    "vera": (PALETTE[8], ">"), "ia3": ("#00441b", "X"), "loha": ("#fdb863", "h"), "lokr": ("#8c510a", "p"),
    "oft": ("#7b3294", "d"), "hra": ("#c2a5cf", "H"), "fourierft": ("#7f3b08", "8"), "ln_tuning": ("#c51b7d", "*"),
}


def set_style(name: str, color: str, marker: str) -> None:
    """Give strategy ``name`` its own colour and marker (a module registering a strategy may call it). Refused, in
    one line naming the owner, when another strategy has the colour (case-insensitive) or the marker: figures tell
    strategies apart by both."""
    for what, value, taken in (("color", color.lower(), {c.lower(): n for n, (c, _) in STYLES.items() if n != name}),
                               ("marker", marker, {m: n for n, (_, m) in STYLES.items() if n != name})):
        if value in taken:
            free = f" Free markers: {' '.join(m for m in MARKERS if m not in taken)}." if what == "marker" else ""
            raise StmedfmError(f"Strategy '{name}': {what} {(color if what == 'color' else marker)!r} is taken by "
                               f"'{taken[value]}'; figures tell strategies apart by {what}, so give it another.{free}")
    STYLES[name] = (color, marker)


def _generated(k: int) -> tuple[str, str]:
    """The ``k``-th generated style: a hue of the golden-angle sequence (never one of :data:`STYLES`' colours) and
    the markers :data:`STYLES` leaves free, in turn."""
    import colorsys

    taken = {c.lower() for c, _ in STYLES.values()}
    free = [m for m in MARKERS if m not in {m for _, m in STYLES.values()}] or list(MARKERS)
    for j in range(k, k + 1000):
        r, g, b = colorsys.hsv_to_rgb((0.11 + j * 0.618034) % 1.0, 0.75, 0.45 + 0.4 * (j % 2))
        color = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
        if color not in taken:
            return color, free[k % len(free)]
    raise AssertionError("unreachable: 1000 hues cannot all be taken")


def strategy_style(name: str) -> tuple[str, str]:
    """``(colour, marker)`` of a strategy: its :data:`STYLES` entry, else a generated one — numbered by its place
    among the registered strategies without an entry (so two of them never share a style), or, for a name nobody
    registered, after those, by a stable digest of the name."""
    if name in STYLES:
        return STYLES[name]
    unstyled = [n for n in strategies.names() if n not in STYLES]
    if name in unstyled:
        return _generated(unstyled.index(name))
    digest = int(hashlib.sha256(str(name).encode()).hexdigest()[:8], 16)
    return _generated(len(unstyled) + digest % 997)


def strategy_color(name: str) -> str:
    return strategy_style(name)[0]


def strategy_marker(name: str) -> str:
    return strategy_style(name)[1]


class _Registered(Mapping):
    """One attribute of every registered strategy, read at each use (not copied at import, so a strategy
    registered later has its own label, colour and marker in every figure)."""

    def __init__(self, read) -> None:
        self.read = read

    def __getitem__(self, name: str):
        if name not in strategies.REGISTRY:
            raise KeyError(name)
        return self.read(name)

    def __iter__(self):
        return iter(strategies.REGISTRY)

    def __len__(self) -> int:
        return len(strategies.REGISTRY)


#: Legend names, colours and markers of the registered strategies.
STRATEGY_LABELS = _Registered(strategies.label)
STRATEGY_COLORS = _Registered(strategy_color)
STRATEGY_MARKERS = _Registered(strategy_marker)
#: Colours of tasks (Figure 2's points), distinct from the strategy colours where possible.
TASK_COLORS = [PALETTE[0], PALETTE[3], PALETTE[2], PALETTE[4], PALETTE[1], PALETTE[9], PALETTE[5], PALETTE[6],
               PALETTE[8], PALETTE[7]]
#: Colours of the pretraining variants of the variant studies, in the order they first appear (the baseline
#: first, in near-black).
VARIANT_COLORS = ["#222222", PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[3], PALETTE[4], PALETTE[9], PALETTE[5],
                  PALETTE[6], PALETTE[8]]


def style() -> dict:
    """The one style of every figure: seaborn ``whitegrid``, colour-blind palette, readable fonts.

    Returns an rc dictionary; the figure functions apply it with :func:`matplotlib.rc_context`, so importing or
    calling them never changes global state. Apply it globally with ``matplotlib.rcParams.update(style())``.
    """
    import seaborn as sns  # seaborn costs ~0.5 s to import: only when a figure is drawn
    from cycler import cycler

    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.85))
    rc.update({
        "axes.prop_cycle": cycler(color=PALETTE),
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


# ---------------------------------------------------------------------------------------------------------------
# shared by the figure modules
# ---------------------------------------------------------------------------------------------------------------
def present_strategies(values) -> list[str]:
    """The strategies present, in the registry's order (unknown names last, alphabetically), so every figure
    lists them as the tables do."""
    return sorted({str(v) for v in values}, key=lambda s: (strategies.order(s), s))


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Stop with one line naming the missing columns: a figure fed the wrong table should say so, not KeyError."""
    if frame is None or not isinstance(frame, pd.DataFrame):
        raise StmedfmError(f"{what} needs a pandas DataFrame (a tidy table of the result store).")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StmedfmError(f"{what} needs columns {', '.join(missing)}; got {', '.join(map(str, frame.columns))}.")


def no_data(what: str, detail: str) -> StmedfmError:
    """The error of a figure whose rows are absent (write_figures skips such figures instead of raising)."""
    return StmedfmError(f"No data for {what}: {detail}")


def seeds_text(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def n_range(values) -> str:
    """'5' or '3–5': the sample sizes behind the points of a figure, for its legend."""
    values = sorted({int(v) for v in values})
    if not values:
        return "0"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def metric_label(metric: str) -> str:
    """'macro_auroc' -> 'macro AUROC', for axis labels and titles: the metric table's axis label
    (:func:`stmedfm.core.measures.axis_label`)."""
    return measures.axis_label(metric)


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


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------
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
        import matplotlib.pyplot as plt  # pyplot registers backends: imported only to free what it manages

        plt.close(fig)  # a no-op for Figure() objects, but frees any pyplot-managed figure
        fig.clear()
    return written
