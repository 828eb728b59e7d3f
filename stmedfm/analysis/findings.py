"""Conclusions computed from a study's committed tables, never typed: the paper's claims tested paired over seeds,
the power of each test, and the paper's single runs beside the spread of ours.

Everything here reads the tidy tables of a result store (``metrics.csv``, ``config.yaml``) and writes tables of
its own into the store (``claims.csv``, ``paper_single_run.csv``); :func:`reference_block` turns them into the
markdown the README shows between generated markers, and a test regenerates that block from ``results/``, so
every number a reader sees comes from a committed file through this code.

Decisions (written down once, here):

* **The claims and their inference** (primary metric, families, interval, verdict rule) are defined once, in
  :mod:`stmedfm.analysis.claims`; this module writes and shows them.
* **Power**: the seeds a paired t-test needs to detect a difference of 0.01 at 80 % power, two-sided
  :data:`stmedfm.core.stats.ALPHA`,
  given the observed SD of the paired differences (noncentral t; :func:`stmedfm.analysis.claims.seeds_for_power`).
* **The paper beside us.** The paper reports one run per cell. The right yardstick for one run is the 95 %
  *prediction* interval of a single run of ours, ``mean ± t(0.975, n-1) · sd · sqrt(1 + 1/n)``, not the
  confidence interval of our mean (which shrinks with seeds while single runs do not).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from stmedfm.analysis import claims as C
from stmedfm.analysis import fair, methods, variants
from stmedfm.core import measures, seal, selection, stats
from stmedfm.core.strategies import FULL, SCRATCH
from stmedfm.core.errors import StmedfmError
from stmedfm.core.results import StoredResults
from stmedfm.analysis.tables import METRIC_TABLES, cell, paper_results

__all__ = ["claims_table", "seeds_for_power", "paper_single_run", "reference_block", "write_findings"]

claims_table, seeds_for_power = C.claims_table, C.seeds_for_power


def paper_single_run(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each paper cell of Tables 5-8b whose flag we ran, beside our mean with its 95 % CI and the 95 % prediction
    interval of a single run of ours; ``inside`` says whether one run of ours would plausibly give the paper's."""
    paper = paper_results()
    rows = []
    for table, metric in METRIC_TABLES.items():
        cells = paper[(paper["table"] == table) & (paper["metric"] == metric)]
        for published in cells.itertuples():
            ours = metrics[(metrics["experiment"] == "transfer") & (metrics["task"] == published.task)
                           & (metrics["strategy"] == published.strategy) & (metrics["metric"] == metric)]["value"]
            if len(ours) < 2:
                continue
            mean, lo, hi = stats.mean_ci(ours)
            _, plo, phi = stats.prediction_interval(ours)
            rows.append({"table": table, "task": published.task, "strategy": published.strategy, "metric": metric,
                         "paper": published.value, "mean": mean, "ci_low": lo, "ci_high": hi, "pi_low": plo,
                         "pi_high": phi, "n": len(ours), "inside": bool(plo <= published.value <= phi)})
    return pd.DataFrame(rows)


def write_findings(results: str | Path) -> dict[str, pd.DataFrame]:
    """Compute ``claims.csv`` and ``paper_single_run.csv`` from the store's committed tables; returns them."""
    store = StoredResults(results)
    cfg, metrics = store.config(), store.table("metrics")
    out = {"claims": C.claims_table(cfg, metrics, root=store.root, save=True),
           "paper_single_run": paper_single_run(metrics)}
    seal.write_csvs(store.root, {f"{name}.csv": frame for name, frame in out.items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
def _f(x: float, sign: bool = False) -> str:
    return "—" if not np.isfinite(x) else (f"{x:+.3f}" if sign else f"{x:.3f}")


_p = stats.format_p


def reference_block(results: str | Path) -> str:
    """The README's reference-results block, from the store's committed tables only: the AUROC table (Table 7,
    mean ± 95 % CI, the paper's single run in brackets), the claims with their tests and verdicts, and how many
    paper cells one run of ours would plausibly produce."""
    root = Path(results)
    claims = seal.read_csv(root, "claims.csv")
    single = seal.read_csv(root, "paper_single_run.csv")
    t7 = seal.read_csv(root, "tables/table7_auroc.csv")
    n = int(t7["n"].max())
    wide = t7.assign(cell=[cell(m, c, p) for m, c, p in zip(t7["mean"], t7["ci95"], t7["paper"])]).pivot(
        index="task", columns="strategy", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(t7["task"])), columns=list(dict.fromkeys(t7["strategy"])))
    auroc = ["| task | " + " | ".join(wide.columns) + " |", "|---" * (len(wide.columns) + 1) + "|"]
    auroc += [f"| {task} | " + " | ".join(str(v) if isinstance(v, str) else "" for v in row) + " |"
              for task, row in wide.iterrows()]
    lines = [f"Test macro AUROC, mean ± 95 % CI over {n} seeds (`results/{root.name}/tables/table7_auroc.csv`; "
             f"the paper's single run in brackets where the flag is the paper's):", "", *auroc, "",
             *_primary_lines(claims, f"results/{root.name}/claims.csv")]
    if not single.empty:
        inside = int(single["inside"].sum())
        tasks = ", ".join(sorted(set(single["task"])))
        lines += ["", f"The paper beside us ({tasks}, `results/{root.name}/paper_single_run.csv`): {inside} of "
                      f"{len(single)} paper cells lie inside the 95 % prediction interval of a single run of ours "
                      f"(the yardstick for the paper's one run per cell; the CI of our mean is the wrong one)."]
    return "\n".join(lines) + "\n"


def _primary_lines(claims: pd.DataFrame, where: str) -> list[str]:
    """The README's short form of the claims: the primary family only, one line of inference; the full table
    (:func:`claims_lines`) is in docs/study.md."""
    rows = claims[(claims["family"] == "primary") & (claims["verdict"] != "untestable")]
    source = "; ".join(sorted(set(rows["p_source"].dropna()) - {""})) or "—"
    counts = claims["verdict"].value_counts()
    lines = [f"The paper's AUROC claims, the primary family (`{where}`; estimate = mean per-seed difference, positive "
             f"favours a, the claim; interval and p from the {source}; Holm over the {len(rows)} rows; α = {stats.ALPHA:g}). All "
             f"{len(claims)} claim x metric rows, the secondary family and the inference: "
             f"[docs/study.md](docs/study.md#the-inference-fixed-before-the-tables) ("
             + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("supported", "contradicted", "inconclusive",
                                                           "untestable")) + ").", "",
             "| claim | task | estimate [95 % CI] | Holm p | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r.text} | {r.task} | {_f(r.estimate, True)} [{_f(r.ci_low, True)}, {_f(r.ci_high, True)}] | "
              f"{_p(r.p_holm)} | **{r.verdict}** |" for r in rows.itertuples()]
    return lines


def claims_block(results: str | Path) -> str:
    """Every claim x metric of a committed store, by family (:func:`claims_lines`): the docs' full claims table."""
    root = Path(results)
    return "\n".join(claims_lines(seal.read_csv(root, "claims.csv"), f"results/{root.name}/claims.csv")).lstrip() + "\n"


def claims_lines(claims: pd.DataFrame, where: str) -> list[str]:
    """The claims table as markdown: the inference first (as :mod:`stmedfm.analysis.claims` defines it), then the primary
    family (AUROC) and the secondary family apart; untestable claims last, with why."""
    source = "; ".join(sorted(set(claims["p_source"].dropna()) - {""}))
    lines = ["", f"The paper's claims (`{where}`). Inference, fixed before the tables: estimate = mean per-seed "
             f"difference, oriented so that positive favours a, the claim (a − b; b − a for "
             f"{', '.join(C.lower_is_better_labels())}); 95 % interval and two-sided p from the {source}; Holm "
             f"within each family — primary: AUROC ({int((claims['family'] == 'primary').sum())} rows), secondary: "
             f"{', '.join(C.secondary_labels())} ({int((claims['family'] == 'secondary').sum())} rows); verdict at "
             f"α = {stats.ALPHA:g}."]
    tested = claims[claims["verdict"] != "untestable"]
    for fam in ("primary", "secondary"):
        rows = tested[tested["family"] == fam]
        if rows.empty:
            continue
        lines += ["", f"**{fam.capitalize()} family**", "",
                  "| claim (paper) | task | metric | estimate [95 % CI] | seed-only CI | seeds > 0 | p | Holm p | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            text = r.text
            if isinstance(r.retained, float) and np.isfinite(r.retained):
                note = r.note if isinstance(r.note, str) else ""
                text += (f"; retained fraction {_f(r.retained)} [{_f(r.retained_low)}, {_f(r.retained_high)}]"
                         + (" (Full − Scratch ≤ 0: not meaningful)" if "not positive" in note else
                            " (Full − Scratch not clearly > 0: unstable)" if note else ""))
            lines.append(f"| {text} ({r.location}) | {r.task} | {r.metric} | {_f(r.estimate, True)} "
                         f"[{_f(r.ci_low, True)}, {_f(r.ci_high, True)}] | [{_f(r.seed_ci_low, True)}, "
                         f"{_f(r.seed_ci_high, True)}] | {r.n_positive:.0f}/{r.n:.0f} | {_p(r.p)} | {_p(r.p_holm)} | "
                         f"**{r.verdict}** |")
    untestable = claims[claims["verdict"] == "untestable"]
    if not untestable.empty:
        lines += ["", "Untestable with this parameter file: " + "; ".join(
            f"{r.text} ({r.metric}: {r.note})" for r in untestable.itertuples()) + "."]
    return lines


#: Generated blocks in a markdown file: ``<!-- stmedfm:reference results/offline -->`` (a study's reference block,
#: :func:`reference_block`), ``<!-- stmedfm:variants params/beyond.yaml -->`` (the findings of a variant study's
#: committed tables, :func:`variants_block`; ``stmedfm:beyond``, its former name, still works) or
#: ``<!-- stmedfm:flips ... -->`` (:func:`flips_block`) or ``<!-- stmedfm:methods results/peft_methods -->`` (the
#: findings of the study of every strategy, :func:`methods_block`) or ``<!-- stmedfm:changes BEFORE AFTER -->`` (which
#: of its conclusions differ between two such studies, :func:`stmedfm.analysis.methods.changes_markdown`), each closed by
#: ``<!-- /stmedfm -->``.
BLOCK = re.compile(r"(<!-- stmedfm:(?P<kind>reference|variants|beyond|flips|methods|changes|fair|lrs|inference|verdicts|claims) "
                   r"(?P<arg>[^>]+?) -->\n)"
                   r"(?P<body>.*?)"
                   r"(<!-- /stmedfm -->)", re.S)


def verdicts_block(previous: str | Path, current: str | Path) -> str:
    """Which claim verdicts changed between two committed stores (the previous reference and the current one), and
    why, as far as the stores tell: the flag in the claim's role, the pretraining mix, the inference."""
    old, new = (pd.read_csv(Path(r) / "claims.csv", keep_default_na=False) for r in (previous, current))
    old_cfg, new_cfg = (StoredResults(r).config() for r in (previous, current))
    both = new.merge(old, on=["claim", "metric"], how="left", suffixes=("", "_old"))
    lines = [f"| claim | metric | `{Path(previous).name}` | `{Path(current).name}` | what differs |", "|---|---|---|---|---|"]
    changed = 0
    for r in both.itertuples():
        before = f"{r.verdict_old} ({r.task_old})" if isinstance(r.verdict_old, str) and r.verdict_old else "—"
        if before == f"{r.verdict} ({r.task})":
            continue
        changed += 1
        why = []
        if r.task != r.task_old:
            why.append(f"the role is now played by {r.task or 'no flag'} (was {r.task_old or 'no flag'})")
        if sorted(old_cfg.pretrain_tasks) != sorted(new_cfg.pretrain_tasks):
            why.append("pretraining now on " + "+".join(new_cfg.pretrain_tasks))
        if bool(old_cfg.lr_grid) != bool(new_cfg.lr_grid):
            why.append("learning rates " + ("selected on validation (lr_selection.csv)" if new_cfg.lr_grid
                                            else "fixed (no selection)"))
        if r.p_source != r.p_source_old:
            why.append(f"p from the {r.p_source.split(' (')[0] or '—'} (was {r.p_source_old.split(' (')[0] or 'Wilcoxon over seeds'})")
        lines.append(f"| {r.text} | {r.metric} | {before} | {r.verdict} ({r.task}) | {'; '.join(why)} |")
    head = (f"{changed} of {len(new)} claim x metric rows have another verdict (or flag) than in "
            f"`{Path(previous).name}`; the others are unchanged.")
    return head + "\n\n" + "\n".join(lines) + "\n"


def variants_block(params: str | Path) -> str:
    """The findings of the variant study ``params`` as a markdown list, from its committed tables
    (:func:`stmedfm.analysis.variants.findings`; nothing is computed: an incomplete study is an error)."""
    study = variants.load(params)
    if not variants.complete(study):
        raise StmedfmError(f"The tables of '{params}' in {study.root} are incomplete: run `stmedfm variants {params}`.")
    return "".join(f"- {line}\n" for line in variants.findings(study, variants.read(study)))


def methods_block(results: str | Path) -> str:
    """The findings of the study of every strategy (``params/peft_methods.yaml``, notebook 10) as a markdown list,
    from its committed ``methods_*.csv`` tables (:func:`stmedfm.analysis.methods.findings`; nothing is computed)."""
    return "".join(f"- {line}\n" for line in methods.findings(methods.read_tables(results)))


def flips_block(label_safe: str | Path, reference: str | Path, task: str = "organamnist") -> str:
    """Label-safe flips against the paper's flips on ``task``: accuracy and AUROC per strategy (Scratch, Full),
    mean ± 95 % CI over the seeds both stores have, and the seeds where label-safe is better. Both stores must come
    from the same machine (a cross-CPU difference would pass for an effect); otherwise the block says so."""
    stores = [StoredResults(label_safe), StoredResults(reference)]
    runs = [s.table("runs") for s in stores]
    machines = [set(r["machine"].fillna("unrecorded")) if "machine" in r else {"unrecorded"} for r in runs]
    if machines[0] != machines[1] or len(machines[0]) != 1:
        return (f"Not compared: `{Path(label_safe).name}` and `{Path(reference).name}` were computed on different "
                f"machines ({' vs '.join(' | '.join(sorted(m)) for m in machines)}); rerun one of them on the other's.\n")
    m = [s.table("metrics") for s in stores]
    lines = []
    for strategy in (SCRATCH, FULL):
        parts = []
        for metric in ("accuracy", "macro_auroc"):
            sel = {"experiment": "transfer", "task": task, "strategy": strategy, "metric": metric}
            joined = stats.pair(*(stats.per_seed(x, sel) for x in m))
            if len(joined) < 2:
                continue
            (ma, _, ha), (mb, _, hb) = stats.mean_ci(joined["a"]), stats.mean_ci(joined["b"])
            better = stats.paired_test(joined["a"], joined["b"], metric=metric)["n_pos"]
            parts.append(f"{measures.label(metric)} {mb:.3f} ± {hb - mb:.3f} → "
                         f"{ma:.3f} ± {ha - ma:.3f} (label-safe better in {better} of {len(joined)} seeds)")
        if parts:
            lines.append(f"- {task} {strategy}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def update_markdown(text: str, root: str | Path = ".") -> str:
    """``text`` with every generated block rewritten from the committed tables it names (paths relative to
    ``root``); the rest of the text is left as it is. A test calls this on every markdown file with a block (README.md, docs/*.md) and fails on any
    difference, so no number in those blocks can drift from ``results/``."""
    def body(m: re.Match) -> str:
        args = [Path(root) / a for a in m.group("arg").split()]
        blocks = {"reference": reference_block, "variants": variants_block, "beyond": variants_block,
                  "flips": flips_block, "methods": methods_block, "changes": methods.changes_markdown, "fair": fair.verdicts_markdown, "lrs": selection.selected_markdown, "inference": lambda _: C.inference_markdown(),
                  "verdicts": verdicts_block, "claims": claims_block}
        return blocks[m.group("kind")](*args)

    return BLOCK.sub(lambda m: m.group(1) + body(m) + m.group(5), text)
