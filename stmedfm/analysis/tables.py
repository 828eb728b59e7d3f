"""The paper's tables, computed from a study's tidy results.

Each table is a tidy frame: the keys of its rows (task, strategy, ...), ``mean``, ``ci95`` (half-width of the
95 % t-interval over seeds; empty with one seed), ``n`` (seeds), and, where our flag is the paper's flag, the
paper's published value (``paper``, stored as data in ``paper_results.csv``) and ``delta`` = mean - paper.
Every row names its flag, so a parameter file that fills a paper role with another flag shows it.
:func:`write_tables` writes each as CSV and markdown into ``results/<study>/tables/``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from stmedfm.core import registry, seal, strategies
from stmedfm.core.io import atomic_write_text
from stmedfm.core.stats import mean_ci
from stmedfm.core.results import StoredResults, not_results

METRICS = ("accuracy", "macro_f1", "macro_auroc", "ece", "brier")
METRIC_TABLES = {
    "table5_accuracy": "accuracy",
    "table6_macro_f1": "macro_f1",
    "table7_auroc": "macro_auroc",
    "table8_ece": "ece",
    "table8b_brier": "brier",
}


@lru_cache(maxsize=1)
def paper_results() -> pd.DataFrame:
    """The paper's published numbers, one row per (table, task, strategy, variant, k, class, metric)."""
    with resources.files("stmedfm").joinpath("paper_results.csv").open() as fh:
        frame = pd.read_csv(fh, dtype={"variant": str})
    frame["variant"] = frame["variant"].astype(object).fillna("")
    frame["class"] = frame["class"].astype("Int64")
    return frame


def medmnist_baselines() -> pd.DataFrame:
    """MedMNIST v2's own baselines (ResNet-18 at 28 px, ResNet-18 + 3D, ...): test AUC and ACC per flag and model,
    typed once in ``medmnist_benchmark.csv`` with their source."""
    with resources.files("stmedfm").joinpath("medmnist_benchmark.csv").open() as fh:
        return pd.read_csv(fh, comment="#")


#: The baseline a flag of each dimensionality is set beside: MedMNIST v2's ResNet-18 at 28 px / ResNet-18 + 3D.
BASELINE = {2: "ResNet-18 (28)", 3: "ResNet-18 + 3D"}


def benchmark_table(metrics: pd.DataFrame, strategies_shown=(strategies.SCRATCH, strategies.FULL)) -> pd.DataFrame:
    """Our Scratch and Full beside MedMNIST v2's converged ResNet-18 on every flag we ran: how far a 160 k-parameter
    model at the paper's step budgets is from the benchmark (``gap`` = our mean - baseline)."""
    base = medmnist_baselines()
    transfer = metrics[(metrics["experiment"] == "transfer") & metrics["strategy"].isin(strategies_shown)
                       & metrics["metric"].isin(["macro_auroc", "accuracy"])]
    ours = summarise(transfer, ["task", "strategy", "metric"])
    rows = []
    for r in ours.itertuples():
        model = BASELINE[registry.get(r.task).dim]
        hit = base[(base["flag"] == r.task) & (base["model"] == model)]
        value = float(hit["auc" if r.metric == "macro_auroc" else "acc"].iloc[0]) if len(hit) else np.nan
        rows.append({"task": r.task, "strategy": r.strategy, "metric": r.metric, "ours": round(r.mean, 3),
                     "ours_ci95": round(r.ci95, 3), "n": r.n, "baseline": model, "baseline_value": value,
                     "gap": round(r.mean - value, 3), "note": getattr(r, "note", "")})
    columns = ["task", "strategy", "metric", "ours", "ours_ci95", "n", "baseline", "baseline_value", "gap"]
    return pd.DataFrame(rows, columns=columns + (["note"] if "note" in ours else []))  # why a cell is empty


def ci95(values) -> float:
    """Half-width of the two-sided 95 % t-interval of the mean (NaN for fewer than two values): the interval of
    :func:`stmedfm.core.stats.mean_ci`, as a half-width."""
    mean, _, high = mean_ci(values)
    return high - mean


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table without the optional ``tabulate`` dependency."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def summarise(frame: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean, 95 % CI and count of ``value`` over seeds, per group of ``by``. A group whose every run has no value
    (n = 0: the metric is undefined, e.g. AUROC on a test split of one class) is not left as a bare blank: a column
    ``note`` says why (the column exists only when some group needs it, so other tables are unchanged)."""
    if frame.empty:
        return pd.DataFrame(columns=[*by, "mean", "ci95", "n"])
    grouped = frame.groupby(by, sort=False, dropna=False)[value]
    out = grouped.agg(mean="mean", n="count", runs="size").reset_index()
    out["ci95"] = grouped.apply(ci95).to_numpy()
    undefined = (out["n"] == 0) & (out["runs"] > 0)
    if undefined.any():
        metrics = (out["metric"] if "metric" in out else
                   pd.Series(frame["metric"].iloc[0] if "metric" in frame and frame["metric"].nunique() == 1 else "",
                             index=out.index))
        out["note"] = [undefined_note(m, r) if u else "" for m, r, u in zip(metrics, out["runs"], undefined)]
        return out[[*by, "mean", "ci95", "n", "note"]]
    return out[[*by, "mean", "ci95", "n"]]


def undefined_note(metric: str, runs: int) -> str:
    """Why a cell is empty: its metric is undefined in every one of its ``runs``."""
    why = ("AUROC needs two classes in the test split, and it holds one (see the load warning)"
           if "auroc" in str(metric) else "the metric is undefined on this test split")
    return f"undefined in all {runs} run{'s' if runs != 1 else ''}: {why}"


def with_paper(frame: pd.DataFrame, table: str, metric: str | None = None) -> pd.DataFrame:
    """Attach the paper's value and the delta where the row's flag (and setting) is the paper's."""
    paper = paper_results()
    paper = paper[paper["table"] == table]
    if metric is not None:
        paper = paper[paper["metric"] == metric]
    keys = [c for c in ("task", "strategy", "variant", "k", "class", "metric") if c in frame.columns and c in paper.columns]
    if metric is not None and "metric" not in frame.columns:
        paper = paper.drop(columns="metric")
    paper = paper[[*keys, "value"]].rename(columns={"value": "paper"})
    if "class" in keys:
        frame = frame.assign(**{"class": frame["class"].astype("Int64")})
    merged = frame.merge(paper, on=keys, how="left") if keys else frame.assign(paper=np.nan)
    merged["delta"] = merged["mean"] - merged["paper"]
    return merged


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    if "strategy" in frame.columns:
        frame = frame.assign(_s=frame["strategy"].map(strategies.order)).sort_values(
            [c for c in ("task", "variant", "k", "_s", "metric") if c in frame.columns or c == "_s"], kind="stable")
        frame = frame.drop(columns="_s")
    return frame.reset_index(drop=True)


def build_tables(store: StoredResults) -> dict[str, pd.DataFrame]:
    """Every paper table (and the temperature-scaling table) from one result store."""
    cfg = store.config()
    metrics = store.table("metrics")
    metrics["variant"] = metrics["variant"].astype(object).fillna("")  # all-empty columns are read as float
    tables: dict[str, pd.DataFrame] = {}

    params = store.parameter_counts()  # what the runs counted (runs.csv), for the study's tasks and strategies
    params = params[params["task"].isin(cfg.downstream_tasks) & params["strategy"].isin(cfg.strategies)]
    long = params.melt(id_vars=["task", "strategy"], value_vars=["total", "trainable"], var_name="metric", value_name="mean")
    long["metric"] = long["metric"] + "_params"
    tables["table4_params"] = _order(with_paper(long, "table4_params"))

    transfer = metrics[metrics["experiment"] == "transfer"]
    for name, metric in METRIC_TABLES.items():
        sub = transfer[transfer["metric"] == metric]
        tables[name] = _order(with_paper(summarise(sub, ["task", "strategy"]), name, metric))

    fewshot = metrics[(metrics["experiment"] == "fewshot") & (metrics["metric"] == "macro_auroc")]
    for name, task in zip(("table9_fewshot", "table10_fewshot"), list(cfg.fewshot_tasks)[:2]):
        sub = fewshot[(fewshot["task"] == task) & (fewshot["fewshot_split"] == 0)]
        tables[name] = _order(with_paper(summarise(sub, ["task", "k", "strategy"]), name, "macro_auroc"))
    if not fewshot.empty:
        per_seed = fewshot.groupby(["task", "k", "strategy", "seed"], sort=False)["value"].agg(["mean", "std"]).reset_index()
        t10b = summarise(per_seed, ["task", "k", "strategy"], value="mean")
        t10b["std_splits"] = per_seed.groupby(["task", "k", "strategy"], sort=False)["std"].mean().to_numpy()
        t10b = with_paper(t10b, "table10b_fewshot_splits", "macro_auroc")
        paper_std = paper_results()
        paper_std = paper_std[(paper_std["table"] == "table10b_fewshot_splits") & (paper_std["metric"] == "macro_auroc_std")]
        t10b = t10b.merge(paper_std[["task", "k", "strategy", "value"]].rename(columns={"value": "paper_std_splits"}),
                          on=["task", "k", "strategy"], how="left")
        tables["table10b_fewshot_splits"] = _order(t10b)

    for name, experiment in (("table11_class_weights", "class_weights"), ("table12_pretrain_subset", "leave_out"),
                             ("table12b_extended", "extended")):
        sub = metrics[(metrics["experiment"] == experiment) & (metrics["metric"].isin(METRICS))]
        by = ["task", "strategy", "variant", "steps", "metric"] if experiment == "extended" else ["task", "strategy", "variant", "metric"]
        tables[name] = _order(with_paper(summarise(sub, by), name))

    per_class_path = store.root / "per_class.csv"
    if per_class_path.is_file() and cfg.calibration_task:
        pc = store.table("per_class")
        pc = pc[(pc["task"] == cfg.calibration_task) & (pc["strategy"] == cfg.calibration_strategy)]
        long = pc.melt(id_vars=["task", "strategy", "seed", "class", "name"], value_vars=["support", "precision", "recall", "f1"],
                       var_name="metric", value_name="value")
        t13 = summarise(long, ["task", "strategy", "class", "name", "metric"])
        tables["table13_per_class"] = with_paper(t13, "table13_per_class").reset_index(drop=True)

    ts = transfer[transfer["metric"].isin(["ece", "ece_ts", "brier", "brier_ts", "nll", "nll_ts", "temperature"])]
    tables["temperature_scaling"] = _order(summarise(ts, ["task", "strategy", "metric"]))
    tables["medmnist_benchmark"] = benchmark_table(metrics)
    return tables


COUNT_METRICS = ("support", "total_params", "trainable_params", "steps")


def cell(mean, ci=np.nan, paper=np.nan, count=False) -> str:
    """'0.634 ± 0.012' (counts plain), with the paper's value in brackets when known."""
    if pd.isna(mean):
        return ""
    if count or (float(mean).is_integer() and abs(mean) >= 100):
        text = f"{int(mean)}"
    else:
        text = f"{mean:.3f}" if pd.isna(ci) else f"{mean:.3f} ± {ci:.3f}"
    if not pd.isna(paper):
        text += f" ({int(paper) if float(paper).is_integer() and abs(paper) >= 100 else f'{paper:.3f}'})"
    return text


def format_markdown(frame: pd.DataFrame) -> str:
    """A readable markdown table: 'mean ± ci (paper)' cells; tables with a metric column get one column per metric."""

    if frame.empty or "mean" not in frame.columns:
        return markdown(frame)
    cells = frame.apply(lambda r: r["note"] if isinstance(r.get("note"), str) and r["note"] else  # why it is empty
                        cell(r["mean"], r.get("ci95", np.nan), r.get("paper", np.nan), r.get("metric") in COUNT_METRICS),
                        axis=1)
    show = frame.assign(ours=cells).drop(columns=["note"], errors="ignore")
    if "metric" in show.columns and show["metric"].nunique() > 1:
        keys = [c for c in show.columns if c not in ("metric", "mean", "ci95", "n", "paper", "delta", "ours",
                                                     "std_splits", "paper_std_splits")]
        empty = [k for k in keys if show[k].isna().any()]  # e.g. the gap of an undefined mean: keep its row
        show[empty] = show[empty].astype(object).where(show[empty].notna(), "")
        wide = show.pivot_table(index=keys, columns="metric", values="ours", aggfunc="first", sort=False)
        order = {m: i for i, m in enumerate((*METRICS, "total_params", "trainable_params", "support", "precision",
                                              "recall", "f1", "ece_ts", "brier_ts", "nll", "nll_ts", "temperature"))}
        metrics = sorted(show["metric"].drop_duplicates(), key=lambda m: (order.get(m, len(order)), m))
        wide = wide[metrics].reset_index()
        wide.columns.name = None
        note = ("Cells: mean ± 95 % CI over seeds (paper's value in brackets where the flag is the paper's).\n\n"
                if "paper" in frame.columns else "Cells: mean ± 95 % CI over seeds.\n\n")
        return note + markdown(wide)
    show = show.drop(columns=[c for c in ("mean", "ci95", "paper") if c in show.columns])
    for col in ("delta", "std_splits", "paper_std_splits"):
        if col in show.columns:
            show[col] = show[col].map(lambda v: "" if pd.isna(v) else (f"{v:+.3f}" if col == "delta" else f"{v:.3f}"))
    order = [c for c in show.columns if c not in ("ours", "n", "delta", "std_splits", "paper_std_splits")]
    order += [c for c in ("ours", "delta", "std_splits", "paper_std_splits", "n") if c in show.columns]
    note = ("ours: mean ± 95 % CI over seeds (paper's value in brackets where the flag is the paper's); "
            "delta = ours - paper.\n\n" if "paper" in frame.columns else "ours: mean ± 95 % CI over seeds.\n\n")
    return note + markdown(show[order])


def mark(frame: pd.DataFrame, notices: list[str], name: str = "") -> pd.DataFrame:
    """A table of a store with notices gets a first column ``notice`` carrying them (so no copy of it loses them);
    when its numbers are not results (synthetic data, smoke budgets) it also shows no paper values or deltas (a
    comparison would be meaningless). Table 4 keeps its paper column: parameter counts depend on the architecture only, never on data or
    budgets, and are its acceptance test."""
    if not notices:
        return frame
    if not_results(notices) and name != "table4_params":
        frame = frame.drop(columns=[c for c in ("paper", "delta", "paper_std_splits") if c in frame.columns])
    frame = frame.copy()
    frame.insert(0, "notice", "; ".join(notices))
    return frame


def write_tables(results: str | Path) -> list[Path]:
    """Write every table as CSV and markdown into ``<results>/tables/``; returns the written paths. Each markdown
    table starts with the store's notices (synthetic data, smoke budgets, several machines)."""
    store = StoredResults(results)
    out_dir = store.root / "tables"
    notices = store.notices()
    banner = "".join(f"> **{n}**\n\n" for n in notices)
    written = []
    frames = {name: mark(frame, notices, name) for name, frame in build_tables(store).items()}
    seal.write_csvs(store.root, {f"tables/{name}.csv": frame for name, frame in frames.items()})  # with digests
    for name, frame in frames.items():
        atomic_write_text(out_dir / f"{name}.md", f"# {name}\n\n{banner}" + format_markdown(frame.drop(
            columns=["notice"], errors="ignore")))
        written += [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
    return written
