"""The adaptation strategies: one registry, the extension point of the study (as peft has one of methods).

Each :class:`Strategy` declares everything the rest of the package needs to know about it — its name and label,
what it inserts into the model, which parameter groups it trains, its learning-rate field and whether it starts
from a checkpoint, its order and colour in tables and figures. Config validation, training
(:func:`stmedfm.peft.prepare`), ``stmedfm params``, tables, plots and the report read only from here; this module
imports no torch, so validating parameters stays fast.

*What it inserts* and *what it trains* are names: :mod:`stmedfm.peft` holds the model surgery behind each
(``INSERTS``: 'lora', 'adapter', 'peft'; ``GROUPS``: 'all', 'head', 'layernorm', 'bias', 'lora', 'adapter', 'peft')
and can be extended the same way. Adding a strategy made of existing pieces is one :func:`register` call; see
``docs/strategies.md`` for a worked example (BitFit, below, was added that way). A method of Hugging Face peft is
one call too: its :class:`PeftMethod` (config class, what it wraps, options) is data in the registration, and the
generic 'peft' insert builds and injects it (issue 22; DoRA, VeRA, IA3, LoHa, LoKr, OFT, HRA, FourierFT and
LN-tuning below).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from stmedfm import registry
from stmedfm.errors import StmedfmError

__all__ = ["Strategy", "PeftMethod", "INSERT_KINDS", "TRAIN_GROUPS", "register", "get", "names", "label", "color", "marker", "order", "REGISTRY", "PALETTE", "BUILT_IN", "import_module", "FAMILIES"]


@dataclass(frozen=True)
class PeftMethod:
    """A method of Hugging Face peft, as data (this module imports neither torch nor peft, so validating parameters
    stays fast): ``config``, the name of its config class in ``peft`` (``"LoraConfig"``); ``targets``, what it wraps
    — ``"linears"``, the 4 encoder Linears (``fc1``/``fc2`` of both blocks, exactly what the paper's LoRA wraps), or
    ``"layernorms"``, every LayerNorm; ``options``, keyword arguments of the config, as sorted ``(name, value)``
    pairs (hashable, so a strategy stays a frozen value). Build it with :meth:`of`.

    Decision: a config with a rank ``r`` gets the study's ``lora_r``, and one with ``lora_alpha``/``alpha`` the study's
    ``lora_alpha``, unless ``options`` sets them: every low-rank method then has the paper's LoRA rank and scaling,
    so methods differ in structure, not in rank (see :func:`stmedfm.peft.peft_config`).
    """

    config: str
    targets: str = "linears"
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, config: str, targets: str = "linears", **options) -> "PeftMethod":
        if targets not in ("linears", "layernorms"):
            raise StmedfmError(f"A peft method wraps 'linears' or 'layernorms', got {targets!r}.")
        return cls(config, targets, tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                                 for k, v in options.items())))

    def describe(self) -> str:
        """``LoraConfig(use_dora=True) on linears``: how tables and run identities name it."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"{self.config}({args}) on {self.targets}"


@dataclass(frozen=True)
class Strategy:
    """One adaptation strategy.

    ``inserts``: module kinds added to the (pretrained) model before training, in order. ``trains``: parameter
    groups left trainable (everything else is frozen); the paper's convention for a PEFT method is its own
    parameters + every LayerNorm + the task's head. ``lr_field``: the :class:`~stmedfm.config.StudyConfig` field
    holding its learning rate. ``pretrained``: False only for training from scratch. ``peft``: the Hugging Face
    peft method the generic ``'peft'`` insert adds (``inserts=("peft",)``), None for every other strategy.
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
    peft: PeftMethod | None = None
    family: str = "other"  #: its kind, for figures that group strategies (:data:`FAMILIES`); colours follow it


REGISTRY: dict[str, Strategy] = {}
#: The module kinds (``inserts``) and parameter groups (``trains``) that :mod:`stmedfm.peft` implements
#: (``peft.INSERTS``, ``peft.GROUPS``; a test keeps the names equal). Named here so that a registration naming
#: something unknown fails when it is made, not in a worker after pretraining.
INSERT_KINDS = ("lora", "adapter", "peft")
TRAIN_GROUPS = ("all", "head", "layernorm", "bias", "lora", "adapter", "peft")


#: Kinds of strategy, in the order figures list them; a family's members share a hue (decision: with 14 strategies
#: a reader tells the kinds apart by hue and the members by marker and label).
FAMILIES = {
    "baseline": "no adaptation method: a fresh model, or every weight fine-tuned",
    "selective": "a subset of the existing parameters trained, nothing added",
    "added module": "small modules added and trained",
    "weight update": "an additive update of the wrapped weights (low rank, Hadamard, Kronecker, spectral)",
    "rotation": "an orthogonal transform of the wrapped layer's input",
    "other": "registered without a family",
}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy``; its position in the registry is its order in tables and figures. Its name, colour and
    marker must be new (figures tell strategies apart by colour and marker), its pieces known (docs/strategies.md
    lists every rule)."""
    if strategy.name in REGISTRY:
        raise StmedfmError(f"A strategy named '{strategy.name}' is already registered.")
    unknown = [k for k in strategy.inserts if k not in INSERT_KINDS] + [g for g in strategy.trains
                                                                          if g not in TRAIN_GROUPS]
    if unknown or not strategy.trains or not strategy.lr_field.startswith("lr_"):
        raise StmedfmError(f"Strategy '{strategy.name}': inserts must be among {', '.join(INSERT_KINDS)}, trains a "
                           f"non-empty choice of {', '.join(TRAIN_GROUPS)}, lr_field a StudyConfig field 'lr_...'"
                           f"{f' (unknown: {unknown})' if unknown else ''}.")
    if strategy.family not in FAMILIES:
        raise StmedfmError(f"Strategy '{strategy.name}': family {strategy.family!r} is not one of "
                           f"{', '.join(FAMILIES)} (figures group strategies by it).")
    if (strategy.peft is not None) != ("peft" in strategy.inserts):
        raise StmedfmError(f"Strategy '{strategy.name}': a peft method (peft=PeftMethod.of(...)) goes with "
                           f"inserts=('peft',), and inserts=('peft',) needs one.")
    for field, taken in (("color", {s.color.lower(): s.name for s in REGISTRY.values()}),
                         ("marker", {s.marker: s.name for s in REGISTRY.values()})):
        value = getattr(strategy, field)
        key = value.lower() if field == "color" else value
        if key in taken:
            free = (f" Free markers: {' '.join(m for m in MARKERS if m not in taken)}." if field == "marker" else "")
            raise StmedfmError(f"Strategy '{strategy.name}': {field} {value!r} is taken by '{taken[key]}'; figures "
                               f"tell strategies apart by {field}, so give it another.{free}")
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


def marker(name: str) -> str:
    return REGISTRY[name].marker if name in REGISTRY else "o"


def order(name: str) -> int:
    """Position in tables and figures (unknown names last)."""
    return list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY)


def import_module(name: str) -> None:
    """Import the module ``name`` whose ``register`` calls add strategies (the ``strategies_module`` parameter:
    :meth:`stmedfm.config.StudyConfig.from_dict` calls this before checking strategy names, in the client and in
    every worker, which rebuild the config from its fields). Importing twice is a no-op, so nothing registers twice."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # a missing module, or one whose registration fails: one line either way
        raise StmedfmError(f"Parameter 'strategies_module': importing {name!r} failed ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}); it must be importable where the study runs (the "
                           f"working folder, or installed), workers included.") from None


#: Markers matplotlib draws, for the refusal of a taken one.
MARKERS = ("o", "s", "^", "v", "<", ">", "D", "d", "P", "X", "p", "h", "H", "8", "*", "+", "x", "1", "2", "3", "4")

# seaborn's "colorblind" palette (Okabe-Ito-like), fixed per strategy so every figure uses the same colour
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9"]

register(Strategy("scratch", "Scratch", trains=("all",), lr_field="lr_scratch", pretrained=False, color=PALETTE[7],
                  marker="s", description="a fresh model, every parameter trained", family="baseline"))
register(Strategy("full", "Pretrain+Full", trains=("all",), lr_field="lr_full", color=PALETTE[0], marker="o",
                  description="the pretrained model, every parameter trained", family="baseline"))
register(Strategy("lora", "Pretrain+LoRA", inserts=("lora",), trains=("lora", "layernorm", "head"), color=PALETTE[1],
                  marker="^", description="LoRA (rank lora_r) on the 4 encoder Linears + LayerNorms + head", family="weight update"))
register(Strategy("adapter", "Pretrain+Adapter", inserts=("adapter",), trains=("adapter", "layernorm", "head"),
                  color=PALETTE[2], marker="D",
                  description="a bottleneck adapter after each encoder block + LayerNorms + head", family="added module"))
register(Strategy("linear_probe", "Pretrain+Linear probe", trains=("head",), lr_field="lr_linear_probe",
                  color=PALETTE[4], marker="v", description="the frozen pretrained encoder, the head trained", family="selective"))
# Added through this registry alone (issue 19). Decision: BitFit (Ben Zaken et al., 2022) trains the bias terms;
# following the paper's PEFT convention the LayerNorms and the head train too, and its learning rate is the PEFT
# one (lr_peft), as for LoRA and adapters.
register(Strategy("bitfit", "Pretrain+BitFit", trains=("bias", "layernorm", "head"), color="#67001f", marker="P",
                  description="every bias of the pretrained model + LayerNorms + head", family="selective"))

# --- Hugging Face peft methods (issue 22), each one registration: its PeftMethod is data, the generic 'peft' insert
# of stmedfm.peft builds the config and injects it into the model in place. Decisions, shared by all of them:
# * what they wrap: the paper's LoRA wraps the 4 encoder Linears (fc1 64->128, fc2 128->64 of both blocks); so does
#   every method here except LN-tuning, whose object is the LayerNorms;
# * what trains (the paper's PEFT convention): the method's parameters ('peft') + every LayerNorm + the head; for
#   LN-tuning the method's parameters *are* the LayerNorms (peft trains a copy of each and freezes the original,
#   which no longer enters the forward pass), so it trains the copies + the head;
# * rank and scaling: the study's lora_r / lora_alpha (the paper's r=4, scaling 1), except VeRA (below);
# * initialisation: each is an identity at insertion (tests/test_peft_methods.py), so "Pretrain+X" starts from the
#   pretrained function; the learning rate is the PEFT one (lr_peft), as for LoRA and adapters.
_PEFT_TRAINS = ("peft", "layernorm", "head")
register(Strategy("dora", "Pretrain+DoRA", inserts=("peft",), trains=_PEFT_TRAINS, color=PALETTE[3], marker="<",
                  peft=PeftMethod.of("LoraConfig", use_dora=True),
                  description="DoRA (LoRA r=lora_r + a magnitude per output feature) on the 4 encoder Linears + "
                              "LayerNorms + head", family="weight update"))
# VeRA: one pair of frozen random projections A (r x 128) and B (128 x r) shared by the 4 Linears (each uses the
# slice of its own shape), drawn from a fixed key; per Linear it trains a scaling vector d (r) and b (out features).
# Rank 64 = the encoder width: since only vectors train, VeRA needs a high rank (its paper uses 256-1024 on
# 768-4096-wide models); at 64 the random projections span all of fc1's input and fc2's output space.
register(Strategy("vera", "Pretrain+VeRA", inserts=("peft",), trains=_PEFT_TRAINS, color=PALETTE[8], marker=">",
                  peft=PeftMethod.of("VeraConfig", r=64),
                  description="VeRA (shared frozen random projections, rank 64; vectors d and b trained) on the 4 "
                              "encoder Linears + LayerNorms + head", family="weight update"))
# IA3's feed-forward convention (Liu et al., 2022, l_ff): the activation between the two layers of the MLP is
# rescaled, i.e. fc2 is the 'feed-forward module' whose *input* (128, after GELU) is scaled; fc1 scales its
# *output* (128, before GELU), as IA3 does for its other targets. Vectors start at 1.
register(Strategy("ia3", "Pretrain+IA3", inserts=("peft",), trains=_PEFT_TRAINS, color="#00441b", marker="X",
                  peft=PeftMethod.of("IA3Config", feedforward_modules=["fc2"]),
                  description="IA3 scaling vectors (fc1's output, fc2's input: feed-forward) in both blocks + "
                              "LayerNorms + head", family="added module"))
register(Strategy("loha", "Pretrain+LoHa", inserts=("peft",), trains=_PEFT_TRAINS, color="#fdb863", marker="h",
                  peft=PeftMethod.of("LoHaConfig"),
                  description="LoHa (Hadamard product of two rank-lora_r factorisations) on the 4 encoder Linears + "
                              "LayerNorms + head", family="weight update"))
register(Strategy("lokr", "Pretrain+LoKr", inserts=("peft",), trains=_PEFT_TRAINS, color="#8c510a", marker="p",
                  peft=PeftMethod.of("LoKrConfig"),
                  description="LoKr (Kronecker product, second factor of rank lora_r) on the 4 encoder Linears + "
                              "LayerNorms + head", family="weight update"))
# OFT: a block-diagonal orthogonal rotation of each Linear's input space (Cayley parametrisation of skew-symmetric
# blocks, peft's default Neumann approximation). Block size 16 (r=0: peft derives the number of blocks, 4 for fc1's 64
# inputs, 8 for fc2's 128) puts it at LoRA's budget (2,880 vs 3,072 parameters); peft's default 32 would double it.
register(Strategy("oft", "Pretrain+OFT", inserts=("peft",), trains=_PEFT_TRAINS, color="#7b3294", marker="d",
                  peft=PeftMethod.of("OFTConfig", r=0, oft_block_size=16),
                  description="OFT (orthogonal rotation of the input, blocks of 16) on the 4 encoder Linears + "
                              "LayerNorms + head", family="rotation"))
# HRA: r = lora_r Householder reflections of each Linear's input space (the chain of reflections between LoRA and
# OFT); its identity at insertion needs an even r (peft pairs equal vectors), which the paper's r=4 is.
register(Strategy("hra", "Pretrain+HRA", inserts=("peft",), trains=_PEFT_TRAINS, color="#c2a5cf", marker="H",
                  peft=PeftMethod.of("HRAConfig"),
                  description="HRA (lora_r Householder reflections of the input) on the 4 encoder Linears + "
                              "LayerNorms + head", family="rotation"))
# FourierFT: per Linear, n trained coefficients at fixed random frequencies of the weight's 2D spectrum (seed 777,
# peft's default), dW = scaling * Re(IFFT2). n = 768 per Linear matches LoRA's budget (3,072). Decision:
# init_weights=True (coefficients 0), because peft's default (False: coefficients ~ N(0, 1), scaling 150) would
# change the pretrained function at insertion.
register(Strategy("fourierft", "Pretrain+FourierFT", inserts=("peft",), trains=_PEFT_TRAINS, color="#7f3b08",
                  marker="8", peft=PeftMethod.of("FourierFTConfig", n_frequency=768, init_weights=True),
                  description="FourierFT (768 spectral coefficients per Linear) on the 4 encoder Linears + "
                              "LayerNorms + head", family="weight update"))
register(Strategy("ln_tuning", "Pretrain+LN-tuning", inserts=("peft",), trains=("peft", "head"), color="#c51b7d",
                  marker="*", peft=PeftMethod.of("LNTuningConfig", targets="layernorms"),
                  description="LN-tuning: a trained copy of every LayerNorm + head (originals frozen)", family="selective"))

#: The strategies this module registers; a study file or test that means "every method of the package" (e.g.
#: params/peft_methods.yaml) reads this, so a strategy registered elsewhere (a user module) changes neither.
BUILT_IN: tuple[str, ...] = tuple(REGISTRY)
