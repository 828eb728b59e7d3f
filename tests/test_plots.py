"""Figures 1-7: assertions on the figure objects built from small hand-made tidy frames (2 seeds), and
write_figures on a tiny study run on synthetic files."""

import importlib
import math
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from scipy import stats

from stmedfm.model import metrics as M
from stmedfm.core import paths, registry, strategies
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM
from stmedfm.analysis.plots import (
    STRATEGY_COLORS,
    STRATEGY_MARKERS,
    describe,
    draw,
    fig1_architecture,
    fig2_pretraining_loss,
    fig3_train_size_auroc,
    fig6_reliability,
    fig7_confusion,
    fig_fewshot,
    parameter_counts,
    short_label,
    study_model,
    style,
    write_figures,
)
from stmedfm.analysis.plots.architecture import Arrow, Box, Column, Diagram, Line

KEY = dict(run_id="run-x", variant="", steps=3, lr=0.002, class_weights=True, pretrain="bloodmnist+dermamnist",
           k=0, fewshot_split=-1)


def texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return [t for t in out if t]


def errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def half_lengths(container: ErrorbarContainer) -> np.ndarray:
    """Half the length of each vertical error bar of an errorbar container."""
    segments = container.lines[2][0].get_segments()
    return np.array([(s[1][1] - s[0][1]) / 2 for s in segments])


def ci95_by_hand(values) -> float:
    v = np.asarray(values, dtype=float)
    return stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))


# --- style ---------------------------------------------------------------------------------------------------
def test_style_has_one_distinct_colour_per_strategy_and_saves_at_150_dpi():
    assert {"scratch", "full", "lora", "adapter", "linear_probe", "bitfit"} <= set(STRATEGY_COLORS)
    assert set(STRATEGY_COLORS) == set(strategies.names())  # the peft methods too (issue 22)
    assert len(set(STRATEGY_COLORS.values())) == len(STRATEGY_COLORS)
    assert len(set(STRATEGY_MARKERS.values())) == len(STRATEGY_MARKERS)
    rc = style()
    assert rc["savefig.dpi"] == 150
    assert rc["axes.grid"] is True


# --- Figure 1 ------------------------------------------------------------------------------------------------
def test_fig1_is_drawn_from_the_model_with_layers_and_parameter_counts():
    fig = fig1_architecture()  # default: one head, LoRA and adapters inserted
    t = texts(fig)
    joined = "\n".join(t)
    assert "Conv2d 3→32 (3×3, s1) + ReLU · 896" in t and "Conv3d 1→16 (3×3×3, s1)" in joined
    assert "Shared encoder · 33,536 params" in joined  # 2 x 16,704 + final LayerNorm 128 (paper Table 4)
    assert "2D stem · 56,320 params" in joined and "3D stem · 69,664 params" in joined
    assert sum(s.startswith("LoRA r=4 +768") for s in t) == 4  # fc1 and fc2 of both blocks
    assert sum(s.startswith("Adapter 64→16→64") for s in t) == 2  # one after each block
    assert any(s.startswith("LayerNorm(64)") for s in t) and any("Linear 64→128" in s for s in t)
    assert "final LayerNorm(64) · 128" in t
    assert "pathmnist: Linear 64→9 · 585" in t and "as drawn: 167,433 params" in t
    assert fig.stmedfm_counts == {"stem2d": 56_320, "stem3d": 69_664, "encoder": 33_536, "heads": 585, "lora": 3_072,
                                  "adapters": 4_256, "total": 167_433}


def test_fig1_is_a_data_description_of_the_model_drawn_by_a_generic_renderer():
    model = study_model(StudyConfig())
    diagram = describe(model)
    keys = [b.key for c in diagram.columns for b in c.boxes]
    assert keys == ["in2d", "in3d", "stem2d", "stem3d", "block0", "adapter0", "block1", "adapter1", "norm", "summary",
                    "head:pathmnist", "logits"]
    arrows = {(a.src, a.dst) for a in diagram.arrows}
    assert {("stem2d", "block0"), ("stem3d", "block0"), ("block1", "adapter1"), ("norm", "head:pathmnist")} <= arrows
    assert all(a.src in keys and a.dst in keys for a in diagram.arrows)
    assert diagram.counts == parameter_counts(model)
    # the renderer knows nothing of STMedFM: any diagram draws
    toy = Diagram("toy", "subtitle", (Column((Box("a", "A", (Line("one"),)),), 1.5),
                                      Column((Box("b", "B", (Line("two", "lora"),), dashed=True),), 1.5)),
                  (Arrow("a", "b", "edge"),))
    assert {"toy", "subtitle", "A", "one", "B", "two", "edge"} <= set(texts(draw(toy)))


def test_fig1_follows_another_model():
    model = STMedFM(["pathmnist", "organmnist3d"], width=32)  # plain: no LoRA, no adapters
    fig = fig1_architecture(model)
    t = texts(fig)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert encoder != 33_536
    assert f"Shared encoder · {encoder:,} params" in t
    assert sum(s == "LoRA point" for s in t) == 4
    assert sum(s.startswith("adapter insertion point") for s in t) == 2
    assert not any(s.startswith("LoRA r=") for s in t)
    assert any("organmnist3d: Linear 32→11" in s for s in t)
    with pytest.raises(StmedfmError):
        fig1_architecture(object())


# --- Figure 2 ------------------------------------------------------------------------------------------------
def loss_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for pretrain in ("bloodmnist+dermamnist", "bloodmnist"):
        for seed in (0, 1):
            for step in range(10):
                task = "dermamnist" if pretrain != "bloodmnist" and step % 3 == 0 else "bloodmnist"
                loss = 2.0 - 0.1 * step + rng.random()
                rows.append(dict(seed=seed, pretrain=pretrain, step=step, task=task, loss=loss))
    return pd.DataFrame(rows)


def test_fig2_draws_one_normalised_line_per_task_with_seed_bands():
    """Issue 31: tasks of different class counts are not averaged into one line; each task's loss / log C (1 =
    chance) is a rolling mean over its own batches, read at every step after its first."""
    loss = loss_frame()
    fig = fig2_pretraining_loss(loss, window=2)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "pretraining step" and "log C" in ax.get_ylabel()
    assert "bloodmnist + dermamnist" in ax.get_title() and "2 seeds" in ax.get_title()
    full = loss[loss["pretrain"] == "bloodmnist+dermamnist"]
    from matplotlib.collections import PathCollection

    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == len(full)  # the subset checkpoint's rows are left out
    assert len([c for c in ax.collections if not isinstance(c, PathCollection)]) == 2  # a seed band per task
    lines = {ln.get_label().split(" ")[0]: ln for ln in ax.get_lines() if "classes" in ln.get_label()}
    assert set(lines) == {"bloodmnist", "dermamnist"} and "(7 classes, 40% of batches)" in lines["dermamnist"].get_label()
    # dermamnist (steps 0, 3, 6, 9): per seed, loss / log 7, rolling mean of 2 batches, held until the next; mean of seeds
    expected = np.zeros(10)
    for seed in (0, 1):
        g = full[(full["seed"] == seed) & (full["task"] == "dermamnist")].sort_values("step")
        v = g["loss"].to_numpy() / math.log(7)
        rolled = [v[max(0, i - 1): i + 1].mean() for i in range(len(v))]
        expected += np.repeat(rolled, 3)[:10] / 2
    np.testing.assert_allclose(lines["dermamnist"].get_ydata(), expected)
    assert any(ln.get_label().startswith("chance") and ln.get_ydata()[0] == 1.0 for ln in ax.get_lines())
    assert ax.get_legend() is not None

    raw = fig2_pretraining_loss(loss, window=2, normalised=True)  # losses already divided by log C: drawn as they are
    (derma,) = [ln for ln in raw.axes[0].get_lines() if ln.get_label().startswith("dermamnist")]
    np.testing.assert_allclose(derma.get_ydata(), expected * math.log(7))
    other = fig2_pretraining_loss(loss, pretrain="bloodmnist")
    assert not any(ln.get_label().startswith("dermamnist") for ln in other.axes[0].get_lines())
    with pytest.raises(StmedfmError, match="not in the table"):
        fig2_pretraining_loss(loss, pretrain="pathmnist")


# --- Figure 3 ------------------------------------------------------------------------------------------------
TRANSFER = {  # (task, strategy) -> macro AUROC of seeds 0 and 1
    ("bloodmnist", "scratch"): (0.90, 0.94), ("bloodmnist", "full"): (0.95, 0.96),
    ("dermamnist", "scratch"): (0.70, 0.76), ("dermamnist", "full"): (0.74, 0.78),
    ("organmnist3d", "scratch"): (0.75, 0.77), ("organmnist3d", "full"): (0.70, 0.74),
    ("retinamnist", "scratch"): (0.60, 0.64), ("retinamnist", "full"): (0.62, 0.70),
}


def transfer_metrics() -> pd.DataFrame:
    rows = []
    for (task, strategy), values in TRANSFER.items():
        for seed, v in enumerate(values):
            key = {**KEY, "experiment": "transfer", "task": task, "strategy": strategy, "seed": seed}
            rows.append({**key, "metric": "macro_auroc", "value": v})
            rows.append({**key, "metric": "accuracy", "value": 0.1})  # other metrics are ignored
    rows.append({**KEY, "experiment": "class_weights", "task": "bloodmnist", "strategy": "scratch", "seed": 0,
                 "metric": "macro_auroc", "value": 0.0})  # other experiments are ignored
    return pd.DataFrame(rows)


def test_fig3_x_is_the_official_train_size_and_bars_are_the_95ci_over_seeds():
    fig = fig3_train_size_auroc(transfer_metrics())
    ax = fig.axes[0]
    assert ax.get_ylabel() == "test macro AUROC"
    assert "training-set size" in ax.get_xlabel() and "log" in ax.get_xlabel()
    assert ax.get_xscale() == "log"
    bars = errorbars(ax)
    assert [c.get_label() for c in bars] == ["Scratch", "Pretrain+Full"]
    tasks = sorted({t for t, _ in TRANSFER}, key=lambda t: registry.get(t).n_samples["train"])
    official = [registry.get(t).n_samples["train"] for t in tasks]
    assert official == [971, 1080, 7007, 11959]
    for c, strategy in zip(bars, ("scratch", "full")):
        np.testing.assert_array_equal(c.lines[0].get_xdata(), official)
        np.testing.assert_allclose(c.lines[0].get_ydata(), [np.mean(TRANSFER[t, strategy]) for t in tasks])
        np.testing.assert_allclose(half_lengths(c), [ci95_by_hand(TRANSFER[t, strategy]) for t in tasks])
    assert "95 % CI" in ax.get_legend().get_title().get_text()
    annotations = [t for t in texts(fig) if "\nn=" in t]
    assert sorted(a.split("\n")[0] for a in annotations) == sorted(tasks)  # every x names its flag
    assert "11,959" in "".join(annotations)
    with pytest.raises(StmedfmError, match="Figure 3"):
        fig3_train_size_auroc(transfer_metrics().assign(experiment="fewshot"))


# --- Figures 4-5 ---------------------------------------------------------------------------------------------
def fewshot_metrics() -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(1)
    rows, values = [], {}
    for task in ("dermamnist", "organmnist3d"):
        for strategy in ("full", "lora", "adapter"):
            for k in (1, 5, 10):
                vals = []
                for seed in (0, 1):
                    for split in (0, 1):
                        v = float(rng.uniform(0.5, 0.8))
                        vals.append(v)
                        rows.append({**KEY, "experiment": "fewshot", "variant": f"K={k}", "task": task,
                                     "strategy": strategy, "seed": seed, "k": k, "fewshot_split": split,
                                     "metric": "macro_auroc", "value": v})
                        rows.append({**rows[-1], "metric": "accuracy", "value": 0.0})
                values[task, strategy, k] = vals
    return pd.DataFrame(rows), values


def test_fewshot_figure_is_mean_and_std_over_splits_and_seeds_per_strategy():
    frame, values = fewshot_metrics()
    fig = fig_fewshot(frame, "dermamnist")
    ax = fig.axes[0]
    assert "macro AUROC" in ax.get_ylabel() and "std" in ax.get_ylabel()
    assert ax.get_xlabel().startswith("K")
    assert "dermamnist" in ax.get_title()
    legend = ax.get_legend().get_title().get_text()
    assert "std over" in legend and "2 splits × 2 seeds" in legend
    bars = errorbars(ax)
    assert [c.get_label() for c in bars] == ["Pretrain+Full", "Pretrain+LoRA", "Pretrain+Adapter"]
    for c, strategy in zip(bars, ("full", "lora", "adapter")):
        np.testing.assert_array_equal(c.lines[0].get_xdata(), [1, 5, 10])
        v = [values["dermamnist", strategy, k] for k in (1, 5, 10)]
        np.testing.assert_allclose(c.lines[0].get_ydata(), [np.mean(x) for x in v])
        np.testing.assert_allclose(half_lengths(c), [np.std(x, ddof=1) for x in v])
    assert list(ax.get_xticks()) == [1, 5, 10]
    with pytest.raises(StmedfmError, match="pathmnist"):
        fig_fewshot(frame, "pathmnist")


# --- Figure 6 ------------------------------------------------------------------------------------------------
def reliability_frame(n_seeds=2):
    """Reliability bins of two seeds from real binning, plus the concatenated predictions they pool to."""
    rng = np.random.default_rng(2)
    frames, ys, ps = [], [], []
    for seed in range(n_seeds):
        logits = rng.normal(size=(200, 4)) * (1.0 + seed)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = rng.integers(0, 4, size=200)
        y[:80] = p[:80].argmax(axis=1)  # some signal, so accuracy varies by bin
        bins = M.reliability_bins(y, p, n_bins=15)
        frames.append(bins.assign(**KEY, experiment="transfer", task="bloodmnist", strategy="full", seed=seed))
        ys.append(y)
        ps.append(p)
    other = frames[0].assign(strategy="scratch", accuracy=0.0)  # another strategy: ignored
    return pd.concat([*frames, other], ignore_index=True), np.concatenate(ys), np.concatenate(ps)


def test_fig6_bars_are_the_count_weighted_pooled_accuracy_and_title_has_pooled_ece():
    frame, y, p = reliability_frame()
    fig = fig6_reliability(frame, "bloodmnist", "full")
    ax, hist = fig.axes
    pooled = M.reliability_bins(y, p, n_bins=15)  # binning the concatenated predictions = pooling the seeds
    full = pooled[pooled["count"] > 0]
    (acc,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label().startswith("accuracy")]
    np.testing.assert_allclose([b.get_height() for b in acc], full["accuracy"])
    np.testing.assert_allclose([b.get_x() for b in acc], full["lower"])
    np.testing.assert_allclose([b.get_height() for b in hist.containers[0]], pooled["count"])
    ece = M.ece(y, p, n_bins=15)
    assert fig.stmedfm_ece == pytest.approx(ece)
    assert f"ECE = {ece:.3f}" in ax.get_title() and "bloodmnist" in ax.get_title()
    assert "2 seeds pooled" in ax.get_title() and "15 bins" in ax.get_title()
    assert ax.get_ylabel().startswith("accuracy") and hist.get_xlabel().startswith("confidence")
    assert hist.get_ylabel().startswith("count")
    diagonal = [ln for ln in ax.get_lines() if ln.get_label() == "perfect calibration"]
    assert len(diagonal) == 1 and list(diagonal[0].get_xdata()) == [0, 1]
    with pytest.raises(StmedfmError, match="Figure 6"):
        fig6_reliability(frame, "bloodmnist", "lora")


# --- Figure 7 ------------------------------------------------------------------------------------------------
def test_fig7_is_the_row_normalised_sum_over_seeds_with_class_names():
    counts = {0: [[3, 1], [2, 4]], 1: [[1, 3], [0, 2]]}
    rows = []
    for seed, m in counts.items():
        for t in range(2):
            for p in range(2):
                rows.append({**KEY, "experiment": "transfer", "task": "breastmnist", "strategy": "full",
                             "seed": seed, "true": t, "pred": p, "count": m[t][p]})
    rows.append({**rows[0], "strategy": "scratch", "count": 100})  # another strategy: ignored
    fig = fig7_confusion(pd.DataFrame(rows), "breastmnist", "full")
    ax = fig.axes[0]
    # summed [[4, 4], [2, 6]] -> rows normalised
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_allclose(fig.stmedfm_matrix, [[0.5, 0.5], [0.25, 0.75]])
    cells = [t.get_text() for t in ax.texts]
    assert sorted(cells) == ["0.25", "0.50", "0.50", "0.75"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel().startswith("true class")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["malignant", "normal, benign"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["malignant (n=8)", "normal, benign (n=8)"]
    assert "breastmnist" in ax.get_title() and "Pretrain+Full" in ax.get_title()


def test_long_class_names_are_shortened():
    long = registry.get("bloodmnist").labels[3]
    assert len(long) > 40
    assert short_label(long) == "immature granulocytes"
    assert short_label("actinic keratoses and intraepithelial carcinoma") == "actinic keratoses…"
    assert short_label("adipose") == "adipose"
    assert all(len(short_label(x)) <= 22 for t in ("pathmnist", "dermamnist", "bloodmnist")
               for x in registry.get(t).labels)


# --- write_figures on the shared tiny study (conftest.tiny_store) ----------------------------------------------
EXPECTED = ["fig1_architecture", "fig2_pretraining_loss", "fig3_train_size_auroc", "fig4_fewshot_dermamnist",
            "fig5_fewshot_bloodmnist", "fig6_reliability_bloodmnist", "fig7_confusion_bloodmnist"]


def test_write_figures_writes_png_and_svg_of_every_figure(tiny_store, tmp_path):
    out = tmp_path / "figs"
    written = write_figures(tiny_store.root, out)
    names = sorted(p.name for p in written)
    assert names == sorted(f"{n}.{ext}" for n in EXPECTED for ext in ("png", "svg"))
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind
    for path in written:
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in path.read_bytes()[:2000]
    png = matplotlib.image.imread(out / "fig3_train_size_auroc.png")
    assert png.shape[1] > 1000  # 150 dpi, not the screen's 100


def test_write_figures_defaults_to_figures_dir_and_skips_absent_data(tiny_store, tmp_path, monkeypatch):
    copy = tmp_path / "store"
    shutil.copytree(tiny_store.root, copy, ignore=shutil.ignore_patterns("runs", "checkpoints"))
    for name in ("reliability", "pretrain_loss", "metrics"):
        (copy / f"{name}.csv").unlink()
    monkeypatch.setenv(paths.ENV_ROOT, str(tmp_path / "project"))
    written = write_figures(copy)
    assert {p.parent for p in written} == {paths.figures_dir("tiny")}
    assert paths.figures_dir("tiny") == tmp_path / "project" / "figures" / "tiny"
    stems = sorted({p.stem for p in written})
    assert stems == ["fig1_architecture", "fig7_confusion_bloodmnist"]  # Figure 1 needs only the config
    with pytest.raises(StmedfmError, match="no study"):
        write_figures(tmp_path / "nowhere")


def test_figure_styles_read_the_registry_at_use(monkeypatch):
    """A strategy registered after import has its own label, colour and marker in every figure: a generated style
    distinct from every other (issue 32: styles are the figures', not the registry's), or the one it is given."""
    S = importlib.import_module("stmedfm.analysis.plots.style")  # the module (stmedfm.analysis.plots.style is also a function)

    monkeypatch.setitem(strategies.REGISTRY, "late", strategies.Strategy("late", "Late"))
    monkeypatch.setitem(strategies.REGISTRY, "later", strategies.Strategy("later", "Later"))
    styles = {n: (STRATEGY_COLORS[n], STRATEGY_MARKERS[n]) for n in strategies.names()}
    assert len({c.lower() for c, _ in styles.values()}) == len(styles) and "late" in STRATEGY_COLORS
    assert S.strategy_style("late") == S.strategy_style("late") != S.strategy_style("later")
    stranger = S.strategy_style("never_registered")  # a name in a store whose module is not imported
    assert stranger[0].lower() not in {c.lower() for c, _ in styles.values()}
    monkeypatch.setattr(S, "STYLES", dict(S.STYLES))
    S.set_style("late", "#123456", "+")
    assert (STRATEGY_COLORS["late"], STRATEGY_MARKERS["late"]) == ("#123456", "+")
