"""Per-strategy options (stmedfm.core.options, issue 28): one place, validated against the strategy's own options, and
a run's identity holds only its own strategy's non-default options (every existing run id stays valid)."""

import dataclasses

import pandas as pd
import pytest

from stmedfm.core import options, paths, strategies
from stmedfm.cli import main
from stmedfm.core.config import StudyConfig, parse_overrides
from stmedfm.core.errors import StmedfmError
from stmedfm.run.planning import official_data, run_id
from stmedfm.core.records import plan
from stmedfm.core.tuners import hf

ROOT = paths.project_root()


@pytest.mark.parametrize("study", ["offline", "peft_methods"])
def test_run_ids_of_committed_stores_are_unchanged(study):
    """Every committed run of results/<study> keeps its id: options at their defaults add nothing to identities."""
    cfg = StudyConfig.load(ROOT / "results" / study / "config.yaml")
    committed = set(pd.read_csv(ROOT / "results" / study / "runs.csv")["run_id"])
    data = official_data(cfg)
    ids = {run_id(cfg, p.spec, data) for p in plan(cfg)}
    assert committed and committed <= ids
    # restating every default in strategy_options changes nothing either
    restated = {s: options.resolve(cfg, s) for s in cfg.strategies}
    same = cfg.replace(strategy_options=restated)
    assert {run_id(same, p.spec, data) for p in plan(same)} == ids


def test_an_option_renames_only_its_own_strategys_runs():
    cfg = StudyConfig.load(ROOT / "params" / "peft_methods.yaml", {"seeds": 1})
    data = official_data(cfg)

    def ids(c):
        return {(p.experiment, p.spec.strategy, p.spec.task, p.spec.k, p.spec.fewshot_split): run_id(c, p.spec, data)
                for p in plan(c)}

    before = ids(cfg)
    after = ids(cfg.replace(strategy_options={"vera": {"r": 32}, "lora": {"lr": 0.01}}))
    changed = {k[1] for k in before if before[k] != after[k]}
    assert changed == {"vera", "lora"}
    tuned = cfg.replace(strategy_options={"vera": {"lr": 0.02}})
    assert tuned.lr("vera") == 0.02 and tuned.lr("ia3") == cfg.lr_peft == 0.002
    assert {p.spec.lr for p in plan(tuned) if p.spec.strategy == "vera"} == {0.02}


def test_a_strategys_options_reach_training():
    cfg = StudyConfig.from_dict({"strategy_options": {"vera": {"r": 32}, "lora": {"r": 8, "alpha": 16},
                                                      "adapter": {"bottleneck": 4}}})
    assert options.resolve(cfg, "lora") == {"lr": 0.002, "r": 8, "alpha": 16.0}
    assert options.resolve(cfg, "adapter") == {"lr": 0.002, "bottleneck": 4}
    assert options.resolve(cfg, "oft") == {"lr": 0.002, "r": 0, "oft_block_size": 16}  # registered values
    assert dict(options.peft_method(cfg, "vera").options) == {"r": 32}
    assert options.peft_method(cfg, "lora") is None and options.overrides(cfg, "dora") == {}


def test_declared_ranks_are_those_of_peft():
    """PEFT_RANKED names the configs with a rank and a scaling field exactly as peft's dataclasses have them."""
    peft = pytest.importorskip("peft")
    for name in {s.peft.config for s in strategies.REGISTRY.values() if s.peft is not None}:
        fields = {f.name for f in dataclasses.fields(getattr(peft, name))}
        expected = tuple(k for k, present in (("r", "r" in fields), ("alpha", bool({"lora_alpha", "alpha"} & fields)))
                         if present)
        assert hf.PEFT_RANKED.get(name, ()) == expected, name


@pytest.mark.parametrize("values, message", [
    ({"strategy_options": {"lora": {"bottleneck": 8}}},
     "Strategy 'lora' has no option 'bottleneck'. 'bottleneck' is an option of adapter. Its options: lr, r, alpha."),
    ({"strategy_options": {"lora": {"alpah": 8}}}, "Strategy 'lora' has no option 'alpah'. Did you mean 'alpha'?"),
    ({"strategy_options": {"vra": {"lr": 0.02}}}, "Unknown strategy 'vra' in 'strategy_options'. Did you mean 'vera'?"),
    ({"strategy_options": {"vera": {"lr": 0}}}, "'strategy_options.vera.lr' must be a number > 0, got 0."),
    ({"strategy_options": {"lora": {"r": 2.5}}}, "'strategy_options.lora.r' must be an integer > 0, got 2.5."),
    ({"strategy_options": {"lora": 3}}, "'strategy_options.lora' must be a mapping of option: value"),
    ({"strategy_options": [1]}, "Parameter 'strategy_options' must be a mapping of strategy to its options"),
    ({"lr_grid": {"lora": [0.01, -0.1]}, "lr_selection_seeds": [100]},
     "'lr_grid.lora' holds learning rates, which must be positive numbers; got -0.1."),
    ({"lr_grid": {"lora": [0.01, 0]}, "lr_selection_seeds": [100]}, "must be positive numbers; got 0."),
    ({"lr_grid": {"lorra": [0.01, 0.1]}, "lr_selection_seeds": [100]}, "Unknown strategy 'lorra' in 'lr_grid'."),
    ({"lr_grid": {"bitfit": [0.01, 0.1]}, "lr_selection_seeds": [100]}, "'lr_grid' names 'bitfit', which is not in"),
    ({"lr_grid": {"lora": [0.01, 0.1]}}, "'lr_grid' needs 'lr_selection_seeds'"),
    ({"lr_grid": {"lora": [0.01, 0.1]}, "lr_selection_seeds": [0, 100]},
     "'lr_selection_seeds' and 'seeds' share 0: selection seeds must be disjoint"),
    ({"equivalence_margin": 0}, "Parameter 'equivalence_margin' is a difference of AUROC in (0, 1), got 0.0."),
])
def test_bad_options_are_one_clear_line(values, message):
    with pytest.raises(StmedfmError) as err:
        StudyConfig.from_dict(values)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_bad_options_stop_the_command_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["study", "params/smoke.yaml", "--out", str(out), "-p", "strategy_options={lora: {bottleneck: 8}}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["stmedfm: error: Strategy 'lora' has no option 'bottleneck'. 'bottleneck' is "
                                        "an option of adapter. Its options: lr, r, alpha."]
    assert not out.exists()


def test_grids_read_as_users_write_them():
    cfg = StudyConfig.load(ROOT / "params" / "smoke.yaml", parse_overrides(
        ["lr_grid={lora: [1e-3, 1e-2], scratch: default}", "lr_selection_seeds=[100, 101]",
         "strategy_options={vera: {lr: 2e-2}}"]))
    assert cfg.lr_grid == {"lora": [0.001, 0.01], "scratch": [0.000667, 0.002, 0.006]}
    assert cfg.strategy_options == {"vera": {"lr": 0.02}}
    every = StudyConfig.from_dict({"lr_grid": "default", "lr_selection_seeds": [100]})
    assert every.lr_grid["lora"] == [0.001, 0.00316, 0.01, 0.0316, 0.1]
    assert every.lr_grid["full"] == [0.0005, 0.0015, 0.0045] and list(every.lr_grid) == every.strategies
    assert StudyConfig.from_dict(every.to_dict()).lr_grid == every.lr_grid  # config.yaml round-trips


@pytest.mark.slow
def test_options_change_the_trained_model():
    from stmedfm.model.peft import count_parameters
    from stmedfm.core.records import RunSpec
    from stmedfm.run.train import build_model, downstream_model

    base = StudyConfig.load(ROOT / "params" / "smoke.yaml")
    state = build_model(base, ["bloodmnist"], 0).state_dict()

    def trainable(cfg, strategy):
        spec = RunSpec("bloodmnist", strategy, 0, 1, cfg.lr(strategy), True, pretrain=("bloodmnist",))
        return count_parameters(downstream_model(cfg, spec, state))[1]

    tuned = base.replace(strategy_options={"lora": {"r": 8}, "adapter": {"bottleneck": 32}, "vera": {"r": 32}})
    # LoRA: r x (in + out) = r x 192 per Linear, 4 Linears (64->128, 128->64 in 2 blocks): 4 more ranks each
    assert trainable(tuned, "lora") - trainable(base, "lora") == 4 * 4 * 192
    # adapters: 2 blocks x (64 x b + b + b x 64 + 64): +16 bottleneck = +2 x 16 x 129
    assert trainable(tuned, "adapter") - trainable(base, "adapter") == 2 * 16 * 129
    assert trainable(tuned, "vera") - trainable(base, "vera") == 4 * (32 - 64)  # VeRA trains d (r) per Linear
