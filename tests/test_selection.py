"""Learning rates selected on validation only (stmedfm.core.selection, issue 28): the rule, that no test number enters
it, and a study that selects, then trains its transfer runs at the selected rate, resumably."""

import numpy as np
import pandas as pd
import pytest

from stmedfm.core import selection
from stmedfm.run.planning import official_data, run_id
from stmedfm.core.records import plan
from stmedfm.run.study import run_study

GRID = {"lora": [0.001, 0.01, 0.1]}


def _metrics(val: dict[float, list[float]], test: dict[float, list[float]]) -> pd.DataFrame:
    """Tidy rows of task 'bloodmnist', strategy 'lora': val_macro_auroc and macro_auroc per lr and seed 100, 101."""
    rows = []
    for metric, values in (("val_macro_auroc", val), ("macro_auroc", test)):
        for lr, per_seed in values.items():
            rows += [{"task": "bloodmnist", "strategy": "lora", "lr": lr, "seed": 100 + i, "metric": metric,
                      "value": v} for i, v in enumerate(per_seed)]
    return pd.DataFrame(rows)


VAL = {0.001: [0.70, 0.72], 0.01: [0.80, 0.76], 0.1: [0.60, float("nan")]}
TEST = {0.001: [0.90, 0.91], 0.01: [0.50, 0.52], 0.1: [0.99, 0.99]}


def _choice(metrics) -> dict:
    return selection.chosen(selection.table(metrics, GRID, ["bloodmnist"], [100, 101]))


def test_the_highest_mean_validation_auroc_is_selected():
    table = selection.table(_metrics(VAL, TEST), GRID, ["bloodmnist"], [100, 101])
    assert list(table.columns) == list(selection.COLUMNS)
    assert table["val_auroc_mean"].tolist()[:2] == pytest.approx([0.71, 0.78])
    assert table["selected"].tolist() == [False, True, False] and table["complete"].all()
    assert selection.chosen(table) == {("lora", "bloodmnist"): 0.01}


def test_no_test_metric_enters_selection():
    base = _choice(_metrics(VAL, TEST))
    rng = np.random.default_rng(0)
    for _ in range(5):  # any test numbers, even ones that favour another rate: the same choice
        perturbed = {lr: list(rng.uniform(0, 1, 2)) for lr in TEST}
        perturbed[0.1] = [1.0, 1.0]
        assert _choice(_metrics(VAL, perturbed)) == base
    better = {**VAL, 0.001: [0.90, 0.90]}  # validation numbers decide it
    assert _choice(_metrics(better, TEST)) == {("lora", "bloodmnist"): 0.001}


def test_ties_go_to_the_smaller_rate_and_a_partial_grid_decides_nothing():
    tie = {0.001: [0.8, 0.8], 0.01: [0.8, 0.8], 0.1: [0.5, 0.5]}
    assert _choice(_metrics(tie, TEST)) == {("lora", "bloodmnist"): 0.001}
    partial = _metrics(VAL, TEST)
    partial = partial[~((partial["lr"] == 0.1) & (partial["seed"] == 100))]
    table = selection.table(partial, GRID, ["bloodmnist"], [100, 101])
    assert not table["complete"].any() and not table["selected"].any() and selection.chosen(table) == {}
    assert table["n"].tolist() == [2, 2, 1]


def test_plan_waits_for_the_selection_and_then_uses_it(make_config):
    cfg = make_config(strategies=["scratch", "lora"], seeds=[0, 1], lr_grid={"lora": [0.001, 0.1]},
                      lr_selection_seeds=[7], fewshot_tasks={"bloodmnist": 2}, fewshot_k=[1], fewshot_splits=1,
                      fewshot_strategies=["lora"])
    first = plan(cfg)
    assert sorted((p.experiment, p.spec.strategy, p.spec.lr, p.spec.seed) for p in first
                  if p.spec.strategy == "lora" and p.experiment != "fewshot") == [("lr_selection", "lora", 0.001, 7),
                                                                                  ("lr_selection", "lora", 0.1, 7)]
    assert {p.spec.seed for p in first if p.experiment == "transfer"} == {0, 1}  # scratch needs no selection
    fewshot = [p.spec for p in first if p.experiment == "fewshot"]
    assert fewshot and {s.lr for s in fewshot} == {cfg.lr_peft}  # subsets keep the configured rate ...
    second = plan(cfg, {("lora", "bloodmnist"): 0.1})
    assert [p.spec for p in second if p.experiment == "fewshot"] == fewshot  # ... before and after the selection
    assert {(p.spec.seed, p.spec.lr) for p in second if p.experiment == "transfer" and p.spec.strategy == "lora"} \
        == {(0, 0.1), (1, 0.1)}
    data = official_data(cfg)
    tested = {run_id(cfg, p.spec, data) for p in second if p.experiment == "transfer"}
    selecting = {run_id(cfg, p.spec, data) for p in second if p.experiment == "lr_selection"}
    assert not tested & selecting  # disjoint seeds: no tested run took part in the selection


@pytest.mark.slow
def test_a_study_selects_on_validation_then_trains_at_the_choice(make_config, tmp_path):
    cfg = make_config(strategies=["scratch", "lora"], seeds=[0], lr_grid={"lora": [0.001, 0.1]},
                      lr_selection_seeds=[7, 8])
    store = run_study(cfg, out=tmp_path / "s", progress=False)
    table = pd.read_csv(store.root / "lr_selection.csv")
    assert len(table) == 2 and table["complete"].all() and table["selected"].sum() == 1
    best = float(table.loc[table["selected"], "lr"].iloc[0])
    runs = pd.read_csv(store.root / "runs.csv")
    lora = runs[(runs["experiment"] == "transfer") & (runs["strategy"] == "lora")]
    assert lora["lr"].tolist() == [best] and len(runs[runs["experiment"] == "lr_selection"]) == 4
    metrics = pd.read_csv(store.root / "metrics.csv")
    sel = metrics[(metrics["experiment"] == "lr_selection") & (metrics["metric"] == "val_macro_auroc")]
    means = sel.groupby("lr")["value"].mean()
    assert best == means.idxmax()
    before = sorted(p.name for p in (store.root / "runs").iterdir())
    run_study(cfg, out=tmp_path / "s", progress=False)  # resumes: nothing new to compute
    assert sorted(p.name for p in (store.root / "runs").iterdir()) == before


def test_selection_figure_rings_the_choice():
    from stmedfm.analysis.plots import fig_lr_selection

    table = selection.table(_metrics(VAL, TEST), GRID, ["bloodmnist"], [100, 101])
    fig = fig_lr_selection(table)
    ax = fig.axes[0]
    ring = ax.collections[-1].get_offsets()  # the scatter of the selected point
    assert ring.tolist() == [[0.01, pytest.approx(0.78)]] and ax.get_xscale() == "log"


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    table = selection.table(_metrics(VAL, TEST), GRID, ["bloodmnist"], [100, 101])
    assert not table["at_edge"].any()  # 0.01 is inside [0.001, 0.1]
    low = selection.table(_metrics({**VAL, 0.001: [0.9, 0.9]}, TEST), GRID, ["bloodmnist"], [100, 101])
    assert low["at_edge"].tolist() == [True, False, False]
    two = selection.table(_metrics({0.001: [0.9, 0.9], 0.01: [0.5, 0.5]}, TEST), {"lora": [0.001, 0.01]},
                          ["bloodmnist"], [100, 101])
    assert not two["at_edge"].any()  # a 2-point grid has no inside: nothing to flag
