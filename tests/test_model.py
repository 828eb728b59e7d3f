"""STMedFM architecture: the paper's Table 4 parameter counts, forward shapes and user-facing errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stmedfm.core.errors import StmedfmError
from stmedfm.model import STMedFM, Encoder, ResidualMLPBlock
from stmedfm.model.peft import count_parameters, parameter_table, prepare

# Table 4 of the paper, typed in verbatim: (task, strategy, total, trainable).
TABLE4 = [
    ("pathmnist", "scratch", 160105, 160105),
    ("bloodmnist", "scratch", 160040, 160040),
    ("dermamnist", "scratch", 159975, 159975),
    ("organmnist3d", "scratch", 160235, 160235),
    ("pathmnist", "full", 160105, 160105),
    ("pathmnist", "lora", 163177, 4041),
    ("pathmnist", "adapter", 164361, 5225),
    ("bloodmnist", "full", 160040, 160040),
    ("bloodmnist", "lora", 163112, 3976),
    ("bloodmnist", "adapter", 164296, 5160),
    ("dermamnist", "full", 159975, 159975),
    ("dermamnist", "lora", 163047, 3911),
    ("dermamnist", "adapter", 164231, 5095),
    ("organmnist3d", "full", 160235, 160235),
    ("organmnist3d", "lora", 163307, 4171),
    ("organmnist3d", "adapter", 164491, 5355),
]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("task", "strategy", "total", "trainable"), TABLE4)
def test_table4_cell(task, strategy, total, trainable):
    torch.manual_seed(0)
    model = prepare(STMedFM([task]), strategy, task)
    assert count_parameters(model) == (total, trainable)


def test_parameter_table_reproduces_table4():
    table = parameter_table()
    got = {(r.task, r.strategy): (r.total, r.trainable) for r in table.itertuples()}
    assert list(table.columns) == ["task", "strategy", "total", "trainable"]
    assert got == {(t, s): (tot, tr) for t, s, tot, tr in TABLE4}


def test_sub_counts_by_hand():
    model = STMedFM(["pathmnist"])
    # 2D stem: (3*32*9 + 32) + (32*64*9 + 64) + (64*64*9 + 64) = 896 + 18496 + 36928
    assert n_params(model.stem2d) == 56320
    # 3D stem: (1*16*27 + 16) + (16*32*27 + 32) + (32*64*27 + 64) = 448 + 13856 + 55360
    assert n_params(model.stem3d) == 69664
    # block: LN 2*64 + fc1 64*128+128 + fc2 128*64+64 = 128 + 8320 + 8256 = 16704; 2 blocks + final LN 128
    assert n_params(model.encoder.blocks[0]) == 16704
    assert n_params(model.encoder) == 33536
    # heads: 64*C + C
    for flag, c in [("pathmnist", 9), ("bloodmnist", 8), ("dermamnist", 7), ("organmnist3d", 11)]:
        assert n_params(STMedFM([flag]).heads[flag]) == 64 * c + c


def test_structure_matches_table2():
    model = STMedFM(["pathmnist"])
    assert model.hidden == 128
    block = model.encoder.blocks[0]
    assert isinstance(block, ResidualMLPBlock) and isinstance(model.encoder, Encoder)
    assert (block.fc1.in_features, block.fc1.out_features) == (64, 128)
    assert (block.fc2.in_features, block.fc2.out_features) == (128, 64)
    assert isinstance(block.act, nn.GELU) and isinstance(block.norm, nn.LayerNorm)
    assert len(model.encoder.blocks) == 2 and len(model.encoder.adapters) == 0
    convs2d = [m for m in model.stem2d if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs2d] == [(3, 32, 1), (32, 64, 2), (64, 64, 2)]
    convs3d = [m for m in model.stem3d if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs3d] == [(1, 16, 1), (16, 32, 2), (32, 64, 2)]
    assert model.task_dims == {"pathmnist": 2}


def test_width_128_count():
    # width 128, hidden 256:
    # 2D stem 896 + 18496 + (64*128*9 + 128 = 73856) = 93248
    # 3D stem 448 + 13856 + (32*128*27 + 128 = 110720) = 125024
    # block 256 + (128*256 + 256 = 33024) + (256*128 + 128 = 32896) = 66176; encoder 2*66176 + 256 = 132608
    # head 128*9 + 9 = 1161; total 93248 + 125024 + 132608 + 1161 = 352041
    assert count_parameters(STMedFM(["pathmnist"], width=128)) == (352041, 352041)


@pytest.mark.parametrize(("strategy", "total", "trainable"), [
    # LoRA r=4 on fc1 (128->256) and fc2 (256->128) of both blocks: 4*(128+256) per layer * 4 layers = 6144;
    # trainable = LoRA 6144 + 3 LayerNorms 3*2*128 = 768 + head 1161 = 8073 (width 64: 3072 + 384 + 585 = 4041)
    ("lora", 352041 + 6144, 8073),
    # adapter (bottleneck 16) per block: down 128*16+16 = 2064, up 16*128+128 = 2176 -> 4240; 2 blocks 8480;
    # trainable = 8480 + 768 + 1161 = 10409 (width 64: 4256 + 384 + 585 = 5225)
    ("adapter", 352041 + 8480, 10409),
    ("linear_probe", 352041, 1161),  # head 128*9 + 9
    ("full", 352041, 352041),
])
def test_width_128_counts_per_strategy(strategy, total, trainable):
    torch.manual_seed(0)
    assert count_parameters(prepare(STMedFM(["pathmnist"], width=128), strategy, "pathmnist")) == (total, trainable)


def test_ln_affine_false_count():
    # the 3 LayerNorms (2 blocks + final) lose 3 * 128 = 384 parameters: 160105 - 384
    model = STMedFM(["pathmnist"], ln_affine=False)
    assert count_parameters(model) == (159721, 159721)
    assert not any(isinstance(m, nn.LayerNorm) and m.elementwise_affine for m in model.modules())


def test_mapping_tasks_and_custom_head():
    model = STMedFM({"pathmnist": 9, "organmnist3d": 11})
    assert model.task_dims == {"pathmnist": 2, "organmnist3d": 3}
    head = model.add_head("mytask", n_classes=5, dim=2)
    assert head.out_features == 5 and model.task_dims["mytask"] == 2
    assert model.add_head("pathmnist") is model.heads["pathmnist"]  # idempotent
    assert STMedFM("chestmnist").heads["chestmnist"].out_features == 14  # a lone flag, any registry flag


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return STMedFM(["pathmnist", "chestmnist", "organmnist3d"]).eval()


def test_forward_2d_rgb(model):
    assert model(torch.randn(4, 3, 28, 28), "pathmnist").shape == (4, 9)


def test_forward_grayscale_repeated(model):
    gray = torch.randn(4, 1, 28, 28)
    logits = model(gray.repeat(1, 3, 1, 1), "chestmnist")
    assert logits.shape == (4, 14)
    # a single-channel batch is repeated by the model itself, with the same result
    torch.testing.assert_close(model(gray, "chestmnist"), logits)


def test_forward_3d(model):
    assert model(torch.randn(2, 1, 28, 28, 28), "organmnist3d").shape == (2, 11)


def test_forward_size_64(model):
    assert model(torch.randn(2, 3, 64, 64), "pathmnist").shape == (2, 9)
    assert model.features(torch.randn(2, 3, 64, 64)).shape == (2, 64)


def test_error_3d_batch_to_2d_task(model):
    with pytest.raises(StmedfmError, match=r"Task 'pathmnist' is 2D but got a 3D batch"):
        model(torch.randn(2, 1, 28, 28, 28), "pathmnist")
    with pytest.raises(StmedfmError, match=r"Task 'organmnist3d' is 3D but got a 2D batch"):
        model(torch.randn(2, 3, 28, 28), "organmnist3d")


def test_error_unknown_task(model):
    with pytest.raises(StmedfmError, match=r"no head for task 'pathmnst'\. Did you mean 'pathmnist'\?"):
        model(torch.randn(2, 3, 28, 28), "pathmnst")


def test_error_bad_shapes(model):
    with pytest.raises(StmedfmError, match=r"channels first"):
        model(torch.randn(2, 28, 28, 3), "pathmnist")
    with pytest.raises(StmedfmError, match=r"got a 3D tensor"):
        model.features(torch.randn(2, 28, 28))


def test_error_custom_head_needs_classes_and_dim():
    with pytest.raises(StmedfmError, match=r"'pathmnst' is not a MedMNIST flag\. Did you mean 'pathmnist'\?"):
        STMedFM(["pathmnst"])
    with pytest.raises(StmedfmError, match=r"n_classes=9, but n_classes=5 was given"):
        STMedFM({"pathmnist": 5})


def test_keep_heads():
    model = STMedFM(["pathmnist", "bloodmnist", "dermamnist", "organmnist3d"])
    model.keep_heads(["dermamnist"])
    assert list(model.heads) == ["dermamnist"] and model.task_dims == {"dermamnist": 2}
    assert count_parameters(model)[0] == 159975  # Table 4 dermamnist total
    with pytest.raises(StmedfmError, match=r"Cannot keep heads \['pathmnist'\]"):
        model.keep_heads(["pathmnist"])
