"""Issue 32, outcome 3: metrics and inference rules defined once.

The rules (stmedfm.core.measures: each metric's label and direction; stmedfm.core.stats: one level ALPHA, one decision rule,
one orientation "positive favours a", one pairing over seeds) each have a test that fails when a second definition
appears, and value tests that a lower-is-better metric (ECE) is reported as favouring the arm with the lower value
everywhere a paired difference is shown."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stmedfm.analysis import claims, findings, methods, report
from stmedfm.core import measures, stats, strategies
from stmedfm.core.config import StudyConfig

PACKAGE = Path(__file__).resolve().parents[1] / "stmedfm"
MODULES = sorted(PACKAGE.rglob("*.py"))


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (module, class, function): prose may name a rule, code may not restate it."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_metric_labels_and_directions_are_only_in_the_metric_table():
    """No module but stmedfm.core.measures maps metric names to labels (a dict of >= 2 metric names to strings) or keeps
    a set of lower- or higher-is-better metrics; the removed tables stay removed."""
    names = set(measures.METRICS)
    found = []
    for path in MODULES:
        if path.name == "measures.py" and path.parent == PACKAGE / "core":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                labels = all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in node.values)
                if len(set(keys) & names) >= 2 and labels and node.values:
                    found.append(f"{_where(path, node)}: a metric label table")
            if isinstance(node, ast.Set):  # e.g. the former methods.LOWER_IS_BETTER = {"ece", "brier", ...}
                keys = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                lower = {m for m in names if not measures.higher_is_better(m)}
                if len(keys) >= 2 and keys <= lower:
                    found.append(f"{_where(path, node)}: a set of lower-is-better metrics {sorted(keys)}")
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in ("METRIC_NAMES", "LOWER_IS_BETTER", "HIGHER_IS_BETTER"):
                        found.append(f"{_where(path, node)}: {t.id}")
    assert not found, "metric labels or directions outside stmedfm.core.measures:\n" + "\n".join(found)
    assert not hasattr(methods, "LOWER_IS_BETTER") and not hasattr(report, "METRIC_NAMES")


#: 0.05 that is not a significance level: a share of the parameters, a data fraction
NOT_ALPHA = {("report.py", "FEW_PERCENT"), ("config.py", "data_fractions"), ("scaling.py", "within")}


def test_alpha_is_defined_once():
    """The level is stats.ALPHA: no other module assigns an ALPHA, writes 0.05 as a number (except the named
    non-levels) or prints "0.05" in a generated string (docstrings may mention it)."""
    found = []
    for path in MODULES:
        tree = _tree(path)
        docs = _docstrings(tree)
        allowed = set()
        for node in ast.walk(tree):
            targets = (node.targets if isinstance(node, ast.Assign) else [node.target]
                       if isinstance(node, ast.AnnAssign) else [])
            for t in targets:
                if isinstance(t, ast.Name) and t.id == "ALPHA" and path.name != "stats.py":
                    found.append(f"{_where(path, node)}: ALPHA =")
                if isinstance(t, (ast.Name, ast.Attribute)) and (path.name, getattr(t, "id", getattr(t, "attr", ""))) in NOT_ALPHA:
                    allowed |= {id(n) for n in ast.walk(node)}
            if isinstance(node, ast.keyword) and (path.name, node.arg) in NOT_ALPHA:
                allowed |= {id(n) for n in ast.walk(node)}
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # a default such as within=0.05
                args = node.args.posonlyargs + node.args.args
                for arg, default in zip(args[len(args) - len(node.args.defaults):], node.args.defaults):
                    if (path.name, arg.arg) in NOT_ALPHA:
                        allowed.add(id(default))
        if path.name == "stats.py" and path.parent == PACKAGE / "core":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or id(node) in docs or id(node) in allowed:
                continue
            if node.value == 0.05 and isinstance(node.value, float):
                found.append(f"{_where(path, node)}: the number 0.05")
            if isinstance(node.value, str) and "0.05" in node.value:
                found.append(f"{_where(path, node)}: '0.05' in a string")
    assert not found, "a second significance level:\n" + "\n".join(found)


def test_one_decision_rule_and_one_pairing():
    """Nothing outside stats compares a p-value with ALPHA (stats.significant / decide / verdict do) and the
    readers of results pair series only through stats.pair (no inner joins or seed intersections of their own)."""
    found = []
    readers = {"claims.py", "findings.py", "methods.py", "report.py", "variants.py", "tables.py", "fair.py"}
    for path in MODULES:
        if path.name == "stats.py" and path.parent == PACKAGE / "core":
            continue
        text = path.read_text()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Compare):
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", None)
                         for n in [node.left, *node.comparators]}
                if "ALPHA" in names:
                    found.append(f"{_where(path, node)}: compares with ALPHA")
        if path.name in readers:
            for needle in ('join="inner"', ".intersection("):
                if needle in text:
                    found.append(f"{path.name}: {needle}")
    assert not found, "a second decision rule or pairing:\n" + "\n".join(found)


def test_the_decision_rule_by_hand():
    assert [stats.decide(e, p) for e, p in ((0.1, 0.01), (-0.1, 0.01), (0.1, 0.05), (0.1, float("nan")),
                                            (0.0, 0.0), (float("nan"), 0.0))] == [1, -1, 0, 0, 0, 0]
    assert [stats.verdict(e, 0.001) for e in (0.2, -0.2, 0.0)] == ["supported", "contradicted", "inconclusive"]
    assert stats.significant(0.049) and not stats.significant(0.05) and not stats.significant(float("nan"))
    d = np.array([0.3, 0.1, 0.2, 0.25])  # the t-test at ALPHA agrees with the 95 % t-interval excluding 0
    mean, lo, _ = stats.mean_ci(d)
    assert (stats.t_test_p(d) < stats.ALPHA) == (lo > 0)


def test_the_metric_table():
    assert [measures.higher_is_better(m) for m in ("accuracy", "macro_f1", "macro_auroc", "ece", "brier", "nll")] == [
        True, True, True, False, False, False]
    assert measures.label("macro_auroc") == "AUROC" and measures.axis_label("macro_auroc") == "macro AUROC"
    assert measures.better(None) == 1 and measures.better("ece") == -1
    with pytest.raises(Exception, match="Unknown metric 'auc'"):
        measures.get("auc")


def test_pairing_keeps_only_the_keys_both_sides_have():
    a = pd.Series([1.0, 2.0, np.nan, 4.0], index=pd.Index([3, 1, 2, 0], name="seed"))
    b = pd.Series([0.5, 0.5, 0.5], index=pd.Index([0, 1, 2], name="seed"))
    joined = stats.pair(a, b)
    assert list(joined.index) == [0, 1] and list(joined["a"]) == [4.0, 2.0]
    frame = pd.DataFrame({"seed": [0, 0, 1], "strategy": ["x", "x", "x"], "value": [1.0, 3.0, 5.0]})
    assert list(stats.per_seed(frame, {"strategy": "x"})) == [2.0, 5.0]
    with pytest.raises(Exception, match="several rows per"):
        stats.per_seed(frame, {"strategy": "x"}, reduce=None)


# ---------------------------------------------------------------------------------------------------------------
# a has the lower ECE than b on every seed: every report of the difference says +, favouring a
SEEDS = range(6)


def _metrics(task: str = "organamnist") -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        for strategy, ece, auroc in (("lora", 0.05, 0.90), ("scratch", 0.12, 0.85), ("full", 0.10, 0.88)):
            jitter = 0.001 * seed * (1 if strategy == "lora" else -1)
            for metric, value in (("ece", ece + jitter), ("macro_auroc", auroc + jitter)):
                rows.append({"run_id": f"{strategy}-{seed}", "experiment": "transfer", "variant": "", "task": task,
                             "strategy": strategy, "seed": seed, "k": 0, "fewshot_split": -1, "metric": metric,
                             "value": value})
    return pd.DataFrame(rows)


def test_lower_ece_favours_a_in_the_paired_test_and_compare():
    m = _metrics()
    ece = m[m["metric"] == "ece"]
    a, b = (ece[ece["strategy"] == s].sort_values("seed")["value"].to_numpy() for s in ("lora", "scratch"))
    test = stats.paired_test(a, b, metric="ece")
    assert test["mean_diff"] == pytest.approx(0.07, abs=0.01) and test["ci_low"] > 0
    assert test["n_pos"] == len(SEEDS) and test["rank_biserial"] == 1.0 and test["p_greater"] < 0.05
    assert test["mean_a"] < test["mean_b"]  # the means stay raw
    out = stats.compare(ece, [({"strategy": "lora"}, {"strategy": "scratch"})], pair_on=["seed"], metric="ece")
    assert out["mean_diff"].iloc[0] > 0 and stats.verdict(out["mean_diff"].iloc[0], out["p_holm"].iloc[0]) in (
        "supported", "inconclusive")


def test_lower_ece_favours_the_method_in_the_methods_tables():
    m = _metrics()
    comp = methods.comparisons(m, references=("scratch",))
    row = comp[(comp["metric"] == "ece") & (comp["strategy"] == "lora") & (comp["against"] == "scratch")].iloc[0]
    assert row["mean_diff"] > 0 and row["n_pos"] == len(SEEDS)
    view = methods.comparison_view({"comparisons": comp}, "organamnist", "ece")
    cell = view.set_index("strategy").loc[strategies.label("lora")]
    assert cell[f"Δ vs {strategies.label('scratch')}"].startswith("+0.06") and cell["better / n (scratch)"] == f"{len(SEEDS)}/{len(SEEDS)}"


def test_lower_ece_favours_a_in_the_report():
    m = _metrics()
    a, b = (m[(m["metric"] == "ece") & (m["strategy"] == s)].set_index("seed")["value"] for s in ("lora", "scratch"))
    c = report.compare(a, b, "ece")
    assert c.delta > 0 and c.direction == "up" and "ECE lora 0.05" in c.text("lora", "scratch")
    assert "(+0.065" in c.text("lora", "scratch")
    one = report.compare(a.iloc[:1], b.iloc[:1], "ece")  # a single run (the paper's): its sign decides
    assert one.direction == "up" and one.n == 1


def test_lower_ece_favours_a_in_the_claims_and_their_sentences():
    """ece_small2d ("Pretraining (Full) reduces ECE on the small 2D task") is written as a = full, b = scratch:
    Full's lower ECE is a positive estimate, shown with '+' in the claims table."""
    task = "organamnist"
    cfg = StudyConfig.from_dict({"pretrain_tasks": [task, "bloodmnist"], "downstream_tasks": [task],
                                 "strategies": ["scratch", "full", "lora"], "leave_out_tasks": [],
                                 "fewshot_tasks": {}, "class_weight_ablation_tasks": [task], "extended_tasks": [],
                                 "calibration_task": None})
    claim = next(c for c in claims.CLAIMS if c.key == "ece_small2d")
    assert (claim.a.strategies, claim.b.strategies) == (("full",), ("scratch",))
    table = claims.claims_table(cfg, _metrics(task))
    row = table[table["claim"] == "ece_small2d"].iloc[0]
    assert row["estimate"] > 0 and row["n_positive"] == len(SEEDS) and (row["a"], row["b"]) == ("full", "scratch")
    worse = table[table["claim"] == "ece_dominant"].iloc[0]  # "Full worsens ECE": a = scratch, which has the higher
    assert worse["estimate"] < 0 and (worse["a"], worse["b"]) == ("scratch", "full")
    line = next(s for s in findings.claims_lines(table, "here") if "reduces ECE on the small 2D" in s)
    assert f"| {task} | ece | +0.0" in line
