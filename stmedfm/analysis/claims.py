"""The paper's claims, each a paired contrast our flags can test, and the inference that decides them.

**The inference, written before any table** (``docs/study.md`` and notebook 08 state the same, from here):

* **Unit.** A claim compares two arms that share each seed's data order, initialisation and pretraining
  checkpoint, so the unit is the per-seed difference of :mod:`stmedfm.core.stats`, oriented so that ``d > 0`` favours
  ``a`` (``a - b``, or ``b - a`` for a metric where lower is better, :data:`stmedfm.core.measures.METRICS`); every claim
  is written as "a is better than b", so ``d > 0`` is what the paper says (for ECE, ``a`` is the arm the paper says
  is better calibrated).
* **Families.** AUROC rows form the *primary* family (the paper's claims are AUROC claims); accuracy, macro-F1 and
  ECE rows form the *secondary* family. Each family is Holm-adjusted on its own (:func:`stmedfm.core.stats.holm`),
  and the tables show the two apart.
* **Interval and p-value.** The hierarchical bootstrap over seeds x test images (:mod:`stmedfm.core.bootstrap`,
  :data:`~stmedfm.core.bootstrap.REPLICATES` replicates): its 95 % percentile interval and its two-sided p-value. A
  store without per-image predictions (older stores) falls back to the Wilcoxon signed-rank p over seeds; the
  ``p_source`` column says which was used. The seed-only t-interval, Wilcoxon and t-test p-values stay beside.
* **Verdict** at :data:`stmedfm.core.stats.ALPHA` (:func:`stmedfm.core.stats.verdict`, the one decision rule): *supported*
  when the Holm-adjusted p < alpha and the estimate is positive, *contradicted* when it is < alpha and negative,
  *inconclusive* otherwise. A claim whose
  role has no flag in the parameter file, or whose runs are missing, is listed as *untestable*, never dropped.
* **Retention** ("PEFT keeps most of Full's gain"): tested as ``d = peft - (scratch + full) / 2`` (positive exactly
  when PEFT keeps more than half of the gain on that seed); the retained fraction
  ``(peft - scratch) / (full - scratch)`` of the seed means is shown beside it with its bootstrap interval, and a
  note when Full - Scratch is not itself positive (then no fraction is meaningful).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from stmedfm.core import bootstrap, measures, seal, stats
from stmedfm.core.strategies import PAPER
from stmedfm.core.config import StudyConfig
from stmedfm.analysis.report import claim_roles

__all__ = ["PRIMARY", "Side", "Claim", "CLAIMS", "Predictions", "claims_table", "seeds_for_power", "family_of",
           "inference_markdown"]

PRIMARY = "macro_auroc"  #: the primary metric: its rows form the primary family
DETECT = 0.01  #: the difference (AUROC or accuracy) the power analysis sizes the study for
POWER = 0.8


def inference_markdown() -> str:
    """The inference as the docs and notebook 08 state it before any table, generated from the constants that the
    code uses (one definition: a change here changes what readers are told)."""
    n_primary = sum(c.metrics.count(PRIMARY) for c in CLAIMS)
    n_secondary = sum(len(c.metrics) for c in CLAIMS) - n_primary
    return "\n".join([
        f"- **Claims**: {len(CLAIMS)} claims of the paper, {n_primary + n_secondary} claim x metric rows, each a "
        f"paired contrast of a and b over seeds, oriented so that a positive difference favours a (a − b; b − a "
        f"where lower is better: {_and(lower_is_better_labels())}) and written so that a favoured a is what the "
        f"paper says (`stmedfm.analysis.claims.CLAIMS`, with the paper section or table of each).",
        f"- **Primary metric**: {measures.axis_label(PRIMARY)}; its {n_primary} rows form the primary family. "
        f"{_upper_first(_and(secondary_labels()))} rows ({n_secondary}) form the secondary family, tested and shown "
        f"apart.",
        f"- **Interval and p-value**: hierarchical bootstrap over seeds x test images, {bootstrap.REPLICATES} "
        f"replicates (the test images resampled once per replicate for all runs of a task, the seeds with "
        f"replacement), 95 % percentile interval, two-sided bootstrap p (floor {2 / (bootstrap.REPLICATES + 1):.3f}). "
        f"Stores without per-image predictions fall back to the Wilcoxon signed-rank p over seeds.",
        f"- **Multiplicity**: Holm within each family.",
        f"- **Verdict** at α = {stats.ALPHA}: *supported* when the Holm-adjusted p < α and the estimate is positive, "
        f"*contradicted* when p < α and it is negative, *inconclusive* otherwise; *untestable* when no flag plays "
        f"the claim's role or its runs are missing (listed, never dropped).",
        "- **Retention** (PEFT keeps most of Full's gain): tested as peft − (scratch + full) / 2; the retained "
        "fraction (peft − scratch) / (full − scratch) is shown with its interval, and flagged when Full − Scratch is "
        "not positive.",
    ]) + "\n"


def family_of(metric: str) -> str:
    return "primary" if metric == PRIMARY else "secondary"


def secondary_labels() -> list[str]:
    """The labels of the secondary family's metrics (:mod:`stmedfm.core.measures`), in the order the claims name them."""
    names = dict.fromkeys(m for c in CLAIMS for m in c.metrics if m != PRIMARY)
    return [measures.label(m) for m in names]


def lower_is_better_labels() -> list[str]:
    """The labels of the claims' metrics where lower is better (their difference is b - a), in claim order."""
    names = dict.fromkeys(m for c in CLAIMS for m in c.metrics if not measures.higher_is_better(m))
    return [measures.label(m) for m in names]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _and(words: list[str]) -> str:
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


@dataclass(frozen=True)
class Side:
    """One arm of a claim: the runs of ``strategies`` in ``experiment`` (filtered by ``where``: column -> value,
    '{task}' in a value is the claim's task), reduced per seed by ``agg``: 'mean' over the matching runs, or
    'split_sd' (the SD over few-shot splits, averaged over K: how unstable the arm is)."""

    strategies: tuple[str, ...]
    experiment: str = "transfer"
    where: tuple[tuple[str, object], ...] = ()
    agg: str = "mean"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper as "a is better than b" on the task of ``role`` (:func:`stmedfm.analysis.report.claim_roles`):
    the oriented difference of :mod:`stmedfm.core.stats` is positive; ``location`` is where the paper says it."""

    key: str
    text: str
    location: str
    role: str
    a: Side
    b: Side
    metrics: tuple[str, ...] = (PRIMARY,)
    retention: bool = False  #: b = (scratch, full): also report the retained fraction


def _t(*s: str, **kw) -> Side:
    return Side(tuple(s), **kw)


_ALL, _WITHOUT = (("variant", "all tasks"),), (("variant", "without {task}"),)
_ON, _OFF = (("class_weights", True),), (("class_weights", False),)
_CW = "class_weights"

CLAIMS: tuple[Claim, ...] = (
    Claim("pretraining", "Pretraining helps the dominant task: Pretrain+Full beats Scratch",
          "Abstract; §IV.A ¶1; Tables 5, 7", "dominant", _t("full"), _t("scratch"), (PRIMARY, "accuracy")),
    Claim("peft_lora", "LoRA keeps most (> half) of Full's gain over Scratch on the dominant task",
          "Abstract; §IV.A ¶1; Table 7", "dominant", _t("lora"), _t("scratch", "full"), (PRIMARY, "accuracy"), True),
    Claim("peft_adapter", "Adapters keep most (> half) of Full's gain over Scratch on the dominant task",
          "Abstract; §IV.A ¶1; Table 7", "dominant", _t("adapter"), _t("scratch", "full"), (PRIMARY, "accuracy"),
          True),
    Claim("small2d_transfer", "Pretraining helps the small 2D task a little: Pretrain+Full beats Scratch",
          "Abstract; §IV.A ¶1; Table 7 (DermaMNIST)", "small2d", _t("full"), _t("scratch")),
    Claim("blood_full", "On BloodMNIST, Pretrain+Full beats Scratch", "§IV.A ¶2; Table 7", "blood",
          _t("full"), _t("scratch")),
    Claim("blood_scratch_lora", "On BloodMNIST, Scratch still exceeds LoRA", "§IV.A ¶2; Table 7", "blood",
          _t("scratch"), _t("lora")),
    Claim("blood_scratch_adapter", "On BloodMNIST, Scratch still exceeds Adapter", "§IV.A ¶2; Table 7", "blood",
          _t("scratch"), _t("adapter")),
    Claim("negative_transfer", "Negative transfer on the small 3D task: Scratch beats Pretrain+Full",
          "Abstract; §IV.A ¶2; Tables 5-7 (OrganMNIST3D)", "small", _t("scratch"), _t("full"),
          (PRIMARY, "accuracy", "macro_f1")),
    Claim("negative_transfer_lora", "On the small 3D task, Scratch beats Pretrain+LoRA", "Table 7 (OrganMNIST3D)",
          "small", _t("scratch"), _t("lora")),
    Claim("adapter_small", "On the small 3D task, Pretrain+Adapter slightly beats Scratch in AUROC",
          "§IV.A ¶2; Table 7 (OrganMNIST3D)", "small", _t("adapter"), _t("scratch")),
    Claim("negative_transfer_extended", "Negative transfer persists with the longer budget",
          "§IV.E; Table 12b; §V", "small", _t("scratch", experiment="extended"), _t("full", experiment="extended"),
          (PRIMARY, "accuracy", "macro_f1")),
    Claim("leave_out_lora", "With LoRA, pretraining with the small 3D task beats pretraining without it",
          "§IV.G; Table 12", "small", _t("lora", experiment="leave_out", where=_ALL),
          _t("lora", experiment="leave_out", where=_WITHOUT)),
    Claim("leave_out_adapter", "With Adapter, pretraining without the 3D task improves accuracy and macro-F1",
          "§IV.G; Table 12", "small", _t("adapter", experiment="leave_out", where=_WITHOUT),
          _t("adapter", experiment="leave_out", where=_ALL), ("accuracy", "macro_f1")),
    Claim("leave_out_adapter_auroc", "With Adapter, pretraining without the 3D task slightly lowers AUROC",
          "§IV.G; Table 12", "small", _t("adapter", experiment="leave_out", where=_ALL),
          _t("adapter", experiment="leave_out", where=_WITHOUT)),
    *(Claim(f"class_weights_f1_{s}", f"Class weights improve macro-F1 ({s})", "§IV.G; Table 11", "small2d",
            _t(s, experiment=_CW, where=_ON), _t(s, experiment=_CW, where=_OFF), ("macro_f1",))
      for s in PAPER),
    *(Claim(f"class_weights_accuracy_{s}", f"Class weights reduce top-1 accuracy ({s})", "§IV.G; Table 11; §V",
            "small2d", _t(s, experiment=_CW, where=_OFF), _t(s, experiment=_CW, where=_ON), ("accuracy",))
      for s in PAPER),
    Claim("fewshot_2d_k", "2D few-shot AUROC rises from K=1 to K=10 (mean over methods and splits)",
          "§IV.D; Tables 9, 10b (DermaMNIST)", "fewshot2d",
          _t("full", "lora", "adapter", experiment="fewshot", where=(("k", 10),)),
          _t("full", "lora", "adapter", experiment="fewshot", where=(("k", 1),))),
    Claim("fewshot_3d_stability", "3D few-shot: Full is less stable over splits than LoRA and Adapter (SD of AUROC)",
          "§IV.D; Table 10b (OrganMNIST3D)", "fewshot3d", _t("full", experiment="fewshot", agg="split_sd"),
          _t("lora", "adapter", experiment="fewshot", agg="split_sd")),
    Claim("ece_dominant", "Pretraining (Full) worsens ECE on the dominant task", "§IV.C; Table 8 (PathMNIST)",
          "dominant", _t("scratch"), _t("full"), ("ece",)),
    Claim("ece_blood", "Pretraining (Full) worsens ECE on BloodMNIST", "§IV.C; Table 8", "blood", _t("scratch"),
          _t("full"), ("ece",)),
    Claim("ece_small2d", "Pretraining (Full) reduces ECE on the small 2D task", "§IV.C; Table 8 (DermaMNIST)",
          "small2d", _t("full"), _t("scratch"), ("ece",)),
    Claim("ece_small", "Pretraining (Full) reduces ECE on the small 3D task", "§IV.C; Table 8 (OrganMNIST3D)",
          "small", _t("full"), _t("scratch"), ("ece",)),
)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Per-image test probabilities of a store's runs and the labels they are scored against: from the committed
    ``predictions.npz`` and, for runs not in it, ``predictions/<rid>.npy`` beside the run records."""

    root: Path
    _bundle: dict = field(default_factory=dict)

    def __post_init__(self):
        path = Path(self.root) / "predictions.npz"
        if path.is_file():
            seal.check(self.root, path.name)  # the bytes the study wrote (stmedfm.core.seal)
            with np.load(path, allow_pickle=False) as z:
                self._bundle = {k: z[k] for k in z.files}

    def labels(self, task: str) -> np.ndarray | None:
        return self._bundle.get(f"labels/{task}")

    def bundled(self, rid: str) -> bool:
        return f"probs/{rid}" in self._bundle

    def probs(self, rid: str) -> np.ndarray | None:
        if f"probs/{rid}" in self._bundle:
            return self._bundle[f"probs/{rid}"]
        path = Path(self.root) / "predictions" / f"{rid}.npy"
        return np.load(path, allow_pickle=False) if path.is_file() else None


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


class _Replicates:
    """Each run's metric on every bootstrap resample of its task's test images, computed once per (run, metric);
    the resamples of a task are shared by all its runs (that keeps a claim's arms paired).

    Runs whose per-image predictions are too large to commit (``predictions/<rid>.npy`` only) keep their replicate
    vectors in the store's ``replicates.npz`` (:meth:`save`): a committed store then reproduces every interval
    exactly without them, and a rerun of the report does not recompute them."""

    FILE = "replicates.npz"

    def __init__(self, preds: Predictions, replicates: int):
        self.preds, self.n = preds, replicates
        self._weights: dict[str, np.ndarray] = {}
        self._cache: dict[tuple[str, str], np.ndarray | None] = {}
        self._saved: dict[str, np.ndarray] = {}
        path = Path(preds.root) / self.FILE
        if path.is_file():
            seal.check(preds.root, self.FILE)
            with np.load(path, allow_pickle=False) as z:
                self._saved = {k: z[k] for k in z.files if len(z[k]) == replicates}

    def get(self, rid: str, task: str, metric: str) -> np.ndarray | None:
        key = (rid, metric)
        if key not in self._cache and f"{metric}/{rid}" in self._saved:  # computed once, by an earlier report
            self._cache[key] = self._saved[f"{metric}/{rid}"]
        if key not in self._cache:
            labels, probs = self.preds.labels(task), self.preds.probs(rid)
            if labels is not None and probs is not None and len(probs) == len(labels):
                if task not in self._weights:
                    self._weights[task] = bootstrap.image_weights(len(labels), self.n, _stable_seed("images", task))
                self._cache[key] = bootstrap.replicates(probs, labels, metric, self._weights[task])
                if not self.preds.bundled(rid):
                    self._saved[f"{metric}/{rid}"] = self._cache[key]
            else:
                self._cache[key] = self._saved.get(f"{metric}/{rid}")
        return self._cache[key]

    def save(self) -> None:
        """Write the replicates of the runs whose predictions are not in the committed bundle."""
        if self._saved:
            buf = io.BytesIO()
            np.savez_compressed(buf, **dict(sorted(self._saved.items())))
            seal.write_bytes(self.preds.root, self.FILE, buf.getvalue())


def _select(runs: pd.DataFrame, side: Side, task: str) -> pd.DataFrame:
    sel = runs[(runs["experiment"] == side.experiment) & (runs["task"] == task)
               & runs["strategy"].isin(side.strategies)]
    for col, val in side.where:
        if col not in sel:
            return sel.iloc[0:0]
        val = val.format(task=task) if isinstance(val, str) else val
        sel = sel[sel[col].astype(str) == str(val)]
    return sel


def _reduce(sel: pd.DataFrame, side: Side, values: np.ndarray) -> pd.DataFrame:
    """Per-seed value(s) of an arm: ``values`` holds one row per run of ``sel`` (one column per replicate)."""
    keys = sel.reindex(columns=["seed", "k", "fewshot_split"]).fillna({"k": 0, "fewshot_split": -1})
    frame = pd.DataFrame(values, index=pd.MultiIndex.from_frame(keys))
    if side.agg == "split_sd":
        return frame.groupby(level=["seed", "k"]).std(ddof=1).groupby(level="seed").mean()
    return frame.groupby(level="seed").mean()


def _retained(a: np.ndarray, s: np.ndarray, f: np.ndarray) -> np.ndarray:
    gain = f - s
    return np.divide(a - s, gain, out=np.full(np.shape(gain), np.nan), where=np.abs(gain) > 0)


def claims_table(cfg: StudyConfig, metrics: pd.DataFrame, root: str | Path | None = None,
                 replicates: int = bootstrap.REPLICATES, save: bool = False) -> pd.DataFrame:
    """Every claim x metric of :data:`CLAIMS` decided by the rule of the module docstring: one row each, the
    untestable ones included. ``root``: the store, whose per-image predictions (or saved replicates) feed the
    hierarchical bootstrap (None: seed-only inference); ``save`` writes the replicates it computed."""
    roles = claim_roles(cfg)
    reps = _Replicates(Predictions(Path(root)), replicates) if root is not None else None
    rows = []
    for claim in CLAIMS:
        task = roles.get(claim.role)
        for metric in claim.metrics:
            base = {"claim": claim.key, "text": claim.text, "location": claim.location, "family": family_of(metric),
                    "task": task or "", "experiment": claim.a.experiment, "metric": metric,
                    "a": "+".join(claim.a.strategies), "b": "+".join(claim.b.strategies)}
            rows.append({**base, **_test(claim, task, metric, metrics, reps, replicates)})
    out = pd.DataFrame(rows)
    out = out.reindex(columns=list(dict.fromkeys([*out.columns, *COLUMNS])))  # a store where nothing is testable
    out["p_holm"] = np.nan
    for fam in ("primary", "secondary"):
        m = (out["family"] == fam) & (out["verdict"] != "untestable")
        out.loc[m, "p_holm"] = stats.holm(out.loc[m, "p"])
    tested = out["verdict"] != "untestable"
    out.loc[tested, "verdict"] = [stats.verdict(e, p) for e, p in zip(out.loc[tested, "estimate"],
                                                                         out.loc[tested, "p_holm"])]
    if save and reps is not None:
        reps.save()
    return out.reindex(columns=COLUMNS)


COLUMNS = ["claim", "text", "location", "family", "task", "experiment", "metric", "a", "b", "n", "estimate",
           "ci_low", "ci_high", "p", "p_source", "p_holm", "verdict", "seed_ci_low", "seed_ci_high", "p_wilcoxon",
           "p_t", "n_positive", "rank_biserial", "cohen_dz", "sd_diff", "seeds_needed", "retained", "retained_low",
           "retained_high", "note"]


def _untestable(why: str) -> dict:
    return {"n": 0, "verdict": "untestable", "note": why, "p_source": ""}


def _test(claim: Claim, task: str | None, metric: str, metrics: pd.DataFrame, reps: _Replicates | None,
          replicates: int) -> dict:
    if not task:
        return _untestable(f"no flag of the parameter file plays the '{claim.role}' role")
    runs = metrics[metrics["metric"] == metric]
    sels = [_select(runs, side, task) for side in (claim.a, claim.b)]
    if any(s.empty for s in sels):
        return _untestable(f"no {claim.a.experiment} runs of {task} for this contrast")
    joined = stats.pair(*(_reduce(s, side, s[["value"]].to_numpy(float))[0] for s, side in zip(sels, (claim.a,
                                                                                                   claim.b))))
    seeds = joined.index
    if len(seeds) < 2:
        return _untestable(f"fewer than two seeds with both arms on {task}")
    a, b = joined["a"].to_numpy(), joined["b"].to_numpy()
    test = stats.paired_test(a, b, metric=metric)
    d = measures.better(metric) * (a - b)
    sd = float(d.std(ddof=1))
    out = {"n": test["n"], "estimate": test["mean_diff"], "seed_ci_low": test["ci_low"],
           "seed_ci_high": test["ci_high"], "p_wilcoxon": test["p_two_sided"],
           "p_t": float(st.ttest_rel(a, b).pvalue) if sd > 0 else float("nan"), "n_positive": test["n_pos"],
           "rank_biserial": test["rank_biserial"], "cohen_dz": test["mean_diff"] / sd if sd > 0 else float("nan"),
           "sd_diff": sd, "seeds_needed": seeds_for_power(sd), "note": "", "verdict": ""}
    boot = _hierarchical(claim, task, metric, sels, seeds, reps) if reps is not None else None
    if boot is None:
        out.update({"ci_low": test["ci_low"], "ci_high": test["ci_high"], "p": test["p_two_sided"],
                    "p_source": "Wilcoxon over seeds (no per-image predictions)"})
    else:
        out.update({"ci_low": boot["ci"][0], "ci_high": boot["ci"][1], "p": boot["p"],
                    "p_source": "hierarchical bootstrap (seeds x test images)"})
    if claim.retention:
        out.update(_retention(claim, task, metric, runs, seeds, boot, reps, replicates))
    return out


def _hierarchical(claim: Claim, task: str, metric: str, sels: list[pd.DataFrame], seeds: pd.Index,
                  reps: _Replicates) -> dict | None:
    """Replicates of the claim's estimate: per run its metric on each image resample, reduced per seed like the
    point estimate, seeds resampled with replacement; None when any run lacks its per-image predictions."""
    arms = []
    for sel, side in zip(sels, (claim.a, claim.b)):
        vals = [reps.get(rid, task, metric) for rid in sel["run_id"]]
        if any(v is None for v in vals):
            return None
        arms.append(_reduce(sel, side, np.stack(vals)).loc[seeds].to_numpy())  # seeds x replicates
    d = measures.better(metric) * (arms[0] - arms[1])  # oriented: positive favours a (stmedfm.core.stats)
    idx = bootstrap.resample_seeds(len(seeds), reps.n, _stable_seed("seeds", claim.key, metric))
    est = d[idx, np.arange(reps.n)[:, None]].mean(axis=1)
    return {"ci": bootstrap.percentile_interval(est), "p": bootstrap.two_sided_p(est), "idx": idx}


def _retention(claim: Claim, task: str, metric: str, runs: pd.DataFrame, seeds: pd.Index, boot: dict | None,
               reps: _Replicates | None, reps_n: int) -> dict:
    """The retained fraction (peft - scratch) / (full - scratch) of the seed means, with its interval from the same
    replicates as the claim (seeds and images resampled alike), and a note when Full's gain is not positive."""
    arms = {}
    for name, strategies in (("peft", claim.a.strategies), ("scratch", ("scratch",)), ("full", ("full",))):
        side = Side(strategies)
        sel = _select(runs, side, task)
        arms[name] = (sel, side, _reduce(sel, side, sel[["value"]].to_numpy(float))[0].loc[seeds].mean())
    gain = arms["full"][2] - arms["scratch"][2]
    out = {"retained": float(_retained(arms["peft"][2], arms["scratch"][2], arms["full"][2]))}
    if boot is None:  # seeds only: scipy's bootstrap of the ratio of means, seeds resampled jointly
        vals = [_reduce(sel, side, sel[["value"]].to_numpy(float))[0].loc[seeds].to_numpy()
                for sel, side, _ in arms.values()]
        res = st.bootstrap(vals, lambda p, s, f, axis=-1: _retained(p.mean(axis), s.mean(axis), f.mean(axis)),
                           paired=True, vectorized=True, n_resamples=reps_n, method="percentile",
                           random_state=_stable_seed("retained", claim.key, metric) % 2**32)
        out["retained_low"], out["retained_high"] = (float(res.confidence_interval.low),
                                                     float(res.confidence_interval.high))
    else:
        means = {}
        for name, (sel, side, _) in arms.items():
            vals = np.stack([reps.get(rid, task, metric) for rid in sel["run_id"]])
            per_seed = _reduce(sel, side, vals).loc[seeds].to_numpy()  # seeds x replicates
            means[name] = per_seed[boot["idx"], np.arange(reps.n)[:, None]].mean(axis=1)
        out["retained_low"], out["retained_high"] = bootstrap.percentile_interval(
            _retained(means["peft"], means["scratch"], means["full"]))
        gain_low, gain_high = bootstrap.percentile_interval(means["full"] - means["scratch"])
        if gain > 0 and gain_low <= 0:
            out["note"] = (f"Full - Scratch = {gain:+.3f} [{gain_low:+.3f}, {gain_high:+.3f}] is not clearly "
                           f"positive: the retained fraction divides by a gain that may be 0, hence its interval")
    if not gain > 0:
        out["note"] = (f"Full - Scratch = {gain:+.3f} is not positive: there is no gain to keep, so the retained "
                       f"fraction is not meaningful")
    return out


def seeds_for_power(sd: float, delta: float = DETECT, power: float = POWER, alpha: float = stats.ALPHA,
                    limit: int = 100_000) -> float:
    """Smallest number of seeds with which a two-sided paired t-test at ``alpha`` detects a true mean difference
    ``delta`` with probability ``power``, given the SD ``sd`` of the paired differences (NaN when unknown)."""
    if not np.isfinite(sd) or sd < 0:
        return float("nan")
    if sd == 0:
        return 2.0

    def enough(n: int) -> bool:  # power grows with n: double until enough, then bisect
        crit = st.t.ppf(1 - alpha / 2, n - 1)
        nc = delta / sd * math.sqrt(n)
        return st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc) >= power

    lo, hi = 1, 2
    while not enough(hi):
        if hi > limit:
            return float("inf")
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return float(hi)
