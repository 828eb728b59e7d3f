"""stmedfm.analysis.fair on hand-made tidy tables: the claims at every budget, at equal in-task steps (interpolated in
log steps), on held-out tasks, with their verdicts (paired test or TOST)."""

import numpy as np
import pandas as pd
import pytest

from stmedfm.analysis import fair
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError

SEEDS = range(8)
JITTER = [0.001, -0.002, 0.0015, -0.001, 0.002, -0.0015, 0.0005, -0.0005]  # per seed, so differences are not constant


def _budget(values: dict[tuple[str, int], float], task="retinamnist") -> list[dict]:
    return [{"experiment": "budget", "variant": f"{steps} steps", "task": task, "strategy": s, "steps": steps,
             "seed": seed, "metric": "macro_auroc", "value": v + (JITTER[seed] if s != "scratch" else 0)}
            for (s, steps), v in values.items() for seed in SEEDS]


ROLE = {"dominant": "organamnist", "small": "retinamnist"}


def test_each_claim_is_tested_at_every_budget():
    metrics = pd.DataFrame(_budget({("scratch", 30): 0.60, ("full", 30): 0.55, ("lora", 30): 0.552,
                                    ("scratch", 300): 0.70, ("full", 300): 0.75, ("lora", 300): 0.60}))
    out = fair.budget_contrasts(metrics, ROLE, margin=0.01)
    assert set(out["family"]) == {"budget:retinamnist:30", "budget:retinamnist:300"}
    at = out.set_index(["steps", "label"])
    # on the small task Full - Scratch tests negative transfer: supported at 30 steps, contradicted at 300
    assert at.loc[(30, "full - scratch"), "claim"] == "negative transfer"
    assert at.loc[(30, "full - scratch"), "mean_diff"] == pytest.approx(-0.05)
    assert at.loc[(30, "full - scratch"), "verdict"] == "supported"  # 8 of 8 seeds: Wilcoxon p 2/2^8, x 3 (Holm) < 0.05
    assert at.loc[(300, "full - scratch"), "verdict"] == "contradicted"
    # LoRA - Full is an equivalence claim: within 0.01 at 30 steps (TOST), far outside at 300
    assert at.loc[(30, "lora - full"), "claim"] == "PEFT keeps the gain"
    assert at.loc[(30, "lora - full"), "equivalent"] and at.loc[(30, "lora - full"), "verdict"] == "supported"
    # 0.15 below Full on 8 of 8 seeds, the interval wholly outside +-0.01: the claim is contradicted (stats.equivalence_verdict)
    assert at.loc[(300, "lora - full"), "verdict"] == "contradicted"


def test_equal_in_task_steps_interpolate_scratch_in_log_steps():
    metrics = pd.DataFrame(_budget({("scratch", 10): 0.60, ("scratch", 1000): 0.80, ("full", 10): 0.75,
                                    ("full", 1000): 0.85}))
    # 10 + 90 = 100 steps: halfway between 10 and 1000 in log steps -> Scratch 0.70
    out = fair.in_task_contrasts(metrics, {"retinamnist": 90.0}, ROLE, margin=0.01)
    assert out["label"].tolist() == ["full@10 - scratch@100"]  # 1000 + 90 lies beyond the grid: left out
    assert out.loc[0, "mean_diff"] == pytest.approx(0.75 - 0.70) and out.loc[0, "n"] == 8
    assert out.loc[0, "family"] == "in-task:retinamnist" and out.loc[0, "claim"] == "negative transfer"
    assert fair.in_task_contrasts(metrics, {}, ROLE, margin=0.01).empty  # no pretraining steps: nothing to match


def test_held_out_transfer_against_scratch_and_the_full_checkpoint():
    rows = []
    for seed in SEEDS:
        for experiment, variant, strategy, v in (("transfer", "", "scratch", 0.70),
                                                 ("leave_out", "all tasks", "full", 0.66),
                                                 ("leave_out", "without retinamnist", "full", 0.665)):
            rows.append({"experiment": experiment, "variant": variant, "task": "retinamnist", "strategy": strategy,
                         "seed": seed, "metric": "macro_auroc", "value": v + (JITTER[seed] if variant else 0)})
    out = fair.held_out_contrasts(pd.DataFrame(rows), margin=0.01).set_index("label")
    assert out.loc["full (held out) - scratch", "mean_diff"] == pytest.approx(-0.035)
    assert out.loc["full (held out) - scratch", "verdict"] == "contradicted"
    same = out.loc["full (held out) - full (all tasks)"]
    assert same["mean_diff"] == pytest.approx(0.005) and same["claim"] == "held-out transfer matches"
    assert same["p_tost"] < 0.05  # 0.005 +- 0 (the jitter cancels): inside the margin


def test_roles_by_parameters():
    cfg = StudyConfig.from_dict({"pretrain_tasks": ["organamnist", "bloodmnist"],
                                 "downstream_tasks": ["organamnist", "bloodmnist", "retinamnist"],
                                 "leave_out_tasks": ["organamnist"], "calibration_task": None,
                                 "fewshot_tasks": {}, "class_weight_ablation_tasks": [], "extended_tasks": [],
                                 "claim_roles": {"small": "retinamnist"}})
    role = fair.roles(cfg)
    assert (role["dominant"], role["small"]) == ("organamnist", "retinamnist")  # small: not a pretraining task
    with pytest.raises(StmedfmError, match="'claim_roles.small' is 'pathmnist', which is not a downstream task"):
        cfg.replace(claim_roles={"small": "pathmnist"})
    with pytest.raises(StmedfmError, match="Unknown claim role 'smal' in 'claim_roles'. Did you mean 'small'?"):
        cfg.replace(claim_roles={"smal": "retinamnist"})


def test_budget_curves_figure_shifts_full_by_its_in_task_steps():
    from stmedfm.analysis.plots import fig_budget_curves

    metrics = pd.DataFrame(_budget({("scratch", 10): 0.60, ("scratch", 1000): 0.80, ("full", 10): 0.75,
                                    ("full", 1000): 0.85}))
    fig = fig_budget_curves(metrics, pretrain_steps={"retinamnist": 90.0})
    lines = {ln.get_label(): ln.get_xdata() for ln in fig.axes[0].get_lines()}
    assert np.allclose(lines["Pretrain+Full at its in-task steps (+ pretraining's)"], [100, 1090])
    assert np.allclose(lines["Scratch"], [10, 1000])


def test_the_roles_a_study_may_name_are_the_reports():
    from stmedfm.core import options
    from stmedfm.analysis.report import claim_roles

    assert set(options.CLAIM_ROLES) == set(claim_roles(StudyConfig()))


@pytest.mark.slow
def test_a_fair_study_end_to_end(make_config, tmp_path, capsys):
    """Budgets and leave-one-task-out on the synthetic files, then `stmedfm fair`: its tables and figure."""
    from stmedfm.cli import main
    from stmedfm.run.study import run_study

    cfg = make_config(seeds=[0, 1], pretrain_tasks=["bloodmnist", "dermamnist"], pretrain_steps=4,
                      downstream_tasks=["bloodmnist", "dermamnist"], strategies=["scratch", "full"],
                      budget_tasks={"dermamnist": [2, 4]}, budget_strategies=["scratch", "full"],
                      leave_out_tasks=["bloodmnist", "dermamnist"], leave_out_strategies=["full"],
                      claim_roles={"dominant": "bloodmnist", "small": "dermamnist"})
    store = run_study(cfg, out=tmp_path / "fair", progress=False)
    assert main(["fair", str(store.root), "--out", str(tmp_path / "figs")]) == 0
    contrasts = pd.read_csv(store.root / "fair_contrasts.csv")
    families = set(contrasts["family"])
    assert {"budget:dermamnist:2", "budget:dermamnist:4", "held-out:bloodmnist", "held-out:dermamnist"} <= families
    assert (contrasts["n"] == 2).all() and {"p_tost", "p_tost_holm", "equivalent", "verdict"} <= set(contrasts.columns)
    assert set(pd.read_csv(store.root / "fair_budget.csv")["steps"]) == {2, 4}
    assert (tmp_path / "figs" / "budget_curves.png").is_file()
