"""The method object: one adaptation method, everything the package needs to know about it.

A :class:`Strategy` holds its name and label, its options with their defaults and validation (:class:`Option`),
what it inserts into the model, what it trains (which parameters get ``requires_grad``), its learning-rate field
and whether it starts from a checkpoint. Its parameter count is that of the model it builds
(:func:`stmedfm.model.peft.parameter_table` prepares the model and counts it). Figure styles are not here: they belong
to :mod:`stmedfm.analysis.plots.style`.

Torch-free (the foundation layer), so validating parameters stays fast. What it inserts is named: a built-in piece
of :mod:`stmedfm.model.peft` (``'lora'``, ``'adapter'``, ``'peft'``), or, for a method made of new pieces, its own
``surgery`` object (``insert(model, options)``, ``present(model)``, ``parameters(model)``), which may use torch
since it runs only when a model is prepared (see ``docs/strategies.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stmedfm.core.errors import StmedfmError

__all__ = ["Option", "PeftMethod", "Strategy"]


@dataclass(frozen=True)
class Option:
    """One option of a method: ``name`` (as a study writes it, ``strategy_options: {lora: {r: 8}}``), ``kind`` (int
    or float), ``default`` (the registered value; a run's identity holds the option only when it differs from it),
    ``field``: the shared :class:`~stmedfm.core.config.StudyConfig` field whose value is the study's default instead
    (``lora_r``; None = none), ``zero_ok``: 0 is a legal value (OFT's ``r``)."""

    name: str
    kind: type = int
    default: Any = None
    field: str | None = None
    zero_ok: bool = False

    def value(self, cfg) -> Any:
        """What a study trains when it does not set the option: its shared field, else the registered default."""
        return getattr(cfg, self.field) if self.field and cfg is not None and hasattr(cfg, self.field) else self.default

    def problem(self, where: str, value) -> str | None:
        """One line when ``value`` is not legal for this option, else None."""
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and (
            isinstance(value, int) if self.kind is int else math.isfinite(value))
        if number and (value >= 0 if self.zero_ok else value > 0):
            return None
        kind = "an integer" if self.kind is int else "a number"
        return f"'{where}' must be {kind} {'>= 0' if self.zero_ok else '> 0'}, got {value!r}."


@dataclass(frozen=True)
class PeftMethod:
    """A method of Hugging Face peft, as data (this module imports neither torch nor peft, so validating parameters
    stays fast): ``config``, the name of its config class in ``peft`` (``"LoraConfig"``); ``targets``, what it wraps
    — ``"linears"``, the 4 encoder Linears (``fc1``/``fc2`` of both blocks, exactly what the paper's LoRA wraps), or
    ``"layernorms"``, every LayerNorm; ``options``, keyword arguments of the config, as sorted ``(name, value)``
    pairs (hashable, so a strategy stays a frozen value). Build it with :meth:`of`.

    Decision: a config with a rank ``r`` gets the study's ``lora_r``, and one with ``lora_alpha``/``alpha`` the study's
    ``lora_alpha``, unless ``options`` sets them: every low-rank method then has the paper's LoRA rank and scaling,
    so methods differ in structure, not in rank (see :func:`stmedfm.model.peft.peft_config`).
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

    def with_values(self, values) -> "PeftMethod":
        """This method with a study's values of its own options (``values``: option -> value; others ignored)."""
        return PeftMethod(self.config, self.targets, tuple((k, values.get(k, v)) for k, v in self.options))

    def describe(self) -> str:
        """``LoraConfig(use_dora=True) on linears``: how tables and run identities name it."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"{self.config}({args}) on {self.targets}"


@dataclass(frozen=True)
class Strategy:
    """One adaptation method.

    ``inserts``: built-in module kinds added to the (pretrained) model before training, in order. ``trains``:
    parameter groups left trainable (everything else is frozen); the paper's convention for a PEFT method is its own
    parameters + every LayerNorm + the task's head. ``lr_field``: the :class:`~stmedfm.core.config.StudyConfig` field
    holding its default learning rate. ``pretrained``: False only for training from scratch. ``peft``: the Hugging
    Face peft method the generic ``'peft'`` insert adds (``inserts=("peft",)``), None for every other strategy.
    ``options``: its options besides ``lr`` (None: those of the pieces it inserts, see
    :func:`stmedfm.core.tuners.options_of`). ``surgery``: a method's own model surgery (group ``'own'`` of ``trains``).
    """

    name: str
    label: str
    inserts: tuple[str, ...] = ()
    trains: tuple[str, ...] = ("all",)
    lr_field: str = "lr_peft"
    pretrained: bool = True
    description: str = ""
    peft: PeftMethod | None = None
    family: str = "other"  #: its kind, for figures that group strategies (stmedfm.core.strategies.FAMILIES)
    options: tuple[Option, ...] | None = None
    surgery: Any = None
