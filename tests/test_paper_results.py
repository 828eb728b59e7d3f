"""The published STMedFM numbers shipped as stmedfm/paper_results.csv: schema, keys and spot values from the paper."""

from __future__ import annotations

import csv
import io
from collections import Counter
from importlib import resources

import pytest

COLUMNS = ["table", "task", "strategy", "variant", "k", "class", "metric", "value"]
KEY = ("table", "task", "strategy", "variant", "k", "class", "metric")
TASKS = {"pathmnist", "bloodmnist", "dermamnist", "organmnist3d"}
STRATEGIES = {"scratch", "full", "lora", "adapter"}


def _text() -> str:
    return resources.files("stmedfm").joinpath("paper_results.csv").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_text())))


def _value(rows, table, task, strategy, metric, variant="", k=0, cls=""):
    hits = [
        r for r in rows
        if (r["table"], r["task"], r["strategy"], r["variant"], r["k"], r["class"], r["metric"])
        == (table, task, strategy, variant, str(k), str(cls), metric)
    ]
    assert len(hits) == 1, (table, task, strategy, variant, k, cls, metric, hits)
    return float(hits[0]["value"])


def test_columns():
    header = next(csv.reader(io.StringIO(_text())))
    assert header == COLUMNS


def test_no_duplicate_keys(rows):
    counts = Counter(tuple(r[c] for c in KEY) for r in rows)
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not dupes


def test_vocabulary(rows):
    for r in rows:
        assert r["task"] in TASKS, r
        assert r["strategy"] in STRATEGIES, r
        int(r["k"])
        float(r["value"])
    assert "dermannist" not in _text()


def test_row_counts(rows):
    expected = {
        "table4_params": 32,
        "table5_accuracy": 16,
        "table6_macro_f1": 16,
        "table7_auroc": 16,
        "table8_ece": 16,
        "table8b_brier": 16,
        "table9_fewshot": 9,
        "table10_fewshot": 9,
        "table10b_fewshot_splits": 36,
        "table11_class_weights": 40,
        "table12_pretrain_subset": 20,
        "table12b_extended": 12,
        "table13_per_class": 36,
    }
    assert Counter(r["table"] for r in rows) == expected


@pytest.mark.parametrize(
    "table,task,strategy,metric,variant,k,cls,expected",
    [
        ("table5_accuracy", "pathmnist", "full", "accuracy", "", 0, "", 0.634),
        ("table5_accuracy", "pathmnist", "scratch", "accuracy", "", 0, "", 0.568),
        ("table7_auroc", "pathmnist", "lora", "macro_auroc", "", 0, "", 0.909),
        ("table7_auroc", "organmnist3d", "scratch", "macro_auroc", "", 0, "", 0.759),
        ("table7_auroc", "dermamnist", "adapter", "macro_auroc", "", 0, "", 0.763),
        ("table7_auroc", "dermamnist", "full", "macro_auroc", "", 0, "", 0.756),
        ("table7_auroc", "dermamnist", "lora", "macro_auroc", "", 0, "", 0.760),
        ("table7_auroc", "dermamnist", "scratch", "macro_auroc", "", 0, "", 0.746),
        ("table8_ece", "pathmnist", "full", "ece", "", 0, "", 0.116),
        ("table8b_brier", "bloodmnist", "full", "brier", "", 0, "", 0.348),
        ("table9_fewshot", "dermamnist", "full", "macro_auroc", "", 10, "", 0.734),
        ("table10b_fewshot_splits", "organmnist3d", "lora", "macro_auroc", "", 5, "", 0.697),
        ("table10b_fewshot_splits", "organmnist3d", "lora", "macro_auroc_std", "", 5, "", 0.038),
        ("table11_class_weights", "dermamnist", "adapter", "macro_f1", "weights off", 0, "", 0.115),
        ("table12_pretrain_subset", "organmnist3d", "lora", "macro_auroc", "without organmnist3d", 0, "", 0.675),
        ("table12b_extended", "organmnist3d", "scratch", "steps", "extended", 0, "", 240),
        ("table12b_extended", "organmnist3d", "scratch", "accuracy", "extended", 0, "", 0.352),
        ("table13_per_class", "pathmnist", "full", "recall", "", 0, 1, 1.0),
        ("table13_per_class", "pathmnist", "full", "support", "", 0, 1, 847),
        ("table4_params", "bloodmnist", "adapter", "trainable_params", "", 0, "", 5160),
    ],
)
def test_spot_values(rows, table, task, strategy, metric, variant, k, cls, expected):
    assert _value(rows, table, task, strategy, metric, variant, k, cls) == pytest.approx(expected)
