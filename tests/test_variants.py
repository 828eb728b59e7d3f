"""Beyond the paper: budget and data-efficiency experiments, variant studies (stmedfm.analysis.variants), their tables and
figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import stmedfm.run.study as study_mod
import stmedfm.run.train as train_mod
from stmedfm.analysis import variants
from stmedfm.core import paths
from stmedfm.run import runvariants
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.run.planning import official_data, run_id
from stmedfm.core.records import RunSpec, plan
from stmedfm.run.train import run_downstream

PAPER_PRETRAIN = ("pathmnist", "bloodmnist", "dermamnist", "organmnist3d")


def test_new_fields_leave_existing_run_identities_unchanged():
    # ids computed with the code before the data-fraction field existed (git HEAD 9fda786)
    cfg = StudyConfig()
    spec = RunSpec(task="organmnist3d", strategy="full", seed=0, steps=50, lr=1.5e-3, class_weights=True,
                   pretrain=PAPER_PRETRAIN)
    assert "fraction" not in spec.key()
    assert run_id(cfg, spec, official_data(cfg)) == "run-365fc32525974b0c"
    fewshot = RunSpec(task="dermamnist", strategy="lora", seed=2, steps=40, lr=2e-3, class_weights=True,
                      pretrain=PAPER_PRETRAIN, k=5, fewshot_split=1)
    assert run_id(cfg, fewshot, official_data(cfg)) == "run-8ae23f88f27b0bde"
    half = RunSpec(task="dermamnist", strategy="full", seed=0, steps=40, lr=2e-3, class_weights=True, fraction=0.5)
    assert half.key()["fraction"] == 0.5


def test_paper_and_offline_files_plan_no_beyond_runs():
    for name, n in (("paper", 5 * (20 + 2 * 3 * 3 * 3 + 8 + 4 + 2)), ("offline", 20 * (20 + 2 * 3 * 3 * 3 + 16 + 4 + 2))):  # 96 per seed
        cfg = StudyConfig.load(paths.project_root() / "params" / f"{name}.yaml")
        planned = plan(cfg)
        assert len(planned) == n
        assert not {p.experiment for p in planned} & {"budget", "data_efficiency"}
        assert all(p.spec.fraction == 1.0 for p in planned)


def test_budget_and_data_efficiency_plans(synthetic_dir):
    cfg = StudyConfig.from_dict(dict(
        data_dir=str(synthetic_dir), seeds=2, pretrain_tasks=["bloodmnist", "dermamnist"], downstream_tasks=["dermamnist"],
        strategies=["scratch", "full"], fewshot_tasks={}, class_weight_ablation_tasks=[], leave_out_tasks=[],
        extended_tasks=[], calibration_task=None, budget_tasks={"dermamnist": [30, 120, 150]},
        budget_strategies=["scratch", "full", "lora"], data_fraction_tasks=["dermamnist"], data_fractions=[0.1, 1],
        data_fraction_repeats=2, data_fraction_strategies=["scratch", "linear_probe"]))
    planned = plan(cfg)
    budget = [p for p in planned if p.experiment == "budget"]
    frac = [p for p in planned if p.experiment == "data_efficiency"]
    assert len(budget) == 2 * 3 * 3 and len(frac) == 2 * 2 * 2 * 2
    assert {p.variant for p in budget} == {"30 steps", "120 steps", "150 steps"}
    assert {p.variant for p in frac} == {"10 %", "100 %"} and {p.spec.fewshot_split for p in frac} == {0, 1}
    # a budget equal to the standard one is the transfer run (Scratch 150, Full 120): computed once
    transfer = {run_id(cfg, p.spec, official_data(cfg)) for p in planned if p.experiment == "transfer"}
    shared = {run_id(cfg, p.spec, official_data(cfg)) for p in budget} & transfer
    assert len(shared) == 2 * 2
    with pytest.raises(StmedfmError, match="data_fractions"):
        cfg.replace(data_fractions=[0, 0.5])
    with pytest.raises(StmedfmError, match="budget_tasks.dermamnist"):
        cfg.replace(budget_tasks={"dermamnist": [0]})


def test_fraction_runs_train_on_a_stratified_subset_seeded_per_repeat(synthetic_dir, monkeypatch):
    seen = []
    real = train_mod.make_pool

    def recording(cfg, task, indices=None, class_weights=None):
        seen.append(None if indices is None else indices.clone())
        return real(cfg, task, indices, class_weights)

    monkeypatch.setattr(train_mod, "make_pool", recording)
    cfg = StudyConfig(data_dir=str(synthetic_dir), temperature_scaling=False)
    base = dict(task="bloodmnist", strategy="scratch", seed=0, steps=1, lr=2e-3, class_weights=True)
    for split, fraction in ((0, 0.5), (0, 0.5), (1, 0.5), (0, 1.0)):
        run_downstream(cfg, RunSpec(**base, fewshot_split=split, fraction=fraction), None)
    a, again, other, full = seen
    labels = train_mod.D.load_task("bloodmnist", data_dir=synthetic_dir)["train"].labels
    counts = torch.bincount(labels, minlength=8)
    assert len(a) == int(torch.round(counts.double() * 0.5).clamp(min=1).sum())  # 48 images, 6 per class -> 3 each
    assert torch.equal(torch.bincount(labels[a], minlength=8), torch.full((8,), 3))
    assert torch.equal(a, again) and not torch.equal(a, other) and full is None


def _tiny_beyond(tmp_path, make_config) -> variants.VariantStudy:
    common = make_config(seeds=2, pretrain_tasks=["bloodmnist", "dermamnist"], pretrain_steps=3, downstream_tasks=[],
                         temperature_scaling=False, budget_tasks={"dermamnist": [2, 4], "bloodmnist": [2]},
                         budget_strategies=["scratch", "full", "lora"])
    doc = {
        "study": "tiny_beyond", "small_task": "dermamnist", "dominant_task": "bloodmnist", "baseline": "prop",
        "common": common.to_dict(),
        "variants": {"prop": {}, "all": {"task_sampling": "all_tasks"},
                     "frac": {"budget_tasks": {}, "seeds": 1, "data_fraction_tasks": ["dermamnist"],
                              "data_fractions": [0.25, 1.0], "data_fraction_repeats": 2, "scratch_steps_2d": 2,
                              "finetune_steps_2d": 2}},
        "contrasts": [{"hypothesis": "sampling share", "a": "all", "b": "prop"}],
    }
    path = tmp_path / "tiny_beyond.yaml"
    path.write_text(yaml.safe_dump(doc))
    return variants.load(path, out=tmp_path / "results")


@pytest.mark.slow
def test_variant_study_shares_runs_aggregates_and_reads_back(make_config, tmp_path, monkeypatch):
    study = _tiny_beyond(tmp_path, make_config)
    calls = []
    real = study_mod.run_downstream
    monkeypatch.setattr(study_mod, "run_downstream", lambda cfg, spec, state: calls.append(spec) or real(cfg, spec, state))
    tables = runvariants.run(study, workers=1, progress=False)
    # prop: (2 + 1 budgets) x 3 strategies x 2 seeds = 18; all: the same minus its 6 Scratch runs (shared by id);
    # frac: 2 fractions x 2 repeats x 3 strategies x 1 seed = 12
    assert len(calls) == 18 + 12 + 12
    m = tables["metrics"]
    assert list(m.columns[:3]) == ["variant", "run_id", "experiment"] and "setting" in m.columns
    assert set(m["variant"]) == {"prop", "all", "frac"}
    scratch = m[(m["strategy"] == "scratch") & (m["experiment"] == "budget")]
    assert scratch.groupby("run_id")["variant"].nunique().eq(2).all()  # the same Scratch runs in both variants
    assert set(m.loc[m["experiment"] == "data_efficiency", "fraction"]) == {0.25, 1.0}
    comp = tables["comparisons"]
    assert {"transfer:dermamnist", "transfer_by_budget:dermamnist", "hypotheses:dermamnist",
            "transfer:bloodmnist", "rebalancing:bloodmnist", "data_efficiency:dermamnist"} <= set(comp["family"])
    hyp = comp[comp["family"] == "hypotheses:dermamnist"]
    assert len(hyp) == 2 and set(hyp["strategy"]) == {"full", "lora"} and (hyp["n"] == 2).all()
    for fam, sub in comp.groupby("family"):  # Holm within each family
        np.testing.assert_allclose(sub["p_holm"], variants.stats.holm(sub["p_two_sided"]))
    var = tables["variants"].set_index("variant")
    assert var.loc["all", "small_batches"] == 3 and var.loc["prop", "small_share"] == pytest.approx(7007 / (11959 + 7007))
    for name in ("metrics", "variants", "budget_auroc", "data_efficiency_auroc", "comparisons"):
        assert (study.root / f"{name}.csv").is_file()
    assert (study.root / "tables" / "comparisons.md").read_text().count("## ") == comp["family"].nunique()
    assert variants.complete(study)
    calls.clear()
    again = runvariants.results(study, workers=1, progress=False)  # complete: read back, nothing recomputed
    assert calls == [] and len(again["metrics"]) == len(m)
    lines = variants.findings(study, again)
    assert any(line.startswith("Transfer gap on the small task dermamnist") for line in lines)
    assert any("Hypothesis 'sampling share'" in line for line in lines)
    written = variants.write_figures(study, again, out=tmp_path / "fig")
    assert {p.name for p in written} >= {"budget_auroc_dermamnist_sampling_share.png", "data_efficiency.svg",
                                         "hypotheses_dermamnist.png"}
    # the command line resumes the same study (nothing to compute) and writes figures under the project root
    from stmedfm.cli import main

    monkeypatch.setenv("STMEDFM_ROOT", str(tmp_path))
    assert main(["beyond", str(tmp_path / "tiny_beyond.yaml"), "--out", str(study.root), "--workers", "1", "-q"]) == 0
    assert calls == [] and (tmp_path / "figures" / "tiny_beyond" / "data_efficiency.png").is_file()


def test_variants_command_keeps_its_former_name():
    from stmedfm.cli import build_parser, cmd_variants

    for command in ("variants", "beyond"):
        assert build_parser().parse_args([command, "params/beyond.yaml"]).func is cmd_variants


def test_beyond_files_validate():
    study = variants.load(paths.project_root() / "params" / "beyond.yaml")
    assert study.baseline == "proportional" and study.small_task == "retinamnist"
    cfgs = study.configs
    assert cfgs["all_tasks"].task_sampling == "all_tasks" and cfgs["width128"].width == 128
    assert cfgs["proportional"].budget_tasks["retinamnist"] == [30, 60, 120, 240, 450]
    assert all(len(c.seeds) >= 5 for v, c in cfgs.items() if v != "data_efficiency")
    assert cfgs["data_efficiency"].data_fractions == [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    assert all(not c.temperature_scaling for c in cfgs.values())
    smoke = variants.load(paths.project_root() / "params" / "beyond_smoke.yaml")
    assert smoke.name == "beyond_smoke"
    bad = {"variants": {"a": {}}, "contrasts": [{"a": "a", "b": "nope"}]}
    with pytest.raises(StmedfmError, match="names variant 'nope'"):
        variants.load(_write(bad))
    with pytest.raises(StmedfmError, match="Variant 'a'.*pretrain_step"):
        variants.load(_write({"variants": {"a": {"pretrain_step": 3}}}))


def _write(doc) -> str:
    import tempfile

    fh = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(doc, fh)
    fh.close()
    return fh.name


# --- figures --------------------------------------------------------------------------------------------------
def _budget_frame() -> pd.DataFrame:
    rows = []
    for variant, shift in (("proportional", 0.0), ("uniform", 0.05)):
        for strategy, base in (("scratch", 0.60), ("full", 0.65)):
            for steps in (30, 120):
                for seed in range(3):
                    value = base + (shift if strategy != "scratch" else 0) + steps / 1000 + 0.01 * seed
                    rid = f"{'shared' if strategy == 'scratch' else variant}-{strategy}-{steps}-{seed}"
                    rows.append(dict(variant=variant, experiment="budget", task="retinamnist", strategy=strategy,
                                     steps=steps, seed=seed, metric="macro_auroc", value=value, run_id=rid))
    return pd.DataFrame(rows)


def test_budget_figure_draws_means_and_ci_bands():
    from stmedfm.analysis.plots import fig_budget_auroc
    from stmedfm.analysis.tables import ci95

    fig = fig_budget_auroc(_budget_frame(), "retinamnist")
    (ax,) = [a for a in fig.axes if a.get_title() == "Pretrain+Full"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"Scratch", "proportional", "uniform"}  # Scratch once: the variants share its runs
    np.testing.assert_allclose(lines["uniform"].get_ydata(), [0.65 + 0.05 + 0.03 + 0.01, 0.65 + 0.05 + 0.12 + 0.01])
    np.testing.assert_allclose(lines["uniform"].get_xdata(), [30, 120])
    half = ci95([0.0, 0.01, 0.02])
    bands = [c for c in ax.collections if len(c.get_paths())]
    tops = sorted(round(float(b.get_paths()[0].vertices[:, 1].max()), 6) for b in bands)
    assert round(0.65 + 0.05 + 0.12 + 0.01 + half, 6) in tops
    assert ax.get_xscale() == "log"


def test_data_efficiency_figure_has_percent_axis_and_one_line_per_strategy():
    from stmedfm.analysis.plots import fig_data_efficiency

    rows = [dict(variant="de", experiment="data_efficiency", task="bloodmnist", strategy=s, fraction=f, seed=seed,
                 fewshot_split=r, metric="macro_auroc", value=0.5 + f / 2 + (0.1 if s != "scratch" else 0))
            for s in ("scratch", "linear_probe", "full") for f in (0.01, 0.1, 1.0) for seed in range(2) for r in range(2)]
    fig = fig_data_efficiency(pd.DataFrame(rows))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"Scratch", "Pretrained, frozen (linear probe)", "Pretrained, fine-tuned (full)"}
    np.testing.assert_allclose(lines["Scratch"].get_xdata(), [1, 10, 100])
    np.testing.assert_allclose(lines["Scratch"].get_ydata(), [0.505, 0.55, 1.0])
    assert ax.get_xscale() == "log" and "n = 4" in ax.get_title()


def test_each_hypothesis_is_its_own_holm_family_with_verdicts():
    """Gaps built by hand on 8 seeds: v2's gap is v1's + 0.1 (+ i/1000), v3's is v1's - 0.1 (- i/1000). Each
    contrast then has 8 distinct positive (or negative) differences: exact two-sided Wilcoxon p = 2/2**8. Holm
    within 'H1' (2 tests) doubles it; across all 3 tests it would be 3x."""
    seeds = range(8)
    rows = []
    for seed in seeds:
        scratch = 0.6 + 0.01 * seed
        gaps = {"v1": 0.02 * (seed % 3), "v2": 0.02 * (seed % 3) + 0.1 + seed / 1000,
                "v3": 0.02 * (seed % 3) - 0.1 - seed / 1000}
        for v, gap in gaps.items():
            for strategy, value in (("scratch", scratch), ("full", scratch + gap)):
                rows.append(dict(experiment="budget", metric="macro_auroc", task="t", variant=v, strategy=strategy,
                                 seed=seed, steps=10, value=value))
    contrasts = [{"hypothesis": "H1", "a": "v2", "b": "v1"}, {"hypothesis": "H1", "a": "v3", "b": "v1"},
                 {"hypothesis": "H2", "a": "v2", "b": "v3"}]
    study = variants.VariantStudy(name="x", configs={}, small_task="t", dominant_task="", baseline="v1", contrasts=contrasts)
    comp = variants.comparisons(study, pd.DataFrame(rows))
    hyp = comp[comp["family"] == "hypotheses:t"].set_index(["a", "b"])
    p = 2 / 2**8
    assert hyp["p_two_sided"].tolist() == pytest.approx([p, p, p])
    assert hyp["p_holm"].tolist() == pytest.approx([2 * p, 2 * p, p])
    assert hyp["verdict"].tolist() == ["supported", "contradicted", "supported"]
    summary = variants.hypothesis_summary(comp, "t").set_index("hypothesis")
    assert summary.loc["H1", ["supported", "contradicted", "inconclusive", "verdict"]].tolist() == [1, 1, 0, "mixed"]
    assert summary.loc["H2", "verdict"] == "supported" and summary.loc["H2", "n_min"] == 8
    lines = variants.findings(study, {"comparisons": comp})
    h2 = next(line for line in lines if line.startswith("Hypothesis 'H2'"))
    assert "1 tests at 8 seeds" in h2 and "**supported**" in h2 and "v2 vs v3 full +0.207" in h2


def test_a_file_extends_another_without_redefining_its_variants(tmp_path):
    """params/contrasts.yaml reruns beyond.yaml's variants: same variants minus the excluded, contrasts naming an
    excluded variant dropped, `override` applied after each variant's own fields, and the same run ids."""
    study = variants.load("params/contrasts.yaml")
    parent = variants.load("params/beyond.yaml")
    assert list(study.configs) == [v for v in parent.configs if v != "data_efficiency"]
    assert study.contrasts == parent.contrasts and study.small_task == "retinamnist" and study.name == "contrasts"
    for v, cfg in study.configs.items():  # leave_out etc. set their own budget_tasks: override wins
        assert cfg.seeds == list(range(15)) and cfg.budget_tasks == {"retinamnist": [120]}, v
        assert cfg.task_sampling == parent.configs[v].task_sampling and cfg.width == parent.configs[v].width
        ids = {run_id(cfg, p.spec, official_data(cfg)) for p in plan(cfg) if p.spec.seed < 5}
        pc = parent.configs[v]
        assert ids <= {run_id(pc, p.spec, official_data(pc)) for p in plan(pc)}
    (tmp_path / "bad.yaml").write_text("study: x\nextends: params/beyond.yaml\nexclude: [nope]\n")
    with pytest.raises(StmedfmError, match=r"'exclude' must list variants of 'params/beyond.yaml' \(proportional,"):
        variants.load(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text(f"study: x\nextends: {tmp_path / 'loop.yaml'}\n")
    with pytest.raises(StmedfmError, match="extends it back"):
        variants.load(tmp_path / "loop.yaml")
    (tmp_path / "nameless.yaml").write_text("extends: params/beyond.yaml\n")  # never the parent's results folder
    assert variants.load(tmp_path / "nameless.yaml").name == "nameless"
    (tmp_path / "odd.yaml").write_text("extends: params/beyond.yaml\nexclude: [{x: 1}]\n")
    with pytest.raises(StmedfmError, match="'exclude' must list variants of"):
        variants.load(tmp_path / "odd.yaml")
    (tmp_path / "listy.yaml").write_text("study: l\nvariants: [a, b]\n")
    (tmp_path / "child.yaml").write_text(f"study: c\nextends: {tmp_path / 'listy.yaml'}\n")
    with pytest.raises(StmedfmError, match="'variants' must be a mapping"):
        variants.load(tmp_path / "child.yaml")
    (tmp_path / "alone.yaml").write_text("study: x\nexclude: [a]\nvariants: {a: {}}\n")
    with pytest.raises(StmedfmError, match="'exclude' needs 'extends'"):
        variants.load(tmp_path / "alone.yaml")
    from stmedfm.cli import main

    assert main(["config", "params/contrasts.yaml", "--get", "study"]) == 0


@pytest.mark.parametrize("name", ["beyond", "contrasts"])
def test_reanalyse_recomputes_the_comparisons_from_the_committed_metrics(tmp_path, name):
    """The committed variant studies have no run stores; their comparisons come back from metrics.csv alone, equal
    to the committed comparisons.csv (which a test thus ties to the committed measurements and today's analysis);
    a stale export (an earlier analysis, without verdicts) is never what read() shows."""
    import shutil

    study = variants.load(f"params/{name}.yaml", out=tmp_path / name)
    committed_dir = paths.project_root() / "results" / name
    shutil.copytree(committed_dir, study.root, ignore=shutil.ignore_patterns("comparisons.csv", "tables"))
    tables = variants.reanalyse(study)
    committed = pd.read_csv(committed_dir / "comparisons.csv")
    pd.testing.assert_frame_equal(pd.read_csv(study.root / "comparisons.csv"), committed)
    assert (study.root / "tables" / "comparisons.md").read_text() == \
        (committed_dir / "tables" / "comparisons.md").read_text()
    assert set(tables["comparisons"]["verdict"]) <= {"supported", "contradicted", "inconclusive"}
    committed.drop(columns="verdict").to_csv(study.root / "comparisons.csv", index=False)
    assert "verdict" in variants.read(study)["comparisons"]
    (study.root / "metrics.csv").unlink()
    with pytest.raises(StmedfmError, match="No metrics.csv in"):
        variants.reanalyse(study)
