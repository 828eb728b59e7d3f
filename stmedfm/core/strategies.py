"""The adaptation strategies: one registry, the extension point of the study (as peft has one of methods).

Each method object (:class:`~stmedfm.core.tuners.base.Strategy`, one module per method in :mod:`stmedfm.core.tuners`)
declares everything the rest of the package needs to know about it — its name and label, its options with their
defaults, what it inserts into the model, which parameter groups it trains, its learning-rate field and whether it
starts from a checkpoint; its position here is its order in tables and figures (their colours and markers are
:mod:`stmedfm.analysis.plots.style`'s). Config validation, training
(:func:`stmedfm.model.peft.prepare`), ``stmedfm params``, tables, plots and the report read only from here; this module
imports no torch, so validating parameters stays fast.

*What it inserts* and *what it trains* are names: :mod:`stmedfm.model.peft` holds the model surgery behind each
(``INSERTS``: 'lora', 'adapter', 'peft'; ``GROUPS``: 'all', 'head', 'layernorm', 'bias', 'lora', 'adapter', 'peft')
or a method brings its own ``surgery`` (its group ``'own'``). Adding a strategy is one module + one :func:`register`
call; see ``docs/strategies.md``. A method of Hugging Face peft is one row of :mod:`stmedfm.core.tuners.hf`: its
:class:`PeftMethod` (config class, what it wraps, options) is data, and the generic 'peft' insert builds and
injects it (issue 22).
"""

from __future__ import annotations

import importlib

from stmedfm.core import tuners
from stmedfm.core import registry
from stmedfm.core.errors import StmedfmError
from stmedfm.core.tuners.base import Option, PeftMethod, Strategy

__all__ = ["Strategy", "PeftMethod", "Option", "INSERT_KINDS", "TRAIN_GROUPS", "register", "get", "names", "label",
           "order", "REGISTRY", "BUILT_IN", "import_module", "FAMILIES", "options_of", "where",
           "SCRATCH", "FULL", "LORA", "PAPER", "PAPER_PRETRAINED", "PAPER_PEFT"]


REGISTRY: dict[str, Strategy] = {}
#: The module kinds (``inserts``) and parameter groups (``trains``) that :mod:`stmedfm.model.peft` implements
#: (``peft.INSERTS``, ``peft.GROUPS``; a test keeps the names equal). Named here so that a registration naming
#: something unknown fails when it is made, not in a worker after pretraining.
INSERT_KINDS = ("lora", "adapter", "peft")
#: ``'own'``: the parameters of a method's own ``surgery``.
TRAIN_GROUPS = ("all", "head", "layernorm", "bias", "lora", "adapter", "peft", "own")


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
    """Add ``strategy``; its position in the registry is its order in tables and figures. Its name must be new, its
    pieces known (docs/strategies.md lists every rule)."""
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
    if ("own" in strategy.trains) != (strategy.surgery is not None):
        raise StmedfmError(f"Strategy '{strategy.name}': a method's own surgery (surgery=...) goes with 'own' in "
                           f"trains, and 'own' needs one.")
    names = [o.name for o in options_of(strategy)]
    if "lr" in names or len(set(names)) != len(names):
        raise StmedfmError(f"Strategy '{strategy.name}': its options ({', '.join(names)}) must have distinct names, "
                           f"none 'lr' (every strategy has lr, from lr_field).")
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


def options_of(name_or_strategy) -> tuple[Option, ...]:
    """The options of a strategy besides ``lr`` (:func:`stmedfm.core.tuners.options_of`)."""
    s = name_or_strategy if isinstance(name_or_strategy, Strategy) else get(name_or_strategy)
    return tuners.options_of(s)


def where(**attrs) -> tuple[str, ...]:
    """The registered strategies whose attributes equal ``attrs``, in order (``where(pretrained=True)``): how a
    list of strategies is derived from the registry instead of being written out."""
    return tuple(n for n, s in REGISTRY.items() if all(getattr(s, k) == v for k, v in attrs.items()))


def order(name: str) -> int:
    """Position in tables and figures (unknown names last)."""
    return list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY)


def import_module(name: str) -> None:
    """Import the module ``name`` whose ``register`` calls add strategies (the ``strategies_module`` parameter:
    :meth:`stmedfm.core.config.StudyConfig.from_dict` calls this before checking strategy names, in the client and in
    every worker, which rebuild the config from its fields). Importing twice is a no-op, so nothing registers twice."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # a missing module, or one whose registration fails: one line either way
        raise StmedfmError(f"Parameter 'strategies_module': importing {name!r} failed ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}); it must be importable where the study runs (the "
                           f"working folder, or installed), workers included.") from None


for _method in tuners.BUILT_IN:  # one module per method (stmedfm.core.tuners), registered in the order of the tables
    register(_method)

#: The strategies every analysis names by their role: training from scratch (the reference without pretraining),
#: fine-tuning every pretrained weight, and the paper's low-rank method (the reference of the methods study).
SCRATCH, FULL, LORA = "scratch", "full", "lora"
#: The paper's strategies (Tables 4-12), in its order; the groups below derive from it and the method objects. A
#: strategy list anywhere else in the package is one of these or derived from the registry
#: (tests/test_tuners.py greps for literal ones).
PAPER = (SCRATCH, FULL, LORA, "adapter")
#: The paper's strategies that adapt a checkpoint (few-shot, "negative transfer" of Tables 7, 10, 12).
PAPER_PRETRAINED = tuple(s for s in PAPER if REGISTRY[s].pretrained)
#: The paper's PEFT methods (LoRA, adapters): those that do not train every parameter.
PAPER_PEFT = tuple(s for s in PAPER_PRETRAINED if REGISTRY[s].trains != ("all",))

#: The strategies this module registers; a study file or test that means "every method of the package" (e.g.
#: params/peft_methods.yaml) reads this, so a strategy registered elsewhere (a user module) changes neither.
BUILT_IN: tuple[str, ...] = tuple(REGISTRY)
