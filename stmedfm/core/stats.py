"""Paired comparisons over seeds: Wilcoxon signed-rank, Holm correction, effect sizes.

The inference rules of every reader of results are defined here, once:

* **Pairing**: :func:`per_seed` reduces a selection of a tidy table to one value per seed (or per any key) and
  :func:`pair` aligns two such series on the keys both have, dropping missing values; :func:`compare`, the
  variant studies, the report, the claims and the findings pair results only through these two.
* **Orientation: positive favours a.** A comparison pairs two settings that share everything random that can be
  shared (same seed, same repeat, same budget), so the unit of analysis is the *pair*. Its difference is
  ``d_i = s · (a_i - b_i)`` with ``s = +1`` when a higher value of the metric is better and ``-1`` when a lower one
  is (:func:`stmedfm.core.measures.better`): ``d > 0`` favours a for every metric (a has the higher AUROC, the lower
  ECE). Every table, sentence and verdict reads this sign.
* **One level** :data:`ALPHA` and **one decision rule**, :func:`decide`: a difference favours a (+1) or b (-1) when
  its p-value is below :data:`ALPHA`, else neither (0). :func:`verdict` names the three outcomes for a claim
  (supported / contradicted / inconclusive); the report's descriptive checks, the methods study's "significantly
  above / below" and the variant studies use :func:`decide` too.

For each family of comparisons :func:`compare` reports, per comparison:

* ``n`` pairs, ``mean_diff`` and its two-sided 95 % t-interval (``ci_low``, ``ci_high``);
* the sign count (``n_pos`` / ``n_neg`` / ``n_zero``: pairs that favour a, favour b, tie);
* the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``; zero differences dropped, exact null
  distribution for small n): ``p_two_sided`` and ``p_greater`` (one-sided, H1: a is better);
* ``p_holm``: the two-sided p Holm-adjusted across the family (:func:`holm`);
* ``rank_biserial``: the matched-pairs rank-biserial correlation ``(R+ - R-) / (R+ + R-)`` of the ranks of
  ``|d|`` (+1: every pair favours a; -1: every pair favours b).

With an equivalence ``margin`` (:func:`compare`, issue 28), absence of evidence is no longer read as evidence of
absence: ``p_tost`` is the two one-sided t-tests (TOST, statsmodels ``ttost_paired``) of H0: |mean d| >= margin,
``p_tost_holm`` its Holm adjustment within the family and ``equivalent`` whether it is below :data:`ALPHA`, i.e.
the 90 % t-interval of the mean difference lies inside (-margin, margin). "Equivalent to", "Pareto-best" and
"removes negative transfer" are decided by it (:mod:`stmedfm.analysis.methods`), never by a non-significant Wilcoxon p.

Be plain about power: with n pairs and no ties the smallest possible exact two-sided Wilcoxon p is
``2 / 2**n`` — 0.0625 for 5 pairs, so 5 seeds can *never* reach p < 0.05 two-sided, whatever the effect;
one-sided the floor is 0.03125. :func:`min_two_sided_p` gives the floor; read the sign count, the effect size
and the t-interval of the mean difference beside the p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from stmedfm.core import measures
from stmedfm.core.errors import StmedfmError

__all__ = ["ALPHA", "significant", "decide", "verdict", "equivalence_verdict", "per_seed", "pair", "paired_test", "compare", "t_test_p",
           "holm", "rank_biserial", "mean_ci", "prediction_interval", "min_two_sided_p", "format_p", "tost",
           "DEFAULT_MARGIN"]

ALPHA = 0.05  #: the level of every decision (:func:`decide`), verdict and equivalence test of the package
DEFAULT_MARGIN = 0.01  #: the equivalence margin of AUROC differences (``StudyConfig.equivalence_margin``)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input order (NaN stays NaN and is not counted).

    Sort the m valid p-values ascending, p_(1) <= ... <= p_(m); the adjusted value of p_(i) is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))`` (statsmodels ``multipletests(method="holm")``). Rejecting where
    the adjusted p <= alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        out[valid] = multipletests(p[valid], method="holm")[1]
    return out


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """p of the paired TOST of equivalence, H0: |mean(a - b)| >= ``margin`` (statsmodels ``ttost_paired``: the
    larger of the two one-sided t-test p-values). NaN for fewer than two pairs; when every difference is the same,
    0 if it lies inside the margin and 1 otherwise (the t statistics are infinite)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 2:
        return float("nan")
    d = a - b
    if np.ptp(d) == 0:
        return 0.0 if abs(d[0]) < margin else 1.0
    return float(ttost_paired(a, b, -margin, margin)[0])


def rank_biserial(diffs: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (zeros dropped; NaN if all are zero)."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    d = d[d != 0]
    if len(d) == 0:
        return float("nan")
    ranks = st.rankdata(np.abs(d))  # average ranks for ties
    r_plus, r_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((r_plus - r_minus) / (r_plus + r_minus))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided t-interval of the mean (low = high = NaN for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(st.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def significant(p: float, alpha: float = ALPHA) -> bool:
    """Whether a p-value is below ``alpha`` (False for a p that could not be computed): the one threshold of
    :func:`decide` and of the equivalence tests (``equivalent``)."""
    return bool(isinstance(p, (int, float, np.floating)) and p < alpha)


def decide(estimate: float, p: float, alpha: float = ALPHA) -> int:
    """The decision rule of every paired comparison, written once: +1 (favours a) when ``p`` < ``alpha`` and the
    oriented difference ``estimate`` is positive, -1 (favours b) when p < alpha and it is negative, 0 otherwise
    (including a p or an estimate that could not be computed). ``p`` is the test's: Holm-adjusted for a family of
    claims, the t-test's for the report's descriptive checks (where a single run, which has no test, passes
    p = 0 and its sign decides)."""
    if not significant(p, alpha) or not estimate or math.isnan(estimate):
        return 0
    return 1 if estimate > 0 else -1


def verdict(estimate: float, p_holm: float, alpha: float = ALPHA) -> str:
    """:func:`decide` named for a claim (each claim is written as "a is better than b"): *supported* (+1),
    *contradicted* (-1) or *inconclusive* (0)."""
    return {1: "supported", -1: "contradicted", 0: "inconclusive"}[decide(estimate, p_holm, alpha)]


def equivalence_verdict(p_tost_holm: float, p_holm: float, ci_low: float, ci_high: float, margin: float,
                        alpha: float = ALPHA) -> str:
    """The verdict of a claim of *no difference* ("PEFT keeps the gain", "held-out transfer matches"): *supported*
    when the paired TOST shows equivalence within ``margin`` (``p_tost_holm`` < ``alpha``), *contradicted* when the
    difference is significant (``p_holm`` < ``alpha``) and its 95 % interval lies wholly outside [-margin, margin]
    (so no value inside the margin is compatible with the data), else *inconclusive*. A non-significant difference
    never supports such a claim."""
    if significant(p_tost_holm, alpha):
        return "supported"
    if significant(p_holm, alpha) and (ci_high < -margin or ci_low > margin):
        return "contradicted"
    return "inconclusive"


def per_seed(frame: pd.DataFrame, selection: dict, on: Sequence[str] = ("seed",), value: str = "value",
             reduce: str | None = "mean") -> pd.Series:
    """One value per ``on`` key (default: per seed) of the rows of tidy ``frame`` matching ``selection`` (column ->
    value): the mean of the matching rows (``reduce="mean"``), or, with ``reduce=None``, the single row, refusing a
    selection that leaves several rows per key (one line naming it)."""
    mask = np.ones(len(frame), dtype=bool)
    for col, val in selection.items():
        mask &= (frame[col] == val).to_numpy()
    sub = frame.loc[mask, [*on, value]]
    if reduce is None:
        if sub.duplicated(list(on)).any():
            raise StmedfmError(f"Selection {selection} has several rows per {list(on)}; narrow it down.")
        return sub.set_index(list(on))[value]
    return sub.groupby(list(on))[value].agg(reduce)


def pair(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """The pairs of two keyed series (e.g. per seed): columns ``a`` and ``b`` on the keys both have a value for,
    sorted by key. The one pairing of results over seeds."""
    return pd.concat([a, b], axis=1, keys=["a", "b"], join="inner").dropna().sort_index()


def t_test_p(diffs: Sequence[float]) -> float:
    """Two-sided p of the one-sample t-test of paired differences against 0 (the paired t-test): below
    :data:`ALPHA` exactly when the 95 % t-interval of :func:`mean_ci` excludes 0. NaN for fewer than two
    differences; with no spread, 0 for a non-zero mean and 1 for a zero one."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if d.mean() != 0 else 1.0
    t = float(d.mean()) / (sd / math.sqrt(len(d)))
    return float(2 * st.t.sf(abs(t), len(d) - 1))


def prediction_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the ``level`` prediction interval of one *new* run, from runs ``values``:
    ``mean ± t(0.5 + level/2, n-1) · sd · sqrt(1 + 1/n)``. The yardstick for a single published run (the paper's
    one run per cell), where :func:`mean_ci` would shrink with seeds while single runs do not."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), float("nan")
    half = st.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) * math.sqrt(1 + 1 / len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def format_p(p: float) -> str:
    """A p-value as the generated findings print it: two significant digits, scientific below 0.001, '—' if none."""
    return "—" if not np.isfinite(p) else f"{p:.2g}" if p >= 1e-3 else f"{p:.0e}"


def min_two_sided_p(n: int) -> float:
    """The smallest exact two-sided Wilcoxon signed-rank p-value reachable with n untied, non-zero pairs."""
    return min(1.0, 2.0 / 2**n) if n > 0 else float("nan")


def paired_test(a: Sequence[float], b: Sequence[float], margin: float | None = None,
                metric: str | None = None) -> dict:
    """Everything :func:`compare` reports for one pair of equally long, aligned samples (a[i] pairs b[i]), with
    the difference oriented by ``metric`` (module docstring: ``mean_diff`` > 0 favours a; ``mean_a`` and
    ``mean_b`` stay the raw means); with a ``margin``, also ``p_tost`` (:func:`tost`, symmetric in the sign)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise StmedfmError(f"Paired samples must have equal lengths, got {len(a)} and {len(b)}.")
    d = measures.better(metric) * (a - b)
    d = d[~np.isnan(d)]
    mean, lo, hi = mean_ci(d)
    out = {"n": int(len(d)), "mean_a": float(np.nanmean(a)) if len(a) else float("nan"),
           "mean_b": float(np.nanmean(b)) if len(b) else float("nan"), "mean_diff": mean, "ci_low": lo,
           "ci_high": hi, "n_pos": int((d > 0).sum()), "n_neg": int((d < 0).sum()), "n_zero": int((d == 0).sum()),
           "p_two_sided": float("nan"), "p_greater": float("nan"), "rank_biserial": rank_biserial(d)}
    if margin is not None:
        out["p_tost"] = tost(a, b, margin)
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        if len(d):
            out["p_two_sided"], out["p_greater"] = 1.0, 1.0
        return out
    out["p_two_sided"] = float(st.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    out["p_greater"] = float(st.wilcoxon(d, zero_method="wilcox", alternative="greater").pvalue)
    return out


def compare(frame: pd.DataFrame, pairs: Sequence[tuple[dict, dict]], pair_on: Sequence[str],
            value: str = "value", labels: Sequence[str] | None = None, family: str = "",
            margin: float | None = None, metric: str | None = None) -> pd.DataFrame:
    """Paired comparisons of ``value`` between selections of a tidy ``frame``; Holm across all of them.

    ``pairs`` holds (a, b) selections, each a mapping column -> value (e.g. ``{"strategy": "full"}`` vs
    ``{"strategy": "scratch"}``); rows of a and b are matched on ``pair_on`` (e.g. ``["seed"]``) by
    :func:`per_seed` and :func:`pair`, and only matched keys count. Each selection must leave one row per key.
    ``metric`` orients the differences (positive favours a; module docstring). Returns one row per comparison with
    the columns of :func:`paired_test`, ``p_holm`` and ``label`` (default: 'a vs b' from the selections). With an
    equivalence ``margin`` also ``margin``, ``p_tost``, ``p_tost_holm`` (Holm over the family) and ``equivalent``
    (``p_tost_holm`` < :data:`ALPHA`).
    """
    rows = []
    for i, (sel_a, sel_b) in enumerate(pairs):
        joined = pair(*(per_seed(frame, sel, pair_on, value, reduce=None) for sel in (sel_a, sel_b)))
        label = labels[i] if labels is not None else f"{_describe(sel_a)} vs {_describe(sel_b)}"
        rows.append({"family": family, "label": label,
                     **paired_test(joined["a"], joined["b"], margin, metric)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p_two_sided"])
    out["p_floor"] = out["n"].map(min_two_sided_p)
    if margin is not None:
        out["margin"] = margin
        out["p_tost_holm"] = holm(out["p_tost"])
        out["equivalent"] = out["p_tost_holm"].map(significant)
    return out


def _describe(sel: dict) -> str:
    return ", ".join(f"{v}" for v in sel.values())
