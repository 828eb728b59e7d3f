"""stmedfm.analysis.report: roles and substitutions, protocol differences, pretraining mix, temperature scaling, and the
claim checks on hand-made metric frames (and on the paper's own numbers, which must support every claim)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from stmedfm.analysis import report
from stmedfm.core import paths
from stmedfm.run import inputs
from stmedfm.core.config import StudyConfig

SUPPORTED = {"yes", "no", "mixed", "not tested"}


def metrics_frame(values: dict, experiment: str = "transfer") -> pd.DataFrame:
    """{(task, strategy, metric): [value per seed]} -> rows of metrics.csv."""
    rows = []
    for (task, strategy, metric), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            rows.append({"experiment": experiment, "variant": "", "task": task, "strategy": strategy, "seed": seed,
                         "metric": metric, "value": v})
    return pd.DataFrame(rows)


def params_frame(task: str = "t", total: int = 160_000, lora: int = 4_000, adapter: int = 5_000) -> pd.DataFrame:
    return pd.DataFrame([{"task": task, "strategy": "scratch", "total": total, "trainable": total},
                         {"task": task, "strategy": "full", "total": total, "trainable": total},
                         {"task": task, "strategy": "lora", "total": total + 3072, "trainable": lora},
                         {"task": task, "strategy": "adapter", "total": total + 4256, "trainable": adapter}])


def offline() -> StudyConfig:
    return StudyConfig.load(paths.project_root() / "params" / "offline.yaml")


# --- comparisons and verdicts -----------------------------------------------------------------------------------
def test_compare_one_seed_uses_the_sign():
    c = report.compare(pd.Series([0.6]), pd.Series([0.5]), "macro_auroc")
    assert c.direction == "up" and c.n == 1 and math.isclose(c.delta, 0.1)  # a - b
    assert report.compare(pd.Series([0.5]), pd.Series([0.6])).direction == "down"
    assert report.compare(pd.Series([0.5]), pd.Series([0.5])).direction == "equal"


def test_compare_several_seeds_needs_the_interval_to_exclude_zero():
    clear = report.compare(pd.Series([0.60, 0.61, 0.62]), pd.Series([0.50, 0.52, 0.51]))
    assert clear.direction == "up" and clear.n == 3 and clear.ci > 0
    noisy = report.compare(pd.Series([0.50, 0.60, 0.55]), pd.Series([0.58, 0.52, 0.57]))
    assert noisy.direction == "unclear"


def test_compare_pairs_on_common_seeds_only():
    c = report.compare(pd.Series([0.7, 0.9], index=[1, 2]), pd.Series([0.5, 0.5], index=[0, 1]))
    assert c.n == 1 and math.isclose(c.delta, 0.2)
    assert report.compare(pd.Series([0.5], index=[0]), pd.Series([0.5], index=[1])) is None


def test_verdict():
    assert report.verdict([True, True]) == "yes"
    assert report.verdict([False, False]) == "no"
    assert report.verdict([True, False]) == "mixed"
    assert report.verdict([]) == "not tested"


# --- the claims on the paper's own numbers ----------------------------------------------------------------------
def test_paper_numbers_support_every_claim():
    claims = report.check_claims(report.paper_metrics(), report.paper_params(), "pathmnist", "organmnist3d")
    assert set(claims["supported"]) == {"yes"}, claims[["claim", "setting", "supported"]]
    assert list(dict.fromkeys(claims["claim"])) == list(report.CLAIMS.values())
    pretraining = claims.iloc[0]["evidence"]
    assert "0.568" in pretraining and "0.634" in pretraining and "0.886" in pretraining and "0.914" in pretraining
    peft = claims.iloc[1]["evidence"]
    assert "82%" in peft and "96%" in peft and "2.5%" in peft and "4,041" in peft


def test_claim_roles_follow_the_parameter_file():
    assert report.claim_roles(StudyConfig()) == {"dominant": "pathmnist", "small": "organmnist3d",
                                                 "small2d": "dermamnist", "blood": "bloodmnist",
                                                 "fewshot2d": "dermamnist", "fewshot3d": "organmnist3d"}
    # the offline reference is cross-modal, as the paper: a real 3D flag in OrganMNIST3D's role
    assert report.claim_roles(offline()) == {"dominant": "organamnist", "small": "adrenalmnist3d",
                                             "small2d": "retinamnist", "blood": "bloodmnist",
                                             "fewshot2d": "retinamnist", "fewshot3d": "adrenalmnist3d"}


# --- pretraining helps the dominant task ------------------------------------------------------------------------
@pytest.mark.parametrize("full_acc, full_auc, expected", [
    (0.7, 0.95, "yes"),   # both higher than scratch
    (0.5, 0.85, "no"),    # both lower
    (0.7, 0.85, "mixed"),  # accuracy up, AUROC down
])
def test_claim_pretraining_helps(full_acc, full_auc, expected):
    m = metrics_frame({("t", "scratch", "accuracy"): [0.6], ("t", "scratch", "macro_auroc"): [0.9],
                       ("t", "full", "accuracy"): [full_acc], ("t", "full", "macro_auroc"): [full_auc]})
    row = report.claim_pretraining_helps(m, "t").iloc[0]
    assert row["supported"] == expected and row["task"] == "t"
    assert f"full {full_acc:.3f} vs scratch 0.600 ({full_acc - 0.6:+.3f}" in row["evidence"]


def test_claim_pretraining_helps_with_seeds_inside_the_noise_is_not_support():
    m = metrics_frame({("t", "scratch", "accuracy"): [0.60, 0.70, 0.65], ("t", "full", "accuracy"): [0.66, 0.62, 0.69],
                       ("t", "scratch", "macro_auroc"): [0.80, 0.81, 0.82],
                       ("t", "full", "macro_auroc"): [0.90, 0.91, 0.93]})
    row = report.claim_pretraining_helps(m, "t").iloc[0]
    assert row["supported"] == "mixed"  # AUROC clearly up, accuracy within the seeds' spread
    assert "3 seeds" in row["evidence"] and "±" in row["evidence"]


def test_claim_pretraining_not_tested_without_runs():
    m = metrics_frame({("other", "scratch", "accuracy"): [0.5]})
    assert report.claim_pretraining_helps(m, "t").iloc[0]["supported"] == "not tested"
    assert report.claim_pretraining_helps(m, None).iloc[0]["supported"] == "not tested"


# --- PEFT keeps most of the gain ----------------------------------------------------------------------------------
def peft_metrics(scratch=0.80, full=0.90, lora=0.88, adapter=0.89):
    return metrics_frame({("t", "scratch", "macro_auroc"): [scratch], ("t", "full", "macro_auroc"): [full],
                          ("t", "lora", "macro_auroc"): [lora], ("t", "adapter", "macro_auroc"): [adapter]})


def test_claim_peft_keeps_gain_yes():
    row = report.claim_peft_keeps_gain(peft_metrics(), params_frame(), "t").iloc[0]
    assert row["supported"] == "yes"
    assert "keeps 80% of the gain" in row["evidence"] and "keeps 90% of the gain" in row["evidence"]
    assert "4,000 of 160,000 parameters (2.5%)" in row["evidence"]


def test_claim_peft_keeps_gain_mixed_and_no():
    assert report.claim_peft_keeps_gain(peft_metrics(lora=0.82), params_frame(), "t").iloc[0]["supported"] == "mixed"
    assert report.claim_peft_keeps_gain(peft_metrics(lora=0.82, adapter=0.81), params_frame(),
                                        "t").iloc[0]["supported"] == "no"
    no_gain = report.claim_peft_keeps_gain(peft_metrics(full=0.78), params_frame(), "t").iloc[0]
    assert no_gain["supported"] == "no" and "no gain to keep" in no_gain["evidence"]


def test_claim_peft_needs_few_trainable_parameters():
    many = params_frame(lora=40_000, adapter=50_000)  # 25-31 %: not "a few percent"
    assert report.claim_peft_keeps_gain(peft_metrics(), many, "t").iloc[0]["supported"] == "no"


def test_claim_peft_not_tested_without_peft_runs():
    m = metrics_frame({("t", "scratch", "macro_auroc"): [0.8], ("t", "full", "macro_auroc"): [0.9]})
    assert report.claim_peft_keeps_gain(m, params_frame(), "t").iloc[0]["supported"] == "not tested"


# --- negative transfer on the small task --------------------------------------------------------------------------
def test_claim_negative_transfer_standard_and_extended():
    standard = metrics_frame({("s", "scratch", "accuracy"): [0.30], ("s", "full", "accuracy"): [0.20],
                              ("s", "scratch", "macro_f1"): [0.20], ("s", "full", "macro_f1"): [0.10],
                              ("s", "scratch", "macro_auroc"): [0.80], ("s", "full", "macro_auroc"): [0.70]})
    extended = metrics_frame({("s", "scratch", "accuracy"): [0.40], ("s", "full", "accuracy"): [0.45],
                              ("s", "scratch", "macro_f1"): [0.30], ("s", "full", "macro_f1"): [0.35],
                              ("s", "scratch", "macro_auroc"): [0.85], ("s", "full", "macro_auroc"): [0.80]},
                             experiment="extended")
    rows = report.claim_negative_transfer(pd.concat([standard, extended]), "s")
    assert list(rows["setting"]) == ["standard budget", "extended budget"]
    assert list(rows["supported"]) == ["yes", "mixed"]
    assert "scratch 0.300 vs full 0.200 (+0.100" in rows.iloc[0]["evidence"]


def test_claim_negative_transfer_no_and_not_tested():
    m = metrics_frame({("s", "scratch", "accuracy"): [0.2], ("s", "full", "accuracy"): [0.3]})
    rows = report.claim_negative_transfer(m, "s")
    assert list(rows["supported"]) == ["no", "not tested"]  # pretraining helped; no extended runs


# --- calibration is not monotonic in AUROC -----------------------------------------------------------------------
def test_claim_calibration_discordant_pair_supports():
    m = metrics_frame({("a", "scratch", "macro_auroc"): [0.80], ("a", "scratch", "ece"): [0.05],
                       ("a", "full", "macro_auroc"): [0.90], ("a", "full", "ece"): [0.10],  # better AUROC, worse ECE
                       ("b", "scratch", "macro_auroc"): [0.80], ("b", "scratch", "ece"): [0.10],
                       ("b", "full", "macro_auroc"): [0.90], ("b", "full", "ece"): [0.05]})  # monotonic
    rows = report.claim_calibration_not_monotonic(m).set_index("setting")
    assert rows.loc["task a", "supported"] == "yes"
    assert "full vs scratch: AUROC 0.900 vs 0.800, ECE 0.100 vs 0.050" in rows.loc["task a", "evidence"]
    assert rows.loc["task b", "supported"] == "no"
    assert rows.loc["all tasks", "supported"] == "mixed"
    assert rows.loc["all tasks", "evidence"] == "1 of 2 tasks have a discordant pair"


def test_claim_calibration_counts_pairs_and_ignores_ties():
    m = metrics_frame({("a", "scratch", "macro_auroc"): [0.8], ("a", "scratch", "ece"): [0.1],
                       ("a", "full", "macro_auroc"): [0.8], ("a", "full", "ece"): [0.2],  # AUROC tie: no pair
                       ("a", "lora", "macro_auroc"): [0.9], ("a", "lora", "ece"): [0.05]})
    row = report.claim_calibration_not_monotonic(m, ["a"]).iloc[0]
    assert row["supported"] == "no" and row["evidence"].startswith("0 of 2 strategy pairs")


# --- the report ----------------------------------------------------------------------------------------------------
def test_claims_report_sets_the_paper_beside_ours():
    m = pd.concat([
        metrics_frame({("organamnist", s, k): [v] for s, v in (("scratch", 0.9), ("full", 0.95), ("lora", 0.94),
                                                                ("adapter", 0.94))
                       for k in ("accuracy", "macro_auroc", "ece")}),
    ])
    out = report.claims_report(offline(), m, params=params_frame("organamnist"))
    assert list(out.columns) == ["claim", "setting", "paper_task", "paper_evidence", "paper_supported", "task",
                                 "evidence", "supported"]
    first = out.iloc[0]
    assert first["paper_task"] == "pathmnist" and first["paper_supported"] == "yes"
    assert first["task"] == "organamnist" and first["supported"] == "yes"
    per_task = out[out["setting"].str.startswith("task ")]
    assert (per_task["paper_evidence"] == "").all()
    assert set(out["supported"]) <= SUPPORTED
    text = report.claims_markdown(out)
    assert all(f"#### {c}" in text for c in report.CLAIMS.values())


def test_substitution_table_offline():
    subs = report.substitution_table(offline()).set_index("role")
    assert subs.loc["pretraining task 1", "paper"] == "pathmnist"
    assert subs.loc["pretraining task 1", "ours"] == "organamnist"
    assert "70.8%" in subs.loc["pretraining task 1", "our_setting"]
    assert not subs.loc["pretraining task 2", "substituted"]  # bloodmnist is bloodmnist
    assert subs.loc["pretraining task 4", "ours"] == "adrenalmnist3d" and subs.loc["pretraining task 4", "substituted"]
    assert subs.loc["few-shot task 1", "ours"] == "retinamnist"
    assert subs.loc["few-shot task 2", "ours"] == "adrenalmnist3d"
    assert subs.loc["calibration task", "ours"] == "organamnist"
    assert subs.loc["left out of pretraining 1", "ours"] == "adrenalmnist3d"


def test_substitution_table_of_the_paper_substitutes_nothing():
    subs = report.substitution_table(StudyConfig())
    assert not subs["substituted"].any() and len(subs) >= 12


def test_config_differences():
    assert report.config_differences(StudyConfig()).empty
    diff = report.config_differences(StudyConfig().replace(study="x", pretrain_steps=20, seeds=[0, 1], workers=2))
    assert list(diff["parameter"]) == ["seeds", "pretrain_steps"]
    assert diff.set_index("parameter").loc["seeds", "ours"] == "0, 1"


def test_protocol_table_of_the_paper():
    t = report.protocol_table(StudyConfig()).set_index("stage")
    assert t.loc["multi-task pretraining", "steps (2D / 3D)"] == "200"
    assert t.loc["scratch", "steps (2D / 3D)"] == "150 / 80"
    assert t.loc["pretrain + full", "lr"] == "0.0015"
    assert t.loc["scratch", "class weights"] == "inverse frequency (clipped 0.1-5)"


def test_realised_proportions():
    loss = pd.DataFrame({"seed": [0] * 4 + [1] * 4, "pretrain": ["pathmnist+organmnist3d"] * 8,
                         "step": [0, 1, 2, 3] * 2,
                         "task": ["pathmnist"] * 4 + ["pathmnist", "pathmnist", "pathmnist", "organmnist3d"],
                         "loss": [1.0] * 8})
    out = report.realised_proportions(loss, StudyConfig()).set_index("task")
    assert math.isclose(out.loc["organmnist3d", "realised"], 0.125)  # 0/4 and 1/4
    assert math.isclose(out.loc["organmnist3d", "batches"], 0.5)
    assert math.isclose(out.loc["pathmnist", "intended"] + out.loc["organmnist3d", "intended"], 1.0)
    assert out.loc["pathmnist", "intended"] > 0.98 and out.loc["pathmnist", "seeds"] == 2


def test_temperature_table():
    ts = pd.DataFrame([{"task": "t", "strategy": "full", "metric": m, "mean": v, "ci95": float("nan"), "n": 1}
                       for m, v in (("ece", 0.10), ("ece_ts", 0.04), ("brier", 0.5), ("brier_ts", 0.48), ("nll", 1.2),
                                    ("nll_ts", 1.1), ("temperature", 1.7))])
    out = report.temperature_table(ts).iloc[0]
    assert math.isclose(out["ece_change"], -0.06) and math.isclose(out["T"], 1.7)
    assert math.isclose(out["nll_ts"], 1.1)


def test_paper_comparison_summary():
    tables = {
        "table7_auroc": pd.DataFrame({"task": ["bloodmnist", "organamnist"], "strategy": ["full", "full"],
                                      "mean": [0.95, 0.9], "ci95": [0.01, 0.01], "n": [5, 5],
                                      "paper": [0.954, float("nan")], "delta": [-0.004, float("nan")]}),
        "temperature_scaling": pd.DataFrame({"task": ["t"], "mean": [0.1], "ci95": [float("nan")], "n": [1]}),
    }
    out = report.paper_comparison_summary(tables).set_index("table")
    assert out.loc["table7_auroc", "with_paper_value"] == 1
    assert math.isclose(out.loc["table7_auroc", "mean_abs_delta"], 0.004)
    assert out.loc["table7_auroc", "paper_inside_ci"] == "1 of 1"
    assert out.loc["temperature_scaling", "with_paper_value"] == 0


def test_package_versions():
    v = inputs.package_versions().set_index("component")["version"]
    for name in ("python", "torch", "numpy", "pandas", "scikit-learn"):
        assert v[name] and v[name] != "not installed"
