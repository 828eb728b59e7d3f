"""The model surgery behind the adaptation strategies of :mod:`stmedfm.strategies` (paper section III.E).

The registry declares each strategy; this module implements the pieces it names: module kinds a strategy inserts
(:data:`INSERTS`) and parameter groups it trains (:data:`GROUPS`). LoRA (Hu et al., 2022) wraps the four encoder Linear layers (``fc1``/``fc2`` of both blocks) with a rank-``r``
update; adapters (Houlsby et al., 2019) add a residual bottleneck after each encoder block. Both are initialised
so that inserting them leaves the model's outputs unchanged, which is what makes "Pretrain+PEFT" start exactly
from the pretrained function. :func:`prepare` is the single entry point used by training: insert what the
strategy needs, then set ``requires_grad``. Call it *after* loading a checkpoint into the plain model, since
LoRA moves the wrapped weights to ``...fc1.base.weight``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from stmedfm import strategies
from stmedfm.errors import StmedfmError
from stmedfm.model import STMedFM

__all__ = [
    "LoRALinear",
    "Adapter",
    "add_lora",
    "add_adapters",
    "STRATEGIES",
    "INSERTS",
    "GROUPS",
    "prepare",
    "set_trainable",
    "count_parameters",
    "parameter_table",
]

STRATEGIES = strategies.names()  #: the registered strategies (at import), for convenience


class LoRALinear(nn.Module):
    """``base(x) + (x A^T B^T) * alpha / r`` with ``A`` (r, in) and ``B`` (out, r).

    Initialised as in HF ``peft`` (A kaiming-uniform with a=sqrt(5), B zeros), so the update starts at exactly 0
    and the numbers match ``peft.LoraConfig`` with the same ``r`` and ``lora_alpha``.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 4.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise StmedfmError(f"LoRA wraps an nn.Linear, got {type(base).__name__}.")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise StmedfmError(f"LoRA rank r must be a positive integer, got {r!r} (the paper uses r=4).")
        if not alpha > 0:
            raise StmedfmError(f"LoRA alpha must be positive, got {alpha!r} (default alpha=r gives scaling 1).")
        self.base = base
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


class Adapter(nn.Module):
    """Residual bottleneck ``x + up(GELU(down(x)))``; ``up`` starts at zero so insertion is an identity."""

    def __init__(self, width: int = 64, bottleneck: int = 16) -> None:
        super().__init__()
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise StmedfmError(f"Adapter bottleneck must be a positive integer, got {bottleneck!r} (paper: 16).")
        self.down = nn.Linear(width, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, Adapter) for m in model.modules())


def add_lora(model: STMedFM, r: int = 4, alpha: float = 4.0) -> STMedFM:
    """Wrap ``fc1`` and ``fc2`` of every encoder block with :class:`LoRALinear`, in place; returns ``model``.

    The default ``alpha = r`` (scaling 1.0) is our choice, since the paper gives only r=4: with scaling 1 the
    update's size does not depend on r, so the AdamW learning rate of Table 3 means the same at any rank, and it
    matches HF peft's defaults (lora_alpha=8 with r=8 is also scaling 1). The parameter counts do not depend on
    alpha: 4 layers * r * (64 + 128) = 3,072 LoRA parameters at r=4.
    """
    if _has_lora(model):
        raise StmedfmError("The model already has LoRA layers; add_lora must be called once, on the plain model.")
    for block in model.encoder.blocks:
        block.fc1 = LoRALinear(block.fc1, r=r, alpha=alpha)
        block.fc2 = LoRALinear(block.fc2, r=r, alpha=alpha)
    return model


def add_adapters(model: STMedFM, bottleneck: int = 16) -> STMedFM:
    """Insert one :class:`Adapter` after each encoder block, in place; returns ``model``."""
    if len(model.encoder.adapters):
        raise StmedfmError("The model already has adapters; add_adapters must be called once, on the plain model.")
    w = next(model.encoder.parameters())
    for _ in model.encoder.blocks:
        model.encoder.adapters.append(Adapter(model.width, bottleneck).to(device=w.device, dtype=w.dtype))
    return model


#: Module kinds a strategy may insert (``Strategy.inserts``): name -> (already inserted?, insert with options).
INSERTS = {
    "lora": (_has_lora, lambda model, opt: add_lora(model, r=opt["lora_r"], alpha=opt["lora_alpha"])),
    "adapter": (_has_adapters, lambda model, opt: add_adapters(model, bottleneck=opt["adapter_bottleneck"])),
}
#: What the error says when a strategy's modules are missing.
_INSERT_NAMES = {"lora": "LoRA layers", "adapter": "adapters"}


def _modules(model: nn.Module, kind: type) -> list[nn.Parameter]:
    """The parameters of every submodule of type ``kind``."""
    return [p for m in model.modules() if isinstance(m, kind) for p in m.parameters()]


#: Parameter groups a strategy may train (``Strategy.trains``): name -> the group's parameters.
GROUPS = {
    "all": lambda model, task: list(model.parameters()),
    "head": lambda model, task: list(model.heads[task].parameters()),
    "layernorm": lambda model, task: _modules(model, nn.LayerNorm),
    "bias": lambda model, task: [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"],
    "lora": lambda model, task: [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)],
    "adapter": lambda model, task: _modules(model, Adapter),
}


def _check_task(model: STMedFM, task: str) -> None:
    if task not in model.heads:
        raise StmedfmError(
            f"The model has no head for task '{task}' (heads: {', '.join(model.heads) or 'none'}); "
            f"add one with model.add_head('{task}') or use stmedfm.peft.prepare, which adds it."
        )


def set_trainable(model: STMedFM, strategy: str, task: str) -> None:
    """Set ``requires_grad`` for ``strategy`` as its registry entry says (``trains``); everything else is frozen.

    scratch/full: all parameters. lora: LoRA A/B + every LayerNorm + ``heads[task]``. adapter: adapter parameters
    + every LayerNorm + ``heads[task]``. linear_probe: ``heads[task]`` only. bitfit: every bias + LayerNorms + head.
    LayerNorms without affine parameters simply contribute nothing. Other tasks' heads are frozen, so
    keep_heads([task]) is what makes totals match.
    """
    spec = strategies.get(strategy)
    _check_task(model, task)
    for kind in spec.inserts:
        if not INSERTS[kind][0](model):
            raise StmedfmError(f"Strategy '{strategy}' needs {_INSERT_NAMES.get(kind, kind)}: call "
                               f"stmedfm.peft.prepare(model, '{strategy}', task).")
    for p in model.parameters():
        p.requires_grad_(False)
    for group in spec.trains:
        for p in GROUPS[group](model, task):
            p.requires_grad_(True)


def prepare(
    model: STMedFM,
    strategy: str,
    task: str,
    lora_r: int = 4,
    lora_alpha: float = 4.0,
    adapter_bottleneck: int = 16,
) -> STMedFM:
    """Make ``model`` ready to train ``task`` with ``strategy``: add its head if missing, insert the modules the
    strategy declares (unless already there), then :func:`set_trainable`. Returns ``model``.
    """
    spec = strategies.get(strategy)
    if task not in model.heads:
        model.add_head(task)
    options = {"lora_r": lora_r, "lora_alpha": lora_alpha, "adapter_bottleneck": adapter_bottleneck}
    for kind in spec.inserts:
        present, insert = INSERTS[kind]
        if not present(model):
            insert(model, options)
    set_trainable(model, strategy, task)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts, the two columns of Table 4."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def parameter_table(
    tasks: Iterable[str] = ("pathmnist", "bloodmnist", "dermamnist", "organmnist3d"),
    strategies: Iterable[str] = ("scratch", "full", "lora", "adapter"),
    width: int = 64,
) -> pd.DataFrame:
    """Table 4 recomputed: one fresh single-head model per (task, strategy); columns task, strategy, total,
    trainable. Needs no data or training, since counts depend only on the architecture.
    """
    rows = []
    for task in tasks:
        for strategy in strategies:
            model = prepare(STMedFM([task], width=width), strategy, task)
            total, trainable = count_parameters(model)
            rows.append({"task": task, "strategy": strategy, "total": total, "trainable": trainable})
    return pd.DataFrame(rows, columns=["task", "strategy", "total", "trainable"])
