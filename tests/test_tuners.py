"""Issue 32, outcome 2: one method object per adaptation method (stmedfm/core/tuners/). A method of new pieces is one
module + one registration; a run's identity holds only its own method's non-default options; every parameter count
is the built model's; no strategy list is written out outside the registry."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from stmedfm.core import options, strategies
from stmedfm.core.config import StudyConfig
from stmedfm.core.errors import StmedfmError
from stmedfm.model.peft import count_parameters, parameter_table
from stmedfm.run.planning import official_data, run_id
from stmedfm.core.records import plan

ROOT = Path(__file__).resolve().parents[1]
#: The modules allowed to write strategy names out as a list: the registry and the method objects.
REGISTRY_MODULES = {"stmedfm/core/strategies.py"}


def docs_gate() -> str:
    """The module of docs/strategies.md's method of new pieces (a gate), verbatim."""
    return re.search(r"```python\n# mygate.py[^\n]*\n(.*?)```", (ROOT / "docs" / "strategies.md").read_text(),
                     re.S).group(1)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(strategies, "REGISTRY", dict(strategies.REGISTRY))
    return strategies.REGISTRY


def ids(cfg, data):
    return {(p.experiment, p.spec.strategy, p.spec.task, p.spec.seed): run_id(cfg, p.spec, data) for p in plan(cfg)}


def test_lora_r_renames_lora_runs_and_never_scratchs():
    cfg = StudyConfig.load(ROOT / "params" / "peft_methods.yaml", {"seeds": 1})
    data = official_data(cfg)
    before = ids(cfg, data)
    for changed in ({"lora_r": 8}, {"strategy_options": {"lora": {"r": 8}}}):
        after = ids(cfg.replace(**changed), data)
        renamed = {k[1] for k in before if before[k] != after[k]}
        # lora_r is the shared default of every method with a rank; strategy_options.lora is LoRA's alone
        assert renamed == ({"lora"} if "strategy_options" in changed else
                           {s for s in cfg.strategies if "r" in options.declared(s) and s not in ("vera", "oft")})
        assert "scratch" not in renamed and "full" not in renamed and "lora" in renamed
    bottleneck = ids(cfg.replace(adapter_bottleneck=8), data)
    assert {k[1] for k in before if before[k] != bottleneck[k]} == {"adapter"}


@pytest.mark.slow  # ~25 s per value on 2 Xeon cores: 15 strategies built twice, peft injection included
@pytest.mark.parametrize("ln_affine", [True, False])
def test_every_table_count_is_the_count_of_the_model_training_builds(ln_affine):
    """Every registered strategy, non-default LoRA rank, adapter bottleneck and VeRA rank: the table's counts are the
    trainable/total parameters of the model stmedfm.run.train builds for the run (not a second computation)."""
    pytest.importorskip("peft")
    from stmedfm.run import train
    from stmedfm.model import STMedFM

    cfg = StudyConfig.from_dict({"ln_affine": ln_affine, "lora_r": 8, "adapter_bottleneck": 8,
                                 "strategies": list(strategies.BUILT_IN),
                                 "strategy_options": {"vera": {"r": 32}, "lora": {"r": 2, "alpha": 2}}})
    shown = [s for s in strategies.names() if ln_affine or s != "ln_tuning"]
    table = parameter_table(["bloodmnist"], shown, **cfg.count_options()).set_index("strategy")
    specs = {p.spec.strategy: p.spec for p in plan(cfg) if p.experiment == "transfer" and p.spec.task == "bloodmnist"}
    for name in strategies.names():
        spec = specs[name]
        if name == "ln_tuning" and not ln_affine:  # nothing to copy: refused in one line (peft raised AttributeError)
            with pytest.raises(StmedfmError, match="ln_affine: false does not have"):
                parameter_table(["bloodmnist"], [name], **cfg.count_options())
            continue
        checkpoint = STMedFM(list(spec.pretrain), width=cfg.width, ln_affine=ln_affine).state_dict()
        model = train.downstream_model(cfg, spec, checkpoint if spec.pretrain else None)
        assert tuple(table.loc[name, ["total", "trainable"]]) == count_parameters(model), name
    lora = table.loc["lora", "trainable"] - table.loc["linear_probe", "trainable"]
    assert lora == 4 * 2 * (64 + 128) + (384 if ln_affine else 0)  # its own r=2, not the shared lora_r=8
    assert table.loc["dora", "trainable"] > table.loc["lora", "trainable"]  # DoRA takes the shared r=8


@pytest.mark.slow  # ~10 s: plans a study and trains 2 steps
def test_a_method_of_new_pieces_is_one_module_and_one_registration(registry, make_config, tmp_path, monkeypatch):
    """docs/strategies.md's gate, registered in one module: validated options, planned, trained 2 steps."""
    from stmedfm.run import train

    (tmp_path / "mygate.py").write_text(docs_gate())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mygate", raising=False)
    cfg = make_config(strategies_module="mygate", strategies=["scratch", "gate"])
    assert options.resolve(cfg, "gate") == {"lr": cfg.lr_peft, "init": 1.0}
    with pytest.raises(StmedfmError, match=r"'strategy_options.gate.init' must be a number > 0"):
        make_config(strategies_module="mygate", strategies=["scratch", "gate"],
                    strategy_options={"gate": {"init": -1}})
    tuned = make_config(strategies_module="mygate", strategies=["scratch", "gate"],
                        strategy_options={"gate": {"init": 0.5}})
    data = official_data(cfg)
    a, b = ids(cfg, data), ids(tuned, data)
    assert {k[1] for k in a} == {"scratch", "gate"} and {k[1] for k in a if a[k] != b[k]} == {"gate"}
    spec = next(p.spec for p in plan(tuned) if p.spec.strategy == "gate")
    pretrained = train.build_model(tuned, list(spec.pretrain), 0).state_dict()
    model = train.downstream_model(tuned, spec, pretrained)
    gate = model.encoder.norm[1].scale
    assert gate.requires_grad and float(gate[0].detach()) == 0.5
    assert count_parameters(model)[1] == 64 + 384 + 65 * 8  # gate + LayerNorms + head, by hand
    result = train.run_downstream(tuned.replace(finetune_steps_2d=2), spec, pretrained)
    assert result.trainable_params == 64 + 384 + 65 * 8


def strategy_lists(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            written = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
            if len(written) >= 2:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_strategy_list_outside_the_registry():
    """Every list of strategies derives from the registry (strategies.PAPER, PAPER_PRETRAINED, where(...))."""
    names = set(strategies.names())
    found = [hit for p in sorted((ROOT / "stmedfm").rglob("*.py"))
             if str(p.relative_to(ROOT)) not in REGISTRY_MODULES for hit in strategy_lists(p, names)]
    assert not found, "strategy lists written out (derive them from stmedfm.core.strategies):\n" + "\n".join(found)
    # the check can fail: the registry's own lists (PAPER, ...) are found
    assert strategy_lists(ROOT / "stmedfm" / "core" / "strategies.py", names)
