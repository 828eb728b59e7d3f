"""Variant studies: several variants of one study, run through the same engine, compared with paired tests.

Beyond the paper, the questions are about settings that act on *pretraining* (task sampling, width, LayerNorm),
so one variant study is a set of variant :class:`~stmedfm.core.config.StudyConfig` objects read from one parameter
file (``params/beyond.yaml``, the study named ``beyond``; ``stmedfm variants FILE``, formerly ``stmedfm beyond``,
which still works)::

    study: beyond                     # results/beyond/, figures/beyond/
    base: params/offline.yaml         # the protocol the variants start from (tasks, budgets, seeds, ...)
    small_task: retinamnist           # the small, rarely sampled task of another modality (paper: organmnist3d)
    dominant_task: organamnist        # the dominant pretraining task (paper: pathmnist)
    baseline: proportional            # the paper's setting, which the others are compared with
    common: {...}                     # StudyConfig fields applied to every variant (on top of base)
    variants: {name: {...}}           # StudyConfig fields of each variant (on top of common)
    contrasts: [{hypothesis, a, b}]   # hypothesis tests: the transfer gap of variant a vs variant b

A file may instead *extend* another (``extends: params/beyond.yaml``): it inherits every key it does not set,
drops the variants listed under ``exclude`` and applies ``override`` (StudyConfig fields) to every variant after
the variant's own fields — how ``params/contrasts.yaml`` reruns the same variants and contrasts at more seeds on
one budget, without a second definition of any variant.

Each variant runs with :func:`stmedfm.run.study.run_study` into ``results/<study>/<variant>/`` (so an interrupted
variant resumes where it stopped; :mod:`stmedfm.run.runvariants`, the running half: this module only reads and
analyses, without torch). Runs and checkpoints are identified by what they compute, so a run that two
variants share (Scratch does not depend on the pretraining sampler) is computed once and copied by id into the
other variant's store. :func:`stmedfm.run.runvariants.aggregate` then writes tidy tables with a ``variant`` column into
``results/<study>/`` (the run-level ``variant`` of the engine, e.g. '120 steps', is renamed ``setting``):

=============================  ===================================================================================
``metrics.csv``                one row per variant x run x metric
``variants.csv``               each variant's pretraining settings and the small task's share of pretraining
``budget_auroc.csv``           macro AUROC mean +- 95 % CI over seeds per variant, task, strategy, step budget
``data_efficiency_auroc.csv``  macro AUROC per variant, task, strategy, fraction of the train split
``comparisons.csv``            every paired comparison (:mod:`stmedfm.core.stats`), with its family and Holm p
=============================  ===================================================================================

The *transfer gap* of a pretrained strategy is its AUROC minus Scratch's AUROC of the same variant (same seed,
same budget); negative = negative transfer. Hypothesis contrasts compare the gap of two variants, paired over
seeds, after averaging it over the budget grid (one number per seed: the mean AUROC across budgets, i.e. the
normalised area under the AUROC-vs-budget curve), so each (contrast, strategy) is one test.

Verdicts (decision, as for the reference claims in :mod:`stmedfm.analysis.findings`): one hypothesis is one family — its
contrasts x strategies are Holm-adjusted together, not with the other hypotheses' tests — and each test gets the
verdict of :func:`stmedfm.core.stats.verdict` (the one decision rule of :func:`stmedfm.core.stats.decide` on the Holm p, every
contrast written so that its hypothesis predicts a positive difference: supported; the other sign: contradicted;
else inconclusive). A hypothesis is *supported* when at least one of its tests is and
none contradicts it, *contradicted* in the mirror case, *mixed* when both occur, else *inconclusive*. Every
sentence names its number of seeds, so a contrast kept at fewer seeds says so.

This module was ``stmedfm.beyond``. No alias module keeps that name: nothing in the project imports it any more,
and without one git sees the rename, so changes made meanwhile to ``beyond.py`` follow it into this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stmedfm.core import paths, seal, stats
from stmedfm.core.strategies import PAPER_PRETRAINED
from stmedfm.analysis import plots
from stmedfm.core.config import StudyConfig, notebook_params, params_path, read_params_file
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_write_text
from stmedfm.core.records import plan, sampling_probabilities
from stmedfm.analysis.tables import cell, markdown, summarise

__all__ = ["VariantStudy", "load", "reanalyse", "from_namespace", "complete", "variant_table", "summaries", "read",
           "comparisons",
           "comparison_view", "hypothesis_summary", "findings", "write_tables", "figures", "write_figures"]

FILE_KEYS = ("study", "base", "small_task", "dominant_task", "baseline", "common", "variants", "contrasts", "extends",
             "exclude", "override")
METRIC = "macro_auroc"
PRETRAINED = (*PAPER_PRETRAINED, "linear_probe")


@dataclass
class VariantStudy:
    """One variant study: its variant configs, the roles of its tasks and where its results go."""

    name: str
    configs: dict[str, StudyConfig]
    small_task: str
    dominant_task: str
    baseline: str
    contrasts: list[dict] = field(default_factory=list)
    out: Path | None = None

    @property
    def root(self) -> Path:
        return self.out if self.out is not None else paths.results_dir(self.name)

    @property
    def figures_dir(self) -> Path:
        return paths.figures_dir(self.name)

    def planned_keys(self) -> set[tuple]:
        """What a complete result set must contain: (variant, experiment, task, strategy, seed, steps, repeat,
        fraction) of every planned run. Keys, not run ids, so committed tables stay recognisable."""
        return {(v, p.experiment, p.spec.task, p.spec.strategy, int(p.spec.seed), int(p.spec.steps),
                 int(p.spec.fewshot_split), round(float(p.spec.fraction), 6))
                for v, cfg in self.configs.items() for p in plan(cfg)}


def load(params: str | os.PathLike, overrides: dict[str, Any] | None = None, out: str | os.PathLike | None = None) -> VariantStudy:
    """Read a variant-study parameter file; ``overrides`` (StudyConfig fields, e.g. data_dir) apply to every variant."""
    path = params_path(params)
    doc = _read(path)
    name = str(doc.get("study", path.stem))
    variants = doc.get("variants") or {}
    if not isinstance(variants, dict) or not variants:
        raise StmedfmError(f"'{path}' must name at least one variant under 'variants'.")
    shapes = [f"'variants.{v}' must be a mapping of StudyConfig fields" for v, values in variants.items()
              if values is not None and not isinstance(values, dict)]
    if not isinstance(doc.get("common") or {}, dict):
        shapes.append("'common' must be a mapping of StudyConfig fields")
    if doc.get("base") is not None and not isinstance(doc["base"], str):
        shapes.append("'base' must be the path of a parameter file")
    contrasts = doc.get("contrasts") or []
    if not isinstance(contrasts, list) or not all(isinstance(c, dict) for c in contrasts):
        shapes.append("'contrasts' must be a list of mappings with 'a' and 'b' variants")
    if shapes:
        raise StmedfmError(f"'{path}': " + "; ".join(shapes) + ".")
    base_values: dict[str, Any] = {}
    if doc.get("base"):
        base_values = read_params_file(params_path(doc["base"]))
    common = doc.get("common") or {}
    configs = {}
    override = doc.get("override") or {}
    if not isinstance(override, dict):
        raise StmedfmError(f"'{path}': 'override' must be a mapping of StudyConfig fields.")
    for variant, values in variants.items():
        merged = {**base_values, **common, **(values or {}), **override, **(overrides or {}),
                  "study": f"{name}-{variant}"}
        try:
            configs[str(variant)] = StudyConfig.from_dict(merged)
        except StmedfmError as exc:
            raise StmedfmError(f"Variant '{variant}' of '{path}': {exc}") from None
    baseline = str(doc.get("baseline", next(iter(configs))))
    for c in contrasts:
        for side in ("a", "b"):
            if c.get(side) not in configs:
                raise StmedfmError(f"Contrast {c} in '{path}' names variant '{c.get(side)}', which is not defined "
                                   f"(variants: {', '.join(configs)}).")
    if baseline not in configs:
        raise StmedfmError(f"'baseline' is '{baseline}', which is not a variant of '{path}'.")
    return VariantStudy(name=name, configs=configs, small_task=str(doc.get("small_task", "")),
                  dominant_task=str(doc.get("dominant_task", "")), baseline=baseline, contrasts=contrasts,
                  out=Path(out) if out is not None else None)


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The keys of a variant-study file, with those it inherits through ``extends`` (module docstring)."""
    doc = read_params_file(path)
    unknown = [k for k in doc if k not in FILE_KEYS]
    if unknown:
        raise StmedfmError(f"Unknown key(s) {', '.join(unknown)} in '{path}'; a variant-study file has "
                           f"{', '.join(FILE_KEYS)} (StudyConfig fields go under 'common' or a variant).")
    if "extends" not in doc:
        if "exclude" in doc:
            raise StmedfmError(f"'{path}': 'exclude' needs 'extends' (the file whose variants it drops).")
        return doc
    if not isinstance(doc["extends"], str):
        raise StmedfmError(f"'{path}': 'extends' must be the path of another variant-study file.")
    parent_path = params_path(doc["extends"])
    if parent_path.resolve() in seen or parent_path.resolve() == path.resolve():
        raise StmedfmError(f"'{path}' extends '{doc['extends']}', which extends it back.")
    parent = _read(parent_path, (*seen, path.resolve()))
    if not isinstance(parent.get("variants") or {}, dict):
        raise StmedfmError(f"'{parent_path}': 'variants' must be a mapping of variant name to StudyConfig fields.")
    exclude = doc.get("exclude") or []
    if (not isinstance(exclude, list) or not all(isinstance(v, str) for v in exclude)
            or any(v not in (parent.get("variants") or {}) for v in exclude)):
        raise StmedfmError(f"'{path}': 'exclude' must list variants of '{doc['extends']}' "
                           f"({', '.join(parent.get('variants') or {})}), got {exclude!r}.")
    # never inherited: the study's name (its results folder) is this file's own, so an extension can never write
    # into the parent's committed results
    merged = {k: v for k, v in parent.items() if k not in ("extends", "exclude", "study")}
    merged.update({k: v for k, v in doc.items() if k not in ("extends", "exclude")})
    merged["variants"] = {k: v for k, v in (merged.get("variants") or {}).items() if k not in exclude}
    dropped = [c for c in merged.get("contrasts") or [] if isinstance(c, dict)
               and (c.get("a") in exclude or c.get("b") in exclude)]
    merged["contrasts"] = [c for c in merged.get("contrasts") or [] if c not in dropped]
    return merged


def from_namespace(params: str | os.PathLike, namespace: dict[str, Any]) -> VariantStudy:
    """A notebook's study: the variant-study file ``params`` with every variable of ``namespace`` named like a
    StudyConfig field applied to every variant (how papermill's ``-p key value`` and the parameters cell's
    ``download`` reach it; :func:`stmedfm.core.config.notebook_params`, as for one study)."""
    return load(*notebook_params(params, namespace, set(StudyConfig.keys()) - {"study"}))


def complete(study: VariantStudy) -> bool:
    """Whether ``results/<study>/metrics.csv`` already holds every planned run of every variant."""
    path = study.root / "metrics.csv"
    if not path.is_file():
        return False
    try:
        m = seal.read_csv(study.root, path.name)
    except pd.errors.EmptyDataError:
        return False
    cols = ["variant", "experiment", "task", "strategy", "seed", "steps", "fewshot_split", "fraction"]
    if m.empty or any(c not in m.columns for c in cols):
        return False
    m = m[cols].drop_duplicates()
    have = {(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]), round(float(r[7]), 6))
            for r in m.itertuples(index=False)}
    return study.planned_keys() <= have


# ------------------------------------------------------------------------------------------------------------
def variant_table(study: VariantStudy) -> pd.DataFrame:
    """Per variant: pretraining settings and the share of pretraining the small and dominant tasks get."""
    rows = []
    for v, cfg in study.configs.items():
        probs = sampling_probabilities(cfg, cfg.pretrain_tasks) if cfg.pretrain_tasks else {}
        row = {"variant": v, "task_sampling": cfg.task_sampling,
               "sampling_alpha": cfg.sampling_alpha if cfg.task_sampling == "temperature" else np.nan,
               "width": cfg.width, "ln_affine": cfg.ln_affine, "loss_log_normalise": cfg.loss_log_normalise,
               "pretrain": "+".join(cfg.pretrain_tasks), "pretrain_steps": cfg.pretrain_steps,
               "pretrain_batches": cfg.pretrain_steps * (len(cfg.pretrain_tasks) if cfg.task_sampling == "all_tasks"
                                                         else 1),
               "seeds": len(cfg.seeds)}
        for role, task in (("small", study.small_task), ("dominant", study.dominant_task)):
            share = probs.get(task, 0.0)
            batches = cfg.pretrain_steps if (cfg.task_sampling == "all_tasks" and task in probs) else share * cfg.pretrain_steps
            row[f"{role}_share"] = share
            row[f"{role}_batches"] = batches  # expected pretraining batches of the task
        rows.append(row)
    return pd.DataFrame(rows)


def read(study: VariantStudy) -> dict[str, pd.DataFrame]:
    """The aggregated tables of a finished study, from ``results/<study>/``. The comparisons are recomputed from
    ``metrics.csv`` (seconds), not read: ``comparisons.csv`` is an export of the analysis, and a store written by an
    earlier version of it must not be shown with today's code (a test ties the committed exports to today's
    analysis, :func:`reanalyse`)."""
    out = {}
    for name in ("metrics", "runs", "pretrain_loss", "variants", "budget_auroc", "data_efficiency_auroc"):
        path = study.root / f"{name}.csv"
        try:
            out[name] = seal.read_csv(study.root, path.name, keep_default_na=True)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            out[name] = pd.DataFrame()
    if not out["metrics"].empty:
        out["metrics"]["setting"] = out["metrics"]["setting"].fillna("")
    out["comparisons"] = comparisons(study, out["metrics"])
    return out


def reanalyse(study: VariantStudy) -> dict[str, pd.DataFrame]:
    """Recompute the comparisons and markdown tables from the study's aggregated ``metrics.csv`` alone
    (no run is read or computed). Decision: the per-variant run stores are working state and are not committed,
    so a change of the *analysis* (e.g. how Holm families are formed) reaches committed results through this,
    from the same committed measurements."""
    tables = read(study)
    if tables["metrics"].empty:
        raise StmedfmError(f"No metrics.csv in {study.root}: run `stmedfm variants` first.")
    seal.write_csvs(study.root, {"comparisons.csv": tables["comparisons"]})
    write_tables(study, tables)
    return tables


def summaries(metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Mean +- 95 % CI of macro AUROC per budget and per data fraction."""
    if metrics.empty:
        return {"budget_auroc": pd.DataFrame(), "data_efficiency_auroc": pd.DataFrame()}
    auroc = metrics[metrics["metric"] == METRIC]
    budget = auroc[auroc["experiment"] == "budget"]
    frac = auroc[auroc["experiment"] == "data_efficiency"]
    return {
        "budget_auroc": summarise(budget, ["variant", "task", "strategy", "steps"]),
        "data_efficiency_auroc": summarise(frac, ["variant", "task", "strategy", "fraction"]),
    }


# ------------------------------------------------------------------------------------------------------------
def _per_seed_gap(metrics: pd.DataFrame, task: str, by_budget: bool = False) -> pd.DataFrame:
    """AUROC and transfer gap (pretrained - Scratch of the same variant, seed and budget) of the budget runs.

    Without ``by_budget`` both are averaged over the budget grid per (variant, strategy, seed)."""
    m = metrics[(metrics["experiment"] == "budget") & (metrics["metric"] == METRIC) & (metrics["task"] == task)]
    if m.empty:
        return pd.DataFrame(columns=["variant", "strategy", "seed", "steps", "auroc", "gap"])
    m = m.drop_duplicates(["variant", "strategy", "seed", "steps"])
    scratch = m[m["strategy"] == "scratch"][["variant", "seed", "steps", "value"]].rename(columns={"value": "scratch"})
    m = m.merge(scratch, on=["variant", "seed", "steps"], how="left")
    m = m.assign(auroc=m["value"], gap=m["value"] - m["scratch"])
    keys = ["variant", "strategy", "seed"] + (["steps"] if by_budget else [])
    return m.groupby(keys, sort=False)[["auroc", "gap"]].mean().reset_index()


def _family(rows: list[dict], family: str, holm_by: str | None = None) -> pd.DataFrame:
    """The rows of one family with Holm-adjusted p (within the family, or within each value of ``holm_by``: one
    hypothesis's contrasts are one family of tests, whatever other hypotheses are tested beside it) and the
    verdict of each row (:func:`stmedfm.core.stats.verdict`)."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame.insert(0, "family", family)
    groups = frame.groupby(holm_by, sort=False).groups.values() if holm_by else [frame.index]
    frame["p_holm"] = np.nan
    for idx in groups:
        frame.loc[idx, "p_holm"] = stats.holm(frame.loc[idx, "p_two_sided"])
    frame["p_floor"] = frame["n"].map(stats.min_two_sided_p)
    frame["verdict"] = [stats.verdict(m, p) for m, p in zip(frame["mean_diff"], frame["p_holm"])]
    return frame


def _pair(a: pd.Series, b: pd.Series) -> dict:
    """The paired test of two keyed AUROC series (or transfer gaps), paired by :func:`stmedfm.core.stats.pair`."""
    joined = stats.pair(a, b)
    return stats.paired_test(joined["a"], joined["b"], metric=METRIC)


def comparisons(study: VariantStudy, metrics: pd.DataFrame) -> pd.DataFrame:
    """Every family of paired comparisons (macro AUROC), Holm-corrected within its family.

    * ``transfer:<task>`` — pretrained strategy vs Scratch of the same variant, per variant; the value per seed is
      the AUROC averaged over the budget grid (one test per variant x strategy);
    * ``transfer_by_budget:<task>`` — the same at every budget (descriptive; many tests, so Holm is harsh);
    * ``hypotheses:<small task>`` — the contrasts of the parameter file: gap of variant a vs gap of variant b;
    * ``rebalancing:<dominant task>`` — the same contrasts on the dominant task (where both variants have it):
      what giving the small task more of pretraining costs the dominant one;
    * ``data_efficiency:<task>`` — pretrained (linear probe / full) vs Scratch at each fraction, paired over
      (seed, repeat).
    """
    if metrics.empty:
        return pd.DataFrame()
    frames = []
    tasks = [t for t in (study.small_task, study.dominant_task) if t]
    for task in tasks:
        for by_budget in (False, True):
            gap = _per_seed_gap(metrics, task, by_budget)
            if gap.empty:
                continue
            rows = []
            keys = ["variant", "strategy"] + (["steps"] if by_budget else [])
            for key, sub in gap[gap["strategy"] != "scratch"].groupby(keys, sort=False):
                key = dict(zip(keys, key))
                idx = ["seed"]
                a = sub.set_index(idx)["auroc"]
                b = (sub.set_index(idx)["auroc"] - sub.set_index(idx)["gap"])
                rows.append({"task": task, **key, "a": key["strategy"], "b": "scratch", "value": "auroc",
                             **_pair(a, b)})
            frames.append(_family(rows, f"{'transfer_by_budget' if by_budget else 'transfer'}:{task}"))
        gap = _per_seed_gap(metrics, task)
        rows = []
        for c in study.contrasts:
            for strategy in [s for s in gap["strategy"].drop_duplicates() if s != "scratch"]:
                a = gap[(gap["variant"] == c["a"]) & (gap["strategy"] == strategy)].set_index("seed")["gap"]
                b = gap[(gap["variant"] == c["b"]) & (gap["strategy"] == strategy)].set_index("seed")["gap"]
                if a.empty or b.empty:
                    continue
                rows.append({"task": task, "hypothesis": c.get("hypothesis", ""), "variant": c["a"],
                             "strategy": strategy, "a": c["a"], "b": c["b"], "value": "gap", **_pair(a, b)})
        # on the dominant task the same contrasts measure what re-balancing pretraining costs it
        frames.append(_family(rows, f"{'hypotheses' if task == study.small_task else 'rebalancing'}:{task}",
                              holm_by="hypothesis"))
    frac = metrics[(metrics["experiment"] == "data_efficiency") & (metrics["metric"] == METRIC)]
    for (variant, task), sub in frac.groupby(["variant", "task"], sort=False):
        rows = []
        idx = ["seed", "fewshot_split"]
        for fraction, fsub in sub.groupby("fraction", sort=True):
            scratch = fsub[fsub["strategy"] == "scratch"].set_index(idx)["value"]
            for strategy in [s for s in fsub["strategy"].drop_duplicates() if s != "scratch"]:
                a = fsub[fsub["strategy"] == strategy].set_index(idx)["value"]
                rows.append({"task": task, "variant": variant, "strategy": strategy, "fraction": fraction,
                             "a": strategy, "b": "scratch", "value": "auroc", **_pair(a, scratch)})
        frames.append(_family(rows, f"data_efficiency:{task}"))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    first = ["family", "task", "hypothesis", "variant", "strategy", "steps", "fraction", "a", "b", "value"]
    cols = [c for c in first if c in out.columns] + [c for c in out.columns if c not in first]
    return out[cols]


# ------------------------------------------------------------------------------------------------------------
def _fmt_p(p: float) -> str:
    return "" if pd.isna(p) else (f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}")


def comparison_view(frame: pd.DataFrame) -> pd.DataFrame:
    """A readable version of comparison rows: the keys that vary, 'diff [95% CI]', the sign count, the
    rank-biserial r and the p-values (two-sided, one-sided a > b, Holm, and the floor reachable with n pairs)."""
    if frame.empty:
        return frame
    frame = frame.reset_index(drop=True)
    keys = [c for c in ("family", "task", "hypothesis", "variant", "strategy", "steps", "fraction", "a", "b")
            if c in frame.columns]
    show = frame[keys].dropna(axis=1, how="all")
    show = show[[c for c in show.columns if show[c].nunique(dropna=False) > 1 or c in ("a", "b", "strategy")]]
    show = show.astype(object).where(show.notna(), "")
    if "steps" in show.columns:
        show["steps"] = show["steps"].map(lambda v: "" if v == "" else int(v))
    if "fraction" in show.columns:
        show["fraction"] = show["fraction"].map(lambda v: "" if v == "" else f"{100 * v:g} %")
    show["diff [95% CI]"] = [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if not pd.isna(lo) else f"{m:+.3f}"
                             for m, lo, hi in zip(frame["mean_diff"], frame["ci_low"], frame["ci_high"])]
    show["signs +/-/0"] = [f"{p}/{n}/{z}" for p, n, z in zip(frame["n_pos"], frame["n_neg"], frame["n_zero"])]
    show["r_rb"] = frame["rank_biserial"].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    for col in ("p_two_sided", "p_greater", "p_holm", "p_floor"):
        show[col] = frame[col].map(_fmt_p)
    show["n"] = frame["n"]
    return show


def _comparison_markdown(frame: pd.DataFrame) -> str:
    return markdown(comparison_view(frame)) if not frame.empty else "(no comparisons)\n"


def write_tables(study: VariantStudy, tables: dict[str, pd.DataFrame]) -> list[Path]:
    """Markdown versions of the summaries and comparisons into ``results/<study>/tables/``."""
    out_dir = study.root / "tables"
    written = []
    note = ("Cells: macro AUROC, mean ± 95 % t-CI over seeds (data efficiency: over seeds x repeats). "
            "Comparisons: paired differences a - b; p_floor is the smallest two-sided Wilcoxon p reachable "
            "with n pairs (0.0625 for 5).\n\n")
    for name, cols in (("budget_auroc", "steps"), ("data_efficiency_auroc", "fraction")):
        frame = tables.get(name)
        if frame is None or frame.empty:
            continue
        cells = frame.assign(cell=[cell(m, c) for m, c in zip(frame["mean"], frame["ci95"])])
        parts = [f"# {name}\n\n{note}"]
        for task, sub in cells.groupby("task", sort=False):  # one table per task: its own budgets / fractions
            wide = sub.pivot_table(index=["variant", "strategy"], columns=cols, values="cell", aggfunc="first",
                                   sort=False)
            wide = wide[sorted(wide.columns)].reset_index()
            label = (lambda c: f"{c:g} steps") if cols == "steps" else (lambda c: f"{100 * c:g} %")
            wide.columns = [label(c) if isinstance(c, (int, float)) else c for c in wide.columns]
            parts.append(f"## {task}\n\n{markdown(wide)}\n")
        path = out_dir / f"{name}.md"
        atomic_write_text(path, "".join(parts))
        written.append(path)
    comp = tables.get("comparisons")
    if comp is not None and not comp.empty:
        parts = [f"# comparisons\n\n{note}"]
        for fam, sub in comp.groupby("family", sort=False):
            parts.append(f"## {fam}\n\n{_comparison_markdown(sub)}\n")
        path = out_dir / "comparisons.md"
        atomic_write_text(path, "".join(parts))
        written.append(path)
    var = tables.get("variants")
    if var is not None and not var.empty:
        path = out_dir / "variants.md"
        atomic_write_text(path, f"# variants\n\n{markdown(var.round(4))}")
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------------------
def hypothesis_summary(comp: pd.DataFrame, task: str, family: str = "hypotheses") -> pd.DataFrame:
    """Per hypothesis: how many (contrast x strategy) tests its family's Holm-adjusted verdicts call supported,
    contradicted or inconclusive, the hypothesis's verdict (module docstring), the mean gap change, the smallest
    Holm p, the seed pairs (min and max n) and how many pairs are positive. Every contrast is written so that its
    hypothesis predicts a positive difference."""
    cols = ["hypothesis", "tests", "supported", "contradicted", "inconclusive", "verdict", "mean_change",
            "min_p_holm", "pos_pairs", "pairs", "n_min", "n_max"]
    sub = comp[comp["family"] == f"{family}:{task}"] if not comp.empty else comp
    if sub.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for h, hs in sub.groupby("hypothesis", sort=False):
        counts = {v: int((hs["verdict"] == v).sum()) for v in ("supported", "contradicted", "inconclusive")}
        overall = ("mixed" if counts["supported"] and counts["contradicted"] else "supported" if counts["supported"]
                   else "contradicted" if counts["contradicted"] else "inconclusive")
        rows.append({"hypothesis": h, "tests": len(hs), **counts, "verdict": overall,
                     "mean_change": float(hs["mean_diff"].mean()), "min_p_holm": float(hs["p_holm"].min()),
                     "pos_pairs": int(hs["n_pos"].sum()), "pairs": int(hs["n"].sum()),
                     "n_min": int(hs["n"].min()), "n_max": int(hs["n"].max())})
    return pd.DataFrame(rows, columns=cols)


def _over_budgets(study: VariantStudy, task: str) -> str:
    budgets = sorted({b for cfg in study.configs.values() for b in cfg.budget_tasks.get(task, [])})
    return f"at the {budgets[0]}-step budget" if len(budgets) == 1 else "averaged over the budget grid"


def _seeds(summary_row) -> str:
    n_min, n_max = int(summary_row.n_min), int(summary_row.n_max)
    return f"{n_min} seeds" if n_min == n_max else f"{n_min}-{n_max} seeds"


def _test(r) -> str:
    return (f"{r.a} vs {r.b} {r.strategy} {r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] "
            f"(Holm p {r.p_holm:.2g})")


def findings(study: VariantStudy, tables: dict[str, pd.DataFrame]) -> list[str]:
    """The findings as sentences with their numbers, computed from the tables (smoke or full)."""
    comp = tables.get("comparisons", pd.DataFrame())
    lines = []
    if comp is None or comp.empty:
        return ["No comparisons: the study has no finished runs."]
    for task, role in ((study.small_task, "small task"), (study.dominant_task, "dominant task")):
        fam = comp[(comp["family"] == f"transfer:{task}") & (comp["variant"] == study.baseline)]
        if fam.empty:
            continue
        parts = [f"{r.strategy} {r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({r.n_pos}/{r.n} seeds > 0, "
                 f"p={r.p_two_sided:.3g}, one-sided {r.p_greater:.3g})" for r in fam.itertuples()]
        lines.append(f"Transfer gap on the {role} {task} under {study.baseline} sampling (pretrained - Scratch, "
                     f"macro AUROC {_over_budgets(study, task)}): " + "; ".join(parts) + ".")
        best = comp[comp["family"] == f"transfer:{task}"].sort_values("mean_diff", ascending=False).head(1)
        for r in best.itertuples():
            lines.append(f"Largest gap on {task}: {r.variant} + {r.strategy}, {r.mean_diff:+.3f} "
                         f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({r.n_pos}/{r.n} seeds > 0).")
    for r in hypothesis_summary(comp, study.small_task).itertuples():
        hs = comp[(comp["family"] == f"hypotheses:{study.small_task}") & (comp["hypothesis"] == r.hypothesis)]
        decided = [f"{v} by " + "; ".join(_test(t) for t in hs[hs["verdict"] == v].itertuples())
                   for v in ("supported", "contradicted") if (hs["verdict"] == v).any()]
        lines.append(f"Hypothesis '{r.hypothesis}' on {study.small_task} ({r.tests} tests at {_seeds(r)}, Holm within "
                     f"the hypothesis): **{r.verdict}** — " + "".join(f"{d}; " for d in decided)
                     + f"{r.inconclusive} inconclusive; mean gap change {r.mean_change:+.3f} AUROC, "
                     f"{r.pos_pairs}/{r.pairs} seed pairs positive, smallest Holm p {r.min_p_holm:.2g}.")
    # on the dominant task the same contrasts measure what giving the small task more of pretraining costs it
    for r in hypothesis_summary(comp, study.dominant_task, "rebalancing").itertuples():
        hs = comp[(comp["family"] == f"rebalancing:{study.dominant_task}") & (comp["hypothesis"] == r.hypothesis)]
        parts = [_test(t) for t in hs.itertuples()]
        moved = int((hs["verdict"] != "inconclusive").sum())
        lines.append(f"Cost of re-balancing to the dominant task {study.dominant_task} ('{r.hypothesis}' contrasts, "
                     f"gap change a - b at {_seeds(r)}): " + "; ".join(parts)
                     + f"; {moved} of {r.tests} differ from 0 after Holm.")
    de = comp[comp["family"].str.startswith("data_efficiency:")]
    for (task, strategy), sub in de.groupby(["task", "strategy"], sort=False):
        n_up, n_down = int((sub["verdict"] == "supported").sum()), int((sub["verdict"] == "contradicted").sum())
        sub = sub.sort_values("fraction")
        diffs = ", ".join(f"{100 * r.fraction:g} %: {r.mean_diff:+.3f}" for r in sub.itertuples())
        lines.append(f"Data efficiency on {task}, {strategy} vs Scratch (AUROC difference by fraction of the train "
                     f"split; {int(sub['n'].min())} (seed, repeat) pairs each): {diffs}; Holm p < {stats.ALPHA:g} at "
                     f"{n_up} fraction(s) in favour of {strategy} and {n_down} in favour of Scratch.")
    return lines


def figures(study: VariantStudy, tables: dict[str, pd.DataFrame]) -> dict:
    """The variant-study figures the tables support, by file name: ``budget_auroc_<small task>_<hypothesis>`` (the
    variants of each hypothesis's contrasts), ``budget_auroc_<dominant task>`` (every variant that has it),
    ``data_efficiency`` and ``hypotheses_<small task>`` (forest plot of the contrasts)."""
    out: dict = {}
    metrics = tables.get("metrics", pd.DataFrame())
    if metrics is None or metrics.empty:
        return out
    for task in (study.small_task, study.dominant_task):
        sub = metrics[(metrics["experiment"] == "budget") & (metrics["task"] == task)]
        if sub.empty:
            continue
        present = list(dict.fromkeys(sub["variant"]))
        groups = hypothesis_variants(study) if task == study.small_task else {}
        if not groups:
            out[f"budget_auroc_{task}"] = plots.fig_budget_auroc(metrics, task)
        for hypothesis, variants in groups.items():  # one figure per hypothesis: its variants, baseline first
            variants = [v for v in variants if v in present]
            if variants:
                out[f"budget_auroc_{task}_{_slug(hypothesis)}"] = plots.fig_budget_auroc(metrics, task, variants)
    if (metrics["experiment"] == "data_efficiency").any():
        out["data_efficiency"] = plots.fig_data_efficiency(metrics)
    comp = tables.get("comparisons", pd.DataFrame())
    if comp is not None and not comp.empty and (comp["family"] == f"hypotheses:{study.small_task}").any():
        out[f"hypotheses_{study.small_task}"] = plots.fig_contrasts(comp, study.small_task)
    return out


def hypothesis_variants(study: VariantStudy) -> dict[str, list[str]]:
    """The variants each hypothesis's contrasts name, the baseline first when it is among them."""
    out: dict[str, list[str]] = {}
    for c in study.contrasts:
        h = out.setdefault(c.get("hypothesis", ""), [])
        for v in (c["b"], c["a"]):
            if v not in h:
                h.append(v)
    for h, vs in out.items():
        if study.baseline in vs:
            vs.remove(study.baseline)
            vs.insert(0, study.baseline)
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def write_figures(study: VariantStudy, tables: dict[str, pd.DataFrame], out: str | os.PathLike | None = None) -> list[Path]:
    """Every figure of :func:`figures` as PNG (150 dpi) and SVG into ``figures/<study>/`` (or ``out``)."""
    out_dir = Path(out) if out is not None else study.figures_dir
    written: list[Path] = []
    for name, fig in figures(study, tables).items():
        written += plots.write_figure(fig, out_dir, name)
    return written
