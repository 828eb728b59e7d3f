"""Conclusions computed from a study's committed tables, never typed: the paper's claims tested paired over seeds,
the power of each test, and the paper's single runs beside the spread of ours.

Everything here reads the tidy tables of a result store (``metrics.csv``, ``config.yaml``) and writes tables of
its own into the store (``claims.csv``, ``paper_single_run.csv``); :func:`reference_block` turns them into the
markdown the README shows between generated markers, and a test regenerates that block from ``results/``, so
every number a reader sees comes from a committed file through this code.

Decisions (written down once, here):

* **Paired over seeds.** A claim compares two settings that share each seed's data order, initialisation and
  pretraining checkpoint, so the unit is the per-seed difference ``d = a - b`` (sign: positive favours the
  claim). Each claim is tested with the Wilcoxon signed-rank test (two-sided, exact for small n) and, beside
  it, the paired t-test; effect sizes are the rank-biserial correlation and Cohen's ``d_z = mean(d) / sd(d)``.
* **Holm over the claims.** The Wilcoxon p-values of every claim x metric row of one study form one family and
  are Holm-adjusted (:func:`stmedfm.stats.holm`).
* **Verdict rule** at alpha = 0.05: *supported* when the Holm-adjusted Wilcoxon p < 0.05 and the mean difference
  favours the claim; *contradicted* when it is < 0.05 and the difference goes against it; *inconclusive*
  otherwise. With 5 seeds no two-sided Wilcoxon p can go below 0.0625, so 5 seeds can only be inconclusive;
  that is why the reference study has 20.
* **"Keeps most of the gain"** (PEFT) is tested as ``d = peft - (scratch + full) / 2``: positive exactly when
  PEFT keeps more than half of Full's gain over Scratch on that seed.
* **Power**: the seeds a paired t-test needs to detect a difference of :data:`DETECT` (0.01) at 80 % power,
  two-sided alpha 0.05, given the observed SD of the paired differences (noncentral t).
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

from stmedfm import methods, stats, variants
from stmedfm.config import StudyConfig
from stmedfm.errors import StmedfmError
from stmedfm.io import atomic_write_csv
from stmedfm.report import claim_roles
from stmedfm.store import ResultStore
from stmedfm.tables import METRIC_TABLES, cell, paper_results

__all__ = ["ALPHA", "DETECT", "CLAIMS", "Claim", "claims_table", "seeds_for_power",
           "paper_single_run", "reference_block", "write_findings"]

ALPHA = stats.ALPHA
DETECT = 0.01  #: the difference (AUROC or accuracy) the power analysis sizes the study for
POWER = 0.8


@dataclass(frozen=True)
class Claim:
    """One claim of the paper's discussion as a paired contrast: ``a`` minus ``b`` (each a strategy, or several
    averaged per seed), on the task of ``role`` ('dominant' or 'small'), in ``experiment``."""

    key: str
    text: str
    role: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    metrics: tuple[str, ...] = ("macro_auroc", "accuracy")
    experiment: str = "transfer"


CLAIMS = (
    Claim("pretraining", "Pretraining helps the dominant task: Pretrain+Full beats Scratch", "dominant",
          ("full",), ("scratch",)),
    Claim("peft_lora", "LoRA keeps most (> half) of Full's gain over Scratch on the dominant task", "dominant",
          ("lora",), ("scratch", "full")),
    Claim("peft_adapter", "Adapters keep most (> half) of Full's gain over Scratch on the dominant task",
          "dominant", ("adapter",), ("scratch", "full")),
    Claim("negative_transfer", "Negative transfer on the small cross-modal task: Scratch beats Pretrain+Full",
          "small", ("scratch",), ("full",), ("macro_auroc", "accuracy", "macro_f1")),
    Claim("negative_transfer_extended", "Negative transfer persists with the longer budget (Table 12b)", "small",
          ("scratch",), ("full",), ("macro_auroc", "accuracy", "macro_f1"), "extended"),
)


def _per_seed(metrics: pd.DataFrame, task: str, strategies: tuple[str, ...], metric: str,
              experiment: str) -> pd.Series:
    sub = metrics[(metrics["experiment"] == experiment) & (metrics["task"] == task)
                  & metrics["strategy"].isin(strategies) & (metrics["metric"] == metric)]
    wide = sub.pivot_table(index="seed", columns="strategy", values="value", aggfunc="mean")
    if any(s not in wide.columns for s in strategies):
        return pd.Series(dtype=float)
    return wide[list(strategies)].mean(axis=1).dropna()


def seeds_for_power(sd: float, delta: float = DETECT, power: float = POWER, alpha: float = ALPHA,
                    limit: int = 100_000) -> float:
    """Smallest number of seeds with which a two-sided paired t-test at ``alpha`` detects a true mean difference
    ``delta`` with probability ``power``, given the SD ``sd`` of the paired differences (NaN when unknown)."""
    if not np.isfinite(sd) or sd < 0:
        return float("nan")
    if sd == 0:
        return 2.0
    n = 2
    while n <= limit:
        df = n - 1
        crit = st.t.ppf(1 - alpha / 2, df)
        nc = delta / sd * math.sqrt(n)
        achieved = st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return float(n)
        n = n + 1 if n < 200 else int(n * 1.05)
    return float("inf")


def claims_table(cfg: StudyConfig, metrics: pd.DataFrame) -> pd.DataFrame:
    """Every claim x metric of :data:`CLAIMS` that the study has runs for, tested paired over seeds, Holm across
    all rows, with effect sizes, power and the verdict (module docstring)."""
    roles = claim_roles(cfg)
    rows = []
    for claim in CLAIMS:
        task = roles.get(claim.role)
        if not task:
            continue
        for metric in claim.metrics:
            a = _per_seed(metrics, task, claim.a, metric, claim.experiment)
            b = _per_seed(metrics, task, claim.b, metric, claim.experiment)
            seeds = a.index.intersection(b.index)
            if len(seeds) < 2:
                continue
            if metric == "ece":  # lower is better: keep 'positive favours the claim'
                a, b = -a, -b
            test = stats.paired_test(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
            d = (a.loc[seeds] - b.loc[seeds]).to_numpy(dtype=float)
            sd = float(d.std(ddof=1))
            rows.append({
                "claim": claim.key, "text": claim.text, "task": task, "experiment": claim.experiment,
                "metric": metric, "a": "+".join(claim.a), "b": "+".join(claim.b), "n": test["n"],
                "estimate": test["mean_diff"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
                "sd_diff": sd, "p_wilcoxon": test["p_two_sided"],
                "p_t": float(st.ttest_rel(a.loc[seeds], b.loc[seeds]).pvalue) if sd > 0 else float("nan"),
                "n_positive": test["n_pos"], "rank_biserial": test["rank_biserial"],
                "cohen_dz": test["mean_diff"] / sd if sd > 0 else float("nan"),
                "seeds_needed": seeds_for_power(sd)})  # to detect DETECT at 80 % power
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out.insert(out.columns.get_loc("p_t") + 1, "p_holm", stats.holm(out["p_wilcoxon"]))
    out["verdict"] = [stats.verdict(e, p) for e, p in zip(out["estimate"], out["p_holm"])]
    return out


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
    store = ResultStore(results)
    cfg, metrics = store.config(), store.table("metrics")
    out = {"claims": claims_table(cfg, metrics), "paper_single_run": paper_single_run(metrics)}
    for name, frame in out.items():
        atomic_write_csv(store.root / f"{name}.csv", frame)
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
    claims = pd.read_csv(root / "claims.csv")
    single = pd.read_csv(root / "paper_single_run.csv")
    t7 = pd.read_csv(root / "tables" / "table7_auroc.csv")
    n = int(t7["n"].max())
    wide = t7.assign(cell=[cell(m, c, p) for m, c, p in zip(t7["mean"], t7["ci95"], t7["paper"])]).pivot(
        index="task", columns="strategy", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(t7["task"])), columns=list(dict.fromkeys(t7["strategy"])))
    auroc = ["| task | " + " | ".join(wide.columns) + " |", "|---" * (len(wide.columns) + 1) + "|"]
    auroc += [f"| {task} | " + " | ".join(str(v) if isinstance(v, str) else "" for v in row) + " |"
              for task, row in wide.iterrows()]
    lines = [f"Test macro AUROC, mean ± 95 % CI over {n} seeds (`results/{root.name}/tables/table7_auroc.csv`; "
             f"the paper's single run in brackets where the flag is the paper's):", "", *auroc, "",
             f"The paper's claims, tested paired over {n} seeds (`results/{root.name}/claims.csv`; estimate = mean "
             f"per-seed difference, positive favours the claim; Wilcoxon p Holm-adjusted over the "
             f"{len(claims)} rows; verdict at α = 0.05):", "",
             "| claim | task | metric | estimate [95 % CI] | seeds > 0 | p (Wilcoxon / t) | Holm p | seeds for 0.01 | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in claims.itertuples():
        need = f"{r.seeds_needed:.0f}" if np.isfinite(r.seeds_needed) else "—"
        lines.append(f"| {r.text} | {r.task} | {r.metric} | {_f(r.estimate, True)} [{_f(r.ci_low, True)}, "
                     f"{_f(r.ci_high, True)}] | {r.n_positive}/{r.n} | {_p(r.p_wilcoxon)} / {_p(r.p_t)} | "
                     f"{_p(r.p_holm)} | {need} | **{r.verdict}** |")
    if not single.empty:
        inside = int(single["inside"].sum())
        tasks = ", ".join(sorted(set(single["task"])))
        lines += ["", f"The paper beside us ({tasks}, `results/{root.name}/paper_single_run.csv`): {inside} of "
                      f"{len(single)} paper cells lie inside the 95 % prediction interval of a single run of ours "
                      f"(the yardstick for the paper's one run per cell; the CI of our mean is the wrong one)."]
    return "\n".join(lines) + "\n"


#: Generated blocks in a markdown file: ``<!-- stmedfm:reference results/offline -->`` (a study's reference block,
#: :func:`reference_block`), ``<!-- stmedfm:variants params/beyond.yaml -->`` (the findings of a variant study's
#: committed tables, :func:`variants_block`; ``stmedfm:beyond``, its former name, still works) or
#: ``<!-- stmedfm:flips ... -->`` (:func:`flips_block`) or ``<!-- stmedfm:methods results/peft_methods -->`` (the
#: findings of the study of every strategy, :func:`methods_block`), each closed by ``<!-- /stmedfm -->``.
BLOCK = re.compile(r"(<!-- stmedfm:(?P<kind>reference|variants|beyond|flips|methods) (?P<arg>[^>]+?) -->\n)"
                   r"(?P<body>.*?)"
                   r"(<!-- /stmedfm -->)", re.S)


def variants_block(params: str | Path) -> str:
    """The findings of the variant study ``params`` as a markdown list, from its committed tables
    (:func:`stmedfm.variants.findings`; nothing is computed: an incomplete study is an error)."""
    study = variants.load(params)
    if not variants.complete(study):
        raise StmedfmError(f"The tables of '{params}' in {study.root} are incomplete: run `stmedfm variants {params}`.")
    return "".join(f"- {line}\n" for line in variants.findings(study, variants.read(study)))


def methods_block(results: str | Path) -> str:
    """The findings of the study of every strategy (``params/peft_methods.yaml``, notebook 10) as a markdown list,
    from its committed ``methods_*.csv`` tables (:func:`stmedfm.methods.findings`; nothing is computed)."""
    return "".join(f"- {line}\n" for line in methods.findings(methods.read_tables(results)))


def flips_block(label_safe: str | Path, reference: str | Path, task: str = "organamnist") -> str:
    """Label-safe flips against the paper's flips on ``task``: accuracy and AUROC per strategy (Scratch, Full),
    mean ± 95 % CI over the seeds both stores have, and the seeds where label-safe is better. Both stores must come
    from the same machine (a cross-CPU difference would pass for an effect); otherwise the block says so."""
    stores = [ResultStore(label_safe), ResultStore(reference)]
    runs = [s.table("runs") for s in stores]
    machines = [set(r["machine"].fillna("unrecorded")) if "machine" in r else {"unrecorded"} for r in runs]
    if machines[0] != machines[1] or len(machines[0]) != 1:
        return (f"Not compared: `{Path(label_safe).name}` and `{Path(reference).name}` were computed on different "
                f"machines ({' vs '.join(' | '.join(sorted(m)) for m in machines)}); rerun one of them on the other's.\n")
    m = [s.table("metrics") for s in stores]
    lines = []
    for strategy in ("scratch", "full"):
        parts = []
        for metric in ("accuracy", "macro_auroc"):
            a, b = (_per_seed(x, task, (strategy,), metric, "transfer") for x in m)
            seeds = a.index.intersection(b.index)
            if len(seeds) < 2:
                continue
            (ma, _, ha), (mb, _, hb) = stats.mean_ci(a.loc[seeds]), stats.mean_ci(b.loc[seeds])
            better = int((a.loc[seeds] > b.loc[seeds]).sum())
            parts.append(f"{metric.replace('macro_', '').replace('auroc', 'AUROC')} {mb:.3f} ± {hb - mb:.3f} → "
                         f"{ma:.3f} ± {ha - ma:.3f} (label-safe better in {better} of {len(seeds)} seeds)")
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
                  "flips": flips_block, "methods": methods_block}
        return blocks[m.group("kind")](*args)

    return BLOCK.sub(lambda m: m.group(1) + body(m) + m.group(5), text)
