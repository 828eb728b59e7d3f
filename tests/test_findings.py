"""Issue 21: conclusions computed from committed tables, never typed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from stmedfm import findings, stats
from stmedfm.config import StudyConfig

ROOT = Path(__file__).resolve().parents[1]


#: Every markdown file that may hold generated blocks: the README and the pages of docs/.
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_generated_block_has_a_home():
    """The reference block stays in the README; the others may live in docs/, but none is lost in a move."""
    kinds = {p.name: [m.group("kind") for m in findings.BLOCK.finditer(p.read_text())] for p in MARKDOWN}
    assert "reference" in kinds["README.md"], "the README has the reference block"
    assert {"reference", "variants", "flips"} <= {k for found in kinds.values() for k in found}, kinds


@pytest.mark.parametrize("path", [p for p in MARKDOWN if findings.BLOCK.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_generated_blocks_are_what_the_committed_results_give(path):
    """Every number in a generated block of the README or docs/ comes from results/ through stmedfm.findings."""
    text = path.read_text()
    assert findings.BLOCK.search(text), f"{path.name} has generated blocks"
    assert findings.update_markdown(text, ROOT) == text, (
        f"run `stmedfm report results/offline --markdown {path.relative_to(ROOT)}` from the project root")


def test_committed_claims_are_recomputed_exactly():
    for name in ("claims", "paper_single_run"):
        committed = pd.read_csv(ROOT / "results" / "offline" / f"{name}.csv")
        from stmedfm.store import ResultStore

        store = ResultStore(ROOT / "results" / "offline")
        cfg, metrics = store.config(), store.table("metrics")
        fresh = findings.claims_table(cfg, metrics) if name == "claims" else findings.paper_single_run(metrics)
        pd.testing.assert_frame_equal(fresh.reset_index(drop=True), committed, check_dtype=False, atol=1e-12)


def test_seeds_for_power_matches_the_textbook():
    # Cohen's d_z = 1 (sd = delta): a two-sided paired t-test at 0.05 reaches 80 % power with 10 pairs
    assert findings.seeds_for_power(0.01, 0.01) == 10
    # d_z = 0.5: 34 pairs (G*Power's value)
    assert findings.seeds_for_power(0.02, 0.01) == 34
    assert math.isnan(findings.seeds_for_power(float("nan")))


def test_prediction_interval_by_hand():
    v = [1.0, 2.0, 3.0, 4.0]
    mean, lo, hi = stats.prediction_interval(v)
    half = st.t.ppf(0.975, 3) * np.std(v, ddof=1) * math.sqrt(1 + 1 / 4)
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert hi - lo > 2 * st.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2  # wider than the CI of the mean


def _metrics(diff: dict[str, list[float]], task: str = "organamnist") -> pd.DataFrame:
    rows = []
    for strategy, values in diff.items():
        for seed, v in enumerate(values):
            for metric in ("macro_auroc", "accuracy"):
                rows.append({"experiment": "transfer", "task": task, "strategy": strategy, "seed": seed,
                             "metric": metric, "value": v})
    return pd.DataFrame(rows)


@pytest.mark.slow  # about 5 s of CPU
def test_verdicts_follow_the_rule():
    cfg = StudyConfig.from_dict({"pretrain_tasks": ["organamnist", "bloodmnist"], "downstream_tasks": ["organamnist"],
                                 "strategies": ["scratch", "full", "lora"], "leave_out_tasks": [],
                                 "fewshot_tasks": {}, "class_weight_ablation_tasks": [], "extended_tasks": [],
                                 "calibration_task": None})
    n = 12
    scratch = [0.80 + 0.001 * i for i in range(n)]
    full = [s + 0.05 + 0.001 * (i % 3) for i, s in enumerate(scratch)]  # always better: supported
    lora = [s - 0.05 - 0.001 * (i % 2) for i, s in enumerate(scratch)]  # below scratch: keeps no gain
    table = findings.claims_table(cfg, _metrics({"scratch": scratch, "full": full, "lora": lora}))
    by = table.set_index(["claim", "metric"])
    assert by.loc[("pretraining", "macro_auroc"), "verdict"] == "supported"
    assert by.loc[("pretraining", "macro_auroc"), "n_positive"] == n
    assert by.loc[("peft_lora", "macro_auroc"), "verdict"] == "contradicted"
    # estimate = lora - (scratch + full) / 2, by hand
    expect = np.mean(np.array(lora) - (np.array(scratch) + np.array(full)) / 2)
    assert by.loc[("peft_lora", "macro_auroc"), "estimate"] == pytest.approx(expect)
    # Holm over the 4 rows: the smallest p times 4
    assert table["p_holm"].min() == pytest.approx(min(1, 4 * table["p_wilcoxon"].min()))
    five = findings.claims_table(cfg, _metrics({"scratch": scratch[:5], "full": full[:5], "lora": lora[:5]}))
    assert set(five["verdict"]) == {"inconclusive"}  # 5 seeds: the Wilcoxon floor is 0.0625


def test_no_notebook_prose_types_a_result():
    """Notebook markdown may name protocol constants (a learning rate, alpha, a detectable difference, the
    Wilcoxon floor) but no measured value: results are printed by code cells from the tables."""
    import re

    import nbformat

    constants = {"0.002", "0.05", "0.01", "0.0625", "0.031"}
    number = re.compile(r"\b\d?\.\d{2,4}\b")
    typed = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                typed += [(path.name, n) for n in number.findall(cell.source) if n not in constants]
    assert typed == []


def test_flips_are_never_compared_across_machines(tmp_path):
    import shutil

    for name, machine in (("a", "AMD EPYC; ATen AVX512"), ("b", "Intel Xeon; ATen AVX512; amx_bf16")):
        shutil.copytree(ROOT / "results" / "offline_label_safe", tmp_path / name)
        runs = pd.read_csv(tmp_path / name / "runs.csv")
        runs["machine"] = machine
        runs.to_csv(tmp_path / name / "runs.csv", index=False)
    assert findings.flips_block(tmp_path / "a", tmp_path / "b").startswith("Not compared: `a` and `b` were computed on "
                                                                           "different machines")
    same = findings.flips_block(tmp_path / "a", tmp_path / "a")
    assert "label-safe better in 0 of 20 seeds" in same  # a store against itself: no seed is better
