"""LoRA / adapters / strategies: identity at insertion, exact trainable sets, frozen weights, HF peft equivalence."""

from __future__ import annotations

import copy

import pytest
import torch

from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM
from stmedfm.model.peft import (
    Adapter,
    LoRALinear,
    add_adapters,
    add_lora,
    count_parameters,
    parameter_table,
    prepare,
    set_trainable,
)

TASK = "pathmnist"
X2 = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
X3 = torch.randn(2, 1, 28, 28, 28, generator=torch.Generator().manual_seed(2))


def base_model(tasks=(TASK, "organmnist3d"), **kw) -> STMedFM:
    torch.manual_seed(0)
    return STMedFM(list(tasks), **kw).eval()


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def outputs(model):
    return model(X2, TASK), model(X3, "organmnist3d")


def test_lora_is_identity_at_init_then_changes():
    model = base_model()
    before = outputs(model)
    add_lora(model)
    for a, b in zip(before, outputs(model)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 4 and all(m.scaling == 1.0 and m.r == 4 and m.alpha == 4.0 for m in layers)
    with torch.no_grad():
        model.encoder.blocks[0].fc2.lora_B.normal_()
    assert not torch.allclose(before[0], outputs(model)[0])


def test_adapter_is_identity_at_init_then_changes():
    model = base_model()
    before = outputs(model)
    add_adapters(model)
    assert len(model.encoder.adapters) == 2
    for a, b in zip(before, outputs(model)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        model.encoder.adapters[1].up.weight.normal_()
    after = outputs(model)
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_double_insertion_is_refused():
    with pytest.raises(StmedfmError, match="already has LoRA"):
        add_lora(add_lora(base_model()))
    with pytest.raises(StmedfmError, match="already has adapters"):
        add_adapters(add_adapters(base_model()))


def test_prepare_reuses_existing_peft_modules():
    model = prepare(base_model(), "lora", TASK)
    prepare(model, "lora", TASK)  # e.g. after loading a LoRA checkpoint: no second wrap
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4


@pytest.mark.parametrize("strategy", ["scratch", "full"])
def test_trainable_all(strategy):
    model = prepare(base_model(), strategy, TASK)
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}


def test_trainable_lora():
    model = prepare(base_model(), "lora", TASK)
    names = trainable_names(model)
    assert names == {
        n for n, _ in model.named_parameters() if "lora_" in n or "norm" in n or n.startswith(f"heads.{TASK}.")
    }
    assert sum("lora_" in n for n in names) == 8  # A and B of 4 Linears
    assert sum("norm" in n for n in names) == 6  # weight and bias of 3 LayerNorms
    assert not any(n.startswith("heads.organmnist3d") or ".base." in n or "stem" in n for n in names)


def test_trainable_adapter():
    model = prepare(base_model(), "adapter", TASK)
    names = trainable_names(model)
    assert names == {
        n for n, _ in model.named_parameters() if "adapters." in n or "norm" in n or n.startswith(f"heads.{TASK}.")
    }
    assert sum("adapters." in n for n in names) == 8  # down/up weight/bias of 2 adapters


def test_linear_probe_trains_only_head():
    model = prepare(base_model([TASK]), "linear_probe", TASK)
    assert trainable_names(model) == {f"heads.{TASK}.weight", f"heads.{TASK}.bias"}
    assert count_parameters(model)[1] == 64 * 9 + 9


@pytest.mark.parametrize(("strategy", "trainable"), [("lora", 4041 - 384), ("adapter", 5225 - 384)])
def test_ln_affine_false_strategies(strategy, trainable):
    # without affine LayerNorms the 384 LN parameters of Table 4 disappear; everything else is unchanged
    model = prepare(base_model([TASK], ln_affine=False), strategy, TASK)
    assert count_parameters(model)[1] == trainable


def test_set_trainable_errors():
    model = base_model()
    with pytest.raises(StmedfmError, match=r"Unknown adaptation strategy 'lroa'\. Did you mean 'lora'\?"):
        prepare(model, "lroa", TASK)
    with pytest.raises(StmedfmError, match=r"needs LoRA layers"):
        set_trainable(model, "lora", TASK)
    with pytest.raises(StmedfmError, match=r"needs adapters"):
        set_trainable(model, "adapter", TASK)
    with pytest.raises(StmedfmError, match=r"no head for task 'bloodmnist'"):
        set_trainable(model, "full", "bloodmnist")
    from stmedfm.core import strategies

    assert {"scratch", "full", "lora", "adapter", "linear_probe", "bitfit"} <= set(strategies.names())


def test_prepare_adds_missing_head():
    model = prepare(base_model([TASK]), "lora", "dermamnist")
    assert model.heads["dermamnist"].weight.requires_grad and not model.heads[TASK].weight.requires_grad


@pytest.mark.parametrize("strategy", ["lora", "adapter", "linear_probe"])
def test_optimisation_step_changes_only_trainable(strategy):
    model = prepare(base_model([TASK]), strategy, TASK).train()
    if strategy == "lora":  # B=0 gives A no gradient at init; perturb so every trainable parameter moves
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, LoRALinear):
                    m.lora_B.normal_(std=0.1)
    elif strategy == "adapter":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, Adapter):
                    m.up.weight.normal_(std=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(X2, TASK), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # bit-identical
            assert p.grad is None, n


@pytest.mark.parametrize("alpha", [4.0, 8.0])
def test_matches_hf_peft(alpha):
    hf_peft = pytest.importorskip("peft")
    ours = base_model()
    plain = copy.deepcopy(ours)
    add_lora(ours, r=4, alpha=alpha)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=gen) * 0.2)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.2)

    config = hf_peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=["fc1", "fc2"], lora_dropout=0.0, bias="none")
    theirs = hf_peft.get_peft_model(plain, config).eval()
    inner = theirs.get_base_model()
    with torch.no_grad():
        for i, block in enumerate(ours.encoder.blocks):
            for name in ("fc1", "fc2"):
                mine, hf = getattr(block, name), getattr(inner.encoder.blocks[i], name)
                assert hf.lora_A["default"].weight.shape == mine.lora_A.shape  # (r, in)
                assert hf.lora_B["default"].weight.shape == mine.lora_B.shape  # (out, r)
                assert hf.scaling["default"] == mine.scaling
                hf.lora_A["default"].weight.copy_(mine.lora_A)
                hf.lora_B["default"].weight.copy_(mine.lora_B)

    with torch.no_grad():
        for task, x in ((TASK, X2), ("organmnist3d", X3)):
            mine_out, hf_out = ours(x, task), theirs(x, task)
            assert not torch.allclose(mine_out, base_model()(x, task), atol=1e-4), "LoRA had no effect"
            torch.testing.assert_close(mine_out, hf_out, rtol=0, atol=1e-6)

    hf_lora = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n and p.requires_grad)
    our_lora = sum(p.numel() for n, p in ours.named_parameters() if "lora_" in n)
    assert hf_lora == our_lora == 3072  # 4 Linears * r * (64 + 128)


def test_bitfit_counts_by_hand():
    """BitFit, registered in stmedfm.core.strategies alone: every bias + the LayerNorms + the head (issue 19).

    Biases: 2D stem 32 + 64 + 64, 3D stem 16 + 32 + 64, encoder fc1/fc2 2 x (128 + 64) = 656; LayerNorms 3 x 2 x 64 =
    384 (their biases counted once); head 64 C + C. Trainable = 1,040 + 65 C (both stems count, as in Table 4).
    """
    table = parameter_table(strategies=["full", "bitfit"]).set_index(["task", "strategy"])
    for task, classes in {"pathmnist": 9, "bloodmnist": 8, "dermamnist": 7, "organmnist3d": 11}.items():
        assert table.loc[(task, "bitfit"), "trainable"] == 1_040 + 65 * classes
        assert table.loc[(task, "bitfit"), "total"] == table.loc[(task, "full"), "total"]  # inserts nothing


def test_every_registered_strategy_trains_from_the_registry():
    from stmedfm.core import strategies
    from stmedfm.model import STMedFM

    for name in strategies.names():
        model = prepare(STMedFM(["bloodmnist"]), name, "bloodmnist")
        assert any(p.requires_grad for p in model.heads["bloodmnist"].parameters()), name
    with pytest.raises(StmedfmError, match="already registered"):
        strategies.register(strategies.Strategy("lora", "again"))


@pytest.mark.slow
def test_a_study_runs_a_registered_strategy_end_to_end(make_config, tmp_path):
    from stmedfm.run.study import run_study

    cfg = make_config(study="bitfit", strategies=["scratch", "bitfit"])
    runs = run_study(cfg, out=tmp_path / "s", progress=False).table("runs").set_index("strategy")
    assert runs.loc["bitfit", "trainable_params"] == 1_040 + 65 * 8
    assert runs.loc["bitfit", "lr"] == cfg.lr_peft and runs.loc["bitfit", "pretrain"] == "bloodmnist"


def test_table4_counts_the_model_the_study_trains_ln_affine_and_sizes_included():
    """Issue 32: parameter_table ignored ln_affine (params/beyond.yaml's variant with ln_affine: false showed the
    counts of another model); every count now comes from the options that shape the trained model."""
    from stmedfm.run import train
    from stmedfm.core.config import StudyConfig

    cfg = StudyConfig.from_dict({"ln_affine": False, "lora_r": 8, "adapter_bottleneck": 8})
    table = parameter_table(["bloodmnist"], ["scratch", "lora", "adapter"], **cfg.count_options())
    for strategy in ("scratch", "lora", "adapter"):
        model = prepare(train.build_model(cfg, ["bloodmnist"], 0), strategy, "bloodmnist", lora_r=cfg.lora_r,
                        lora_alpha=cfg.lora_alpha, adapter_bottleneck=cfg.adapter_bottleneck)
        row = table[table["strategy"] == strategy].iloc[0]
        assert (row["total"], row["trainable"]) == count_parameters(model), strategy
    default = parameter_table(["bloodmnist"], ["scratch"]).iloc[0]["total"]
    assert table[table["strategy"] == "scratch"].iloc[0]["total"] == default - 3 * 2 * 64  # 3 LayerNorms (2 blocks + final), no affine
