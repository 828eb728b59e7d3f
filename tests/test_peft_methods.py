"""Hugging Face peft methods as strategies (issue 22): counts by hand, identity at insertion, exact trainable sets,
frozen stems, round-trips through a state dict and through stmedfm.run.inference.load_model."""

from __future__ import annotations

import io

import pytest
import torch

from stmedfm.core import strategies
from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM
from stmedfm.model.peft import GROUPS, count_parameters, parameter_table, prepare, set_trainable

pytest.importorskip("peft")

TASK = "pathmnist"
X2 = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
X3 = torch.randn(2, 1, 28, 28, 28, generator=torch.Generator().manual_seed(2))
PEFT_METHODS = [s.name for s in strategies.REGISTRY.values() if s.peft is not None]
CLASSES = {"pathmnist": 9, "bloodmnist": 8, "dermamnist": 7, "organmnist3d": 11}

# --- Table 4 by hand --------------------------------------------------------------------------------------------
# The encoder's 4 Linears: fc1 64 -> 128 and fc2 128 -> 64 in each of 2 blocks. (in, out) of each:
LINEARS = [(64, 128), (128, 64), (64, 128), (128, 64)]
R = 4  # the paper's LoRA rank (lora_r), which the low-rank peft methods share
LAYERNORMS = 3 * 2 * 64  # 2 pre-LN blocks + the final LayerNorm, weight and bias of width 64 each


def head(classes: int) -> int:
    return 64 * classes + classes


def method_parameters() -> dict[str, int]:
    """Each method's own trainable parameters, from its definition (no code of the package or of peft)."""
    lora = sum(R * (i + o) for i, o in LINEARS)  # A (r x in) + B (out x r) per Linear: 3,072
    # DoRA = LoRA + one magnitude per output feature of each Linear (the column norms of W + BA)
    dora = lora + sum(o for _, o in LINEARS)  # 3,072 + 384 = 3,456
    # VeRA at rank 64: per Linear a vector d (r) and a vector b (out); the shared random A (64 x 128) and B (128 x 64)
    # are frozen buffers, so neither trainable nor counted as parameters
    vera = sum(64 + o for _, o in LINEARS)  # 2 x (64 + 128) + 2 x (64 + 64) = 640
    # IA3, feed-forward convention: fc1 scales its output (128), fc2 (the feed-forward module) its input (128)
    ia3 = 2 * (128 + 128)  # 512
    # LoHa: dW = (W1a W1b) * (W2a W2b), two rank-r pairs, i.e. twice LoRA's factors per Linear
    loha = sum(2 * R * (i + o) for i, o in LINEARS)  # 6,144
    # LoKr: dW = W1 kron W2; each dimension split into near-square factors (64 = 8 x 8, 128 = 8 x 16). W1 is
    # (out_a x in_a) = 8 x 8 in full; W2 (out_b x in_b) = 16 x 8 (fc1) or 8 x 16 (fc2) is low-rank, W2a W2b with rank
    # r, because r = 4 < max(out_b, in_b) / 2 = 8: fc1: 8*8 + 16*4 + 4*8 = 160; fc2: 8*8 + 8*4 + 4*16 = 160
    lokr = 2 * (8 * 8 + 16 * R + R * 8) + 2 * (8 * 8 + 8 * R + R * 16)  # 640
    # OFT, blocks of 16 of the input space: each block a skew-symmetric 16 x 16 matrix, 16 * 15 / 2 = 120 free
    # entries; fc1 has 64 / 16 = 4 blocks, fc2 128 / 16 = 8
    oft = 2 * (4 + 8) * (16 * 15 // 2)  # 2,880
    # HRA: r Householder vectors of the input dimension per Linear
    hra = sum(R * i for i, _ in LINEARS)  # 4 * (64 + 128 + 64 + 128) = 1,536
    # FourierFT: 768 spectral coefficients per Linear (the frequencies are fixed, regenerated from a seed)
    fourierft = 4 * 768  # 3,072
    # LN-tuning: a trained copy of each LayerNorm (the original is frozen and kept, so the total grows by as much)
    ln_tuning = LAYERNORMS
    return {"dora": dora, "vera": vera, "ia3": ia3, "loha": loha, "lokr": lokr, "oft": oft, "hra": hra,
            "fourierft": fourierft, "ln_tuning": ln_tuning}


def test_every_peft_method_is_counted_by_hand():
    table = parameter_table(strategies=["full", *PEFT_METHODS]).set_index(["task", "strategy"])
    own = method_parameters()
    assert set(own) == set(PEFT_METHODS)
    for task, classes in CLASSES.items():
        full = table.loc[(task, "full"), "total"]
        for name, n in own.items():
            # the paper's convention: the method's parameters + every LayerNorm + the head; LN-tuning's method
            # parameters are the LayerNorm copies themselves, so it adds nothing beside them
            ln = 0 if name == "ln_tuning" else LAYERNORMS
            assert table.loc[(task, name), "trainable"] == n + ln + head(classes), (task, name)
            # frozen parts that are buffers, not parameters, add nothing: VeRA's projections, OFT's block indices
            assert table.loc[(task, name), "total"] == full + n, (task, name)
    assert table.loc[("pathmnist", "dora"), "trainable"] == 4_425 and table.loc[("pathmnist", "ia3"), "trainable"] == 1_481


def test_params_lists_every_registered_strategy_with_counts(capsys):
    from stmedfm import cli

    assert cli.main(["params", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert len(strategies.names()) >= 12
    for name in strategies.names():
        for task in CLASSES:
            assert f"{task},{name}," in out, (task, name)
    assert cli.main(["params", "--strategies", "doraa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'dora'?" in err


def test_vera_projections_are_shared_frozen_buffers_saved_with_the_model():
    model = prepare(STMedFM([TASK]), "vera", TASK)
    layers = [model.encoder.blocks[i].fc1 for i in range(2)] + [model.encoder.blocks[i].fc2 for i in range(2)]
    a = {id(layer.vera_A["default"]) for layer in layers}
    assert len(a) == 1  # one projection pair for the 4 Linears
    assert tuple(layers[0].vera_A["default"].shape) == (64, 128) and tuple(layers[0].vera_B["default"].shape) == (128, 64)
    assert not any("vera_A" in n or "vera_B" in n for n, _ in model.named_parameters())
    assert "encoder.blocks.1.fc2.vera_A.default" in model.state_dict()


def base_model(tasks=(TASK, "organmnist3d"), **kw) -> STMedFM:
    torch.manual_seed(0)
    return STMedFM(list(tasks), **kw).eval()


@torch.no_grad()
def outputs(model):
    return model(X2, TASK), model(X3, "organmnist3d")


@pytest.mark.parametrize("strategy", PEFT_METHODS)
def test_peft_method_is_identity_at_insertion_then_changes(strategy):
    """Every peft method here is an identity at insertion with init_weights=True (peft's default except FourierFT's,
    set in its registration): DoRA/LoRA B = 0 (magnitude = the row norms of W), VeRA b = 0, IA3 vectors = 1, LoHa
    W2b = 0, LoKr W1 = 0, OFT skew blocks = 0 (R = I), HRA pairs of equal reflections (H H = I, up to float
    rounding), FourierFT coefficients = 0, LN-tuning copies the LayerNorms. Perturbing the method's parameters must
    then change the outputs (they are in the forward)."""
    model = base_model()
    before = outputs(model)
    prepare(model, strategy, TASK)
    model.eval()
    for a, b in zip(before, outputs(model)):
        assert torch.allclose(a, b, atol=1e-6), strategy  # float32 rounding is ~1e-7
        if strategy != "hra":  # the product of HRA's reflections is I only up to rounding (~1e-7)
            assert torch.equal(a, b), strategy
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in GROUPS["peft"](model, TASK):
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    after = outputs(model)
    assert not torch.allclose(before[0], after[0], atol=1e-4) and not torch.allclose(before[1], after[1], atol=1e-4)


@pytest.mark.parametrize("strategy", PEFT_METHODS)
def test_peft_method_trains_its_parameters_layernorms_and_head_only(strategy):
    model = prepare(base_model([TASK]), strategy, TASK).train()
    method = {id(p) for p in GROUPS["peft"](model, TASK)}
    ln = {id(p) for p in GROUPS["layernorm"](model, TASK)}
    headp = {id(p) for p in model.heads[TASK].parameters()}
    want = method | headp | (set() if strategy == "ln_tuning" else ln)
    assert {id(p) for p in model.parameters() if p.requires_grad} == want
    # LN-tuning's parameters are the LayerNorms of the forward pass (the copies; the originals it replaced are frozen
    # and in no group); every other method's parameters are disjoint from the LayerNorms
    assert method and (method == ln if strategy == "ln_tuning" else not method & ln)
    assert not any(p.requires_grad for p in [*model.stem2d.parameters(), *model.stem3d.parameters()])  # shared stems
    # one optimisation step moves exactly the trainable parameters (method parameters perturbed first, since some
    # start where their gradient is zero, e.g. LoRA's A while B = 0)
    with torch.no_grad():
        for p in GROUPS["peft"](model, TASK):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(X2, TASK), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n


def test_peft_layers_of_another_method_are_refused():
    model = prepare(base_model([TASK]), "dora", TASK)
    with pytest.raises(StmedfmError, match=r"Strategy 'vera' needs VeraConfig.*holds LoraConfig layers"):
        prepare(model, "vera", TASK)
    prepare(model, "dora", TASK)  # e.g. after loading a DoRA state dict: no second injection
    with pytest.raises(StmedfmError, match="needs its peft layers"):
        set_trainable(base_model([TASK]), "loha", TASK)
    from stmedfm.model.peft import add_peft

    with pytest.raises(StmedfmError, match="already has peft layers"):
        add_peft(model, strategies.get("dora").peft)


def test_a_bad_peft_registration_is_named_in_one_line():
    from stmedfm.model.peft import peft_config

    for method, match in ((strategies.PeftMethod.of("NoSuchConfig"), "has no config class 'NoSuchConfig'"),
                          (strategies.PeftMethod.of("LoraConfig", rank=3), r"rejects LoraConfig\(rank=3\)"),
                          (strategies.PeftMethod.of("OFTConfig"), "rejects OFTConfig")):  # r=4 and block size 32
        with pytest.raises(StmedfmError, match=match) as err:
            peft_config(method, base_model([TASK]))
        assert "\n" not in str(err.value)


def test_a_peft_method_is_one_registration_and_in_the_run_identity():
    from stmedfm.core.config import StudyConfig
    from stmedfm.run.planning import official_data, run_id
    from stmedfm.core.records import RunSpec

    with pytest.raises(StmedfmError, match="goes with inserts=\\('peft',\\)"):
        strategies.register(strategies.Strategy("x", "X", peft=strategies.PeftMethod.of("LoraConfig")))
    cfg = StudyConfig(downstream_tasks=["bloodmnist"], pretrain_tasks=["bloodmnist"])
    data = official_data(cfg)
    spec = RunSpec("bloodmnist", "dora", 0, 120, 2e-3, True, ("bloodmnist",))
    before = run_id(cfg, spec, data)
    dora = strategies.REGISTRY["dora"]
    try:  # another option of the same method is another run
        strategies.REGISTRY["dora"] = strategies.Strategy(**{**dora.__dict__, "peft": strategies.PeftMethod.of(
            "LoraConfig", use_dora=True, r=8)})
        assert run_id(cfg, spec, data) != before
    finally:
        strategies.REGISTRY["dora"] = dora
    assert run_id(cfg, spec, data) == before


# --- round-trips -------------------------------------------------------------------------------------------------
def _trained(strategy: str, pretrained: dict, steps: int = 3):
    from stmedfm.core.config import StudyConfig
    from stmedfm.core.records import RunSpec
    from stmedfm.run.train import Pool, downstream_model, generator, train_steps

    cfg = StudyConfig(pretrain_tasks=[TASK], downstream_tasks=[TASK])
    spec = RunSpec(TASK, strategy, 0, steps, 1e-2, False, (TASK,) if strategies.get(strategy).pretrained else ())
    model = downstream_model(cfg, spec, pretrained if spec.pretrain else None)
    g = generator(0)
    images = torch.randint(0, 256, (16, 3, 28, 28), dtype=torch.uint8, generator=g)
    pool = Pool(TASK, images, torch.randint(0, 9, (16,), generator=g), None, 8)
    train_steps(model, pool, steps, spec.lr, cfg, g)
    return cfg, spec, model.eval()


@pytest.mark.parametrize("strategy", strategies.names())
def test_a_trained_run_reloads_from_its_state_dict_to_identical_outputs(strategy):
    from stmedfm.run.train import downstream_model

    pretrained = {k: v.clone() for k, v in base_model([TASK]).state_dict().items()}
    cfg, spec, model = _trained(strategy, pretrained)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    fresh = downstream_model(cfg, spec, pretrained if spec.pretrain else None)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(X2, TASK), fresh(X2, TASK)), strategy
        if strategy != "linear_probe":  # training moved the model away from the pretrained function
            assert not torch.allclose(fresh(X2, TASK), downstream_model(cfg, spec, pretrained if spec.pretrain
                                                                        else None).eval()(X2, TASK))


@pytest.mark.slow
def test_load_model_handles_every_peft_method(synthetic_dir, tmp_path):
    import numpy as np

    from stmedfm import data as D
    from stmedfm.core.config import StudyConfig
    from stmedfm.run.inference import load_model
    from stmedfm.run.study import run_study

    cfg = StudyConfig.from_dict({
        "study": "tinypeft", "workers": 1, "data_dir": str(synthetic_dir), "pretrain_tasks": ["bloodmnist"],
        "pretrain_steps": 2, "downstream_tasks": ["bloodmnist"], "strategies": PEFT_METHODS, "finetune_steps_2d": 3,
        "fewshot_tasks": {}, "class_weight_ablation_tasks": [], "leave_out_tasks": [], "extended_tasks": [],
        "calibration_task": None})
    store = run_study(cfg, out=tmp_path / "s", progress=False)
    runs = store.table("runs").set_index("strategy")
    raw = D.load_task("bloodmnist", data_dir=synthetic_dir)["test"].images.permute(0, 2, 3, 1).numpy()
    for strategy in PEFT_METHODS:
        assert runs.loc[strategy, "trainable_params"] == method_parameters()[strategy] + head(8) + (
            0 if strategy == "ln_tuning" else LAYERNORMS)
        first = load_model(store.root, task="bloodmnist", strategy=strategy, seed=0)  # trained again, metrics checked
        assert first.source == "re-materialised" and first.model.peft_config["default"].__class__.__name__ == \
            strategies.get(strategy).peft.config
        again = load_model(store.root, task="bloodmnist", strategy=strategy, seed=0)  # models/<run id>.pt
        assert again.source == "saved" and np.array_equal(again.predict(raw), first.predict(raw)), strategy


def test_peft_runs_share_the_frozen_stem_with_the_other_runs_of_their_checkpoint():
    """Evaluation replays the stem outputs recorded by the first frozen-stem run of a checkpoint (LoRA here): every
    peft method hits that record (no new entry) and its logits are bit-identical to a plain evaluation."""
    from stmedfm.run import train
    from stmedfm.core.config import StudyConfig
    from stmedfm.core.records import RunSpec
    from stmedfm.run.train import downstream_model, predict_logits

    cfg = StudyConfig(pretrain_tasks=[TASK], downstream_tasks=[TASK])
    state = {k: v.clone() for k, v in base_model([TASK]).state_dict().items()}
    images = torch.randint(0, 256, (24, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    key = (images, TASK, "test", None)
    train._STEM_CACHE.clear()  # a cache, so emptying it changes no number; a full one would hide a miss
    predict_logits(downstream_model(cfg, RunSpec(TASK, "lora", 0, 1, 1e-3, True, (TASK,)), state), TASK, images, 8,
                   reuse=key)
    entries = len(train._STEM_CACHE)
    assert entries == 1
    for strategy in PEFT_METHODS:
        model = downstream_model(cfg, RunSpec(TASK, strategy, 0, 1, 1e-3, True, (TASK,)), state)
        replayed = predict_logits(model, TASK, images, 8, reuse=key)
        assert len(train._STEM_CACHE) == entries, strategy  # a hit, not a new record
        assert (replayed == predict_logits(model, TASK, images, 8)).all(), strategy


def test_a_registration_naming_unknown_pieces_fails_when_made():
    """Unknown inserts, groups or learning-rate fields fail at register(), not in a worker after pretraining; the
    names the registry accepts are exactly those stmedfm.model.peft implements."""
    from stmedfm.model.peft import INSERTS

    assert set(strategies.INSERT_KINDS) == set(INSERTS) and set(strategies.TRAIN_GROUPS) == set(GROUPS)
    for bad in (dict(trains=("biases",)), dict(inserts=("ia3",), trains=("head",)), dict(lr_field="speed")):
        with pytest.raises(StmedfmError, match="Strategy 'x': inserts must be among lora, adapter, peft"):
            strategies.register(strategies.Strategy("x", "X", **bad))
    assert "x" not in strategies.REGISTRY


def test_peft_strategies_without_peft_installed_stop_before_any_work(monkeypatch, make_config):
    import importlib.util

    from stmedfm.core import config

    real = importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(StmedfmError, match=r"Strategies dora, ia3 need the peft package: pip install 'stmedfm\[peft\]'"):
        make_config(strategies=["scratch", "full", "ia3", "dora"])
    monkeypatch.setitem(strategies.REGISTRY, "odd", strategies.Strategy("odd", "Odd", lr_field="lr_odd"))
    with pytest.raises(StmedfmError, match="Strategy 'odd' takes its learning rate from 'lr_odd', which is not a"):
        make_config(strategies=["scratch", "full", "odd"])
