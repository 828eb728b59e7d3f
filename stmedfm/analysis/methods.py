"""Every PEFT method on one tiny cross-modal backbone (issue 22): tables, paired tests, Pareto front, figures and
findings of a study that runs every registered strategy (``params/peft_methods.yaml``; notebook 10).

The study itself is an ordinary one (``stmedfm study``): this module only reads its tidy tables (``metrics.csv``,
``runs.csv``) and writes its own beside them in the store (``results/<study>/methods_*.csv``):

========================  ==========================================================================================
``methods_summary``       per task x strategy x metric: mean, 95 % t-CI over seeds, n, trainable parameters
``methods_comparisons``   each method vs the paper's LoRA and vs Scratch, paired over seeds (:mod:`stmedfm.core.stats`,
                          ``mean_diff`` > 0 favours the method), Holm within each (task, metric, reference) family
``methods_pareto``        per task: AUROC and trainable parameters of each strategy, ``front`` = on the Pareto front
``methods_fewshot``       few-shot AUROC per task x strategy x K: splits averaged per seed, then mean and 95 % CI
                          over seeds (seeds are the independent unit; a seed's splits share its checkpoint)
========================  ==========================================================================================

Decisions, written down once:

* **Metrics**: macro AUROC (the primary one), macro-F1, ECE and Brier score of the test split; with temperature
  scaling on, ECE and Brier after scaling too (``ece_ts``, ``brier_ts``). Every difference is oriented by
  :mod:`stmedfm.core.stats` (positive favours the method: for ECE and Brier, the method's is lower).
* **Equivalence is shown, not assumed** (issue 28): on AUROC every comparison also carries the paired TOST of
  equivalence within the study's ``equivalence_margin`` (default 0.01 AUROC; :func:`stmedfm.core.stats.tost`), Holm
  within its family (``p_tost_holm``, ``equivalent``). A non-significant Wilcoxon p alone never decides anything.
* **Pareto front** (per task, on the means): a strategy is on it when no other strategy has at most as many
  trainable parameters and at least its AUROC, one of the two strictly. The *Pareto-best* method of a task is the
  cheapest front member that is the task's best or *equivalent* to it (TOST, Holm over the task's methods
  compared with the best): the cheapest way to the top, shown to be within the margin.
* **Negative transfer on the small task** (the smallest pretraining task, :func:`stmedfm.analysis.report.claim_roles`): a
  pretrained method *removes* it when its AUROC is equivalent to Scratch's (TOST, Holm in the vs-Scratch family)
  or significantly above it; it *beats* Scratch when significantly above.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stmedfm.core import measures, paths, seal, stats, strategies
from stmedfm.core.errors import StmedfmError
from stmedfm.analysis.plots import fig_fewshot_methods, fig_pareto, write_figure
from stmedfm.analysis.report import claim_roles
from stmedfm.core.results import StoredResults

__all__ = ["METRICS", "REFERENCES", "analyse", "write_tables", "read_tables", "summary", "comparisons", "pareto",
           "fewshot", "task_table", "comparison_view", "pareto_best", "findings", "figures", "write_figures"]

#: The metrics of the tables, the primary one first; ``*_ts`` only when the study scaled temperatures.
METRICS = ("macro_auroc", "macro_f1", "ece", "brier", "ece_ts", "brier_ts")
#: The references every method is tested against: the paper's LoRA and training from scratch.
REFERENCES = (strategies.LORA, strategies.SCRATCH)
#: The paper's PEFT methods and Full: whether *they* are below Scratch on the small task is what "negative transfer"
#: means in the paper (Tables 7, 10 and 12 on OrganMNIST3D).
PAPER_PEFT = strategies.PAPER_PRETRAINED
BENCH_CSV = "bench_methods.csv"  #: written by ``stmedfm bench --methods`` (stmedfm.run.bench_methods) into the store
TABLES = ("summary", "comparisons", "pareto", "fewshot")


def _order(frame: pd.DataFrame, *by: str) -> pd.DataFrame:
    """Rows by task (first appearance) then strategy (the registry's order)."""
    if frame.empty:
        return frame
    tasks = {t: i for i, t in enumerate(dict.fromkeys(frame["task"]))}
    keys = frame.assign(_t=frame["task"].map(tasks), _s=frame["strategy"].map(strategies.order))
    return keys.sort_values(["_t", "_s", *by], kind="stable").drop(columns=["_t", "_s"]).reset_index(drop=True)


def _transfer(metrics: pd.DataFrame) -> pd.DataFrame:
    need = ("experiment", "task", "strategy", "seed", "metric", "value")
    missing = [c for c in need if c not in metrics.columns]
    if missing:
        raise StmedfmError(f"The metrics table lacks column(s) {', '.join(missing)}: pass metrics.csv of a study.")
    return metrics[metrics["experiment"] == "transfer"]


def summary(metrics: pd.DataFrame, runs: pd.DataFrame, bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and 95 % t-CI over seeds of every metric of :data:`METRICS` per task x strategy (transfer experiment),
    with the strategy's trainable and total parameters on that task, the median seconds of its runs (training and
    evaluation, one torch thread) and its learning rate (the selected one when the study has ``lr_grid``), from
    ``runs.csv``; with ``bench`` (the store's ``bench_methods.csv``, :mod:`stmedfm.run.bench_methods`), each
    strategy's measured training seconds and peak training memory (``peak_train_mib``) of one run on the bench's
    task, the same for every task row (memory is a property of the method on this backbone, measured once)."""
    m = _transfer(metrics)
    m = m[m["metric"].isin(METRICS)]
    rows = []
    for (task, strategy, metric), g in m.groupby(["task", "strategy", "metric"], sort=False):
        mean, lo, hi = stats.mean_ci(g.drop_duplicates("seed")["value"])
        rows.append({"task": task, "strategy": strategy, "metric": metric, "mean": mean, "ci_low": lo, "ci_high": hi,
                     "n": int(g["seed"].nunique())})
    out = pd.DataFrame(rows, columns=["task", "strategy", "metric", "mean", "ci_low", "ci_high", "n"])
    transfer = runs[runs["experiment"] == "transfer"]
    agg = {"trainable_params": "first", "total_params": "first"}
    agg.update({c: f for c, f in (("seconds", "median"), ("lr", "first")) if c in transfer.columns})
    counts = transfer.groupby(["task", "strategy"]).agg(agg).reset_index()
    out = out.merge(counts, on=["task", "strategy"], how="left")
    if bench is not None:
        cost = bench[["strategy", "train_seconds", "peak_train_mib"]].rename(columns={"train_seconds": "train_s_bench"})
        out = out.merge(cost, on="strategy", how="left")
    out["metric_order"] = out["metric"].map({m: i for i, m in enumerate(METRICS)})
    return _order(out, "metric_order").drop(columns="metric_order")


def comparisons(metrics: pd.DataFrame, references=REFERENCES, margin: float = stats.DEFAULT_MARGIN) -> pd.DataFrame:
    """Each strategy vs each reference (default: the paper's LoRA and Scratch) on every task and metric, and on
    AUROC also vs the task's best strategy (highest mean AUROC), paired over seeds with
    :func:`stmedfm.core.stats.compare` (``mean_diff`` > 0 favours the strategy); Holm within each family (task, metric,
    reference), i.e. over the methods compared with that reference. ``against`` names the family's kind ('lora',
    'scratch' or 'best') and ``reference`` the strategy compared with. On AUROC, also the TOST of equivalence within
    ``margin`` (``p_tost``, ``p_tost_holm``, ``equivalent``; :func:`stmedfm.core.stats.compare`).

    The 'best' family picks its reference on the same data, which biases the best's mean upwards; it is used only to
    ask which cheaper methods are *not* shown to be worse (:func:`pareto_best`), where that bias makes the answer
    conservative."""
    m = _transfer(metrics)
    m = m[m["metric"].isin(METRICS)].drop_duplicates(["task", "strategy", "metric", "seed"])
    frames = []
    for (task, metric), g in m.groupby(["task", "metric"], sort=False):
        present = set(g["strategy"])
        against = [(ref, ref) for ref in references if ref in present]
        if metric == "macro_auroc":
            against.append(("best", g.groupby("strategy")["value"].mean().idxmax()))
        for kind, ref in against:
            others = [s for s in strategies.names() if s in present and s != ref]
            others += sorted(present - set(strategies.names()) - {ref})
            if not others:
                continue
            out = stats.compare(g, [({"strategy": s}, {"strategy": ref}) for s in others], pair_on=["seed"],
                                labels=others, family=f"{task}:{metric}:vs {kind}",
                                margin=margin if metric == "macro_auroc" else None, metric=metric)
            for i, (col, val) in enumerate((("task", task), ("metric", metric), ("against", kind),
                                            ("reference", ref))):
                out.insert(i, col, val)
            frames.append(out.rename(columns={"label": "strategy"}))
    if not frames:
        return pd.DataFrame(columns=["task", "metric", "against", "reference", "family", "strategy", "n",
                                     "mean_diff", "ci_low", "ci_high", "p_two_sided", "p_holm"])
    return pd.concat(frames, ignore_index=True)


def pareto(summ: pd.DataFrame, metric: str = "macro_auroc") -> pd.DataFrame:
    """Per task: each strategy's trainable parameters and ``metric`` (mean, CI), and whether it is on the Pareto
    front (no other strategy with <= parameters and >= ``metric``, one strictly; module docstring)."""
    s = summ[summ["metric"] == metric].dropna(subset=["mean", "trainable_params"])
    rows = []
    for task, g in s.groupby("task", sort=False):
        pts = list(zip(g["strategy"], g["trainable_params"].astype(float), g["mean"].astype(float)))
        for strategy, n, auc in pts:
            dominated = any((n2 <= n and a2 >= auc) and (n2 < n or a2 > auc) for s2, n2, a2 in pts if s2 != strategy)
            rows.append({"task": task, "strategy": strategy, "trainable_params": int(n), "mean": auc,
                         "front": not dominated})
    out = pd.DataFrame(rows, columns=["task", "strategy", "trainable_params", "mean", "front"])
    out = out.merge(s[["task", "strategy", "ci_low", "ci_high", "n"]], on=["task", "strategy"], how="left")
    return _order(out)


def fewshot(metrics: pd.DataFrame, metric: str = "macro_auroc") -> pd.DataFrame:
    """Few-shot ``metric`` per task x strategy x K: the splits of a seed averaged, then mean and 95 % t-CI over
    seeds."""
    if "k" not in metrics.columns:
        return pd.DataFrame(columns=["task", "strategy", "k", "mean", "ci_low", "ci_high", "n"])
    m = metrics[(metrics["experiment"] == "fewshot") & (metrics["metric"] == metric)]
    per_seed = m.groupby(["task", "strategy", "k", "seed"], sort=False)["value"].mean().reset_index()
    rows = []
    for (task, strategy, k), g in per_seed.groupby(["task", "strategy", "k"], sort=False):
        mean, lo, hi = stats.mean_ci(g["value"])
        rows.append({"task": task, "strategy": strategy, "k": int(k), "mean": mean, "ci_low": lo, "ci_high": hi,
                     "n": len(g)})
    out = pd.DataFrame(rows, columns=["task", "strategy", "k", "mean", "ci_low", "ci_high", "n"])
    return _order(out, "k")


def analyse(store) -> dict[str, pd.DataFrame]:
    """The tables of :data:`TABLES` computed from a study's store (a :class:`~stmedfm.core.results.StoredResults` or its
    path), plus ``small_task`` / ``dominant_task`` as one-row frames of the roles."""
    store = store if isinstance(store, StoredResults) else StoredResults(store)
    metrics, runs = store.table("metrics"), store.table("runs")
    bench_csv = store.root / BENCH_CSV
    summ = summary(metrics, runs, pd.read_csv(bench_csv) if bench_csv.is_file() else None)
    roles = claim_roles(store.config())
    margin = store.config().equivalence_margin
    return {"summary": summ, "comparisons": comparisons(metrics, margin=margin), "pareto": pareto(summ),
            "fewshot": fewshot(metrics), "roles": pd.DataFrame([roles])}


def write_tables(store, tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """Write ``methods_<name>.csv`` (and ``methods_roles.csv``) into the store; returns the paths."""
    store = store if isinstance(store, StoredResults) else StoredResults(store)
    tables = analyse(store) if tables is None else tables
    return seal.write_csvs(store.root, {f"methods_{name}.csv": frame for name, frame in tables.items()})


def read_tables(results: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The committed ``methods_*.csv`` of a store (written by :func:`write_tables`); nothing is computed."""
    root = Path(results)
    out = {}
    for name in (*TABLES, "roles"):
        path = root / f"methods_{name}.csv"
        if not path.is_file():
            raise StmedfmError(f"'{path}' does not exist: run notebook 10 (or stmedfm.analysis.methods.write_tables) on "
                               f"{root} first.")
        out[name] = seal.read_csv(root, path.name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# views and findings
# ---------------------------------------------------------------------------------------------------------------
def _cell(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{mean:.3f}"


_p = stats.format_p


def task_table(tables: dict[str, pd.DataFrame], task: str) -> pd.DataFrame:
    """One task: a row per strategy with its trainable parameters and each metric as 'mean [95 % CI]'."""
    s = tables["summary"]
    s = s[s["task"] == task]
    if s.empty:
        raise StmedfmError(f"No transfer rows for task '{task}'; tasks: {', '.join(dict.fromkeys(tables['summary']['task']))}.")
    rows = []
    for strategy, g in s.groupby("strategy", sort=False):
        row = {"strategy": strategies.label(strategy), "trainable": int(g["trainable_params"].iloc[0]),
               "n": int(g["n"].max())}
        if "lr" in g.columns:
            row["lr"] = f"{g['lr'].iloc[0]:g}"
        if "seconds" in g.columns:
            row["s / run"] = f"{g['seconds'].iloc[0]:.1f}"
        if "peak_train_mib" in g.columns and np.isfinite(g["peak_train_mib"].iloc[0]):
            row["train MiB"] = f"{g['peak_train_mib'].iloc[0]:.1f}"
        for r in g.itertuples():
            row[measures.label(r.metric)] = _cell(r.mean, r.ci_low, r.ci_high)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_view(tables: dict[str, pd.DataFrame], task: str, metric: str = "macro_auroc") -> pd.DataFrame:
    """One task and metric: per strategy, the paired difference vs LoRA and vs Scratch (mean [95 % CI], positive
    favours the method; seeds where the method is better / pairs) and the Holm-adjusted Wilcoxon p of each."""
    c = tables["comparisons"]
    c = c[(c["task"] == task) & (c["metric"] == metric)]
    rows = {}
    for r in c.itertuples():
        if r.against not in REFERENCES:
            continue
        row = rows.setdefault(r.strategy, {"strategy": strategies.label(r.strategy)})
        row[f"Δ vs {strategies.label(r.reference)}"] = (f"{r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                                                        if np.isfinite(r.ci_low) else f"{r.mean_diff:+.3f}")
        row[f"better / n ({r.reference})"] = f"{r.n_pos}/{r.n}"
        row[f"Holm p ({r.reference})"] = _p(r.p_holm)
        if "p_tost_holm" in c.columns:
            row[f"TOST Holm p ({r.reference})"] = _p(r.p_tost_holm)
    order = sorted(rows, key=strategies.order)
    return pd.DataFrame([rows[s] for s in order])


def _comparison(tables, task: str, strategy: str, against: str, metric: str = "macro_auroc"):
    c = tables["comparisons"]
    hit = c[(c["task"] == task) & (c["metric"] == metric) & (c["against"] == against) & (c["strategy"] == strategy)]
    return None if hit.empty else hit.iloc[0]


def _significant(row, sign: int) -> bool:
    """Whether ``row`` favours its strategy (``sign`` +1) or its reference (-1) by the one decision rule
    (:func:`stmedfm.core.stats.decide`, Holm p)."""
    return row is not None and stats.decide(row["mean_diff"], row["p_holm"]) == sign


def _equivalent(row) -> bool:
    """TOST-equivalent to its reference within the margin (Holm p < :data:`stmedfm.core.stats.ALPHA` in its family)."""
    if row is None or "p_tost_holm" not in row:
        return False
    return stats.significant(row["p_tost_holm"])


def pareto_best(tables: dict[str, pd.DataFrame], task: str) -> str | None:
    """The Pareto-best strategy of ``task``: walking the Pareto front from the fewest trainable parameters up, the
    first member that is the task's best or TOST-equivalent to it (the 'best' family of :func:`comparisons`)."""
    p = tables["pareto"]
    front = p[(p["task"] == task) & p["front"].astype(bool)].sort_values("trainable_params")
    for r in front.itertuples():
        row = _comparison(tables, task, r.strategy, "best")
        if row is None or _equivalent(row):  # None: r is the best itself
            return r.strategy
    return None


def _margin(tables: dict[str, pd.DataFrame]) -> str:
    c = tables["comparisons"]
    m = c["margin"].dropna() if "margin" in c.columns else pd.Series(dtype=float)
    return f"±{m.iloc[0]:g}" if len(m) else "±?"


def findings(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Sentences computed from the tables (never typed): per task the Pareto front and the Pareto-best method, then
    whether any method removes the small task's negative transfer, then the few-shot leaders."""
    out = []
    summ, p = tables["summary"], tables["pareto"]
    roles = tables["roles"].iloc[0].to_dict() if "roles" in tables and not tables["roles"].empty else {}
    for task in dict.fromkeys(p["task"]):
        g = p[p["task"] == task]
        n = int(g["n"].max()) if g["n"].notna().any() else 0
        front = g[g["front"].astype(bool)].sort_values("trainable_params")
        members = "; ".join(f"{strategies.label(r.strategy)} ({r.trainable_params:,} trainable, AUROC "
                            f"{_cell(r.mean, r.ci_low, r.ci_high)})" for r in front.itertuples())
        best_row = g.loc[g["mean"].idxmax()]
        line = (f"{task} ({n} seeds): the Pareto front of AUROC vs trainable parameters is {members}. Highest mean "
                f"AUROC: {strategies.label(best_row['strategy'])} ({best_row['mean']:.3f})")
        pb = pareto_best(tables, task)
        if pb is not None:
            pr = g[g["strategy"] == pb].iloc[0]
            line += (f"; Pareto-best (the cheapest front member equivalent to it within {_margin(tables)} AUROC, "
                     f"TOST, Holm over the task's methods): {strategies.label(pb)} with "
                     f"{int(pr['trainable_params']):,} trainable parameters, "
                     f"AUROC {_cell(pr['mean'], pr['ci_low'], pr['ci_high'])}")
            vs = _comparison(tables, task, pb, "lora")
            if vs is not None:
                line += (f" (vs the paper's LoRA {vs['mean_diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}], "
                         f"Holm p {_p(vs['p_holm'])})")
        out.append(line + ".")
    small = roles.get("small")
    if small and small in set(summ["task"]):
        sc = summ[(summ["task"] == small) & (summ["strategy"] == "scratch") & (summ["metric"] == "macro_auroc")]
        c = tables["comparisons"]
        c = c[(c["task"] == small) & (c["metric"] == "macro_auroc") & (c["against"] == "scratch")]
        if not sc.empty and not c.empty:
            s0 = sc.iloc[0]
            rows = list(c.itertuples())
            below = [r for r in rows if _significant(r._asdict(), -1)]
            above = [r for r in rows if _significant(r._asdict(), +1)]
            removed = [r for r in rows if _equivalent(r._asdict()) or _significant(r._asdict(), +1)]

            def names(rs) -> str:
                return ", ".join(f"{strategies.label(r.strategy)} ({r.mean_diff:+.3f} [{r.ci_low:+.3f}, "
                                 f"{r.ci_high:+.3f}], Holm p {_p(r.p_holm)})" for r in rs) or "none"

            paper = [r for r in rows if r.strategy in PAPER_PEFT]
            text = (f"Negative transfer on the small task {small} (Scratch AUROC "
                    f"{_cell(s0['mean'], s0['ci_low'], s0['ci_high'])}; method - Scratch, paired over seeds): ")
            if any(_significant(r._asdict(), -1) for r in paper):
                text += (f"present for the paper's methods ({names(paper)}). Removed (equivalent to Scratch within "
                         f"{_margin(tables)} AUROC by TOST, Holm, or significantly above it) by: {names(removed)}; "
                         f"significantly above Scratch: "
                         f"{names(above)}; still significantly below: "
                         f"{', '.join(strategies.label(r.strategy) for r in below) or 'none'}.")
            else:
                text += (f"not significant for the paper's methods at these seeds ({names(paper)}), so there is "
                         f"none to remove; significantly below Scratch: {names(below)}; significantly above: "
                         f"{names(above)}.")
            out.append(text)
    fs = tables.get("fewshot")
    if fs is not None and not fs.empty:
        for task in dict.fromkeys(fs["task"]):
            g = fs[fs["task"] == task]
            leaders = []
            for k in sorted(g["k"].unique()):
                r = g[g["k"] == k].sort_values("mean", ascending=False).iloc[0]
                leaders.append(f"K={k}: {strategies.label(r['strategy'])} ({_cell(r['mean'], r['ci_low'], r['ci_high'])})")
            out.append(f"Few-shot {task}, highest mean AUROC per K (splits averaged per seed, CI over "
                       f"{int(g['n'].max())} seeds): " + "; ".join(leaders) + ".")
    return out


def conclusions(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The study's conclusions as a tidy frame (task, conclusion, value), each a pure function of the tables: per
    task the highest mean AUROC, the Pareto-best method and the front; the methods significantly above and below
    the paper's LoRA (Holm); on the small task, the methods that remove negative transfer and the number still
    significantly below Scratch. What :func:`changes` compares between two studies."""
    rows = []
    p, c = tables["pareto"], tables["comparisons"]
    roles = tables["roles"].iloc[0].to_dict() if "roles" in tables and not tables["roles"].empty else {}
    auroc = c[c["metric"] == "macro_auroc"]

    def listed(names) -> str:
        return ", ".join(strategies.label(n) for n in sorted(names, key=strategies.order)) or "none"

    for task in dict.fromkeys(p["task"]):
        g = p[p["task"] == task]
        front = g[g["front"].astype(bool)].sort_values("trainable_params")
        pb = pareto_best(tables, task)
        vs_lora = [r._asdict() for r in auroc[(auroc["task"] == task) & (auroc["against"] == "lora")].itertuples()]
        rows += [(task, "highest mean AUROC", strategies.label(g.loc[g["mean"].idxmax(), "strategy"])),
                 (task, "Pareto-best", strategies.label(pb) if pb else "none"),
                 (task, "Pareto front", listed(front["strategy"])),
                 (task, "significantly above LoRA", listed(r["strategy"] for r in vs_lora if _significant(r, +1))),
                 (task, "significantly below LoRA", listed(r["strategy"] for r in vs_lora if _significant(r, -1)))]
    small = roles.get("small")
    if small in set(p["task"]):
        vs = [r._asdict() for r in auroc[(auroc["task"] == small) & (auroc["against"] == "scratch")].itertuples()]
        rows += [(small, "removes negative transfer (TOST or above Scratch)",
                  listed(r["strategy"] for r in vs if _equivalent(r) or _significant(r, +1))),
                 (small, "methods significantly below Scratch", str(sum(_significant(r, -1) for r in vs)))]
    return pd.DataFrame(rows, columns=["task", "conclusion", "value"])


def changes(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`conclusions` of two studies side by side (e.g. one learning rate for every method vs rates selected
    on validation), with ``changed`` where they differ."""
    old, new = conclusions(before), conclusions(after)
    both = old.merge(new, on=["task", "conclusion"], how="outer", suffixes=("_before", "_after")).fillna("—")
    rank = {key: i for i, key in enumerate(zip(new["task"], new["conclusion"]))}  # the outer merge sorts: undo it
    both["rank"] = [rank.get(key, len(rank)) for key in zip(both["task"], both["conclusion"])]
    both = both.sort_values("rank", kind="stable").drop(columns="rank").reset_index(drop=True)
    return both.assign(changed=both["value_before"] != both["value_after"])


def changes_markdown(before_results: str | os.PathLike, after_results: str | os.PathLike) -> str:
    """:func:`changes` of two committed stores as a markdown table (the generated block of docs/peft_methods.md)."""
    before, after = read_tables(before_results), read_tables(after_results)
    frame = changes(before, after)
    b, a = Path(before_results).name, Path(after_results).name
    lines = [f"{int(frame['changed'].sum())} of {len(frame)} conclusions differ between `{b}` and `{a}`.", "",
             f"| task | conclusion | `{b}` | `{a}` |", "|---|---|---|---|"]
    for r in frame.itertuples():
        mark = "**" if r.changed else ""
        lines.append(f"| {r.task} | {r.conclusion} | {r.value_before} | {mark}{r.value_after}{mark} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# figures (drawn by stmedfm.analysis.plots.methods from the tidy tables; written with the project's figure writer)
# ---------------------------------------------------------------------------------------------------------------
def figures(tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """Every figure of the tables: ``pareto_auroc`` and one ``fewshot_methods_<task>`` per few-shot task."""
    out = {}
    if not tables["pareto"].empty:
        out["pareto_auroc"] = fig_pareto(tables["pareto"])
    fs = tables["fewshot"]
    for task in dict.fromkeys(fs["task"]) if not fs.empty else ():
        out[f"fewshot_methods_{task}"] = fig_fewshot_methods(fs, task)
    return out


def write_figures(store, tables: dict[str, pd.DataFrame], out: str | os.PathLike | None = None) -> list[Path]:
    """Write :func:`figures` as PNG + SVG into ``out`` (default ``figures/<study>/``) with the store's notices
    (smoke budgets, synthetic data) across each figure; returns the paths."""
    store = store if isinstance(store, StoredResults) else StoredResults(store)
    out_dir = Path(out) if out is not None else paths.figures_dir(store.config().study)
    notices = store.notices()
    written = []
    for name, fig in figures(tables).items():
        written += write_figure(fig, out_dir, name, notices)
    return written
