"""stmedfm.analysis.methods on hand-made tidy tables: summaries, paired tests (method - reference, Holm per family), the
Pareto front, findings sentences and figures; and the study files of issue 22."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from stmedfm.analysis import methods
from stmedfm.core import stats
from stmedfm.run import inputs
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(8)
#: task -> strategy -> (AUROC offset, trainable parameters); every seed adds the same seed effect to all strategies
DESIGN = {
    "organamnist": {"scratch": (0.00, 160_000), "full": (0.03, 160_000), "lora": (0.02, 4_000),
                    "linear_probe": (-0.05, 700), "ia3": (0.02, 1_600), "loha": (0.01, 7_000)},
    "retinamnist": {"scratch": (0.00, 160_000), "full": (-0.08, 160_000), "lora": (-0.10, 3_800),
                    "linear_probe": (-0.12, 300), "ia3": (-0.09, 1_200), "loha": (0.004, 6_800)},
}


def _tables():
    rng = np.random.default_rng(0)
    metrics, runs = [], []
    for task, design in DESIGN.items():
        seed_effect = rng.normal(0, 0.02, len(SEEDS))
        for strategy, (offset, n) in design.items():
            runs.append({"experiment": "transfer", "task": task, "strategy": strategy, "trainable_params": n,
                         "total_params": 160_000})
            for seed in SEEDS:
                noise = rng.normal(0, 0.003)
                auroc = 0.8 + offset + seed_effect[seed] + noise
                for metric, value in (("macro_auroc", auroc), ("macro_f1", auroc - 0.3), ("ece", 0.1 - offset),
                                      ("brier", 0.3 - offset), ("accuracy", auroc - 0.1)):
                    metrics.append({"experiment": "transfer", "task": task, "strategy": strategy, "seed": seed,
                                    "metric": metric, "value": value, "k": 0, "fewshot_split": -1})
                if task == "retinamnist" and strategy != "scratch":
                    for k in (1, 5):
                        for split in range(2):
                            metrics.append({"experiment": "fewshot", "task": task, "strategy": strategy, "seed": seed,
                                            "metric": "macro_auroc", "value": 0.6 + 0.01 * k + offset + 0.001 * split,
                                            "k": k, "fewshot_split": split})
    return pd.DataFrame(metrics), pd.DataFrame(runs)


@pytest.fixture(scope="module")
def tables():
    metrics, runs = _tables()
    summ = methods.summary(metrics, runs)
    return {"summary": summ, "comparisons": methods.comparisons(metrics), "pareto": methods.pareto(summ),
            "fewshot": methods.fewshot(metrics), "roles": pd.DataFrame([{"dominant": "organamnist",
                                                                          "small": "retinamnist"}])}


def test_summary_is_the_mean_and_t_interval_over_seeds(tables):
    metrics, _ = _tables()
    s = tables["summary"].set_index(["task", "strategy", "metric"])
    values = metrics[(metrics["task"] == "retinamnist") & (metrics["strategy"] == "ia3")
                     & (metrics["metric"] == "macro_auroc") & (metrics["experiment"] == "transfer")]["value"]
    mean, lo, hi = stats.mean_ci(values)
    row = s.loc[("retinamnist", "ia3", "macro_auroc")]
    assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == pytest.approx((mean, lo, hi, 8))
    assert row["trainable_params"] == 1_200
    assert list(dict.fromkeys(tables["summary"]["strategy"]))[:3] == ["scratch", "full", "lora"]  # registry order


def test_comparisons_are_method_minus_reference_with_holm_per_family(tables):
    c = tables["comparisons"]
    lora = c[(c["task"] == "retinamnist") & (c["metric"] == "macro_auroc") & (c["against"] == "lora")]
    assert set(lora["strategy"]) == {"scratch", "full", "linear_probe", "ia3", "loha"}
    row = lora.set_index("strategy").loc["scratch"]
    assert row["mean_diff"] == pytest.approx(0.10, abs=0.01) and row["n"] == 8 and row["n_pos"] == 8
    assert np.allclose(lora["p_holm"], stats.holm(lora["p_two_sided"]))
    assert set(c["family"]) >= {"retinamnist:macro_auroc:vs lora", "retinamnist:ece:vs scratch",
                                "organamnist:macro_auroc:vs best"}
    assert not ((c["against"] == "best") & (c["metric"] != "macro_auroc")).any()


def test_pareto_front_by_hand(tables):
    p = tables["pareto"]
    front = set(p[(p["task"] == "organamnist") & p["front"]]["strategy"])
    # organamnist: linear probe (700, -0.05) < IA3 (1,600, +0.02) ~ LoRA (4,000, +0.02) < Full (160k, +0.03);
    # LoHa (7,000, +0.01) is dominated by IA3; Scratch by Full (same count, lower AUROC)
    assert {"linear_probe", "ia3", "full"} <= front and not {"loha", "scratch"} & front
    retina = set(p[(p["task"] == "retinamnist") & p["front"]]["strategy"])
    assert retina == {"linear_probe", "ia3", "loha"}  # Scratch (160k) is not above LoHa (6,800)


def test_fewshot_averages_splits_per_seed_then_ci_over_seeds(tables):
    f = tables["fewshot"].set_index(["strategy", "k"])
    assert f.loc[("ia3", 5), "n"] == 8 and f.loc[("ia3", 5), "mean"] == pytest.approx(0.6 + 0.05 - 0.09 + 0.0005)


def test_findings_are_generated_from_the_tables(tables):
    lines = methods.findings(tables)
    text = "\n".join(lines)
    assert lines[0].startswith("organamnist (8 seeds): the Pareto front")
    assert "Pareto-best" in text
    small = next(line for line in lines if line.startswith("Negative transfer"))
    # the paper's Full and LoRA are far below Scratch; LoHa (+0.004) is not significantly below: removed
    assert "present for the paper's methods" in small and "Removed" in small and "Pretrain+LoHa (+0.00" in small
    assert "Few-shot retinamnist" in text
    for number in ("0.8", "160,000"):
        assert number in text  # numbers come from the tables


def test_pareto_best_is_the_cheapest_front_member_not_below_the_best(tables):
    # retinamnist: LoHa is the best; IA3 and the linear probe are far below it, so LoHa itself is Pareto-best
    assert methods.pareto_best(tables, "retinamnist") == "loha"


def test_figures_and_views(tables):
    figs = methods.figures(tables)
    assert set(figs) == {"pareto_auroc", "fewshot_methods_retinamnist"}
    assert all(isinstance(f, Figure) for f in figs.values())
    view = methods.comparison_view(tables, "retinamnist")
    assert "Δ vs Pretrain+LoRA" in view.columns and "Holm p (scratch)" in view.columns
    table = methods.task_table(tables, "organamnist")
    assert table.loc[0, "strategy"] == "Scratch" and "AUROC" in table.columns
    with pytest.raises(StmedfmError, match="No transfer rows for task 'bloodmnist'"):
        methods.task_table(tables, "bloodmnist")
    with pytest.raises(StmedfmError, match=r"fig_pareto \(the methods_pareto table\) needs columns strategy"):
        methods.fig_pareto(pd.DataFrame({"task": ["x"]}))
    with pytest.raises(StmedfmError, match="lacks column"):
        methods.summary(pd.DataFrame({"task": []}), pd.DataFrame())


def test_counts_cover_every_registered_strategy():
    pytest.importorskip("peft")
    from stmedfm.core import strategies

    c = inputs.counts()
    assert list(c["strategy"]) == [strategies.label(s) for s in strategies.names()]
    assert c.set_index("strategy").loc["Pretrain+LoRA", "trainable (pathmnist)"] == 4_041


def test_the_study_files_plan_every_registered_strategy():
    """Every strategy of the package (strategies.BUILT_IN; one registered by a user module is not the package's)."""
    from stmedfm.core import strategies

    cfg = StudyConfig.load(ROOT / "params" / "peft_methods.yaml")
    offline = StudyConfig.load(ROOT / "params" / "offline_2d.yaml")  # the reference it reused (2D pretraining)
    assert cfg.study == "peft_methods" and len(cfg.seeds) == 10 and cfg.temperature_scaling
    assert set(cfg.strategies) == set(strategies.BUILT_IN)
    assert set(cfg.fewshot_strategies) == {s for s in strategies.BUILT_IN if strategies.get(s).pretrained}
    assert cfg.fewshot_tasks == {"retinamnist": 10} and cfg.fewshot_k == [1, 5, 10] and cfg.fewshot_splits == 3
    assert not (cfg.class_weight_ablation_tasks or cfg.leave_out_tasks or cfg.extended_tasks)
    for field in ("pretrain_tasks", "downstream_tasks", "pretrain_steps", "finetune_steps_2d", "scratch_steps_2d",
                  "lr_peft", "lora_r", "adapter_bottleneck", "calibration_task"):
        assert getattr(cfg, field) == getattr(offline, field), field
    smoke = StudyConfig.load(ROOT / "params" / "peft_methods_smoke.yaml")
    assert smoke.is_smoke() and len(smoke.seeds) <= 2 and set(smoke.strategies) == set(cfg.strategies)


def test_the_paper_strategies_keep_the_offline_run_ids():
    """The runs peft_methods.yaml shares with params/offline_2d.yaml, the previous reference (scratch/full/lora/adapter/linear probe, few-shot
    full/lora/adapter on retinamnist, and the checkpoints) have the same ids: the same computations."""
    from stmedfm.run.planning import official_data, run_id
    from stmedfm.core.records import plan

    cfg = StudyConfig.load(ROOT / "params" / "peft_methods.yaml")
    offline = StudyConfig.load(ROOT / "params" / "offline_2d.yaml").replace(seeds=cfg.seeds)
    data = official_data(offline)
    ours = {run_id(cfg, p.spec, data) for p in plan(cfg)}
    theirs = {run_id(offline, p.spec, data) for p in plan(offline)}
    assert len(ours & theirs) == 10 * (3 * 5 + 3 * 3 * 3)  # 150 transfer + 270 few-shot runs


def test_the_findings_generator_writes_the_methods_block_from_committed_tables(tables, tmp_path):
    from stmedfm.analysis import findings
    from stmedfm.run.store import ResultStore

    store = ResultStore(tmp_path / "peft_methods")
    store.root.mkdir()
    methods.write_tables(store, tables)
    text = "before\n<!-- stmedfm:methods peft_methods -->\nold\n<!-- /stmedfm -->\nafter\n"
    new = findings.update_markdown(text, tmp_path)
    assert new == ("before\n<!-- stmedfm:methods peft_methods -->\n"
                   + "".join(f"- {line}\n" for line in methods.findings(tables)) + "<!-- /stmedfm -->\nafter\n")
    with pytest.raises(StmedfmError, match="methods_summary.csv' does not exist"):
        findings.methods_block(tmp_path / "nothing")


def test_a_study_reuses_the_runs_and_checkpoints_of_the_same_id(synthetic_dir, tmp_path, capsys):
    """`stmedfm study --reuse STORE`: what another store computed under the same id is taken, not recomputed."""
    import yaml

    from stmedfm import cli
    from stmedfm.run.planning import run_id, study_data
    from stmedfm.core.records import plan
    from stmedfm.run.store import ResultStore

    base = {"workers": 1, "data_dir": str(synthetic_dir), "seeds": 1, "pretrain_tasks": ["bloodmnist"],
            "pretrain_steps": 2, "downstream_tasks": ["bloodmnist"], "scratch_steps_2d": 2, "finetune_steps_2d": 2,
            "fewshot_tasks": {}, "class_weight_ablation_tasks": [], "leave_out_tasks": [], "extended_tasks": [],
            "calibration_task": None}
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({**base, "study": "first", "strategies": ["scratch", "lora"]}))
    second.write_text(yaml.safe_dump({**base, "study": "second", "strategies": ["scratch", "lora", "bitfit"]}))
    assert cli.main(["study", str(first), "--out", str(tmp_path / "a"), "-q"]) == 0
    assert cli.main(["study", str(second), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "reused 2 runs and 1 checkpoints" in out and "0 pretraining jobs and 1 runs" in out
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    cfg = StudyConfig.load(second)
    ids = [run_id(cfg, p.spec, study_data(cfg)) for p in plan(cfg) if p.spec.strategy != "bitfit"]
    assert all(a.read_run(r) == b.read_run(r) for r in ids)
    # the per-image predictions come along (the claims' bootstrap resamples them): same bytes, checked by digest
    assert all(np.array_equal(a.load_predictions(r), b.load_predictions(r)) for r in ids)
    gone = b.predictions_path(ids[0])
    gone.unlink()  # a store that took a run before its predictions were linked gets them on the next --reuse
    assert cli.main(["study", str(second), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a"), "-q"]) == 0
    assert np.array_equal(b.load_predictions(ids[0]), a.load_predictions(ids[0]))
    assert cli.main(["study", str(second), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a result store" in err
    # checked before the store is claimed: a bad --reuse leaves no trace of a new study
    assert cli.main(["study", str(second), "--out", str(tmp_path / "c"), "--reuse", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "c").exists()


def test_pareto_figure_groups_strategies_by_family_and_labels_the_front_without_overlap():
    """Issue 31: at 14 strategies the figure reads by family (one hue each, a legend by family) and names the
    Pareto front's members on the plot, no two labels overlapping (the committed study of every method)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from stmedfm.core import strategies

    pareto = pd.read_csv(ROOT / "results" / "peft_methods" / "methods_pareto.csv")
    fig = methods.fig_pareto(pareto)
    FigureCanvasAgg(fig).draw()
    texts = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    headings = [t for t in texts if t in strategies.FAMILIES]
    assert headings == [f for f in strategies.FAMILIES if f in headings] and len(headings) >= 4
    assert texts.index("weight update") < texts.index("LoRA") < texts.index("rotation")
    renderer = fig.canvas.get_renderer()
    for ax, (task, g) in zip(fig.axes, pareto.groupby("task", sort=False)):
        labels = [c for c in ax.texts]
        front = g[g["front"]]
        assert sorted(t.get_text() for t in labels) == sorted(strategies.label(s).removeprefix("Pretrain+")
                                                               for s in front["strategy"]), task
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, without its leader line
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), task
    for family in ("selective", "weight update"):  # a family shares a hue: its colours are close to each other
        members = [s for s in strategies.BUILT_IN if strategies.get(s).family == family]
        assert len(members) >= 3


def _two(diffs, n=(160_000, 4_000)):
    """Tables of one task where 'lora' (cheaper) differs from 'full' by ``diffs`` on each seed."""
    metrics = [{"experiment": "transfer", "task": "retinamnist", "strategy": s, "seed": i, "metric": "macro_auroc",
                "value": 0.8 + (d if s == "lora" else 0), "k": 0, "fewshot_split": -1}
               for i, d in enumerate(diffs) for s in ("full", "lora")]
    runs = [{"experiment": "transfer", "task": "retinamnist", "strategy": s, "trainable_params": k,
             "total_params": 160_000} for s, k in zip(("full", "lora"), n)]
    metrics = pd.DataFrame(metrics)
    summ = methods.summary(metrics, pd.DataFrame(runs))
    return {"summary": summ, "comparisons": methods.comparisons(metrics, margin=0.01), "pareto": methods.pareto(summ)}


def test_pareto_best_needs_equivalence_not_a_non_significant_difference():
    # noisy: mean -0.005, sd 0.03 over 8 seeds -> Wilcoxon not significant, and no equivalence within 0.01 either
    noisy = _two([-0.04, 0.03, -0.035, 0.025, -0.03, 0.02, -0.01, 0.0])
    row = noisy["comparisons"].iloc[0]
    assert row["p_holm"] > 0.05 and row["p_tost_holm"] > 0.05 and not row["equivalent"]
    assert methods.pareto_best(noisy, "retinamnist") == "full"  # the old rule (not significantly below) said lora
    tight = _two([-0.003, -0.001, -0.002, -0.004, -0.002, -0.003, -0.001, -0.002])  # within 0.01 on every seed
    assert tight["comparisons"].iloc[0]["equivalent"]
    assert methods.pareto_best(tight, "retinamnist") == "lora"


def test_costs_measured_by_the_bench_are_joined_per_strategy(tables):
    metrics, runs = _tables()
    bench = pd.DataFrame({"strategy": ["lora", "ia3"], "train_seconds": [1.5, 1.25], "peak_train_mib": [6.5, 8.25]})
    summ = methods.summary(metrics, runs, bench)
    got = summ[summ["metric"] == "macro_auroc"].set_index(["task", "strategy"])["peak_train_mib"]
    assert got[("retinamnist", "ia3")] == 8.25 and got[("organamnist", "lora")] == 6.5
    assert np.isnan(got[("organamnist", "scratch")])  # not measured: left empty, never guessed
    view = methods.task_table({**tables, "summary": summ}, "retinamnist").set_index("strategy")
    assert view.loc["Pretrain+IA3", "train MiB"] == "8.2" and "train MiB" not in methods.task_table(tables, "retinamnist")


def test_changes_name_exactly_the_conclusions_that_moved(tables):
    same = methods.changes(tables, tables)
    assert not same["changed"].any() and len(same) == len(methods.conclusions(tables))
    moved = {name: frame.copy() for name, frame in tables.items()}
    p = moved["pareto"]
    p.loc[(p["task"] == "organamnist") & (p["strategy"] == "loha"), "mean"] = 0.99  # LoHa now the best
    diff = methods.changes(tables, moved)
    changed = diff[diff["changed"]]
    assert set(changed["conclusion"]) >= {"highest mean AUROC"}
    row = changed[(changed["task"] == "organamnist") & (changed["conclusion"] == "highest mean AUROC")].iloc[0]
    assert (row["value_before"], row["value_after"]) == ("Pretrain+Full", "Pretrain+LoHa")
    assert set(changed["task"]) == {"organamnist"}
