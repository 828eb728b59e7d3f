"""The adaptation strategies: one registry, the extension point of the study (as peft has one of methods).

Each :class:`Strategy` declares everything the rest of the package needs to know about it — its name and label,
what it inserts into the model, which parameter groups it trains, its learning-rate field and whether it starts
from a checkpoint, its order and colour in tables and figures. Config validation, training
(:func:`stmedfm.peft.prepare`), ``stmedfm params``, tables, plots and the report read only from here; this module
imports no torch, so validating parameters stays fast.

*What it inserts* and *what it trains* are names: :mod:`stmedfm.peft` holds the model surgery behind each
(``INSERTS``: 'lora', 'adapter'; ``GROUPS``: 'all', 'head', 'layernorm', 'bias', 'lora', 'adapter') and can be
extended the same way. Adding a strategy made of existing pieces is one :func:`register` call; see
``docs/strategies.md`` for a worked example (BitFit, below, was added that way).
"""

from __future__ import annotations

from dataclasses import dataclass

from stmedfm import registry
from stmedfm.errors import StmedfmError

__all__ = ["Strategy", "register", "get", "names", "label", "color", "order", "REGISTRY", "PALETTE"]


@dataclass(frozen=True)
class Strategy:
    """One adaptation strategy.

    ``inserts``: module kinds added to the (pretrained) model before training, in order. ``trains``: parameter
    groups left trainable (everything else is frozen); the paper's convention for a PEFT method is its own
    parameters + every LayerNorm + the task's head. ``lr_field``: the :class:`~stmedfm.config.StudyConfig` field
    holding its learning rate. ``pretrained``: False only for training from scratch.
    """

    name: str
    label: str
    inserts: tuple[str, ...] = ()
    trains: tuple[str, ...] = ("all",)
    lr_field: str = "lr_peft"
    pretrained: bool = True
    color: str = "#333333"
    marker: str = "o"
    description: str = ""


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` (its name must be new); its position in the registry is its order in tables and figures."""
    if strategy.name in REGISTRY:
        raise StmedfmError(f"A strategy named '{strategy.name}' is already registered.")
    REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise StmedfmError(f"Unknown adaptation strategy '{name}'.{registry.closest(str(name), list(REGISTRY))} "
                           f"Strategies: {', '.join(REGISTRY)}.") from None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def label(name: str) -> str:
    return REGISTRY[name].label if name in REGISTRY else str(name)


def color(name: str) -> str:
    return REGISTRY[name].color if name in REGISTRY else "#333333"


def order(name: str) -> int:
    """Position in tables and figures (unknown names last)."""
    return list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY)


# seaborn's "colorblind" palette (Okabe-Ito-like), fixed per strategy so every figure uses the same colour
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9"]

register(Strategy("scratch", "Scratch", trains=("all",), lr_field="lr_scratch", pretrained=False, color=PALETTE[7],
                  marker="s", description="a fresh model, every parameter trained"))
register(Strategy("full", "Pretrain+Full", trains=("all",), lr_field="lr_full", color=PALETTE[0], marker="o",
                  description="the pretrained model, every parameter trained"))
register(Strategy("lora", "Pretrain+LoRA", inserts=("lora",), trains=("lora", "layernorm", "head"), color=PALETTE[1],
                  marker="^", description="LoRA (rank lora_r) on the 4 encoder Linears + LayerNorms + head"))
register(Strategy("adapter", "Pretrain+Adapter", inserts=("adapter",), trains=("adapter", "layernorm", "head"),
                  color=PALETTE[2], marker="D",
                  description="a bottleneck adapter after each encoder block + LayerNorms + head"))
register(Strategy("linear_probe", "Pretrain+Linear probe", trains=("head",), lr_field="lr_linear_probe",
                  color=PALETTE[4], marker="v", description="the frozen pretrained encoder, the head trained"))
# Added through this registry alone (issue 19). Decision: BitFit (Ben Zaken et al., 2022) trains the bias terms;
# following the paper's PEFT convention the LayerNorms and the head train too, and its learning rate is the PEFT
# one (lr_peft), as for LoRA and adapters.
register(Strategy("bitfit", "Pretrain+BitFit", trains=("bias", "layernorm", "head"), color=PALETTE[5], marker="P",
                  description="every bias of the pretrained model + LayerNorms + head"))
