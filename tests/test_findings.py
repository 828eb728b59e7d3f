"""Issue 21: conclusions computed from committed tables, never typed."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from stmedfm.analysis import findings
from stmedfm.core import seal, stats
from stmedfm.core.config import StudyConfig

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
    """Every number in a generated block of the README or docs/ comes from results/ through stmedfm.analysis.findings."""
    text = path.read_text()
    assert findings.BLOCK.search(text), f"{path.name} has generated blocks"
    assert findings.update_markdown(text, ROOT) == text, (
        f"run `stmedfm report results/offline --markdown {path.relative_to(ROOT)}` from the project root")


@pytest.mark.slow  # the hierarchical bootstrap of every claim of the reference (about 20 s)
@pytest.mark.parametrize("store", ["offline", "offline_2d", "offline_lr"])
def test_committed_claims_are_recomputed_exactly(store):
    """claims.csv and paper_single_run.csv are regenerated from the committed store alone: its metrics, its
    per-image predictions (predictions.npz) and the saved bootstrap replicates of the runs whose predictions are
    too large to commit (replicates.npz), so every interval and verdict comes from committed files."""
    from stmedfm.run.store import ResultStore

    store = ResultStore(ROOT / "results" / store)
    cfg, metrics = store.config(), store.table("metrics")
    for name in ("claims", "paper_single_run"):
        committed = pd.read_csv(store.root / f"{name}.csv", keep_default_na=False, na_values=[""])
        fresh = (findings.claims_table(cfg, metrics, root=store.root) if name == "claims"
                 else findings.paper_single_run(metrics))
        fresh = pd.read_csv(io.StringIO(fresh.to_csv(index=False)), keep_default_na=False, na_values=[""])
        pd.testing.assert_frame_equal(fresh, committed, check_dtype=False, atol=1e-12)


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
        seal.seal(tmp_path / name)  # edited on purpose: vouch for it
    assert findings.flips_block(tmp_path / "a", tmp_path / "b").startswith("Not compared: `a` and `b` were computed on "
                                                                           "different machines")
    same = findings.flips_block(tmp_path / "a", tmp_path / "a")
    assert "label-safe better in 0 of 20 seeds" in same  # a store against itself: no seed is better
